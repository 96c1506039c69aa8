#!/usr/bin/env bash
# Train on several GPU nodes under SLURM: one process per node drives all of
# its GPUs; `python -m mlar_jax.main` starts JAX's distributed runtime from
# the SLURM variables (SLURM_NTASKS > 1).
#
#   launch/slurm_gpu.sh CONFIG WORKDIR [--dry-run] [extra mlar_jax.main flags ...]
#
# Settings (environment, defaults in brackets): NODES [2], GPUS_PER_NODE [8],
# PARTITION [gpu], TIME [24:00:00], ACCOUNT (optional), CPUS_PER_TASK [32].
# The checkout must be on a filesystem every node sees; its .venv is set up
# here first with the `gpu` extra (JAX's CUDA 12 plugin, CUDA and cuDNN wheels).
# --dry-run prints the sbatch script and the commands instead of submitting.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/args.sh 2 2,12 "$@"
config=${positional[0]} workdir=${positional[1]}
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-24:00:00}
CPUS_PER_TASK=${CPUS_PER_TASK:-32}
account=""
if [[ -n ${ACCOUNT:-} ]]; then account="#SBATCH --account=$ACCOUNT"; fi

install="test -x .venv/bin/python || python3 -m venv .venv; .venv/bin/pip install -q -e '.[gpu]'"

script=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=mlar_jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --cpus-per-task=$CPUS_PER_TASK
#SBATCH --partition=$PARTITION
#SBATCH --time=$TIME
#SBATCH --output=$workdir/slurm-%j.out
$account
set -euo pipefail
cd $(pwd)
srun .venv/bin/python -m mlar_jax.main --config '$config' --workdir '$workdir'$extra
SBATCH
)

if [[ $dry == 1 ]]; then
  echo "mkdir -p $workdir"
  echo "$install"
  echo "sbatch <<'EOF'"
  echo "$script"
  echo "EOF"
  exit 0
fi
mkdir -p "$workdir"
eval "$install"
sbatch <<<"$script"
