#!/usr/bin/env bash
# Stop the daemons that slurm/local/start.sh started (slurmd, slurmctld, munged).
STATE=${CLIPPROBE_SLURM_STATE:-/var/tmp/clipprobe-slurm}
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
pkill -x slurmd 2>/dev/null; pkill -x slurmctld 2>/dev/null; pkill -x munged 2>/dev/null
sleep 1
exit 0
