"""AVA frame mAP: hand-computed cases and the VOC AP formula as a plain loop."""

import importlib
import os

import numpy as np
import pytest

from mlar_jax import metrics


def reference_voc_ap(scores, tp, num_gt):
  """The TF object-detection `compute_precision_recall` and
  `compute_average_precision`, written as loops (tie-free scores)."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  precision, recall, hits = [], [], 0
  for rank, i in enumerate(order, 1):
    hits += bool(tp[i])
    precision.append(hits / rank)
    recall.append(hits / num_gt)
  if not precision:
    return 0.0
  recall = [0.0] + recall + [1.0]
  precision = [0.0] + precision + [0.0]
  for i in range(len(precision) - 2, -1, -1):
    precision[i] = max(precision[i], precision[i + 1])
  return sum(
    (recall[i] - recall[i - 1]) * precision[i]
    for i in range(1, len(recall))
    if recall[i] != recall[i - 1]
  )


@pytest.mark.parametrize("seed", range(20))
def test_voc_ap_equals_the_reference_loop(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(0, 30))
  scores = rng.permutation(n) / max(n, 1) + 0.01  # distinct
  tp = rng.random(n) < 0.4
  num_gt = int(tp.sum() + rng.integers(0 if tp.any() else 1, 4))
  got = metrics.voc_average_precision(scores, tp, num_gt)
  assert got == pytest.approx(reference_voc_ap(list(scores), list(tp), num_gt), abs=1e-12)


def test_voc_ap_edge_cases():
  assert np.isnan(metrics.voc_average_precision([], [], 0))
  assert metrics.voc_average_precision([], [], 3) == 0.0
  with pytest.raises(ValueError, match="3 true positives for 2"):
    metrics.voc_average_precision([0.3, 0.2, 0.1], [True, True, True], 2)


def test_box_iou():
  a = np.array([[0.0, 0.0, 0.5, 0.5]])
  b = np.array(
    [[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3]]
  )
  np.testing.assert_allclose(metrics.box_iou(a, b), [[1.0, 1 / 3, 0.0, 0.0]])
  assert metrics.box_iou(b[3:], b[3:])[0, 0] == 0.0  # empty boxes: 0, not NaN


A = [0.1, 0.1, 0.4, 0.9]
B = [0.5, 0.2, 0.9, 0.95]
SHIFTED_A = [0.25, 0.1, 0.55, 0.9]  # IoU with A: 0.15 * 0.8 / (0.45 * 0.8) = 1/3


def frame_map(gt, det, classes, **kw):
  """ava_frame_map on rows: gt (frame, box, action), det (frame, box, action, score)."""
  g = list(zip(*gt)) if gt else [[], [], []]
  d = list(zip(*det)) if det else [[], [], [], []]
  return metrics.ava_frame_map(
    list(g[0]),
    np.array(g[1]),
    np.array(g[2]),
    list(d[0]),
    np.array(d[1]),
    np.array(d[2]),
    np.array(d[3]),
    classes,
    **kw,
  )


GT = [
  ("v,0902", A, 1),
  ("v,0902", B, 1),
  ("v,0902", B, 2),
  ("v,0903", A, 2),
]


def test_a_perfect_detector_scores_one():
  det = [(f, box, a, 0.9) for f, box, a in GT]
  mean, ap = frame_map(GT, det, [1, 2])
  assert mean == 1.0 and ap == {1: 1.0, 2: 1.0}


def test_a_false_positive_ranked_first():
  # Class 1: precision 0, 1/2, 2/3 at the three ranks; the envelope is 2/3
  # at both true positives: AP = (2/3 + 2/3) / 2.
  det = [
    ("v,0903", A, 1, 0.95),  # no class-1 box in that frame
    ("v,0902", A, 1, 0.9),
    ("v,0902", B, 1, 0.8),
  ]
  _, ap = frame_map(GT, det, [1, 2])
  assert ap[1] == pytest.approx(2 / 3)
  assert ap[2] == 0.0  # ground truth and no detection


def test_a_duplicate_detection_is_a_false_positive():
  # Class 2 (two boxes): the duplicate of the first ranks second: precision
  # 1, 1/2, 2/3, envelope 1, 2/3, 2/3 at the hits: AP = (1 + 2/3) / 2.
  det = [
    ("v,0902", B, 2, 0.9),
    ("v,0902", B, 2, 0.8),
    ("v,0903", A, 2, 0.7),
  ]
  _, ap = frame_map(GT, det, [2])
  assert ap[2] == pytest.approx(5 / 6)


def test_a_shifted_box_below_iou_half_is_a_false_positive():
  det = [("v,0903", SHIFTED_A, 2, 0.9)]
  _, ap = frame_map(GT, det, [2])
  assert ap[2] == 0.0
  # At a matching threshold below its IoU (1/3) it finds its box.
  _, ap = frame_map(GT, det, [2], iou_threshold=0.3)
  assert ap[2] == pytest.approx(0.5)


def test_no_fallback_to_the_second_best_box():
  # Two overlapping class-1 boxes P and Q (IoU 0.6). The second detection
  # overlaps P most (IoU 0.905, taken by the first) and Q enough (0.667):
  # it is a false positive all the same, as in the official evaluation.
  p, q = [0.0, 0.0, 0.4, 1.0], [0.1, 0.0, 0.5, 1.0]
  second = [0.02, 0.0, 0.42, 1.0]
  np.testing.assert_allclose(
    metrics.box_iou(np.array([second]), np.array([p, q])), [[0.38 / 0.42, 0.32 / 0.48]]
  )
  det = [("f,0902", p, 1, 0.9), ("f,0902", second, 1, 0.8)]
  _, ap = frame_map([("f,0902", p, 1), ("f,0902", q, 1)], det, [1])
  assert ap[1] == pytest.approx(0.5)  # precision 1 then 1/2; one hit of two


def test_excluded_timestamps_are_skipped_on_both_sides():
  det = [
    ("v,0904", A, 1, 0.99),  # a false positive, in an excluded frame
    ("v,0902", A, 1, 0.9),
    ("v,0902", B, 1, 0.8),
  ]
  gt = GT + [("v,0905", A, 1)]  # a missed box, in an excluded frame
  _, ap = frame_map(gt, det, [1])
  # Both count: the false positive first, then two hits of three boxes:
  # envelope 2/3 at each hit, AP = (2/3 + 2/3) / 3.
  assert ap[1] == pytest.approx(4 / 9)
  _, ap = frame_map(gt, det, [1], excluded={"v,0904", "v,0905"})
  assert ap[1] == 1.0


def test_classes_outside_the_label_map_are_ignored_and_empty_ones_left_out():
  det = [(f, box, a, 0.9) for f, box, a in GT] + [("v,0902", A, 99, 0.99)]
  gt = GT + [("v,0903", B, 99)]
  mean, ap = frame_map(gt, det, [1, 2, 7])
  assert set(ap) == {1, 2, 7}
  assert np.isnan(ap[7])  # in the label map, no ground truth: not in the mean
  assert mean == 1.0


def test_only_the_top_50_detections_of_a_frame_count():
  # 50 false positives outscore the one true positive in the frame: it is cut.
  fps = [("v,0903", [0.0, 0.0, 0.05, 0.05], 2, 0.9 - i * 0.001) for i in range(50)]
  det = fps + [("v,0903", A, 2, 0.1)]
  _, ap = frame_map([("v,0903", A, 2)], det, [2])
  assert ap[2] == 0.0
  _, ap = frame_map([("v,0903", A, 2)], det, [2], max_detections=0)
  assert ap[2] == pytest.approx(1 / 51)
  # Rows of actions outside the label map do not take places in the 50.
  other = [(f, b, 5, s) for f, b, _, s in fps]
  _, ap = frame_map([("v,0903", A, 2)], other + [("v,0903", A, 2, 0.1)], [2])
  assert ap[2] == 1.0


def test_difficult_boxes_neither_count_nor_penalise():
  gt = [("v,0902", A, 1), ("v,0902", B, 1)]
  det = [("v,0902", B, 1, 0.9), ("v,0902", A, 1, 0.8)]
  _, ap = frame_map(gt, det, [1], gt_difficult=np.array([False, True]))
  assert ap[1] == 1.0  # the detection of B is ignored, not a false positive


def test_degenerate_detection_boxes_are_dropped():
  det = [("v,0903", [0.3, 0.3, 0.3, 0.6], 2, 0.99), ("v,0903", A, 2, 0.5)]
  _, ap = frame_map([("v,0903", A, 2)], det, [2])
  assert ap[2] == 1.0


def test_frame_map_equals_a_brute_force_evaluation_on_random_frames():
  """Random frames: the per-class AP equals the reference loop over matches
  made detection by detection, as the official per-image evaluation."""
  rng = np.random.default_rng(0)
  gt, det = [], []
  for f in range(12):
    key = f"vid{f % 3},{902 + f:04d}"
    people = rng.uniform(0, 0.5, (3, 2))
    people = np.concatenate([people, people + rng.uniform(0.2, 0.5, (3, 2))], 1)
    for p in people:
      for a in rng.choice([1, 2, 3], size=2, replace=False):
        gt.append((key, list(p), int(a)))
      for a in (1, 2, 3):
        jitter = p + rng.normal(0, 0.05, 4)
        det.append((key, list(jitter), a, float(rng.random())))
  mean, ap = frame_map(gt, det, [1, 2, 3])
  for c in (1, 2, 3):
    scores, hits = [], []
    for key in dict.fromkeys(d[0] for d in det):
      boxes = [g[1] for g in gt if g[0] == key and g[2] == c]
      taken = [False] * len(boxes)
      mine = sorted((d for d in det if d[0] == key and d[2] == c), key=lambda d: -d[3])
      for d in mine:
        ious = [metrics.box_iou(np.array([d[1]]), np.array([b]))[0, 0] for b in boxes]
        hit = False
        if ious:
          g = int(np.argmax(ious))
          if ious[g] >= 0.5 and not taken[g]:
            hit = taken[g] = True
        scores.append(d[3])
        hits.append(hit)
    num_gt = sum(1 for g in gt if g[2] == c)
    assert ap[c] == pytest.approx(reference_voc_ap(scores, hits, num_gt), abs=1e-12)
  assert 0.0 < mean < 1.0


OFFICIAL = os.environ.get("MLAR_AVA_OFFICIAL", "")


@pytest.mark.skipif(
  not OFFICIAL,
  reason="set MLAR_AVA_OFFICIAL to an activitynet/ActivityNet Evaluation/ folder (commit 3fee089)",
)
def test_frame_map_equals_the_official_evaluator(tmp_path, monkeypatch):
  """Random files through the official ActivityNet script (the v2.1/v2.2
  protocol with excluded timestamps) and through ours: the same APs."""
  monkeypatch.setattr(np, "float", float, raising=False)  # its numpy 1 aliases
  monkeypatch.setattr(np, "NAN", np.nan, raising=False)
  monkeypatch.syspath_prepend(os.path.join(OFFICIAL, "ava"))
  monkeypatch.syspath_prepend(OFFICIAL)
  official = importlib.import_module("get_ava_performance")
  from mlar_jax.tools import ava_eval

  rng = np.random.default_rng(0)
  gt, det, excluded = [], [], []
  for v, t in [(v, t) for v in ("a", "b", "c") for t in range(902, 917)]:
    if rng.random() < 0.15:
      excluded.append(f"{v},{t:04d}")
    for pid in range(int(rng.integers(0, 4))):
      p = np.concatenate([q := rng.uniform(0, 0.6, 2), q + rng.uniform(0.05, 0.4, 2)])
      acts = rng.choice(np.arange(1, 81), size=int(rng.integers(1, 4)), replace=False)
      gt += [f"{v},{t:04d},{','.join(f'{x:.3f}' for x in p)},{a},{pid}" for a in acts]
      for a in list(acts) + list(rng.integers(1, 81, 3)):
        box = np.sort((p + rng.normal(0, 0.03, 4)).clip(0, 1).reshape(2, 2), axis=0).ravel()
        det.append(f"{v},{t:04d},{','.join(f'{x:.3f}' for x in box)},{a},{rng.random():.6f}")
    det += [
      f"{v},{t:04d},0.1,0.1,0.3,0.3,{rng.integers(1, 81)},{rng.random():.6f}"
      for _ in range(55 if rng.random() < 0.1 else 0)
    ]
  files = {}
  for name, rows in (("gt", gt), ("det", det), ("ex", excluded)):
    files[name] = tmp_path / f"{name}.csv"
    files[name].write_text("\n".join(rows) + "\n")
  labelmap = os.path.join(OFFICIAL, "ava", "ava_action_list_v2.1_for_activitynet_2018.pbtxt.txt")
  got = {}
  monkeypatch.setattr(official.pprint, "pprint", lambda m, indent=2: got.update(m))
  with (
    open(labelmap) as lm,
    open(files["gt"]) as g,
    open(files["det"]) as d,
    open(files["ex"]) as e,
  ):
    official.run_evaluation(lm, g, d, e)
  mean, ap, labels = ava_eval.evaluate_files(labelmap, files["gt"], files["det"], files["ex"])
  assert mean == pytest.approx(got["PascalBoxes_Precision/mAP@0.5IOU"], abs=1e-12)
  for i, name in labels.items():
    want = got[f"PascalBoxes_PerformanceByCategory/AP@0.5IOU/{name}"]
    assert ap[i] == pytest.approx(want, abs=1e-12, nan_ok=True)
