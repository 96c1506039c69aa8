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
  * Charades mAP (`charades_map`), as `Charades_v1_classify.m` computes it:
    per-class AP over the ground-truth videos, a video missing from the
    predictions scoring -inf for every class (it ranks last, tied with the
    other missing videos); predictions for unknown videos are ignored. A
    video without any action also scores -inf whatever was predicted: the
    script's `load_charades` gives it no id (`continue` before `gtids{i} =
    id`), so its prediction is never looked up. Ranked last and negative in
    every class, it changes no AP: such videos are in effect left out. Mean
    over the classes with a positive.
  * Macro mAP: the mean per-class AP over every video, including those with
    no label as negatives with their real scores (what every other dataset
    wants); it is the Charades mAP when every video has a label.
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


def set_accuracy(
  scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
  """Multi-label accuracies of the predicted sets {c : score_c >= threshold}.

  The three standard definitions (Tsoumakas and Katakis 2007), over N
  videos with label sets Y_n and predicted sets P_n of C classes:
    jaccard: mean_n |Y_n & P_n| / |Y_n | P_n| (1 when both are empty),
      "example-based accuracy" (Godbole and Sarawagi 2004);
    hamming: mean over videos and classes of a correct decision (1 - the
      Hamming loss);
    exact_match: mean_n [P_n == Y_n] (subset accuracy).

  Args:
    scores, labels: [N, C]; scores are probabilities (sigmoids).
  """
  scores, pos = _check(scores, labels)
  if not len(scores):
    return dict.fromkeys(("jaccard", "hamming", "exact_match"), float("nan"))
  pred = scores >= threshold
  union = (pred | pos).sum(axis=-1)
  both = (pred & pos).sum(axis=-1)
  return {
    "jaccard": float(np.mean(np.where(union > 0, both / np.maximum(union, 1), 1.0))),
    "hamming": float(np.mean(pred == pos)),
    "exact_match": float(np.mean((pred == pos).all(axis=-1))),
  }


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
    without one). Videos without a prediction, and videos without any
    action, score -inf for every class (module docstring).
  """
  gt_labels = np.asarray(gt_labels)
  pred_scores = np.asarray(pred_scores, np.float64)
  if pred_scores.ndim != 2 or pred_scores.shape[1] != gt_labels.shape[1]:
    raise ValueError(f"predictions {pred_scores.shape} do not have {gt_labels.shape[1]} classes")
  row = {vid: i for i, vid in enumerate(pred_ids)}
  aligned = np.full(gt_labels.shape, -np.inf)
  for i, vid in enumerate(gt_ids):
    if vid in row and gt_labels[i].any():
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
    "set_accuracy": set_accuracy(scores, labels),
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


# ---------------------------------------------------------------------------
# AVA frame-level detection mAP
# ---------------------------------------------------------------------------
#
# The official ActivityNet evaluator (`Evaluation/get_ava_performance.py` with
# the TF object-detection `PascalDetectionEvaluator`), on arrays:
#   * A frame is a (video, keyframe second); rows are (frame, box, action).
#     Rows of an action outside the label map are dropped, ground truth and
#     detections alike; then each frame keeps its `max_detections` highest
#     scoring detection rows (50; ties at the cut keep the earlier rows).
#     Excluded frames are dropped from both sides.
#   * Detections with a degenerate box (x2 <= x1 or y2 <= y1) are dropped.
#   * Per frame and class, detections in descending score each go to the
#     ground-truth box of that class they overlap most (IoU, no +1 pixel; the
#     first such box on ties). At IoU >= 0.5 the detection is a true positive
#     if that box is not yet taken, a false positive if it is (a duplicate),
#     and ignored if that box is difficult; below 0.5 a false positive. A
#     detection never falls back to its second-best box.
#   * Per class, all frames' detections are ranked by score and the Pascal
#     VOC AP is the area under the precision envelope (precision made
#     non-increasing from the right) at the recall steps, recall counted over
#     the non-difficult ground-truth boxes. A class with ground truth and no
#     detection has AP 0; a class without ground truth has no AP (NaN) and is
#     left out of the mean, as in the official `np.nanmean`.
#   * The protocol is that of the AVA v2.1 / v2.2 releases: an excluded-
#     timestamps file, and detections in frames without ground truth count
#     as false positives. The ActivityNet script had it until April 2020
#     (commit 3fee089; PySlowFast's `ava_eval_helper` is a copy); since then
#     it lists empty keyframes as `video_id,timestamp` ground-truth rows in
#     place of the exclusions and ignores detections in unlisted frames.
#     On random files the numbers equal that script's to 1e-12
#     (tests/test_ava_metrics.py, run with MLAR_AVA_OFFICIAL set).
#   * Ties in score rank stably: the frame whose detections came first, then
#     the earlier row. (The official script's order for tied scores is an
#     artefact of heapq and numpy's unstable argsort, reversed; tie-free
#     inputs give the same numbers.)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes a [N, 4] with boxes b [M, 4], (x1, y1, x2, y2): [N, M].

  Areas are (x2 - x1) * (y2 - y1) with no +1 pixel (the TF object-detection
  `np_box_ops.iou` the AVA evaluator uses); two empty boxes have IoU 0.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
  inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
  union = area(a)[:, None] + area(b)[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def voc_average_precision(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float:
  """Pascal VOC AP of ranked detections (the TF object-detection
  `compute_precision_recall` + `compute_average_precision`).

  Args:
    scores: [D] detection scores of one class over all frames.
    true_positive: [D] bool, whether each detection matched a ground truth.
    num_gt: the class's non-difficult ground-truth boxes.

  Returns:
    The area under the precision envelope; NaN when num_gt is 0, 0.0 when
    there is no detection. Tied scores keep their input order.
  """
  if num_gt == 0:
    return float("nan")
  tp = np.asarray(true_positive, bool)[np.argsort(-np.asarray(scores, np.float64), kind="stable")]
  if not tp.size:
    return 0.0
  if tp.sum() > num_gt:
    raise ValueError(f"{int(tp.sum())} true positives for {num_gt} ground-truth boxes")
  cum_tp = np.cumsum(tp)
  precision = cum_tp / np.arange(1, tp.size + 1)
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  # Recall rises by 1 / num_gt exactly at the true positives.
  return float(envelope[tp].sum() / num_gt)


def _group(keys: np.ndarray) -> dict:
  """key -> row indices in input order, keys in order of first appearance."""
  groups: dict = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  return groups


def ava_frame_map(
  gt_frames: Sequence[str],
  gt_boxes: np.ndarray,
  gt_actions: np.ndarray,
  det_frames: Sequence[str],
  det_boxes: np.ndarray,
  det_actions: np.ndarray,
  det_scores: np.ndarray,
  class_ids: Sequence[int],
  *,
  gt_difficult: np.ndarray | None = None,
  excluded: Sequence[str] = (),
  iou_threshold: float = 0.5,
  max_detections: int = 50,
) -> tuple[float, dict[int, float]]:
  """AVA frame-level mAP at IoU `iou_threshold`, the official evaluator's
  semantics (written out above this function).

  Args:
    gt_frames: [M] frame keys of the ground-truth rows (`data.ava.frame_key`:
      "video,0902").
    gt_boxes: [M, 4] (x1, y1, x2, y2), normalised like the detections.
    gt_actions: [M] action ids.
    det_frames: [D] frame keys of the detection rows.
    det_boxes: [D, 4] (x1, y1, x2, y2).
    det_actions: [D] action ids.
    det_scores: [D] scores.
    class_ids: the label map's action ids, the classes evaluated (the 60 of
      the official AVA v2.x list).
    gt_difficult: [M] bool; difficult boxes are neither counted nor penalised
      (AVA marks none: default all False).
    excluded: frame keys skipped on both sides (the excluded timestamps).
    iou_threshold: the matching IoU.
    max_detections: detection rows kept per frame, by score (0: all).

  Returns:
    (mAP over the classes with a ground-truth box, {class id: AP}) with NaN
    for the label map's classes without one.
  """
  classes = set(int(c) for c in class_ids)
  excluded = set(excluded)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gt_actions = np.asarray(gt_actions, np.int64).reshape(-1)
  difficult = (
    np.zeros(len(gt_actions), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
  )
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  det_actions = np.asarray(det_actions, np.int64).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  if not (len(gt_frames) == len(gt_boxes) == len(gt_actions) == len(difficult)):
    raise ValueError("ground-truth frames, boxes, actions and difficult flags differ in length")
  if not (len(det_frames) == len(det_boxes) == len(det_actions) == len(det_scores)):
    raise ValueError("detection frames, boxes, actions and scores differ in length")

  gt_keep = [
    i for i, f in enumerate(gt_frames) if int(gt_actions[i]) in classes and f not in excluded
  ]
  gt_by_frame = _group([gt_frames[i] for i in gt_keep])
  gt_by_frame = {f: np.asarray(gt_keep)[rows] for f, rows in gt_by_frame.items()}
  num_gt = {c: 0 for c in classes}
  for i in gt_keep:
    num_gt[int(gt_actions[i])] += int(not difficult[i])

  det_keep = [i for i, a in enumerate(det_actions) if int(a) in classes]
  scored: dict[int, list[tuple[float, bool]]] = {c: [] for c in classes}
  for frame, rows in _group([det_frames[i] for i in det_keep]).items():
    rows = np.asarray(det_keep)[rows]
    rows = rows[np.argsort(-det_scores[rows], kind="stable")]
    if max_detections > 0:
      rows = rows[:max_detections]
    if frame in excluded:
      continue
    b = det_boxes[rows]
    rows = rows[(b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])]
    gt_rows = gt_by_frame.get(frame, np.zeros(0, np.int64))
    for c in dict.fromkeys(int(a) for a in det_actions[rows]):
      dets = rows[det_actions[rows] == c]
      gts = gt_rows[gt_actions[gt_rows] == c]
      tp = np.zeros(len(dets), bool)
      ignored = np.zeros(len(dets), bool)
      if len(gts):
        iou = box_iou(det_boxes[dets], gt_boxes[gts])
        best = np.argmax(iou, axis=1)
        taken = np.zeros(len(gts), bool)
        for k, g in enumerate(best):
          if iou[k, g] < iou_threshold:
            continue
          if difficult[gts[g]]:
            ignored[k] = True
          elif not taken[g]:
            tp[k] = taken[g] = True
      scored[c].extend(zip(det_scores[dets][~ignored], tp[~ignored]))

  ap = {}
  for c in sorted(classes):
    s = np.array([x for x, _ in scored[c]], np.float64)
    t = np.array([y for _, y in scored[c]], bool)
    ap[c] = voc_average_precision(s, t, num_gt[c])
  return _nanmean(np.array(list(ap.values()), np.float64)), ap
