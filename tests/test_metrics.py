"""Metrics against sklearn and loop versions of the Charades script."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlar_jax import metrics


def thumos_ap_loop(conf, labels):
  """Line-by-line port of THUMOSeventclspr (used by Charades_v1_classify.m).

  Ranks with a stable sort, as MATLAB's sort does: exact only without ties.
  """
  order = sorted(range(len(conf)), key=lambda i: -conf[i])
  tp = fp = 0
  npos = sum(1 for v in labels if v == 1)
  ap = 0.0
  for i in order:
    if labels[i] == 1:
      tp += 1
      ap += tp / (tp + fp)
    else:
      fp += 1
  return ap / npos if npos else float("nan")


def threshold_ap_loop(conf, labels):
  """Mean over positives of precision among all items scoring >= it (ties as
  one threshold): the documented semantics, by definition, O(N^2)."""
  pos = [i for i in range(len(conf)) if labels[i] == 1]
  if not pos:
    return float("nan")
  total = 0.0
  for i in pos:
    above = [j for j in range(len(conf)) if conf[j] >= conf[i]]
    total += sum(1 for j in above if labels[j] == 1) / len(above)
  return total / len(pos)


def _random(seed, n=60, c=7, ties=False):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(n, c))
  if ties:
    scores = np.round(scores * 2) / 2  # many equal scores
  labels = (rng.random((n, c)) < 0.25).astype(int)
  labels[0, :] = 1  # every class has a positive
  return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_per_class_ap_matches_sklearn_and_loops(ties):
  scores, labels = _random(0, ties=ties)
  ap = metrics.per_class_ap(scores, labels)
  for c in range(labels.shape[1]):
    np.testing.assert_allclose(
      ap[c], average_precision_score(labels[:, c], scores[:, c]), atol=1e-6
    )
    np.testing.assert_allclose(ap[c], threshold_ap_loop(scores[:, c], labels[:, c]), atol=1e-6)
    if not ties:
      np.testing.assert_allclose(ap[c], thumos_ap_loop(scores[:, c], labels[:, c]), atol=1e-6)
  np.testing.assert_allclose(metrics.macro_map(scores, labels), ap.mean(), atol=1e-12)


def test_ties_do_not_depend_on_order_and_constant_scorer_gets_prevalence():
  labels = np.array([1, 0, 0, 1, 0, 0, 0, 0])
  const = np.zeros(8)
  assert metrics.average_precision(const, labels) == pytest.approx(0.25)
  perm = np.random.default_rng(0).permutation(8)
  scores = np.array([1, 1, 0, 0, 2, 2, 0, 1.0])
  assert metrics.average_precision(scores, labels) == pytest.approx(
    metrics.average_precision(scores[perm], labels[perm])
  )


def test_micro_map_is_per_video_ap():
  scores, labels = _random(1, ties=True)
  labels[5] = 0  # a video with no positive is left out
  want = np.mean(
    [average_precision_score(labels[i], scores[i]) for i in range(len(labels)) if labels[i].any()]
  )
  np.testing.assert_allclose(metrics.micro_map(scores, labels), want, atol=1e-6)


def test_class_without_positive_is_excluded():
  scores, labels = _random(2)
  labels[:, 3] = 0
  ap = metrics.per_class_ap(scores, labels)
  assert np.isnan(ap[3])
  np.testing.assert_allclose(metrics.macro_map(scores, labels), np.delete(ap, 3).mean())


def test_top_k():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.1, 0.2, 0.3], [0.5, 0.5, 0.0]])
  labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
  # Video 2 has no positive (left out); video 3's tie breaks to class 0.
  assert metrics.top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
  assert metrics.top_k_accuracy(scores, labels, 2) == pytest.approx(1.0)
  scores_r, labels_r = _random(3)
  loop = np.mean(
    [
      labels_r[i][np.argsort(-scores_r[i], kind="stable")[:5]].any()
      for i in range(len(labels_r))
      if labels_r[i].any()
    ]
  )
  assert metrics.top_k_accuracy(scores_r, labels_r, 5) == pytest.approx(loop)


def test_charades_map_missing_videos_score_minus_inf():
  scores, labels = _random(4, n=20, c=4)
  ids = [f"v{i}" for i in range(20)]
  keep = [i for i in range(20) if i % 3]
  m, ap = metrics.charades_map(
    ids,
    labels,
    [ids[i] for i in keep] + ["unknown"],
    np.concatenate([scores[keep], np.ones((1, 4))]),
  )
  filled = np.full_like(scores, -np.inf)
  filled[keep] = scores[keep]
  filled[~labels.any(axis=1)] = -np.inf  # no action: ranked last (next test)
  for c in range(4):
    np.testing.assert_allclose(ap[c], threshold_ap_loop(filled[:, c], labels[:, c]), atol=1e-6)
  np.testing.assert_allclose(m, np.nanmean(ap))


def charades_classify_loop(gt_rows, submission):
  """Port of Charades_v1_classify.m's reading and comparison: `load_charades`
  sets `gtids{i}` only for a row with actions (`continue` before it), and a
  score row is filled only for an id found in the submission.

  Args:
    gt_rows: [(id, [class indices])] in the CSV's order.
    submission: {id: [C] scores}.
  """
  num_classes = len(next(iter(submission.values())))
  gtids = [vid if classes else None for vid, classes in gt_rows]
  gtlabel = np.zeros((len(gt_rows), num_classes))
  test = np.full((len(gt_rows), num_classes), -np.inf)
  for i, (_, classes) in enumerate(gt_rows):
    gtlabel[i, classes] = 1
    if gtids[i] is not None and gtids[i] in submission:
      test[i] = submission[gtids[i]]
  return [thumos_ap_loop(test[:, c], gtlabel[:, c]) for c in range(num_classes)]


def test_charades_map_leaves_videos_without_actions_last_as_the_official_script():
  scores, labels = _random(6, n=30, c=5)
  labels[[3, 8, 9, 20]] = 0  # videos without any action, with real (high) scores
  scores[[3, 8, 9, 20]] += 3.0
  ids = [f"v{i}" for i in range(30)]
  gt_rows = [(vid, list(np.flatnonzero(row))) for vid, row in zip(ids, labels)]
  want = charades_classify_loop(gt_rows, dict(zip(ids, scores)))
  m, ap = metrics.charades_map(ids, labels, ids, scores)
  np.testing.assert_allclose(ap, want, atol=1e-12)
  np.testing.assert_allclose(m, np.mean(want))
  # The same as leaving them out; and not what counting them as negatives gives.
  keep = [i for i in range(30) if labels[i].any()]
  np.testing.assert_allclose(ap, metrics.per_class_ap(scores[keep], labels[keep]), atol=1e-12)
  assert metrics.macro_map(scores, labels) < m


def test_nan_scores_are_rejected():
  with pytest.raises(ValueError, match="NaN"):
    metrics.per_class_ap(np.array([[np.nan]]), np.array([[1]]))


def test_collector_counts_each_video_once():
  scores, labels = _random(5, n=7, c=3)
  collector = None
  for start in range(0, 8, 4):  # batches of 4, the second padded by one row
    s = np.zeros((4, 3))
    lab = np.zeros((4, 3), int)
    mask = np.zeros(4, bool)
    n = min(4, 7 - start)
    s[:n], lab[:n], mask[:n] = scores[start : start + n], labels[start : start + n], True
    update = metrics.MultiLabelCollector.from_model_output(
      scores=s, labels=lab, mask=mask, index=np.arange(start, start + 4), view=np.zeros(4, int)
    )
    collector = update if collector is None else collector.merge(update)
  arrays = collector.arrays()
  np.testing.assert_array_equal(arrays["index"], np.arange(7))
  np.testing.assert_allclose(collector.compute()["macro_map"], metrics.macro_map(scores, labels))


def test_output_metrics_adds_the_mean_of_sigmoids_of_several_outputs():
  from mlar_jax import evaluate

  rng = np.random.default_rng(3)
  labels = (rng.random((40, 6)) < 0.3).astype(np.int32)
  labels[0] = 1  # every class has a positive
  a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) * 3
  # The eval step's scores are probabilities (sigmoids of the logits).
  pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
  out = evaluate.output_metrics({"logits": pa, "logits_activity": pb}, labels)
  assert set(out) == {"logits", "logits_activity", "mean_of_sigmoids"}
  mean = (1 / (1 + np.exp(-a)) + 1 / (1 + np.exp(-b))) / 2
  want = np.mean([average_precision_score(labels[:, c], mean[:, c]) for c in range(6)])
  np.testing.assert_allclose(out["mean_of_sigmoids"]["macro_map"], want, rtol=1e-9)
  # One output: nothing to combine.
  assert set(evaluate.output_metrics({"logits": pa}, labels)) == {"logits"}


def test_set_accuracy_matches_sklearn():
  from sklearn.metrics import accuracy_score, hamming_loss, jaccard_score

  rng = np.random.default_rng(3)
  labels = (rng.random((40, 9)) < 0.3).astype(int)
  labels[0] = 0  # no label, and predicted none below: Jaccard 1
  scores = rng.random((40, 9))
  scores[0] = 0.1
  scores[1] = np.where(labels[1], 0.9, 0.2)  # an exact match
  pred = (scores >= 0.5).astype(int)
  got = metrics.set_accuracy(scores, labels)
  assert got["jaccard"] == pytest.approx(
    jaccard_score(labels, pred, average="samples", zero_division=1)
  )
  assert got["hamming"] == pytest.approx(1 - hamming_loss(labels, pred))
  assert got["exact_match"] == pytest.approx(accuracy_score(labels, pred))
  assert got["exact_match"] >= 2 / 40
