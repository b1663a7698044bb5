#!/usr/bin/env bash
# Delete the model repository ($model_loc: gathered RMIRs and deployed models), after asking
# (Riva's riva_clean.sh). `-y` answers yes, for scripts. Stop the daemon first.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
assume_yes=false
[[ "${1:-}" == "-y" ]] && assume_yes=true
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "edged: the daemon is running (pid $(cat "$pid_file")); stop it with quickstart/edged_stop.sh first" >&2
    exit 1
fi
if [[ ! -d "$model_loc" ]]; then
    echo "Nothing to clean: $model_loc does not exist"
    exit 0
fi
echo "This deletes $model_loc/rmir and $model_loc/models ($(du -sh "$model_loc" | cut -f1))."
if ! $assume_yes; then
    if [[ ! -t 0 ]]; then
        echo "edged: not deleting without an answer; run it in a terminal or pass -y" >&2
        exit 1
    fi
    read -r -p "Delete them? [y/N] " answer
    [[ "$answer" =~ ^[Yy] ]] || { echo "Nothing deleted"; exit 0; }
fi
rm -rf -- "$model_loc/rmir" "$model_loc/models" "$model_loc/edged.log"
echo "Deleted the model repository in $model_loc"
