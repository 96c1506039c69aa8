"""Speed-invariant tuning (MLAR section 3.5): both stages, one command.

  python -m mlar_jax.tools.speed_invariant \
      --config configs/synthetic.py:speed_invariant --workdir runs/si

Stage 1 trains the config as it is (in WORKDIR/stage1). Stage 2 (in
WORKDIR/stage2) starts from stage 1's last checkpoint (`init_from`), freezes
the parameters matching `config.stage2.freeze` (the backbone's 3D
convolutions) and the batch-norm statistics, and fine-tunes the rest for
`config.stage2.num_train_steps` steps on clips whose rate is drawn from
`config.stage2.rates`, then evaluates with `config.eval`'s view plan (the
30-view multi-rate test by default) and writes WORKDIR/stage2/eval_results.json
with the per-rate table. Run the same command after an interruption: each
stage resumes from its own checkpoints, and a finished stage 1 is not rerun.
"""

from __future__ import annotations

from absl import app
from absl import flags
from ml_collections import config_flags

from mlar_jax import cli
from mlar_jax import speed_invariant

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so the module imports
  anywhere (absl flags are global)."""
  config_flags.DEFINE_config_file("config", None, "Stage-1 experiment config.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory holding stage1/ and stage2/.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.setup(FLAGS.config)
  results = speed_invariant.run_two_stage(FLAGS.config, FLAGS.workdir)
  print(f"stage 2 {results['split']} macro mAP {results['macro_map']:.4f} "
        f"({results['views']} views); by rates: " +
        ", ".join(f"{k}: {v['macro_map']:.4f}" for k, v in results["per_rate"].items()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
