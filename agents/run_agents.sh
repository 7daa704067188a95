#!/usr/bin/env bash
# Start agents for an existing sweep: one per visible GPU (or --gpus 0,1 / --per-gpu N).
#   agents/run_agents.sh SWEEP [--gpus 0,1] [--per-gpu N] [--count N] [--stagger S]
# SWEEP: a local sweep id or folder (embedded engine; dead runs are marked crashed and
# the sweep goes on), or entity/project/sweep_id on W&B.
set -euo pipefail
if [[ $# -eq 0 ]]; then
  echo "usage: agents/run_agents.sh SWEEP [hrnet_sweep sweep options]" >&2
  exit 2
fi
sweep="$1"
shift
exec hrnet_sweep sweep --resume "$sweep" "$@"
