#!/usr/bin/env bash
# Start a single-node SLURM on this machine (munge, slurmctld, slurmd) for tests and laptops.
# Installs Debian's packages if missing (needs root), writes a localhost slurm.conf sized to this
# machine's CPUs and memory, and starts the daemons. Idempotent: running it again restarts them.
# Stop them with slurm/local/stop.sh.
set -euo pipefail
STATE=${CLIPPROBE_SLURM_STATE:-/var/tmp/clipprobe-slurm}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm /etc/munge /var/run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /var/run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=clipprobe-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
KillWait=30
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm: node $host up with $cpus CPUs (logs in $STATE/log)"
    exit 0
  fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm: node did not come up; see $STATE/log" >&2
sinfo >&2 || true
exit 1
