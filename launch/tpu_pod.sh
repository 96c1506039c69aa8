#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: every worker runs `python -m mlar_jax.main`
# (JAX finds the other workers itself), checkpoints and results go to GCS.
#
#   launch/tpu_pod.sh STEP [--dry-run] [extra mlar_jax.main flags ...]
#     STEP: create | setup | data | train | all | delete
#
# Settings (environment, defaults in brackets):
#   TPU_NAME [mlar-pod]  ZONE [us-west4-a]  PROJECT [gcloud's default]
#   ACCELERATOR [v5litepod-16]  RUNTIME [v2-alpha-tpuv5-lite]
#   CONFIG [configs/charades.py:backbone=slowfast_r101,root=/tmp/data/charades]
#   WORKDIR [gs://$BUCKET/runs/$TPU_NAME]  BUCKET (needed for the default WORKDIR)
#   DATA_GCS [gs://$BUCKET/data/charades]: copied to /tmp/data/charades on every worker
#
# create: the TPU VM slice. setup: this checkout (git archive of HEAD) to
# every worker, a venv with the `tpu` extra. data: the dataset from GCS to each
# worker's disk (video decoding reads local files). train: the run, on all
# workers at once (--worker=all). --dry-run prints the commands instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/args.sh 1 2,18 "$@"
step=${positional[0]}

TPU_NAME=${TPU_NAME:-mlar-pod}
ZONE=${ZONE:-us-west4-a}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
BUCKET=${BUCKET:-YOUR_BUCKET}
CONFIG=${CONFIG:-configs/charades.py:backbone=slowfast_r101,root=/tmp/data/charades}
WORKDIR=${WORKDIR:-gs://$BUCKET/runs/$TPU_NAME}
DATA_GCS=${DATA_GCS:-gs://$BUCKET/data/charades}
project=()
if [[ -n ${PROJECT:-} ]]; then project=(--project "$PROJECT"); fi
tpu=(gcloud compute tpus tpu-vm)
on_all=(--zone "$ZONE" "${project[@]}" --worker=all)

create() {
  "${run[@]}" "${tpu[@]}" create "$TPU_NAME" --zone "$ZONE" "${project[@]}" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
}

setup() {
  "${run[@]}" git archive --format=tar.gz -o /tmp/mlar_jax.tgz HEAD
  "${run[@]}" "${tpu[@]}" scp /tmp/mlar_jax.tgz "$TPU_NAME:/tmp/mlar_jax.tgz" "${on_all[@]}"
  "${run[@]}" "${tpu[@]}" ssh "$TPU_NAME" "${on_all[@]}" --command \
    "mkdir -p ~/mlar_jax && tar -xzf /tmp/mlar_jax.tgz -C ~/mlar_jax && cd ~/mlar_jax && \
python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
}

data() {
  "${run[@]}" "${tpu[@]}" ssh "$TPU_NAME" "${on_all[@]}" --command \
    "mkdir -p /tmp/data/charades && gcloud storage rsync -r $DATA_GCS /tmp/data/charades"
}

train() {
  "${run[@]}" "${tpu[@]}" ssh "$TPU_NAME" "${on_all[@]}" --command \
    "cd ~/mlar_jax && .venv/bin/python -m mlar_jax.main --config '$CONFIG' --workdir '$WORKDIR'$extra"
}

delete() {
  "${run[@]}" "${tpu[@]}" delete "$TPU_NAME" --zone "$ZONE" "${project[@]}" --quiet
}

case $step in
  create | setup | data | train | delete) "$step" ;;
  all) create; setup; data; train ;;
  *) echo "unknown step $step (create | setup | data | train | all | delete)" >&2; exit 2 ;;
esac
