#!/usr/bin/env bash
# Install Debian's single-machine SLURM (slurmctld, slurmd, the client commands) and munge when missing.
# Called by `make setup` and `make test`; quick when everything is there. Needs root and apt-get; without
# them it says so and exits 1 (the SLURM tests then skip, naming the reason).
set -euo pipefail
missing=()
for cmd in slurmctld slurmd sbatch munged; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "slurm/local/install.sh: ${missing[*]} missing; installing SLURM needs root and apt-get" >&2
  exit 1
fi
echo "slurm/local/install.sh: installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
