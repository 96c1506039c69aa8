"""Evaluation: every view of every video of a split, aggregated per video.

`Evaluator` owns evaluation: the splits' sources, the view plan, the jitted
eval step, the results, `predictions.txt`, the metric writer's scalars and
`eval_results.json`; the training loop only calls `evaluator.run(state,
split)`, and `evaluate(config, workdir)` (`--mode eval`) restores a
checkpoint's variables and runs it.

The view plan (`config.eval.views` x `config.eval.spatial_crops`, see
`data/sampling.py`) is flattened into (video, view) clips, batched across
devices. Every host reads its shard and pads its last batches so that all
hosts run the same number of steps; the jitted step returns scores, labels,
mask, video positions and view ids replicated, so each host holds the global
arrays. Padding rows are masked out, and each video's views are aggregated
(sum of sigmoid scores by default, as the MLAR paper; mean or max), so each
video counts exactly once whatever the batch size.

Results: the combined plan, and every subset of the plan's rates on its own
(the rows of MLAR Table 3d), for the output `config.eval.output`; the
summary metrics for every output. For `config.eval.split` they are written
to `eval_results.json` with `predictions.txt` in the Charades submission
format (video id, then one score per class); every split's summary goes to
the metric writer under `SPLIT/`.

A detector (`config.model.task = "detection"`, AVA) is evaluated by
`DetectionEvaluator` (`make_evaluator` picks by task): one view per
keyframe, a score per person box and class, frame mAP from the official
detections CSV it writes (`detections.csv`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from jax.sharding import Mesh

from mlar_jax import checkpointing, metrics, sharding, validation
from mlar_jax.data import ava, base, pipeline, sampling, transforms
from mlar_jax.models import registry as models

Variables = dict[str, Any]  # {"params": ..., "model_state": ...}


@flax.struct.dataclass
class EvalState:
  """What evaluation reads of a train state (a `train.TrainState` has these
  fields too): the step evaluated and the model's variables."""

  step: jax.Array
  params: Any
  model_state: Any


def eval_name(config: ml_collections.ConfigDict, split: str, step: int) -> str:
  """The name of an evaluation-only run's files and scalar tags, from what
  sets its numbers: "eval_test_step800_r4x4_r8x3_r2x3_c3_sum" (split, step,
  (rate x temporal positions) per rate, spatial crops, aggregation, and the
  output when it is not the first)."""
  e = config.eval
  views = "_".join(f"r{rate}x{n}" for rate, n in e.views)
  output = "" if e.output == "logits" else f"_{e.output}"
  return f"eval_{split}_step{step}_{views}_c{e.spatial_crops}_{e.aggregate}{output}"


def variable_shardings(state_shardings: Any) -> Variables:
  """The params and model-state shardings of a train state's shardings."""
  return {"params": state_shardings.params, "model_state": state_shardings.model_state}


