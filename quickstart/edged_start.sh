#!/usr/bin/env bash
# Start the daemon in the background and wait until it serves (Riva's riva_start.sh).
# For a supervised service use systemd (systemd/edged.service) or `edged start` in the foreground.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "edged is already running (pid $(cat "$pid_file")); stop it with quickstart/edged_stop.sh"
    exit 0
fi
mkdir -p "$model_loc"
nohup edged start -c "$config" >>"$log_file" 2>&1 &
echo $! >"$pid_file"
echo "Starting edged (pid $!, log $log_file); waiting for the models to load..."
for _ in $(seq 1 "${EDGED_START_TIMEOUT:-300}"); do
    if edged health -c "$config" --timeout 1 >/dev/null 2>&1; then
        echo "edged is ready: $(edged health -c "$config")"
        exit 0
    fi
    if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        rm -f "$pid_file"
        echo "edged: the server exited during start-up; the end of $log_file says why:" >&2
        tail -n 5 "$log_file" >&2
        exit 1
    fi
    sleep 1
done
echo "edged: not ready after ${EDGED_START_TIMEOUT:-300} s; see $log_file" >&2
exit 1
