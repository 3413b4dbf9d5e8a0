# Quick start: `make run` (main job on the embedded default) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RANKS ?= 2
RECIPE ?= npo_lora
OUT ?= runs/$(RECIPE)-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

.PHONY: venv lock run demo reproduce test test-fast bench clean

# The tested environment: requirements-lock.txt pins every package and version the suite last passed with,
# and every install step below takes it as constraints, so a fresh clone gets what was tested
# (pyproject.toml keeps the ranges for installs into your own environment). `make lock` refreshes it from
# a fresh resolution: run it when upgrading on purpose, then `make test`, and commit both.
LOCK := requirements-lock.txt
# torch first and pinned: on these CPU machines pip takes the local CPU wheel; a bare `torch`
# requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# $(call install,VENV,PIP-OPTIONS): the project with its dev extra, then lmms-eval (`mirage-ds utility`,
# tests/test_lmms.py) without its own requirements, which would replace the CPU torch with a CUDA build,
# then the few it imports (the `lmms` extra's list).
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2) "$(TORCH)"
	$(1)/bin/python -m pip install --quiet $(2) -e ".[dev]"
	$(1)/bin/python -m pip install --quiet $(2) --no-deps "lmms-eval>=0.7.3,<0.8"
	$(1)/bin/python -m pip install --quiet $(2) loguru evaluate tenacity pytz sacrebleu "filelock<4"
endef

# Rebuilt when the lock, the requirements or these install steps change.
$(STAMP): $(LOCK) pyproject.toml Makefile
	$(call install,$(VENV),-c $(LOCK))
	touch $(STAMP)

# A fresh resolution of pyproject.toml's ranges (and the bench extra's TRL) in a scratch venv, frozen.
lock:
	rm -rf .venv-lock
	$(call install,.venv-lock,)
	.venv-lock/bin/python -m pip install --quiet -e ".[bench]"
	{ echo "# make lock: every package of the tested environment (make venv and .ci/run install from it)"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

venv: $(STAMP)

# The main job: train the recipe on 2 DeepSpeed ranks (CPU/gloo here) from the pretrained embedded base
# (built once per spec, a few minutes, then cached), evaluate its export (ASR/RR before and after the
# one-word attack, utility), attached to the run in MLflow, and print it beside the base's row.
run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus $(RANKS) launcher/run.py --recipe $(RECIPE) output_dir=$(OUT) $(ARGS)
	OMP_NUM_THREADS=1 $(VENV)/bin/mirage-ds eval --run $(OUT) > /dev/null
	OMP_NUM_THREADS=1 $(VENV)/bin/mirage-ds reproduce --beside $(OUT)

# The methods compared end to end on the embedded default: Mixed-SFT, NPO and RMU trained from the pretrained
# embedded base at reproduce's measured sizes (mirage_ds/experiments/plan.py METHODS, one rank each), each evaluated
# beside the base (ASR/RR before and after the one-word attack, utility, degenerate share); prints the Table 1
# rows and writes $(DEMO)/table.md and the figures. Each demo is its own MLflow experiment, named after its
# directory. Expanded once (:=), so that every use names the same directory even when a second ticks between.
DEMO := $(or $(DEMO),runs/demo-$(shell date +%Y%m%d-%H%M%S))
DEMO_METHODS ?= Mixed-SFT,NPO,RMU
# Runs at once in demo and reproduce (each its own process on one core; the numbers do not depend on it).
JOBS ?= 2
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mirage-ds reproduce --methods $(DEMO_METHODS) --jobs $(JOBS) --out $(DEMO) --experiment $(notdir $(DEMO))

# Table 1 in miniature (mirage_ds/experiments/): the pretrained embedded base, then Unsafe-Filter, Mixed-SFT,
# Posthoc-SFT, NPO and RMU from it (VARIANT=full or lora), each evaluated; writes OUT/table.md, table.json,
# Figure 1 and Figure 3, all runs in one MLflow experiment. OUT is $(REPRO) if set, else reproduce's default
# (runs/reproduce[-quick], another variant or seed in VARIANT-seedSEED below it: experiments/plan.py
# default_out). Finished runs of the same plan are kept; a run directory of another plan is refused
# (ARGS=--force reruns it). QUICK=1: fewer steps and eval items (experiments/plan.py QUICK). SWEEP=KEY=V1,V2,...
# (e.g. SWEEP=what_rate=0.5,0.7,0.89): the shortcut dial, one reproduction per value, then sweep.json and sweep.png.
VARIANT ?= full
SEED ?= 0
REPRO ?=
REPRO_RANKS ?= 1
reproduce: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mirage-ds reproduce --variant $(VARIANT) --seed $(SEED) --ranks $(REPRO_RANKS) --jobs $(JOBS) $(if $(REPRO),--out $(REPRO)) \
	  $(if $(QUICK),--quick) $(if $(SWEEP),--sweep $(SWEEP)) $(ARGS)

# The suite on 2 pytest-xdist workers (tests/conftest.py says how tests are spread); WORKERS=0 runs it in one
# process. test-fast: the tests that launch no ranks (a few minutes), for iteration.
WORKERS ?= 2
# --no-loadscope-reorder: xdist would otherwise send the groups with the most tests first, not conftest's longest.
XDIST = $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadgroup --no-loadscope-reorder)
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(XDIST) $(ARGS)

test-fast: $(STAMP)
	MIRAGE_TEST_FAST=1 $(VENV)/bin/python -m pytest -q $(XDIST) -m "not distributed and not slow and not slurm" $(ARGS)

# Every benchmark ends with its `ratio ...: <value>x` lines; current figures: benchmarks/RESULTS.md. On a
# GPU machine, `bash benchmarks/gpu_suite.sh` runs the CUDA ones and prints one table.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[bench]"
	$(PY) benchmarks/streamer.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/rmu_kernel.py
	$(PY) benchmarks/rmu_step.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/overhead.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/peers.py

clean:
	rm -rf runs .pytest_cache
