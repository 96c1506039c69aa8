"""Evaluation: one pass over a split, metrics, and `eval_results.json`.

Every host reads its shard of the split, pads its last batches so that all
hosts run the same number of steps, and the jitted step returns scores,
labels, mask and video positions replicated, so each host holds the global
arrays. Padding rows are masked out: each video counts exactly once.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

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
from mlar_jax.data import transforms


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh,
                   state_shardings: Any) -> Callable:
  """jit(state, batch) -> {"scores": {output: [B, A]}, "labels", "mask", "index"}.

  Scores are sigmoid probabilities of every head output; never softmax.
  """

  def eval_step(state, batch):
    video = transforms.normalize(batch["video"], config.data.mean, config.data.std)
    outputs = model.apply({"params": state.params, **state.model_state}, video,
                          train=False)
    return {"scores": {k: jax.nn.sigmoid(v) for k, v in outputs.items()},
            "labels": batch["labels"], "mask": batch["mask"], "index": batch["index"]}

  return jax.jit(eval_step,
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def _padded(batch: dict[str, np.ndarray] | None, template: dict[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
  """Pads a (possibly short or missing) batch to the template's batch size."""
  size = template["labels"].shape[0]
  n = 0 if batch is None else batch["labels"].shape[0]
  out = {}
  for key, zeros in template.items():
    if key == "mask":
      continue
    out[key] = zeros.copy()
    if n:
      out[key][:n] = batch[key]
  out["mask"] = np.arange(size) < n
  return out


def run(eval_step: Callable, state: Any, source: base.VideoSource,
        config: ml_collections.ConfigDict, mesh: Mesh
        ) -> dict[str, metrics.MultiLabelCollector]:
  """Scores every video of `source` once; returns a collector per model output."""
  pcount, pindex = jax.process_count(), jax.process_index()
  local_bs = config.eval.batch_size // pcount
  ds = pipeline.eval_dataset(source, config.data, local_batch_size=local_bs,
                             process_index=pindex, process_count=pcount)
  num_batches = math.ceil(math.ceil(len(source) / pcount) / local_bs)
  s, t = config.data.crop_size, config.data.num_frames
  template = {"video": np.zeros((local_bs, t, s, s, 3), np.uint8),
              "labels": np.zeros((local_bs, source.num_classes), np.int32),
              "index": np.zeros((local_bs,), np.int32), "mask": None}
  batch_sharding = sharding.batch_sharding(mesh)
  collectors: dict[str, metrics.MultiLabelCollector] = {}
  it = iter(ds)
  for _ in range(num_batches):
    batch = _padded(next(it, None), template)
    out = jax.device_get(eval_step(state, sharding.to_global(batch, batch_sharding)))
    for name, scores in out["scores"].items():
      update = metrics.MultiLabelCollector.from_model_output(
          scores=scores, labels=out["labels"], mask=out["mask"], index=out["index"])
      collectors[name] = (update if name not in collectors
                          else collectors[name].merge(update))
  return collectors


def _json_number(x: float) -> float | None:
  return None if x is None or not np.isfinite(x) else float(x)


def report(collectors: dict[str, metrics.MultiLabelCollector], *,
           class_names: list[str] | tuple[str, ...], train_frequency: np.ndarray,
           output: str, step: int, split: str) -> dict[str, Any]:
  """The results dict written to `eval_results.json`.

  Args:
    collectors: from `run`.
    class_names: [A] names keying the per-class AP.
    train_frequency: [A] fraction of training videos with each class; the
      constant predictor that scores every video with it is the chance
      reference (its AP per class is the class's positive rate).
    output: the model output that ranks (`config.eval.output`).
    step: checkpoint step evaluated.
    split: split evaluated.
  """
  if output not in collectors:
    raise ValueError(f"config.eval.output={output!r} is not a model output; "
                     f"outputs: {sorted(collectors)}")
  main = collectors[output].arrays()
  labels = main["labels"]
  summary = metrics.all_metrics(main["scores"], labels)
  chance = metrics.macro_map(np.broadcast_to(train_frequency, labels.shape), labels)
  results = {
      "split": split, "step": int(step), "output": output,
      "num_videos": int(labels.shape[0]),
      "macro_map": _json_number(summary["macro_map"]),
      "micro_map": _json_number(summary["micro_map"]),
      "top1": _json_number(summary["top1"]),
      "top5": _json_number(summary["top5"]),
      "chance_macro_map": _json_number(chance),
      "map_over_chance": _json_number(summary["macro_map"] / chance),
      "num_classes_with_positives": summary["num_classes_with_positives"],
      "per_class_ap": {n: _json_number(a) for n, a in zip(class_names, summary["per_class_ap"])},
      "outputs": {},
  }
  for name, collector in sorted(collectors.items()):
    v = collector.arrays()
    m = metrics.all_metrics(v["scores"], v["labels"])
    results["outputs"][name] = {k: _json_number(m[k]) for k in ("macro_map", "micro_map", "top1", "top5")}
  return results


def write_results(workdir: str, results: dict[str, Any], name: str = "eval_results.json") -> None:
  """Writes results as JSON, from process 0 only."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / name
  path.write_text(json.dumps(results, indent=2) + "\n")
  logging.info("Wrote %s", path)
