#!/usr/bin/env bash
# Stop the daemons that slurm/local/start.sh started (listed in $STATE/started), and no others.
STATE=${CLIPPROBE_SLURM_STATE:-/var/tmp/clipprobe-slurm}
[ -s "$STATE/started" ] || exit 0
pids=()
while read -r name pid; do
  # the pid must still be that daemon (not a recycled pid)
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid" && pids+=("$pid")
  fi
done < <(tac "$STATE/started")  # slurmd first, munged last
for _ in $(seq 1 20); do
  left=0
  for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left=1; done
  [ "$left" = 0 ] && break
  sleep 0.5
done
rm -f "$STATE/started"
