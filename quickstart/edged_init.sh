#!/usr/bin/env bash
# Gather the models config.sh names into $model_loc/rmir and deploy them on this device
# (Riva's riva_init.sh). Safe to run again: what is up to date is skipped.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec edged init -c "$config"
