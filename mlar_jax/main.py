"""Entry point: `python -m mlar_jax.main --config configs/NAME.py[:ARGS] --workdir DIR`.

Overrides: `--config.KEY=VALUE` (unknown keys are errors). Modes: train,
eval (latest or `--config.eval.step` checkpoint) or train_and_eval.

Several processes (a TPU pod slice, SLURM tasks, or `--coordinator_address
--num_processes --process_id`) start JAX's distributed runtime first; each
reads its rows of every global batch, and process 0 writes logs and results.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from mlar_jax import cli, evaluate, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup(FLAGS.config)
  # Every error from here on is one line on stderr (the traceback goes to
  # WORKDIR/error.log; --verbose prints it).
  with cli.fatal_errors(FLAGS.workdir):
    cli.initialize_distributed()
    if FLAGS.mode == "eval":
      results = evaluate.evaluate(FLAGS.config, FLAGS.workdir)
    else:
      results = train.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, final_eval=FLAGS.mode == "train_and_eval"
      )
  if isinstance(results, train.Stopped):
    # Preempted (SIGTERM) or interrupted (SIGINT) after saving: the shell's
    # code for death by that signal, so a job scheduler sees the run did not
    # finish; the same command resumes it.
    print(results.message, file=sys.stderr)
    sys.exit(128 + results.signum)
  if results is not None and jax.process_index() == 0:
    print(
      f"{results['split']} macro mAP {results['macro_map']:.4f} | constant predictor "
      f"{results['chance_macro_map']:.4f} | ratio {results['map_over_chance']:.2f} | "
      f"step {results['step']} | {results['num_videos']} videos | {results.get('results_file', '')}"
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
