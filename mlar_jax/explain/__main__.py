"""`python -m mlar_jax.explain SUBCOMMAND --config CONFIG --workdir DIR [...]`.

Subcommands (each restores the latest checkpoint of DIR that restores, or
`--step`, and writes into DIR/explain/, the report into DIR/report/):
  mcam            multi-label CAM with region separation (M-MiT 5.1), one
                  PNG per video: mcam/SPLIT_ID.png.
  activity-maps   MLAR section 7 activity maps (MLAR head): a PNG grid
                  (frames x activities) and a GIF with one box per activity
                  per video: activity_maps/SPLIT_ID.{png,gif}.
  observations    one observation's attention (`--index K`) over several
                  videos (MLAR Figure 4c): observations/SPLIT_obsK.png.
  localise        pointing game and mask IoU of the maps against the
                  scenes ground truth, with a random baseline, over every
                  evaluation view: localisation_SPLIT.json and a table.
  dissect         network dissection (M-MiT 5.2, 7.2) of `--layers` over a
                  Broden folder (`--broden`, e.g. from `python -m
                  mlar_jax.data.scenes export --format broden`): per unit
                  its concept and IoU, Table 5 and per-layer counts in
                  dissect/.
  unit-classes    the --top classes unit --unit of the backbone's last map
                  drives most when it alone is active (M-MiT 7.2.2); printed.
  report          the last evaluation's report (eval_results.json,
                  predictions.txt) into DIR/report/, with the MLAR head's
                  learned correlation averaged over --num videos' clips.

The config is the training run's `WORKDIR/config.json`; `--config` (with the
same syntax and overrides as `mlar_jax.main`, e.g. `configs/scenes.py:runlocal`)
replaces it, for a workdir of an older version.
Videos: `--videos ID,...` or the first `--num N` of `--split`.
"""

from absl import app, flags
from ml_collections import config_flags

from mlar_jax import cli, config_lib
from mlar_jax.explain import commands

SUBCOMMANDS = (
  "mcam",
  "activity-maps",
  "observations",
  "localise",
  "report",
  "dissect",
  "unit-classes",
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "The run's config file (default: WORKDIR/config.json).", lock_config=True
)
flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/; explain/ is written).")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest that restores).")
flags.DEFINE_string("split", "test", "The split whose videos are explained.")
flags.DEFINE_string("videos", "", "Comma-separated video ids (default: the first --num).")
flags.DEFINE_integer("num", 4, "Videos when --videos is not given (localise: <= 0 for all).")
flags.DEFINE_string("output", None, "mcam: the head output explained (default: per head).")
flags.DEFINE_float("score_threshold", 0.5, "Sigmoid score from which a class is predicted.")
flags.DEFINE_float("threshold", 0.5, "Normalised map value from which a pixel is in a region.")
flags.DEFINE_float("distance_threshold", 1e-4, "Region separation: cosine distance above which.")
flags.DEFINE_float("active_threshold", 0.5, "Region separation: a pixel is active from this.")
flags.DEFINE_enum("classes", "present", ["present", "predicted"], "activity-maps: which.")
flags.DEFINE_integer("index", 0, "observations: the observation shown.")
flags.DEFINE_integer("seed", 0, "localise: the random baseline's seed.")
flags.DEFINE_string("broden", None, "dissect: a Broden folder (scenes export --format broden).")
flags.DEFINE_list("layers", ["backbone"], "dissect: module paths, e.g. backbone/res3_block0.")
flags.DEFINE_float("quantile", 0.005, "dissect: the top quantile of a unit's activations.")
flags.DEFINE_float("iou_threshold", 0.04, "dissect: IoU above which a unit is interpretable.")
flags.DEFINE_integer("unit", 0, "unit-classes: a unit of the backbone's last feature map.")
flags.DEFINE_integer("top", 5, "unit-classes: how many classes.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise app.UsageError(f"Give one subcommand of {SUBCOMMANDS}; got {argv[1:]}")
  command = argv[1]
  # A wrong workdir, step, video id or head: one line, not a traceback.
  with cli.fatal_errors():
    config = FLAGS.config or config_lib.saved_config(FLAGS.workdir)
    cli.setup(config)
    ex = commands.load(config, FLAGS.workdir, FLAGS.split, FLAGS.step)
    positions = commands.video_positions(ex.source, FLAGS.videos, FLAGS.num)
    separation = dict(
      distance_threshold=FLAGS.distance_threshold, active_threshold=FLAGS.active_threshold
    )
    if command == "mcam":
      paths = commands.mcam(
        ex, positions, output=FLAGS.output, score_threshold=FLAGS.score_threshold, **separation
      )
    elif command == "activity-maps":
      paths = commands.activity_maps(
        ex,
        positions,
        classes=FLAGS.classes,
        score_threshold=FLAGS.score_threshold,
        threshold=FLAGS.threshold,
      )
    elif command == "observations":
      paths = commands.observations(ex, positions, index=FLAGS.index)
    elif command == "report":
      paths = [commands.report(ex, positions)]
    elif command == "unit-classes":
      for name, logit in commands.unit_classes(ex, FLAGS.unit, FLAGS.top):
        print(f"{name} {logit:.4f}")
      paths = []
    elif command == "dissect":
      if not FLAGS.broden:
        raise ValueError("give --broden DIR")
      results = commands.dissect_layers(
        ex,
        FLAGS.broden,
        FLAGS.layers,
        quantile=FLAGS.quantile,
        iou_threshold=FLAGS.iou_threshold,
      )
      print(commands.dissection_table(results))
      paths = [f"{ex.out_dir}/dissect/summary.json"]
    else:
      results = commands.localise(
        ex,
        positions,
        score_threshold=FLAGS.score_threshold,
        threshold=FLAGS.threshold,
        seed=FLAGS.seed,
        **separation,
      )
      print(commands.localisation_table(results))
      paths = [f"{ex.out_dir}/localisation_{ex.source.split}.json"]
  for path in paths:
    print(path)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
