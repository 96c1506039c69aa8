"""Runs a study: several variants of a config, each with several seeds, with
the same budget, and prints the test macro mAP as mean +- std over seeds.

  python -m mlar_jax.tools.ablate --study heads --config configs/synthetic.py \
      --seeds 0,1 --workdir runs/ablation_heads [--config.num_train_steps=600]

Studies:
  heads  Table 3c of the MLAR paper: linear baseline, MLAR without
         activity-specific features, without correlation, complete.
  rates  Table 3d: speed-invariant tuning (tools/speed_invariant.py) with
         stage-2 rates {4}, {2,4}, {2,4,8}, each tested with 30 views spread
         over its rates (10x3 at rate 4; 5x3 at 2 and 5x3 at 4; 3x3 at 2,
         4x3 at 4, 3x3 at 8): the same FLOPs per video. One stage 1 per seed
         (WORKDIR/stage1/seed_S) is shared by the three variants.
  losses The four multi-label losses of M-MiT (BCE, WARP, LSEP, wLSEP), each
         with the official min(count)/count class weights.

Each (variant, seed) trains in WORKDIR/VARIANT/seed_S with the command-line
config plus the variant's overrides and `seed=S`; a run that already wrote
eval_results.json is not run again, and an interrupted one resumes from its
checkpoint, so the study is resumable. The table is printed and written to
WORKDIR/summary.md and WORKDIR/summary.json.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mlar_jax import cli, train
from mlar_jax.tools import speed_invariant

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so the module imports
  anywhere (absl flags are global)."""
  config_flags.DEFINE_config_file("config", None, "Base experiment config.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory of the study.")
  flags.DEFINE_enum("study", "heads", ["heads", "rates", "losses"], "Which study to run.")
  flags.DEFINE_list("seeds", ["0", "1"], "Training seeds.")
  flags.mark_flags_as_required(["config", "workdir"])


# study -> [(variant name, {dotted config key: value})]
STUDIES: dict[str, list[tuple[str, dict[str, Any]]]] = {
  "heads": [
    ("baseline", {"model.head": "linear"}),
    (
      "no_activity_specific",
      {
        "model.head": "mlar",
        "model.mlar.use_activity_specific": False,
        "model.mlar.use_correlation": True,
      },
    ),
    (
      "no_correlation",
      {
        "model.head": "mlar",
        "model.mlar.use_activity_specific": True,
        "model.mlar.use_correlation": False,
      },
    ),
    (
      "complete",
      {
        "model.head": "mlar",
        "model.mlar.use_activity_specific": True,
        "model.mlar.use_correlation": True,
      },
    ),
  ],
  "rates": [
    ("4", {"stage2.rates": (4,), "eval.views": ((4, 10),), "eval.spatial_crops": 3}),
    ("2+4", {"stage2.rates": (2, 4), "eval.views": ((2, 5), (4, 5)), "eval.spatial_crops": 3}),
    (
      "2+4+8",
      {"stage2.rates": (2, 4, 8), "eval.views": ((2, 3), (4, 4), (8, 3)), "eval.spatial_crops": 3},
    ),
  ],
}
STUDIES["losses"] = [
  (name, {"loss.name": name, "loss.class_weights": "min_over_count"})
  for name in ("bce", "warp", "lsep", "wlsep")
]
TWO_STAGE = {"rates"}


def variant_config(
  base: ml_collections.ConfigDict, overrides: dict[str, Any], seed: int
) -> ml_collections.ConfigDict:
  config = copy.deepcopy(base)
  with config.unlocked():
    for key, value in {**overrides, "seed": seed}.items():
      node = config
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = value
  return config


def run_study(
  base: ml_collections.ConfigDict, study: str, seeds: list[int], workdir: str
) -> list[dict[str, Any]]:
  """Trains and evaluates every (variant, seed); returns one row per variant."""
  rows = []
  for name, overrides in STUDIES[study]:
    maps = []
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f"seed_{seed}")
      results_path = os.path.join(
        run_dir, "stage2" if study in TWO_STAGE else "", "eval_results.json"
      )
      config = variant_config(base, overrides, seed)
      if os.path.exists(results_path):
        with open(results_path) as f:
          results = json.load(f)
      elif study in TWO_STAGE:
        logging.info("Study %s: variant %s, seed %d", study, name, seed)
        results = speed_invariant.run_two_stage(
          config, run_dir, stage1_dir=os.path.join(workdir, "stage1", f"seed_{seed}")
        )
      else:
        logging.info("Study %s: variant %s, seed %d", study, name, seed)
        results = train.train_and_evaluate(config, run_dir)
      maps.append(results["macro_map"])
    rows.append(
      {
        "variant": name,
        "overrides": overrides,
        "seeds": seeds,
        "macro_map": maps,
        "mean": float(np.mean(maps)),
        "std": float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0,
        "chance_macro_map": results["chance_macro_map"],
      }
    )
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  lines = ["| variant | test macro mAP (mean +- std) | per seed |", "|---|---|---|"]
  for r in rows:
    per_seed = ", ".join(f"{m:.4f}" for m in r["macro_map"])
    lines.append(f"| {r['variant']} | {r['mean']:.4f} +- {r['std']:.4f} | {per_seed} |")
  lines.append(
    f"\nchance (constant predictor) macro mAP: {rows[0]['chance_macro_map']:.4f}; "
    f"seeds {rows[0]['seeds']}"
  )
  return "\n".join(lines)


def main(argv):
  del argv
  cli.setup(FLAGS.config)
  seeds = [int(s) for s in FLAGS.seeds]
  with cli.fatal_errors(FLAGS.workdir):
    rows = run_study(FLAGS.config, FLAGS.study, seeds, FLAGS.workdir)
  table = format_table(rows)
  print(table)
  with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(FLAGS.workdir, "summary.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
