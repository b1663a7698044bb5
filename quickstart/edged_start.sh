#!/usr/bin/env bash
# Start the daemon in the background and wait until it serves (Riva's riva_start.sh): a supervisor
# restarts it after a crash; log and pid file in $model_loc. For a system service use systemd
# (systemd/edged.service) or `edged start` in the foreground.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "edged is already running (pid $(cat "$pid_file")); stop it with quickstart/edged_stop.sh"
    exit 0
fi
echo "Starting edged (log $log_file); waiting for the models to load..."
edged start --detach -c "$config" --wait "${EDGED_START_TIMEOUT:-300}" || exit 1
echo "edged is ready: $(edged health -c "$config")"
