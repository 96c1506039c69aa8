#!/usr/bin/env bash
# Train and evaluate on this machine (all its devices), after setting up .venv.
#
#   launch/train_local.sh CONFIG WORKDIR [--dry-run] [extra flags ...]
#   launch/train_local.sh configs/synthetic.py:head=mlar runs/mlar --config.loss.name=wlsep
#
# --dry-run prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
run=()
args=()
for a in "$@"; do
  if [[ $a == --dry-run ]]; then run=(echo); else args+=("$a"); fi
done
"${run[@]}" make install
"${run[@]}" .venv/bin/python -m mlar_jax.main --config "$config" --workdir "$workdir" "${args[@]}"
