#!/usr/bin/env bash
# The GPU benchmarks in one command, one table at the end:
#
#   bash benchmarks/gpu_suite.sh          (repo root; `make venv`, plus `pip install -e ".[gpu]"` for flash-attn)
#
# 1. RMU loss kernel, Triton vs eager and torch.compile (benchmarks/rmu_kernel.py, CUDA branch): time,
#    % of HBM bandwidth, peak memory, and whether the peak leaves room for a [tokens x D] fp32 temporary.
# 2. A bf16 LoRA and full step (sft_lora, sft_full) on a larger stand-in LLaVA (hidden 1024, 16 layers,
#    576 image tokens as LLaVA-1.5 at 336 px, random weights: speed needs no trained base): samples/s,
#    tokens/s, peak GPU memory, from metrics.jsonl.
# 3. flash-attention 2 vs SDPA on the bf16 full step (skipped when flash-attn is not installed).
# 4. The framework's overhead over a bare DeepSpeed loop (benchmarks/overhead.py), on 1 rank (and 2 with
#    two GPUs).
# Without CUDA, parts 1-3 are reported as "not run (no CUDA)" and part 4 runs on the CPU.
#
# Knobs (environment): OUT (logs, default runs/gpu-suite-<time>), PY (default .venv/bin/python), STEPS
# (steps per training run, default 30), STANDIN (the stand-in's overrides), KERNEL_ARGS, OVERHEAD_ARGS
# (options of overhead.py; recipe overrides after "--").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEEPSPEED="$(dirname "$PY")/deepspeed"
OUT=${OUT:-runs/gpu-suite-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-30}
STANDIN=${STANDIN:-"model.embedded.text_hidden=1024 model.embedded.text_layers=16 model.embedded.text_intermediate=4096 \
model.embedded.text_heads=16 model.embedded.image_size=336 model.embedded.patch_size=14 data.max_length=2048 \
model.embedded_base=random"}
KERNEL_ARGS=${KERNEL_ARGS:-}
OVERHEAD_ARGS=${OVERHEAD_ARGS:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
TABLE="$OUT/table.tsv"
: > "$TABLE"

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$TABLE"; }

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 0 ]; then
  MACHINE=$("$PY" -c "import torch; print(f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}')")
else
  MACHINE="CPU only ($(nproc --all) cores), torch $("$PY" -c "import torch; print(torch.__version__)")"
fi

# -- 1. RMU kernel --------------------------------------------------------------------------------------
if [ "$GPUS" -gt 0 ]; then
  # shellcheck disable=SC2086  # KERNEL_ARGS is a list of options
  if "$PY" benchmarks/rmu_kernel.py --kernels compile triton $KERNEL_ARGS > "$OUT/rmu_kernel.md" 2> "$OUT/rmu_kernel.log"; then
    # One row per (tokens, dtype, target): Triton's time against eager and compile, its % of HBM
    # bandwidth, and its peak memory against the peak a [tokens x D] fp32 temporary would add to h.grad.
    "$PY" - "$OUT/rmu_kernel.md" "$KERNEL_ARGS" >> "$TABLE" <<'EOF'
import sys
dim = 4096
args = sys.argv[2].split()
if "--dim" in args:
    dim = int(args[args.index("--dim") + 1])
cases: dict[tuple[str, str, str], dict[str, list[str]]] = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 10 and cells[0].isdigit():
        cases.setdefault(tuple(cells[:3]), {})[cells[3]] = cells
for (tokens, dtype, target), by_kernel in cases.items():
    if "triton" not in by_kernel:
        continue
    t = by_kernel["triton"]
    ms, peak, hbm = float(t[4]), float(t[6]), t[9]
    element = 2 if dtype == "bf16" else 4
    with_temp = int(tokens) * dim * (element + 4) / 2**20  # h.grad plus one fp32 [tokens x D] buffer
    versus = ", ".join(f"{float(by_kernel[k][4]) / ms:.2f}x {k}" for k in ("eager", "compile") if k in by_kernel)
    temp = "no fp32 [tokens x D] temporary" if peak < with_temp else "peak fits an fp32 [tokens x D] temporary"
    print(f"RMU kernel\t{tokens} x {dim} {dtype} {target}\t"
          f"triton {ms:.3f} ms ({versus}), {hbm}% HBM, peak {peak:.0f} MiB ({temp})")
