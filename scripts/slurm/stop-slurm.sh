#!/usr/bin/env bash
# Stop the daemons scripts/slurm/start-slurm.sh started (and only those), newest first, by the PIDs it recorded.
# A recorded PID is signalled only while it still belongs to the daemon of that name (PIDs get reused).
set -uo pipefail
PIDS=${SLURM_PIDS:-/tmp/photonstream-slurm/pids}
[ -f "$PIDS" ] || exit 0
for name in slurmd slurmctld slurmdbd munged; do
  pid=$(awk -v name="$name" '$1 == name {print $2}' "$PIDS")
  [ -n "$pid" ] || continue
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  echo "stop-slurm: stopped $name (pid $pid)" >&2
done
rm -f "$PIDS"