class Evaluator:
  """Scores, reports and writes the evaluation of a model on its splits.

  Args:
    config: the experiment config (`eval`, `data`, `seed`).
    mesh: the device mesh.
    model: the classifier, [B, T, S, S, 3] -> {output: [B, A] logits}.
    shardings: `variable_shardings` of the state that `run` is given.
    splits: the splits it evaluates; opened (annotations parsed) now, so a
      missing one fails before any training.
    class_names: [A] names keying the per-class AP.
    train_stats: training-label statistics; their frequencies are the
      constant predictor whose mAP is the chance reference.
    workdir: where `eval_results.json` and `predictions.txt` go.
    writer: the metric writer (None: no scalars).
    train_errors: the training pipeline's skip count, reported beside the
      results.
    eval_only: an evaluation of a saved checkpoint (`--mode eval`): its files
      and scalar tags are named by the step and view plan
      (`eval_name`), leaving the training run's `eval_results.json`,
      `predictions.txt` and tags as they are.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    model: nn.Module,
    shardings: Variables,
    *,
    splits: Sequence[str],
    class_names: Sequence[str],
    train_stats: base.ClassStats,
    workdir: str,
    writer: metric_writers.MetricWriter | None = None,
    train_errors: pipeline.DecodeErrors | None = None,
    eval_only: bool = False,
  ):
    self.config, self.mesh, self.model = config, mesh, model
    self.eval_only = eval_only
    self.class_names, self.train_stats = list(class_names), train_stats
    self.workdir, self.writer, self.train_errors = workdir, writer, train_errors
    self.plan = sampling.view_plan(config.eval.views, config.eval.spatial_crops)
    self.sources = {split: pipeline.make_source(config.data, split) for split in splits}
    self._step = jax.jit(
      sharding.with_constraints(self._eval_step, mesh),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
    )

  def _eval_step(self, variables: Variables, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """{"scores": {output: [B, A] sigmoid}, "labels", "mask", "index", "view"};
    never softmax. The batch's other keys (`config.data.extras`) than the
    model's inputs (`pipeline.model_inputs`) are not read."""
    outputs = self.model.apply(
      {"params": variables["params"], **variables["model_state"]},
      *pipeline.model_inputs(self.config, batch),
      train=False,
    )
    return {
      "scores": {k: jax.nn.sigmoid(v) for k, v in outputs.items()},
      **{k: batch[k] for k in ("labels", "mask", "index", "view")},
    }

  def score(
    self, state: Any, split: str
  ) -> tuple[dict[str, metrics.MultiLabelCollector], pipeline.DecodeErrors]:
    """Scores every view of every video of `split` once.

    Args:
      state: a `train.TrainState` or `EvalState`.
      split: one of the evaluator's splits.

    Returns:
      A collector per model output, and this host's count of clips skipped
      because their video could not be decoded.
    """
    errors = pipeline.DecodeErrors(self.config.data.max_error_ratio)
    collectors: dict[str, metrics.MultiLabelCollector] = {}
    for out in self._step_outputs(state, split, errors):
      for name, scores in out["scores"].items():
        update = metrics.MultiLabelCollector.from_model_output(
          scores=scores, **{k: out[k] for k in ("labels", "mask", "index", "view")}
        )
        collectors[name] = update if name not in collectors else collectors[name].merge(update)
    return collectors, errors

  def _step_outputs(self, state: Any, split: str, errors: pipeline.DecodeErrors):
    """Yields the eval step's outputs (host numpy, global: replicated) for
    every batch of `split`, this host's last ones padded and masked; clips
    that fail to decode are counted in `errors`."""
    config, source = self.config, self.sources[split]
    pcount, pindex = jax.process_count(), jax.process_index()
    local_bs = config.eval.batch_size // pcount
    ds = pipeline.eval_dataset(
      source,
      config.data,
      self.plan,
      local_batch_size=local_bs,
      process_index=pindex,
      process_count=pcount,
      errors=errors,
    )
    num_batches = pipeline.eval_num_batches(
      len(source), self.plan, local_batch_size=local_bs, process_count=pcount
    )
    # Any eval batch size works on any mesh: rows are padded (and masked) up to a
    # multiple of this host's devices on the batch axes.
    local_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"] // pcount
    padded_bs = math.ceil(local_bs / local_devices) * local_devices
    template = {
      k: np.zeros(v.shape, v.dtype)
      for k, v in pipeline.batch_spec(
        config.data, padded_bs, source.num_classes, evaluation=True
      ).items()
    }
    batch_sharding = sharding.batch_sharding(self.mesh)
    variables = {"params": state.params, "model_state": state.model_state}
    it = iter(ds)
    for _ in range(num_batches):
      batch = _padded(next(it, None), template)
      yield jax.device_get(self._step(variables, sharding.to_global(batch, batch_sharding)))

  def run(self, state: Any, split: str) -> dict[str, Any]:
    """Evaluates `split`: logs the summary, writes it to the metric writer
    under `SPLIT/`, and for `config.eval.split` writes `eval_results.json` and
    `predictions.txt` (process 0).

    Args:
      state: a `train.TrainState` or `EvalState` (step, params, model_state).
      split: one of the evaluator's splits.

    Returns:
      The results dict (the contents of `eval_results.json`).
    """
    collectors, errors = self.score(state, split)
    source = self.sources[split]
    results = self._results(collectors, source.label_matrix(), int(state.step), split)
    results["skipped_clips"] = errors.failed
    results["skipped_files"] = sorted(errors.files)
    results["train_skipped_samples"] = self.train_errors.failed if self.train_errors else 0
    name = eval_name(self.config, split, results["step"]) if self.eval_only else None
    if self.writer is not None:
      self.writer.write_scalars(
        results["step"],
        {
          f"{name or split}/{k}": results[k]
          for k in ("macro_map", "micro_map", "top1", "top5", "chance_macro_map")
        },
      )
      self.writer.flush()
    _log(results)
    if split == self.config.eval.split and jax.process_index() == 0:
      scores = _video_scores(
        collectors[self.config.eval.output], len(source), self.config.eval.aggregate
      )
      lines = (
        f"{vid} " + " ".join(f"{x:.6g}" for x in row)
        for vid, row in zip(source.video_ids(), scores)
      )
      workdir = epath.Path(self.workdir)
      predictions = workdir / (f"predictions_{name}.txt" if name else "predictions.txt")
      predictions.write_text("\n".join(lines) + "\n")
      path = workdir / (f"{name}.json" if name else "eval_results.json")
      results["results_file"] = os.fspath(path)
      path.write_text(json.dumps(results, indent=2) + "\n")
      logging.info("Wrote %s", path)
      # The report a person reads (plots, report.html; explain/report.py),
      # imported here so that matplotlib stays off the training imports.
      from mlar_jax.explain import report

      report.after_evaluation(
        self.workdir,
        results,
        scores,
        source.label_matrix(),
        self.class_names,
        state.model_state,
        self.writer,
        name=f"report_{name}" if name else "report",
      )
    return results

  def _results(
    self,
    collectors: dict[str, metrics.MultiLabelCollector],
    labels: np.ndarray,
    step: int,
    split: str,
  ) -> dict[str, Any]:
    """The results dict from the collectors of `score` and the split's
    labels [N, A]."""
    output, how, plan = self.config.eval.output, self.config.eval.aggregate, self.plan
    if output not in collectors:
      raise ValueError(
        f"config.eval.output={output!r} is not a model output; outputs: {sorted(collectors)}"
      )
    num_videos = len(labels)
    scores = _video_scores(collectors[output], num_videos, how)
    seen = np.unique(collectors[output].arrays()["index"])
    summary = metrics.all_metrics(scores, labels)
    # The constant predictor scoring every video with the training frequencies:
    # its AP per class is the class's positive rate.
    constant = np.broadcast_to(self.train_stats.frequency, labels.shape)
    chance = metrics.macro_map(constant, labels)
    per_rate = {}
    for rates in rate_subsets(plan):
      keep = [i for i, v in enumerate(plan) if v.rate in rates]
      s = _video_scores(collectors[output], num_videos, how, keep)
      per_rate["+".join(map(str, rates))] = {
        "views": len(keep),
        "macro_map": _json_number(metrics.macro_map(s, labels)),
      }
    results = {
      "split": split,
      "step": int(step),
      "output": output,
      "num_videos": int(num_videos),
      "num_videos_without_views": int(num_videos - len(seen)),
      "views": len(plan),
      "aggregate": how,
      "macro_map": _json_number(summary["macro_map"]),
      "micro_map": _json_number(summary["micro_map"]),
      "top1": _json_number(summary["top1"]),
      "top5": _json_number(summary["top5"]),
      # The predicted sets' accuracies at sigmoid >= 0.5 (Volleyball's
      # multi-label "Acc."; README "Volleyball").
      "set_accuracy": {k: _json_number(v) for k, v in summary["set_accuracy"].items()},
      "chance_macro_map": _json_number(chance),
      "map_over_chance": _json_number(summary["macro_map"] / chance),
      # Its top-1: the share of videos with the most frequent training class
      # (a single-label task's majority-class accuracy).
      "chance_top1": _json_number(metrics.top_k_accuracy(constant, labels, 1)),
      "num_classes_with_positives": summary["num_classes_with_positives"],
      "per_class_ap": {
        n: _json_number(a) for n, a in zip(self.class_names, summary["per_class_ap"])
      },
      "per_rate": per_rate,
    }
    results["outputs"] = output_metrics(
      {name: _video_scores(c, num_videos, how) for name, c in collectors.items()}, labels
    )
    return results