EOF
  else
    row "RMU kernel" "triton vs eager, compile" "failed (see $OUT/rmu_kernel.log)"
  fi
else
  row "RMU kernel" "triton vs eager, compile" "not run (no CUDA)"
fi

# -- 2. and 3. bf16 steps on the stand-in, SDPA and flash-attention ------------------------------------------
step_run() {  # recipe attn -> one table row from the run's metrics.jsonl
  local recipe=$1 attn=$2 dir="$OUT/step-$1-$2"
  # shellcheck disable=SC2086  # STANDIN is a list of overrides
  if "$DEEPSPEED" --num_gpus 1 launcher/run.py --recipe "$recipe" output_dir="$dir" max_steps="$STEPS" \
      model.dtype=bf16 model.attn_implementation="$attn" tracking.mlflow=false $STANDIN > "$dir.log" 2>&1; then
    "$PY" - "$dir" "$recipe" "$attn" >> "$TABLE" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl") if line.strip()]
steady = rows[5:] or rows  # the first steps pay allocator warm-up
sps = statistics.median(r["perf/samples_per_s"] for r in steady)
tps = statistics.median(r["perf/tokens_per_s"] for r in steady)
peak = max(r.get("system/gpu_max_allocated_gib") or 0.0 for r in rows)
print(f"bf16 step\t{sys.argv[2]}, {sys.argv[3]}\t{sps:.1f} samples/s, {tps:.0f} tokens/s, peak {peak:.1f} GiB")
EOF
  else
    row "bf16 step" "$recipe, $attn" "failed (see $dir.log)"
  fi
}

if [ "$GPUS" -gt 0 ]; then
  step_run sft_lora sdpa
  step_run sft_full sdpa
  if "$PY" -c "import flash_attn" 2> /dev/null; then
    step_run sft_full flash_attention_2
    "$PY" - "$OUT" >> "$TABLE" <<'EOF'
import json, statistics, sys
def tokens_per_s(attn: str) -> float:
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/step-sft_full-{attn}/metrics.jsonl") if line.strip()]
    return statistics.median(r["perf/tokens_per_s"] for r in (rows[5:] or rows))
print(f"flash-attention\tsft_full tokens/s, flash_attention_2 / sdpa\t"
      f"{tokens_per_s('flash_attention_2') / tokens_per_s('sdpa'):.2f}x")
EOF
  else
    row "flash-attention" "flash_attention_2 vs sdpa" "not run (flash-attn not installed)"
  fi
else
  row "bf16 step" "sft_lora, sft_full on the stand-in" "not run (no CUDA)"
  row "flash-attention" "flash_attention_2 vs sdpa" "not run (no CUDA)"
fi

# -- 4. overhead over a bare DeepSpeed loop ---------------------------------------------------------------
RANKS="1"
[ "$GPUS" -ge 2 ] && RANKS="1 2"
[ "$GPUS" -eq 0 ] && RANKS="1 2"  # CPU ranks
# shellcheck disable=SC2086  # RANKS and OVERHEAD_ARGS are lists
if "$PY" benchmarks/overhead.py --ranks $RANKS $OVERHEAD_ARGS > "$OUT/overhead.txt" 2> "$OUT/overhead.log"; then
  grep '^ratio overhead' "$OUT/overhead.txt" | sed -E 's/^ratio overhead (.*): (.*)$/overhead\tframework \/ bare DeepSpeed, time per step, \1\t\2/' >> "$TABLE"
else
  row "overhead" "framework / bare DeepSpeed" "failed (see $OUT/overhead.log)"
fi

echo "# gpu_suite: $MACHINE, $(date -u +%Y-%m-%dT%H:%MZ), logs in $OUT"
echo "| part | figure | value |"
echo "|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$TABLE"
