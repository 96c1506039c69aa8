"""Evaluation: every view of every video of a split, aggregated per video.

The view plan (`config.eval.views` x `config.eval.spatial_crops`, see
`data/sampling.py`) is flattened into (video, view) clips, batched across
devices. Every host reads its shard and pads its last batches so that all
hosts run the same number of steps; the jitted step returns scores, labels,
mask, video positions and view ids replicated, so each host holds the global
arrays. Padding rows are masked out, and each video's views are aggregated
(sum of sigmoid scores by default, as the MLAR paper; mean or max), so each
video counts exactly once whatever the batch size.

Reports: the combined plan, and every subset of the plan's rates on its own
(the rows of MLAR Table 3d), for the output `config.eval.output`; the
summary metrics for every output; `predictions.txt` in the Charades
submission format (video id, then one score per class).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from mlar_jax import metrics
from mlar_jax import sharding
from mlar_jax.data import base
from mlar_jax.data import pipeline
from mlar_jax.data import sampling
from mlar_jax.data import transforms


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh,
                   state_shardings: Any) -> Callable:
  """jit(state, batch) -> {"scores": {output: [B, A]}, "labels", "mask", "index", "view"}.

  Scores are sigmoid probabilities of every head output; never softmax.
  """

  def eval_step(state, batch):
    video = transforms.normalize(batch["video"], config.data.mean, config.data.std)
    with sharding.constraints(mesh):
      outputs = model.apply({"params": state.params, **state.model_state}, video,
                            train=False)
    return {"scores": {k: jax.nn.sigmoid(v) for k, v in outputs.items()},
            **{k: batch[k] for k in ("labels", "mask", "index", "view")}}

  return jax.jit(eval_step,
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def plan_from_config(config: ml_collections.ConfigDict) -> tuple[sampling.View, ...]:
  return sampling.view_plan(config.eval.views, config.eval.spatial_crops)


def _padded(batch: dict[str, np.ndarray] | None, template: dict[str, np.ndarray]
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


def run(eval_step: Callable, state: Any, source: base.VideoSource,
        config: ml_collections.ConfigDict, mesh: Mesh
        ) -> tuple[dict[str, metrics.MultiLabelCollector], pipeline.DecodeErrors]:
  """Scores every view of every video of `source` once.

  Returns:
    A collector per model output, and this host's count of clips skipped
    because their video could not be decoded.
  """
  plan = plan_from_config(config)
  pcount, pindex = jax.process_count(), jax.process_index()
  local_bs = config.eval.batch_size // pcount
  errors = pipeline.DecodeErrors(config.data.max_error_ratio)
  ds = pipeline.eval_dataset(source, config.data, plan, local_batch_size=local_bs,
                             process_index=pindex, process_count=pcount, errors=errors)
  num_batches = pipeline.eval_num_batches(len(source), plan, local_batch_size=local_bs,
                                          process_count=pcount)
  # Any eval batch size works on any mesh: rows are padded (and masked) up to a
  # multiple of this host's devices on the batch axes.
  local_devices = mesh.shape["data"] * mesh.shape["fsdp"] // pcount
  padded_bs = math.ceil(local_bs / local_devices) * local_devices
  s, t = config.data.crop_size, config.data.num_frames
  template = {"video": np.zeros((padded_bs, t, s, s, 3), np.uint8),
              "labels": np.zeros((padded_bs, source.num_classes), np.int32),
              "index": np.zeros((padded_bs,), np.int32),
              "view": np.zeros((padded_bs,), np.int32),
              "mask": np.zeros((padded_bs,), bool)}
  batch_sharding = sharding.batch_sharding(mesh)
  collectors: dict[str, metrics.MultiLabelCollector] = {}
  it = iter(ds)
  for _ in range(num_batches):
    batch = _padded(next(it, None), template)
    out = jax.device_get(eval_step(state, sharding.to_global(batch, batch_sharding)))
    for name, scores in out["scores"].items():
      update = metrics.MultiLabelCollector.from_model_output(
          scores=scores, **{k: out[k] for k in ("labels", "mask", "index", "view")})
      collectors[name] = (update if name not in collectors
                          else collectors[name].merge(update))
  return collectors, errors


def video_scores(collector: metrics.MultiLabelCollector, num_videos: int, how: str,
                 keep_views: Sequence[int] | None = None) -> np.ndarray:
  """Aggregated per-video scores [N, A] from clip scores; a video none of whose
  (kept) views could be decoded scores -inf, ranking last."""
  v = collector.arrays()
  return sampling.aggregate_views(v["scores"], v["index"], v["view"], num_videos,
                                  how, keep_views)


def rate_subsets(plan: Sequence[sampling.View]) -> list[tuple[int, ...]]:
  """Every non-empty subset of the plan's rates, smallest first."""
  rates = sorted({v.rate for v in plan})
  return [c for n in range(1, len(rates) + 1) for c in itertools.combinations(rates, n)]