def output_metrics(
  video_scores: dict[str, np.ndarray], labels: np.ndarray
) -> dict[str, dict[str, float | None]]:
  """Macro and micro mAP, top-1 and top-5 of every model output.

  Args:
    video_scores: output name -> aggregated per-video probabilities [N, A]
      (the eval step's sigmoids; -inf for a video without views).
    labels: [N, A] in {0, 1}.

  Returns:
    name -> metrics; with several outputs (the MLAR head's "logits" and
    "logits_activity") also "mean_of_sigmoids", the mean of the outputs'
    probabilities (reported, issue 19; evaluation ranks by
    config.eval.output).
  """
  scores = dict(video_scores)
  if len(scores) > 1:
    scores["mean_of_sigmoids"] = np.mean(list(video_scores.values()), 0)
  out = {}
  for name, s in sorted(scores.items()):
    m = metrics.all_metrics(s, labels)
    out[name] = {k: _json_number(m[k]) for k in ("macro_map", "micro_map", "top1", "top5")}
  return out


def _log(results: dict[str, Any]) -> None:
  logging.info(
    "%s split, step %d, %d videos x %d views: macro mAP %.4f (chance %.4f, %.2fx), "
    "micro mAP %.4f, top-1 %.4f, top-5 %.4f",
    results["split"],
    results["step"],
    results["num_videos"],
    results["views"],
    results["macro_map"],
    results["chance_macro_map"],
    results["map_over_chance"],
    results["micro_map"],
    results["top1"],
    results["top5"],
  )
  if len(results["per_rate"]) > 1:
    logging.info(
      "macro mAP by rates: %s",
      ", ".join(
        f"{k} ({v['views']} views): {v['macro_map']:.4f}" for k, v in results["per_rate"].items()
      ),
    )


