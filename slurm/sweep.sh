#!/usr/bin/env bash
# A sweep as a Slurm job array: array task I runs task I of the sweep file through DeepSpeed.
#
#   slurm/submit [SWEEP_FILE] [sbatch options]          sizes --array from the file, then calls sbatch
#   sbatch --array=0-7 slurm/sweep.sh [SWEEP_FILE]      the same by hand (default slurm/sweeps/sample.yaml)
#
# Submit from the repository root (or set MIRAGE_REPO). One node: a plain `deepspeed` launcher.
# Several nodes (sbatch -N 2): `srun` starts one launcher per node with --no_ssh (slurm/node.sh).
# Ranks per node: MIRAGE_RANKS_PER_NODE, else the GPUs Slurm gave the node, else 1.
#
# Preemption: Slurm sends USR1 to this script 90 s before the time limit (--signal=B:USR1@90; by hand:
# `scancel --batch --signal=USR1 JOB_TASK`). It is forwarded to the ranks, which checkpoint and exit 3;
# the task is then requeued and resumes from its checkpoint (resume=auto). Slurm starts a requeued job
# again only after its old credential expires (slurm.conf AuthInfo=cred_expire, 120 s by default).
#
# Logs: this script's own lines go to Slurm's --output (slurm/submit: <output_root>/<sweep>/logs/);
# each node's training output goes to <task output_dir>/logs/attempt<N>-node<R>.log, N = requeue count.
#SBATCH --job-name=mirage-sweep
#SBATCH --requeue
#SBATCH --signal=B:USR1@90
#SBATCH --open-mode=append
set -euo pipefail
# Trapped first thing, so a USR1 during the set-up below is remembered rather than fatal.
launcher=""
stop_requested=0
forward_stop() {
  stop_requested=1
  echo "sweep.sh: USR1 received, $(date -Is); asking the ranks to checkpoint and stop"
  if [ -n "$launcher" ]; then kill -USR1 "$launcher" 2>/dev/null || true; fi
}
trap forward_stop USR1

repo=${MIRAGE_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ ! -f "$repo/launcher/run.py" ]; then
  echo "sweep.sh: $repo is not the mirage-ds repository: submit from its root or set MIRAGE_REPO" >&2
  exit 2
fi
# A relative sweep file is relative to where sbatch was called, like any other sbatch argument.
cd "${SLURM_SUBMIT_DIR:-$PWD}"
sweep=$(realpath -e "${1:-$repo/slurm/sweeps/sample.yaml}")
cd "$repo"
py=${MIRAGE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=$(command -v python3); fi
fi
export MIRAGE_PYTHON=$py

task=${SLURM_ARRAY_TASK_ID:-}
if [ -z "$task" ]; then
  count=$("$py" -m mirage_ds.cli.sweep "$sweep" --count)
  if [ "$count" != "1" ]; then
    echo "sweep.sh: $sweep has $count tasks: submit it with slurm/submit (or sbatch --array=0-$((count - 1)))" >&2
    exit 2
  fi
  task=0
fi
# Sets MIRAGE_SWEEP_NAME, MIRAGE_SWEEP_TASK, MIRAGE_TASK_OUTPUT_DIR and the array MIRAGE_TASK_ARGS; every
# value is shell-quoted by mirage_ds.cli.sweep.
assignments=$("$py" -m mirage_ds.cli.sweep "$sweep" --task "$task" --shell)
eval "$assignments"
# Seams for the launcher's MLflow run: which sweep and task it belongs to, and the sweep's parent run
# (created by slurm/submit; read from its record, or created here when the array was submitted by hand).
# Tracking never stops a task: without a parent (the store unreachable) the run is tracked on its own.
MIRAGE_SWEEP_PARENT=$("$py" -m mirage_ds.cli.sweep "$sweep" --parent) || MIRAGE_SWEEP_PARENT=""
export MIRAGE_SWEEP_NAME MIRAGE_SWEEP_TASK MIRAGE_SWEEP_PARENT

attempt=${SLURM_RESTART_COUNT:-0}
args=("${MIRAGE_TASK_ARGS[@]}")
# A requeued task continues from its latest checkpoint; MIRAGE_RESUME=auto does the same for a task
# resubmitted by hand after a cancel or a failure.
if [ "$attempt" -gt 0 ] || [ "${MIRAGE_RESUME:-}" = "auto" ]; then
  args+=(resume=auto)
fi

nnodes=${SLURM_JOB_NUM_NODES:-1}
export MIRAGE_NNODES=$nnodes
export MIRAGE_RANKS_PER_NODE=${MIRAGE_RANKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
# Rank 0 runs on the allocation's first node; rendezvous at that node's address as Slurm knows it
# (NodeAddr, which is the node name itself unless slurm.conf says otherwise).
first_node=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}" | head -n 1)
export MIRAGE_MASTER_ADDR
MIRAGE_MASTER_ADDR=$(scontrol -o show node "$first_node" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
# Derived from the job id: two array tasks sharing a node never pick the same rendezvous port.
export MIRAGE_MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-$$} % 20000))
export MIRAGE_LOG_PREFIX="$MIRAGE_TASK_OUTPUT_DIR/logs/attempt${attempt}-"
mkdir -p "$MIRAGE_TASK_OUTPUT_DIR/logs"

task_id=${SLURM_JOB_ID:-}
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then task_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}; fi
echo "sweep.sh: job $task_id attempt $attempt, task $task of $MIRAGE_SWEEP_NAME on $nnodes node(s): ${args[*]}"
echo "sweep.sh: logs in ${MIRAGE_LOG_PREFIX}node*.log"

if [ "$stop_requested" = "1" ]; then
  # Told to stop before anything ran: nothing to checkpoint, requeue as if preempted.
  status=3
else
  if [ "$nnodes" -gt 1 ]; then
    # srun forwards the USR1 it gets to every node's node.sh. Since Slurm 22.05 a step no longer inherits
    # the job's --cpus-per-task, so give each per-node launcher the node's whole CPU share explicitly.
    srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" \
      --kill-on-bad-exit=0 bash "$repo/slurm/node.sh" "${args[@]}" &
  else
    bash "$repo/slurm/node.sh" "${args[@]}" &
  fi
  launcher=$!
  if [ "$stop_requested" = "1" ]; then kill -USR1 "$launcher" 2>/dev/null || true; fi
  # `wait` returns early each time the USR1 trap runs; loop until the launcher has exited.
  while kill -0 "$launcher" 2>/dev/null; do
    wait "$launcher" || true
  done
  status=0
  wait "$launcher" || status=$?
fi

case "$status" in
  0) echo "sweep.sh: task $task finished" ;;
  3)
    echo "sweep.sh: task $task preempted; requeueing $task_id (it resumes from its latest checkpoint)"
    scontrol requeue "$task_id"
    ;;
  *) echo "sweep.sh: task $task failed with exit status $status" >&2 ;;
esac
exit "$status"
