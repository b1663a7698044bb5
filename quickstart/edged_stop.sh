#!/usr/bin/env bash
# Stop the daemon started by edged_start.sh: SIGTERM (it drains and exits), SIGKILL after the
# grace period (shutdown_grace_s).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec edged stop -c "$config"
