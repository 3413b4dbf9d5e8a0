#!/usr/bin/env bash
# Install a single-node Slurm (slurmctld + slurmd + client) and munge for the Slurm tests.
# Idempotent: returns at once when everything is already there. Root only; the tests skip Slurm without it.
# The daemons are not started here: tests/slurm_cluster.py writes slurm.conf and starts them per session.
set -euo pipefail

need=(slurmctld slurmd sbatch scontrol munged pgrep)
missing=0
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing=1
done
if [ "$missing" = "0" ] && [ -s /etc/munge/munge.key ]; then
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  echo "install_slurm: needs root (apt-get); the Slurm tests will be skipped" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing on a fresh image; a failed update is fatal only if the install fails.
apt-get update -qq || true
# --no-install-recommends keeps out the mail server and docs the recommends pull in; procps gives pgrep,
# which slurm/node.sh uses to find the rank processes it forwards USR1 to.
apt-get install -y -qq --no-install-recommends slurm-wlm munge procps >/dev/null

# Debian's munge postinst creates the key; create one if an image stripped it, so munged can start.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
echo "install_slurm: $(slurmctld -V) and munge installed"
