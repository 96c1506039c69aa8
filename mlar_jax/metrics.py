"""Evaluation metrics of the papers, on host numpy arrays.

Semantics, written down once:
  * Average precision of one ranking (`average_precision`): the mean, over the
    positives, of the precision at that positive's score, where the precision
    at score s counts every item scoring >= s. This is the official Charades
    script's "mean precision at each positive, no interpolation", with ties
    resolved as one threshold: a group of tied items is ranked as a block, so
    the result never depends on input order (the official script's stable
    sort would rank tied items in file order). It equals
    `sklearn.metrics.average_precision_score`. A constant scorer gets AP equal
    to the positive rate.
  * A ranking with no positive has no AP: NaN, excluded from every mean, and
    the number of classes (or videos) that entered a mean is reported.
  * Charades mAP (`charades_map`): per-class AP over the ground-truth videos,
    a video missing from the predictions scoring -inf for every class (it
    ranks last, tied with the other missing videos); predictions for unknown
    videos are ignored. Mean over the classes with a positive.
  * Macro mAP: the mean per-class AP (the Charades mAP on aligned arrays).
  * Micro mAP (M-MiT, section 6.2): the AP of each video's ranking of the
    classes, averaged over the videos with at least one positive label.
  * Top-k accuracy: the fraction of videos with at least one positive whose k
    highest-scoring classes contain a positive; equal scores are broken
    towards the lower class index.
Scores may be logits or probabilities: every metric is rank-based, so sigmoid
(monotone) changes nothing. Never softmax across classes for multi-label.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import numpy as np
from clu import metrics as clu_metrics


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN")
  return scores, labels > 0


def average_precision_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """AP of each row's ranking, [..., N] -> [...] float64 (NaN: no positive)."""
  scores, pos = _check(scores, labels)
  n = scores.shape[-1]
  order = np.argsort(-scores, axis=-1, kind="stable")
  s = np.take_along_axis(scores, order, axis=-1)
  y = np.take_along_axis(pos, order, axis=-1)
  tp = np.cumsum(y, axis=-1)
  # For each position, the number of items scoring >= its score: the end of
  # its tie group. s is descending, so -s is ascending for searchsorted.
  flat_s = -s.reshape(-1, n)
  ends = np.stack([np.searchsorted(r, r, side="right") for r in flat_s])
  ends = ends.reshape(s.shape)
  precision = np.take_along_axis(tp, ends - 1, axis=-1) / ends
  num_pos = y.sum(axis=-1)
  total = np.where(y, precision, 0.0).sum(axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_pos > 0, total / np.maximum(num_pos, 1), np.nan)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """AP of one ranking, scores [N], labels [N] in {0, 1}; NaN with no positive."""
  return float(average_precision_rows(np.asarray(scores)[None], np.asarray(labels)[None])[0])


def per_class_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """AP of each class, scores and labels [N, C] -> [C] (NaN: no positive)."""
  return average_precision_rows(np.asarray(scores).T, np.asarray(labels).T)


def _nanmean(values: np.ndarray) -> float:
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def macro_map(scores: np.ndarray, labels: np.ndarray) -> float:
  """Mean of per-class AP over classes with a positive. [N, C] -> float."""
  return _nanmean(per_class_ap(scores, labels))


def micro_map(scores: np.ndarray, labels: np.ndarray) -> float:
  """M-MiT micro mAP: per-video AP over classes, averaged over videos. [N, C]."""
  return _nanmean(average_precision_rows(scores, labels))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of videos (with a positive) with a positive among the top k."""
  scores, pos = _check(scores, labels)
  has_pos = pos.any(axis=-1)
  if not has_pos.any():
    return float("nan")
  top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
  hit = np.take_along_axis(pos, top, axis=-1).any(axis=-1)
  return float(hit[has_pos].mean())


def charades_map(
  gt_ids: Sequence[str], gt_labels: np.ndarray, pred_ids: Sequence[str], pred_scores: np.ndarray
) -> tuple[float, np.ndarray]:
  """mAP as `Charades_v1_classify.m` computes it.

  Args:
    gt_ids: [N] ground-truth video ids.
    gt_labels: [N, C] multi-hot labels.
    pred_ids: [M] ids of the submitted videos.
    pred_scores: [M, C] submitted scores.

  Returns:
    (mAP over classes with a positive, per-class AP [C] with NaN for classes
    without one). Videos without a prediction score -inf for every class.
  """
  gt_labels = np.asarray(gt_labels)
  pred_scores = np.asarray(pred_scores, np.float64)
  if pred_scores.ndim != 2 or pred_scores.shape[1] != gt_labels.shape[1]:
    raise ValueError(f"predictions {pred_scores.shape} do not have {gt_labels.shape[1]} classes")
  row = {vid: i for i, vid in enumerate(pred_ids)}
  aligned = np.full(gt_labels.shape, -np.inf)
  for i, vid in enumerate(gt_ids):
    if vid in row:
      aligned[i] = pred_scores[row[vid]]
  ap = per_class_ap(aligned, gt_labels)
  return _nanmean(ap), ap


def all_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """The summary evaluation reports, for aligned [N, C] scores and labels."""
  ap = per_class_ap(scores, labels)
  return {
    "macro_map": _nanmean(ap),
    "micro_map": micro_map(scores, labels),
    "top1": top_k_accuracy(scores, labels, 1),
    "top5": top_k_accuracy(scores, labels, 5),
    "per_class_ap": ap,
    "num_classes_with_positives": int((~np.isnan(ap)).sum()),
  }


@flax.struct.dataclass
class MultiLabelCollector(
  clu_metrics.CollectingMetric.from_outputs(("scores", "labels", "mask", "index", "view"))
):
  """Gathers [B, C] scores and labels, and [B] video positions and view ids,
  on the host.

  Padding rows (mask 0) are dropped in `compute`, so an evaluation set that
  does not divide the batch counts each video once. For several hosts, give
  `from_model_output` the globally gathered arrays
  (`jax.experimental.multihost_utils.process_allgather`).
  """

  def arrays(self) -> dict[str, np.ndarray]:
    """Concatenated, unpadded {"scores": [N, C], "labels": [N, C]} plus extras."""
    values = super().compute()
    keep = np.asarray(values["mask"]).astype(bool).reshape(-1)
    return {k: np.asarray(v)[keep] for k, v in values.items() if k != "mask"}

  def compute(self) -> dict[str, Any]:
    v = self.arrays()
    return all_metrics(v["scores"], v["labels"])