def _padded(
  batch: dict[str, np.ndarray] | None, template: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """Pads a (possibly short or missing) batch to the template's batch size."""
  size = template["labels"].shape[0]
  n = 0 if batch is None else batch["labels"].shape[0]
  out = {}
  for key, zeros in template.items():
    out[key] = zeros.copy()
    if n and key != "mask":
      out[key][:n] = batch[key]
  out["mask"] = np.arange(size) < n
  return out


def _video_scores(
  collector: metrics.MultiLabelCollector,
  num_videos: int,
  how: str,
  keep_views: Sequence[int] | None = None,
) -> np.ndarray:
  """Aggregated per-video scores [N, A] from clip scores; a video none of whose
  (kept) views could be decoded scores -inf, ranking last."""
  v = collector.arrays()
  return sampling.aggregate_views(v["scores"], v["index"], v["view"], num_videos, how, keep_views)


def rate_subsets(plan: Sequence[sampling.View]) -> list[tuple[int, ...]]:
  """Every non-empty subset of the plan's rates, smallest first."""
  rates = sorted({v.rate for v in plan})
  return [c for n in range(1, len(rates) + 1) for c in itertools.combinations(rates, n)]


def _json_number(x: float) -> float | None:
  return None if x is None or not np.isfinite(x) else float(x)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode eval`: evaluates checkpoint `config.eval.step` (-1: the latest) of
  `workdir` on `config.eval.split`, writing the results there.

  Only the model's variables are restored (as host arrays, placed on this
  mesh), so a checkpoint from any topology evaluates on any other.
  """
  validation.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.validate_for_mesh(config, mesh)
  # The checkpoint first: a wrong workdir or step fails before any data is
  # read, and a missing checkpoints/ folder is not created.
  directory, steps = checkpointing.saved_steps(workdir, config.checkpoint, config.eval.step)
  train_source = pipeline.make_source(config.data, "train")
  pipeline.check_task(train_source, config)
  stats = train_source.class_stats()
  model = models.build(config.model, stats.num_classes, stats)
  # Results name the step evaluated (the newest that loads, for -1).
  step, loaded = checkpointing.load_saved(directory, steps, config.eval.step)
  shardings = sharding.state_shardings(loaded, mesh, config.sharding)
  variables = jax.device_put(loaded, shardings)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  evaluator = make_evaluator(
    config,
    mesh,
    model,
    shardings,
    splits=[config.eval.split],
    class_names=train_source.class_names,
    train_stats=stats,
    workdir=workdir,
    writer=writer,
    eval_only=True,
  )
  state = EvalState(step=jnp.asarray(step, jnp.int32), **variables)
  try:
    return evaluator.run(state, config.eval.split)
  finally:
    writer.close()


# ----------------------------------------------------------------------------
# Detection (config.model.task = "detection", AVA): per-box scores, official
# CSV, frame mAP.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """A detection split's official files, read once: the rows of its
  annotations CSV (`ava.BoxRows`), the label map {action id: name} (the
  classes evaluated) and the excluded frame keys."""

  rows: Any
  labelmap: dict[int, str]
  excluded: set[str]

  @classmethod
  def of(cls, source: base.VideoSource) -> GroundTruth:
    """The files a detection source was read from (`ava.AvaKeyframes`)."""
    return cls(
      rows=ava.read_boxes(source.annotations),
      labelmap=ava.read_labelmap(source.labelmap),
      excluded=ava.read_exclusions(source.exclusions) if source.exclusions else set(),
    )

  def frame_map(self, rows: Sequence[tuple]) -> tuple[float, dict[int, float]]:
    """(frame mAP, {action id: AP}) of detection rows (`ava.detection_rows`)
    at the precision they are written with (`ava.as_written`), so the
    number is the one `tools.ava_eval` gives for the CSV."""
    rows = ava.as_written(rows)
    det = np.array([box for _, _, box, _, _ in rows], np.float64).reshape(-1, 4)
    return metrics.ava_frame_map(
      self.rows.frames,
      self.rows.boxes,
      self.rows.actions,
      [ava.frame_key(vid, ts) for vid, ts, _, _, _ in rows],
      det,
      np.array([a for _, _, _, a, _ in rows], np.int64),
      np.array([score for *_, score in rows], np.float64),
      list(self.labelmap),
      excluded=self.excluded,
    )


class DetectionEvaluator(Evaluator):
  """Evaluates a detector (`models.VideoDetector`) on the person boxes of
  each keyframe: frame mAP at IoU 0.5 with the official AVA evaluator's
  semantics (`metrics.ava_frame_map`), against the split's annotations CSV,
  label map (the classes evaluated: 60 for AVA's published protocol) and
  excluded timestamps.

  Each keyframe is one clip in one view (`eval.views = ((rate, 1),)`, one
  crop: `config.data.eval_short_side` then a centre crop of `crop_size`);
  the model scores every person box of the view (sigmoid per class, never
  softmax). The rows are written with the source's keyframe boxes, in
  frame coordinates as read from its files, not the view's: on frames that
  the view covers whole (square frames with eval_short_side = crop_size, the
  scenes export) the two are the same boxes; on AVA's wider frames the
  centre crop (the MLAR paper's "center-crop views") clips side boxes, which
  are scored from their visible part, and a box with no area in the view
  gets no row (`results["boxes_outside_view"]`).

  `run` writes, for `config.eval.split`, `detections.csv` (the official
  format: `tools.ava_eval` reproduces `macro_map` from it) and
  `eval_results.json`: `macro_map` = the frame mAP of `config.eval.output`,
  `per_class_ap` by class name (null: no ground truth), the chance
  reference `chance_macro_map` (every box scored with the training boxes'
  class frequencies, through the same rows and evaluator) and each output's
  frame mAP. Arguments as `Evaluator`.
  """

  def __init__(self, config: ml_collections.ConfigDict, *args, **kwargs):
    super().__init__(config, *args, **kwargs)
    if len(self.plan) != 1:
      raise ValueError(f"detection evaluates one view per keyframe, not {len(self.plan)}")
    self.truth = {split: GroundTruth.of(source) for split, source in self.sources.items()}

  def _eval_step(self, variables: Variables, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """{"scores": {output: [B, M, A] sigmoid}, "valid" [B, M] (a box in the
    view of a real row), "index", "mask"}."""
    data = self.config.data
    video = transforms.normalize(batch["video"], data.mean, data.std)
    kf = pipeline.keyframe(batch)
    valid = kf["box_valid"] & batch["mask"][:, None]
    outputs = self.model.apply(
      {"params": variables["params"], **variables["model_state"]},
      video,
      kf["boxes"],
      valid,
      train=False,
    )
    return {
      "scores": {k: jax.nn.sigmoid(v) for k, v in outputs.items()},
      "valid": valid,
      **{k: batch[k] for k in ("index", "mask")},
    }

  def score(  # type: ignore[override]
    self, state: Any, split: str
  ) -> tuple[dict[str, np.ndarray], np.ndarray, pipeline.DecodeErrors]:
    """Scores every person box of every keyframe of `split` once.

    Returns:
      ({output: [K, M, A] float32 scores}, valid [K, M] bool: the box was
      scored, and this host's count of skipped clips); K keyframes, M =
      `config.data.max_actors` slots (slot p is the record's box p).
    """
    source, m = self.sources[split], self.config.data.max_actors
    errors = pipeline.DecodeErrors(self.config.data.max_error_ratio)
    scores: dict[str, np.ndarray] = {}
    valid = np.zeros((len(source), m), bool)
    for out in self._step_outputs(state, split, errors):
      rows, real = out["index"][out["mask"]], out["mask"]
      for name, s in out["scores"].items():
        scores.setdefault(name, np.zeros((len(source), *s.shape[1:]), np.float32))
        scores[name][rows] = s[real]
      valid[rows] = out["valid"][real]
    return scores, valid, errors

  def run(self, state: Any, split: str) -> dict[str, Any]:
    """Evaluates `split` (frame mAP), logs and writes it as `Evaluator.run`,
    with `detections.csv` beside `eval_results.json`. Returns the results
    dict."""
    scores, valid, errors = self.score(state, split)
    source, truth, output = self.sources[split], self.truth[split], self.config.eval.output
    if output not in scores:
      raise ValueError(
        f"config.eval.output={output!r} is not a model output; outputs: {sorted(scores)}"
      )
    k, m = valid.shape
    boxes, present = np.zeros((k, m, 4), np.float32), np.zeros((k, m), bool)
    for i in range(k):
      record_boxes = source[i]["boxes"]  # [P, 4] of the keyframe, slots 0..P-1
      boxes[i, : len(record_boxes)], present[i, : len(record_boxes)] = record_boxes, True
    ids = source.video_ids()

    def rows_of(s: np.ndarray) -> list[tuple]:
      return ava.detection_rows(ids, boxes, valid, s, source.action_ids)

    maps = {name: truth.frame_map(rows_of(s)) for name, s in scores.items()}
    frame_map, ap = maps[output]
    # The constant predictor: each box scored with the training frequencies.
    # Its AP per class is the rank of the true boxes in input order (ties);
    # the values matter only for the 50 rows kept per frame.
    constant = np.broadcast_to(self.train_stats.frequency, scores[output].shape)
    chance, _ = truth.frame_map(rows_of(constant))
    results = {
      "split": split,
      "step": int(state.step),
      "task": "detection",
      "output": output,
      "num_videos": int(k),  # keyframes
      "num_boxes": int(valid.sum()),
      "boxes_outside_view": int((present & ~valid).sum()),
      "views": len(self.plan),
      "macro_map": _json_number(frame_map),
      "chance_macro_map": _json_number(chance),
      "map_over_chance": _json_number(frame_map / chance if chance else float("nan")),
      "num_classes_with_positives": int(sum(np.isfinite(v) for v in ap.values())),
      "per_class_ap": {truth.labelmap[c]: _json_number(ap[c]) for c in truth.labelmap},
      "outputs": {name: {"macro_map": _json_number(mp)} for name, (mp, _) in sorted(maps.items())},
      "skipped_clips": errors.failed,
      "skipped_files": sorted(errors.files),
      "train_skipped_samples": self.train_errors.failed if self.train_errors else 0,
    }
    name = eval_name(self.config, split, results["step"]) if self.eval_only else None
    if self.writer is not None:
      self.writer.write_scalars(
        results["step"],
        {f"{name or split}/{key}": results[key] for key in ("macro_map", "chance_macro_map")},
      )
      self.writer.flush()
    logging.info(
      "%s split, step %d, %d keyframes, %d boxes (%d outside the view): frame mAP %.4f "
      "(chance %.4f) over %d classes",
      split,
      results["step"],
      k,
      results["num_boxes"],
      results["boxes_outside_view"],
      frame_map,
      chance,
      results["num_classes_with_positives"],
    )
    if split == self.config.eval.split and jax.process_index() == 0:
      workdir = epath.Path(self.workdir)
      detections = workdir / (f"detections_{name}.csv" if name else "detections.csv")
      ava.write_detections(os.fspath(detections), rows_of(scores[output]))
      results["detections_file"] = os.fspath(detections)
      path = workdir / (f"{name}.json" if name else "eval_results.json")
      results["results_file"] = os.fspath(path)
      path.write_text(json.dumps(results, indent=2) + "\n")
      logging.info("Wrote %s and %s", path, detections)
    return results


# config.model.task -> the evaluator of its models.
EVALUATORS = {"classification": Evaluator, "boxes": Evaluator, "detection": DetectionEvaluator}


def make_evaluator(config: ml_collections.ConfigDict, *args, **kwargs) -> Evaluator:
  """The evaluator of `config.model.task`; arguments as `Evaluator`."""
  return EVALUATORS[config.model.task](config, *args, **kwargs)
