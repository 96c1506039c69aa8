"""Runs a study: several variants of a config, each with several seeds, with
the same budget, and prints the test macro mAP as mean +- std over seeds.

  python -m mlar_jax.tools.ablate --study heads --config configs/synthetic.py \
      --seeds 0,1 --workdir runs/ablation_heads [--config.num_train_steps=600]

Studies:
  heads  Table 3c of the MLAR paper: linear baseline, MLAR without
         activity-specific features, without correlation, complete.
  rates  Table 3d: speed-invariant tuning (tools/speed_invariant.py) with
         stage-2 rates {4}, {2,4}, {2,4,8}, each tested with 10 temporal
         views spread over its rates (10 at rate 4; 5 at 2 and 5 at 4; 3 at
         2, 4 at 4, 3 at 8) times the config's spatial crops: the same FLOPs
         per video. One stage 1 per seed (WORKDIR/stage1/seed_S) is shared by
         the three variants. On configs/synthetic.py:speed_invariant or
         configs/scenes.py:speed_invariant.
  losses The four multi-label losses of M-MiT (BCE, WARP, LSEP, wLSEP), each
         with the official min(count)/count class weights.
  modalities  M-MiT's Table 1 on the scenes (configs/scenes.py): video,
         audio (SoundNet-8) and fusion inputs, each with the four losses;
         the table adds micro mAP, top-1 and top-5.
  transfer  M-MiT's Table 4: the --pretrain config (configs/scenes.py)
         trained single-label (each video's dominant activity, as MiT) or
         multi-label (all, as M-MiT), or not at all ("scratch"), then the
         --config task fine-tuned from that backbone with a new head:
           python -m mlar_jax.tools.ablate --study transfer \
               --pretrain configs/scenes.py --config configs/synthetic.py \
               --seeds 0,1 --workdir runs/transfer

`--show SUMMARY.json [--variants ...]` prints a finished study's table.

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
import sys
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
  config_flags.DEFINE_config_file(
    "pretrain", None, "--study transfer: the config pretrained on.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Directory of the study.")
  flags.DEFINE_enum("study", "heads", sorted(STUDIES), "Which study to run.")
  flags.DEFINE_list("seeds", ["0", "1"], "Training seeds.")
  flags.DEFINE_list(
    "variants",
    None,
    "Only these variants of the study (default: all). Rows of other variants "
    "already in WORKDIR/summary.json are kept, so a study can be run in parts "
    "with different base configs (each row records its command line).",
  )
  flags.DEFINE_string(
    "show",
    None,
    "Only print the table of a study's summary.json (its --variants), e.g. "
    "a committed one under benchmarks/results/; nothing is trained.",
  )


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
  # The same 10 temporal views per crop for every variant; the config says
  # how many spatial crops (3 in configs/synthetic.py:speed_invariant, 1 on
  # the square scenes frames).
  "rates": [
    ("4", {"stage2.rates": (4,), "eval.views": ((4, 10),)}),
    ("2+4", {"stage2.rates": (2, 4), "eval.views": ((2, 5), (4, 5))}),
    ("2+4+8", {"stage2.rates": (2, 4, 8), "eval.views": ((2, 3), (4, 4), (8, 3))}),
  ],
}
# Issue 19's grid: {activity-specific F_A | mean observation} x {shared |
# per-activity | tied output} x {q_a init 0.02 | 1.0 (the paper-literal
# head's)}, plus the linear head and plain attention pooling. Without F_A the
# queries are unused and every activity sees the same features, so the head
# always has per-activity output weights (heads.MLARHead): one row.
STUDIES["heads_grid"] = [
  ("linear", {"model.head": "linear"}),
  ("attention_pool", {"model.head": "attention_pool"}),
  *(
    (
      f"mlar_{'specific' if specific else 'meanobs'}_{output}"
      + (f"_q{query_init}" if specific else ""),
      {
        "model.head": "mlar",
        "model.mlar.use_activity_specific": specific,
        "model.mlar.use_correlation": True,
        "model.mlar.output": output,
        "model.mlar.query_init": query_init,
        "model.mlar.mask_mode": "add",
      },
    )
    for specific in (True, False)
    for output in ("shared", "per_activity", "tied")
    for query_init in ((0.02, 1.0) if specific else (0.02,))
    if specific or output == "per_activity"
  ),
]
# The learning-rate search behind issue 19's heads on the scenes: the two
# baselines and the two best MLAR rows of heads_grid, each on a x2 grid of
# base_lr (run a subset with --variants; choose on the val split).
HEADS_LR_VARIANTS = (
  "linear",
  "attention_pool",
  "mlar_specific_per_activity_q0.02",
  "mlar_meanobs_per_activity",
)
STUDIES["heads_lr"] = [
  (f"{name}/lr{lr}", {**overrides, "schedule.base_lr": lr})
  for name, overrides in STUDIES["heads_grid"]
  if name in HEADS_LR_VARIANTS
  for lr in (0.025, 0.05, 0.1, 0.2, 0.4)
]
# Issue 19's correlation-map variants (models.heads.MASK_MODES), on the head
# given by the base config.
STUDIES["mask"] = [
  (mode, {"model.head": "mlar", "model.mlar.mask_mode": mode})
  for mode in ("add", "normalised", "scaled", "signed")
]
STUDIES["losses"] = [
  (name, {"loss.name": name, "loss.class_weights": "min_over_count"})
  for name in ("bce", "warp", "lsep", "wlsep")
]
# M-MiT Table 1 on the scenes: each input (configs/scenes.py:inputs=...'s
# settings: the audio extra, a clip's own 1.33 s of sound) with each loss
# (the official min(count)/count class weights), every model evaluated on
# the same test videos (silent ones give the audio models silence).
_INPUTS = {
  "video": {"model.inputs": "video", "data.extras": ()},
  "audio": {"model.inputs": "audio", "data.extras": ("audio",), "data.audio.num_samples": 29400},
  "fusion": {
    "model.inputs": "video+audio",
    "data.extras": ("audio",),
    "data.audio.num_samples": 29400,
  },
}
STUDIES["modalities"] = [
  (f"{inputs}/{loss}", {**keys, **dict(STUDIES["losses"])[loss]})
  for inputs, keys in _INPUTS.items()
  for loss in ("bce", "warp", "lsep", "wlsep")
]
# M-MiT section 6.4 on embedded data: the --pretrain config (a scenes
# config) trained with each variant's overrides, then the --config task
# fine-tuned from its backbone with a new head; "scratch" is not pretrained.
# single_label vs multi_label is MiT vs M-MiT: the same videos, annotated
# with their dominant activity only or with all of them.
STUDIES["transfer"] = [
  ("scratch", {}),
  ("single_label", {"data.scenes.single_label": True}),
  ("multi_label", {"data.scenes.single_label": False}),
]
NO_PRETRAINING = {"scratch"}
TWO_STAGE = {"rates"}
# Results beside macro mAP that a row keeps per seed (M-MiT's Table 1
# columns), shown in the tables of TABLE_METRICS.
RANKING_METRICS = ("micro_map", "top1", "top5")
TABLE_METRICS = {"modalities", "transfer"}


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
  base: ml_collections.ConfigDict,
  study: str,
  seeds: list[int],
  workdir: str,
  variants: list[str] | None = None,
  command: str = "",
  pretrain: ml_collections.ConfigDict | None = None,
) -> list[dict[str, Any]]:
  """Trains and evaluates every (variant, seed); returns one row per variant.

  A row holds the evaluation split's macro mAP per seed of
  `config.eval.output` with its mean and std, per model output (the MLAR
  head's "logits", "logits_activity" and their "mean_of_sigmoids") the same,
  and micro mAP, top-1 and top-5. The transfer study's variants override
  `pretrain` (trained in WORKDIR/pretrain/VARIANT/seed_S, not evaluated) and
  fine-tune `base` from it with a new head.
  """
  if study == "transfer" and pretrain is None:
    raise ValueError("--study transfer needs --pretrain (the config pretrained on)")
  known = [name for name, _ in STUDIES[study]]
  unknown = sorted(set(variants or ()) - set(known))
  if unknown:
    raise ValueError(f"--variants: {unknown} are not variants of study {study!r}: {known}")
  rows = []
  for name, overrides in STUDIES[study]:
    if variants and name not in variants:
      continue
    runs = []
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f"seed_{seed}")
      results_path = os.path.join(
        run_dir, "stage2" if study in TWO_STAGE else "", "eval_results.json"
      )
      if study != "transfer":
        config = variant_config(base, overrides, seed)
      else:
        config = variant_config(base, {}, seed)
        if name not in NO_PRETRAINING:
          source = os.path.join(workdir, "pretrain", name, f"seed_{seed}")
          if not os.path.exists(results_path):
            logging.info("Study %s: pretraining %s, seed %d", study, name, seed)
            _finished(
              train.train_and_evaluate(
                variant_config(pretrain, overrides, seed), source, final_eval=False
              )
            )
          config = variant_config(base, {"init_from": source, "init_from_skip": "head/"}, seed)
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
      runs.append(_finished(results))
    rows.append(
      {
        "study": study,
        "variant": name,
        "overrides": overrides,
        "command": command,
        "split": runs[0]["split"],
        "steps": runs[0]["step"],
        "seeds": seeds,
        **_stats([r["macro_map"] for r in runs]),
        "outputs": {
          out: _stats([r["outputs"][out]["macro_map"] for r in runs])
          for out in runs[0].get("outputs", {})
        },
        "metrics": {k: _stats([r[k] for r in runs]) for k in RANKING_METRICS if k in runs[0]},
        "chance_macro_map": runs[0]["chance_macro_map"],
      }
    )
  return rows


class StudyStopped(Exception):
  """A signal stopped one of the study's runs after it saved (`train.Stopped`):
  the study stops there too, and the same command resumes it."""

  def __init__(self, stopped: train.Stopped):
    super().__init__(stopped.message)
    self.stopped = stopped


def _finished(results: Any) -> Any:
  if isinstance(results, train.Stopped):
    raise StudyStopped(results)
  return results


def _stats(maps: list[float]) -> dict[str, Any]:
  return {
    "macro_map": maps,
    "mean": float(np.mean(maps)),
    "std": float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0,
  }


def merge_rows(study: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list:
  """The study's rows in its order: `new` ones, else those of an earlier
  (partial) run of the study in the same workdir."""
  by_name = {r["variant"]: r for r in old}
  by_name.update({r["variant"]: r for r in new})
  return [by_name[name] for name, _ in STUDIES[study] if name in by_name]


def format_table(rows: list[dict[str, Any]], metrics: tuple[str, ...] = ()) -> str:
  """Markdown: per variant the evaluated output's macro mAP, mean +- std over
  seeds, `metrics` of `RANKING_METRICS` (mean +- std), and for heads with
  several outputs each output's mean."""
  extra = sorted({o for r in rows for o in r.get("outputs", {})} - {"logits"})
  cols = [*metrics, *extra]
  lines = [
    f"| variant | {rows[0].get('split', 'test')} macro mAP (mean +- std) | per seed | "
    + "".join(f"{o} | " for o in cols),
    "|---|---|---|" + "---|" * len(cols),
  ]
  for r in rows:
    per_seed = ", ".join(f"{m:.4f}" for m in r["macro_map"])
    stats = {
      **{k: v for k, v in r.get("metrics", {}).items() if k in metrics},
      **r.get("outputs", {}),
    }
    cells = "".join(
      f"{stats[o]['mean']:.4f} +- {stats[o]['std']:.4f} | " if o in stats else "- | " for o in cols
    )
    lines.append(f"| {r['variant']} | {r['mean']:.4f} +- {r['std']:.4f} | {per_seed} | {cells}")
  lines.append(
    f"\nchance (constant predictor) macro mAP: {rows[0]['chance_macro_map']:.4f}; "
    f"seeds {sorted({s for r in rows for s in r['seeds']})}; steps {rows[0].get('steps')}"
  )
  return "\n".join(lines)


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
  # The ranking metrics for the studies whose paper tables have them.
  return RANKING_METRICS if any(r.get("study") in TABLE_METRICS for r in rows) else ()


def main(argv):
  del argv
  if FLAGS.show:
    with cli.fatal_errors():
      with open(FLAGS.show) as f:
        rows = [r for r in json.load(f) if not FLAGS.variants or r["variant"] in FLAGS.variants]
      if not rows:
        raise ValueError(f"--show={FLAGS.show}: no rows of variants {FLAGS.variants}")
    print(format_table(rows, _columns(rows)))
    return
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required (unless --show)")
  cli.setup(FLAGS.config)
  seeds = [int(s) for s in FLAGS.seeds]
  summary = os.path.join(FLAGS.workdir, "summary.json")
  with cli.fatal_errors(FLAGS.workdir):
    try:
      rows = run_study(
        FLAGS.config,
        FLAGS.study,
        seeds,
        FLAGS.workdir,
        variants=FLAGS.variants,
        command=" ".join(["python -m mlar_jax.tools.ablate", *sys.argv[1:]]),
        pretrain=FLAGS.pretrain,
      )
    except StudyStopped as e:
      # Preempted or interrupted after saving: the shell's code for death by
      # that signal; the finished runs are kept and the same command resumes.
      print(e.stopped.message, file=sys.stderr)
      sys.exit(128 + e.stopped.signum)
    if os.path.exists(summary):
      with open(summary) as f:
        rows = merge_rows(FLAGS.study, json.load(f), rows)
  table = format_table(rows, _columns(rows))
  print(table)
  with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
    f.write(table + "\n")
  with open(summary, "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
