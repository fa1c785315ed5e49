#!/usr/bin/env bash
# A single-node SLURM on this machine (munge, slurmctld, slurmd) for the tests and for trying the sbatch
# files on a laptop: installs Debian's packages if missing (slurm/local/install.sh, needs root), writes a
# localhost slurm.conf sized to this machine's CPUs and memory (partition "debug", no accounting), and
# starts the daemons that are not running. If they are running, it re-reads the configuration instead
# (scontrol reconfigure) and starts nothing. Daemons it starts are listed in $STATE/started, and
# slurm/local/stop.sh stops those and no others. Logs: $STATE/log (STATE: $CLIPPROBE_SLURM_STATE,
# default /var/tmp/clipprobe-slurm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
STATE=${CLIPPROBE_SLURM_STATE:-/var/tmp/clipprobe-slurm}
CONF=/etc/slurm/slurm.conf
"$here/install.sh"

if [ -s "$CONF" ] && ! grep -q '^ClusterName=clipprobe-local$' "$CONF"; then
  echo "slurm/local/start.sh: $CONF belongs to another cluster; not touching it" >&2
  exit 1
fi
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm /etc/munge /var/run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /var/run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi

# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
# MinJobAge keeps finished jobs visible to `scontrol show job` for 10 minutes (there is no sacct here).
cat > "$CONF.new" <<CONF
ClusterName=clipprobe-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
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
mv "$CONF.new" "$CONF"

alive() {  # alive NAME PIDFILE: the pid file names a running process called NAME
  [ -s "$2" ] && [ "$(cat "/proc/$(cat "$2")/comm" 2>/dev/null)" = "$1" ]
}
started() {  # started NAME PIDFILE: wait for the daemon's pid file, then remember the daemon for stop.sh
  for _ in $(seq 1 50); do alive "$1" "$2" && break; sleep 0.2; done
  alive "$1" "$2" || { echo "slurm: $1 did not start; see $STATE/log" >&2; exit 1; }
  echo "$1 $(cat "$2")" >> "$STATE/started"
}

if ! alive munged /var/run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
  started munged /var/run/munge/munged.pid
fi
if alive slurmctld "$STATE/slurmctld.pid"; then
  scontrol reconfigure
else
  /usr/sbin/slurmctld
  started slurmctld "$STATE/slurmctld.pid"
fi
if ! alive slurmd "$STATE/slurmd.pid"; then
  /usr/sbin/slurmd
  started slurmd "$STATE/slurmd.pid"
fi

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
