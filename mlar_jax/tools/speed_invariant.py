"""Speed-invariant tuning (MLAR section 3.5): both stages, one command.

  python -m mlar_jax.tools.speed_invariant \
      --config configs/synthetic.py:speed_invariant --workdir runs/si

Stage 1 trains the config as it is (in WORKDIR/stage1). Stage 2 (in
WORKDIR/stage2) starts from stage 1's last checkpoint (`init_from`), freezes
the parameters matching `config.stage2.freeze` (the whole backbone: 3D
convolutions and their batch norms) and the batch-norm statistics, and
fine-tunes the module after the backbone (section 3.5) for
`config.stage2.num_train_steps` steps on clips whose rate is drawn from
`config.stage2.rates`, then evaluates with `config.eval`'s view plan (the
30-view multi-rate test by default) and writes WORKDIR/stage2/eval_results.json
with the per-rate table. Run the same command after an interruption: each
stage resumes from its own checkpoints, and a finished stage 1 is not rerun.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mlar_jax import cli, train, validation

FLAGS = flags.FLAGS


def stage2_config(config: ml_collections.ConfigDict, stage1_dir: str) -> ml_collections.ConfigDict:
  """The fine-tuning config derived from a stage-1 config and its workdir."""
  s = config.stage2
  out = copy.deepcopy(config)
  with out.unlocked():
    out.num_train_steps = s.num_train_steps
    out.data.rates, out.data.rate_probs = tuple(s.rates), tuple(s.rate_probs)
    out.schedule.base_lr, out.schedule.warmup_steps = s.base_lr, s.warmup_steps
    out.optimizer.freeze = s.freeze
    out.model.frozen_bn = s.frozen_bn
    out.init_from = os.path.abspath(stage1_dir)
    out.init_from_skip = ""
    out.checkpoint.every_steps = min(out.checkpoint.every_steps, s.num_train_steps)
  return out


def run_two_stage(
  config: ml_collections.ConfigDict, workdir: str, stage1_dir: str | None = None
) -> dict[str, Any]:
  """Runs (or resumes) stage 1, then stage 2; returns stage 2's evaluation,
  or the `train.Stopped` of a stage a signal stopped (stage 2 does not start
  from a stage 1 that did not finish).

  Args:
    config: the stage-1 config with its `stage2` settings.
    workdir: stage 2 runs in WORKDIR/stage2.
    stage1_dir: where stage 1 runs (default WORKDIR/stage1); studies share one
      stage 1 between several stage-2 variants.
  """
  stage1_dir = stage1_dir or os.path.join(workdir, "stage1")
  first = train.train_and_evaluate(config, stage1_dir, final_eval=False)
  if isinstance(first, train.Stopped):
    return first
  second = stage2_config(config, stage1_dir)
  validation.validate(second)
  return train.train_and_evaluate(second, os.path.join(workdir, "stage2"))


def define_flags() -> None:
  """The command's flags; defined only when it runs, so the module imports
  anywhere (absl flags are global)."""
  config_flags.DEFINE_config_file("config", None, "Stage-1 experiment config.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory holding stage1/ and stage2/.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.setup(FLAGS.config)
  with cli.fatal_errors(FLAGS.workdir):
    results = run_two_stage(FLAGS.config, FLAGS.workdir)
  if isinstance(results, train.Stopped):
    print(results.message, file=sys.stderr)
    sys.exit(128 + results.signum)
  print(
    f"stage 2 {results['split']} macro mAP {results['macro_map']:.4f} "
    f"({results['views']} views); by rates: "
    + ", ".join(f"{k}: {v['macro_map']:.4f}" for k, v in results["per_rate"].items())
  )


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
