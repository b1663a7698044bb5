#!/usr/bin/env bash
# Stop the daemon started by edged_start.sh: SIGTERM (it drains and exits), SIGKILL after a grace period.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ ! -f "$pid_file" ]] || ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    rm -f "$pid_file"
    echo "edged is not running"
    exit 0
fi
pid="$(cat "$pid_file")"
kill -TERM "$pid"
for _ in $(seq 1 "${EDGED_STOP_GRACE:-30}"); do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pid_file"
        echo "edged stopped"
        exit 0
    fi
    sleep 1
done
echo "edged did not stop within ${EDGED_STOP_GRACE:-30} s; killing it" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$pid_file"
