#!/usr/bin/env bash
# Train and evaluate on this machine (all its devices), after setting up .venv.
#
#   launch/train_local.sh CONFIG WORKDIR [--dry-run] [extra flags ...]
#   launch/train_local.sh configs/synthetic.py:head=mlar runs/mlar --config.loss.name=wlsep
#
# --dry-run prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/args.sh 2 2,7 "$@"
config=${positional[0]} workdir=${positional[1]}
"${run[@]}" make install
"${run[@]}" .venv/bin/python -m mlar_jax.main --config "$config" --workdir "$workdir" "${args[@]}"
