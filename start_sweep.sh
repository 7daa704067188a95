#!/usr/bin/env bash
# Create a sweep and run one agent per visible GPU until it is done (non-interactive).
#   ./start_sweep.sh [SWEEP.yaml] [--local] [--storage URL] [--project P] [--entity E] [--gpus 0,1] [--count N] [--run-cap N]
# With W&B credentials the sweep lives on W&B; without them, or with --local, the same
# YAML runs on the embedded engine: in a folder, or with --storage postgresql://user@host/db
# in that database, which agents on other machines join (the password from ~/.pgpass or
# PGPASSWORD). Ctrl-C stops every agent and its run.
# All logic lives in `hrnet_sweep sweep` (see `hrnet_sweep sweep --help`).
set -euo pipefail
if [[ $# -eq 0 || "$1" == -* ]]; then
  set -- sweeps/hrnet_w44_1280.yaml "$@"
fi
exec hrnet_sweep sweep "$@"