def _json_number(x: float) -> float | None:
  return None if x is None or not np.isfinite(x) else float(x)


def report(collectors: dict[str, metrics.MultiLabelCollector], *, labels: np.ndarray,
           class_names: Sequence[str], train_frequency: np.ndarray, output: str,
           step: int, split: str, plan: Sequence[sampling.View], how: str
           ) -> dict[str, Any]:
  """The results dict written to `eval_results.json`.

  Args:
    collectors: from `run`.
    labels: [N, A] ground truth of the split (`source.label_matrix()`).
    class_names: [A] names keying the per-class AP.
    train_frequency: [A] fraction of training videos with each class; the
      constant predictor that scores every video with it is the chance
      reference (its AP per class is the class's positive rate).
    output: the model output that ranks (`config.eval.output`).
    step: checkpoint step evaluated.
    split: split evaluated.
    plan: the view plan evaluated.
    how: view aggregation.
  """
  if output not in collectors:
    raise ValueError(f"config.eval.output={output!r} is not a model output; "
                     f"outputs: {sorted(collectors)}")
  num_videos = len(labels)
  scores = video_scores(collectors[output], num_videos, how)
  seen = np.unique(collectors[output].arrays()["index"])
  summary = metrics.all_metrics(scores, labels)
  chance = metrics.macro_map(np.broadcast_to(train_frequency, labels.shape), labels)
  per_rate = {}
  for rates in rate_subsets(plan):
    keep = [i for i, v in enumerate(plan) if v.rate in rates]
    s = video_scores(collectors[output], num_videos, how, keep)
    per_rate["+".join(map(str, rates))] = {
        "views": len(keep), "macro_map": _json_number(metrics.macro_map(s, labels))}
  results = {
      "split": split, "step": int(step), "output": output,
      "num_videos": int(num_videos),
      "num_videos_without_views": int(num_videos - len(seen)),
      "views": len(plan), "aggregate": how,
      "macro_map": _json_number(summary["macro_map"]),
      "micro_map": _json_number(summary["micro_map"]),
      "top1": _json_number(summary["top1"]),
      "top5": _json_number(summary["top5"]),
      "chance_macro_map": _json_number(chance),
      "map_over_chance": _json_number(summary["macro_map"] / chance),
      "num_classes_with_positives": summary["num_classes_with_positives"],
      "per_class_ap": {n: _json_number(a) for n, a in zip(class_names, summary["per_class_ap"])},
      "per_rate": per_rate,
      "outputs": {},
  }
  for name, collector in sorted(collectors.items()):
    m = metrics.all_metrics(video_scores(collector, num_videos, how), labels)
    results["outputs"][name] = {k: _json_number(m[k]) for k in ("macro_map", "micro_map", "top1", "top5")}
  return results


def write_results(workdir: str, results: dict[str, Any], name: str = "eval_results.json") -> None:
  """Writes results as JSON, from process 0 only."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / name
  path.write_text(json.dumps(results, indent=2) + "\n")
  logging.info("Wrote %s", path)


def write_predictions(workdir: str, video_ids: Sequence[str], scores: np.ndarray,
                      name: str = "predictions.txt") -> None:
  """Charades submission format: `id s_1 ... s_A` per line, from process 0."""
  if jax.process_index() != 0:
    return
  lines = (f"{vid} " + " ".join(f"{x:.6g}" for x in row) for vid, row in zip(video_ids, scores))
  (epath.Path(workdir) / name).write_text("\n".join(lines) + "\n")
