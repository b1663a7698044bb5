# Shared by the quickstart scripts (sourced, not run). Like Riva's scripts, they read config.sh;
# values come through `edged config --get` so they resolve exactly as the daemon resolves them.
set -euo pipefail
quickstart_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="${EDGED_CONFIG:-$quickstart_dir/../config.sh}"
if [[ ! -f "$config" ]]; then
    echo "edged: $config does not exist; create one with: edged config --example > config.sh" >&2
    exit 1
fi
if ! command -v edged >/dev/null 2>&1; then
    echo "edged: the edged command is not on PATH; install it with: pip install '.[models]'" >&2
    exit 1
fi
setting() { edged config -c "$config" --get "$1" 2>/dev/null; }
model_loc="$(setting model_loc)"
pid_file="$model_loc/edged.pid"
log_file="$model_loc/edged.log"
