#!/usr/bin/env bash
# One node's share of a training run: the DeepSpeed launcher for this node's ranks.
#
#   slurm/node.sh --recipe NAME [key=value ...]        (the arguments after launcher/run.py)
#
# slurm/sweep.sh runs it directly on a one-node allocation and through `srun` (one per node) otherwise;
# tests/test_multinode.py runs it twice on one machine. Environment (all optional):
#   MIRAGE_NNODES (1)  MIRAGE_NODE_RANK (SLURM_NODEID, else 0)  MIRAGE_RANKS_PER_NODE (1)
#   MIRAGE_MASTER_ADDR (127.0.0.1)  MIRAGE_MASTER_PORT (29500)  MIRAGE_PYTHON (.venv/bin/python, else python3)
#   MIRAGE_LOG_PREFIX: when set, this node's output goes to ${MIRAGE_LOG_PREFIX}node<rank>.log
#
# Preemption: USR1 here is forwarded to the rank processes. The ranks finish the step, checkpoint and exit
# 3. The DeepSpeed launcher processes must survive it: USR1's default action would kill them and orphan the
# ranks (and TERM makes them kill the ranks, checkpoint or not), so they run with USR1 ignored.
# Exit status: the launcher's (0 finished, 3 preempted and resumable, 2 bad config, other = failed).
set -euo pipefail
# Trapped first thing: a USR1 that comes while this script starts up is remembered, not fatal.
stop_requested=0
on_stop() {
  stop_requested=1
  echo "node.sh: USR1 received, $(date -Is)"
}
trap on_stop USR1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
nnodes=${MIRAGE_NNODES:-1}
node_rank=${MIRAGE_NODE_RANK:-${SLURM_NODEID:-0}}
ranks=${MIRAGE_RANKS_PER_NODE:-1}
master_addr=${MIRAGE_MASTER_ADDR:-127.0.0.1}
master_port=${MIRAGE_MASTER_PORT:-29500}
py=${MIRAGE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=$(command -v python3); fi
fi
if [ -n "${MIRAGE_LOG_PREFIX:-}" ]; then
  mkdir -p "$(dirname "${MIRAGE_LOG_PREFIX}x")"
  exec >>"${MIRAGE_LOG_PREFIX}node${node_rank}.log" 2>&1
fi

launch=("$py" -u -m deepspeed.launcher.runner --num_gpus "$ranks" --master_port "$master_port")
if [ "$nnodes" -gt 1 ]; then
  # --no_ssh: every node starts its own launcher (here, from srun) instead of node 0 reaching the others
  # over pdsh/ssh. The runner still needs a hostfile to know the world: one line per node, in node-rank
  # order; the names only label the nodes, since nothing connects to them by name.
  hostfile=$(mktemp "${TMPDIR:-/tmp}/mirage-hostfile.XXXXXX")
  trap 'rm -f "$hostfile"' EXIT
  for ((i = 0; i < nnodes; i++)); do echo "node$i slots=$ranks"; done >"$hostfile"
  launch+=(--hostfile "$hostfile" --no_ssh --node_rank "$node_rank" --master_addr "$master_addr")
fi

echo "node.sh: node $node_rank/$nnodes, $ranks rank(s), master $master_addr:$master_port, $(date -Is)"
declare -A signalled=()

# The launcher runs with USR1 ignored, which exec keeps: the runner and the per-node launcher never die of
# it, and a rank ignores it until the training loop installs its handler. This matters under srun, whose
# forwarded signals reach every process of the step, not only this script.
(trap '' USR1 && exec "${launch[@]}" launcher/run.py "$@") &
runner=$!

# USR1 once to each rank whose handler is installed (SigCgt in /proc has bit 9 set for signal 10, USR1).
# A rank still importing would ignore it, so the loop below retries until every rank got one. The ranks
# are the children of the per-node `deepspeed.launcher.launch`, itself a child of the runner; matching by
# parent skips data-loader workers, which carry their rank's command line.
signal_ranks() {
  local launcher rank caught
  for launcher in $(pgrep -P "$runner" -f deepspeed.launcher.launch || true); do
    for rank in $(pgrep -P "$launcher" || true); do
      [ -z "${signalled[$rank]:-}" ] || continue
      caught=$(awk '/^SigCgt:/ {print $2}' "/proc/$rank/status" 2>/dev/null || true)
      if [ -n "$caught" ] && (((16#$caught >> 9) & 1)) && kill -USR1 "$rank" 2>/dev/null; then
        signalled[$rank]=1
      fi
    done
  done
  if [ "${#signalled[@]}" -ge "$ranks" ]; then
    echo "node.sh: stop forwarded to the ranks as USR1, $(date -Is)"
  fi
}

# `wait` returns early (status > 128) each time a trapped signal arrives, so loop until the runner exits.
while kill -0 "$runner" 2>/dev/null; do
  if [ "$stop_requested" = "1" ] && [ "${#signalled[@]}" -lt "$ranks" ]; then
    signal_ranks
    sleep 1
  else
    wait "$runner" || true
  fi
done
status=0
wait "$runner" || status=$?
echo "node.sh: launcher exited with $status, $(date -Is)"
exit "$status"
