"""The evaluation report: its PR curves against the project's AP, its files,
and an HTML that references only files that exist."""

import json
import os
import re

import numpy as np
import pytest

from mlar_jax import metrics
from mlar_jax.explain import report


def test_pr_curve_integrates_to_the_average_precision():
  rng = np.random.default_rng(0)
  for _ in range(20):
    labels = rng.random(40) < 0.3
    labels[0] = True
    scores = rng.integers(0, 8, 40).astype(float)  # many ties
    scores[rng.random(40) < 0.1] = -np.inf  # videos without views
    precision, recall = report.pr_curve(scores, labels)
    assert np.all(np.diff(recall) >= 0) and recall[-1] == 1.0
    ap = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    np.testing.assert_allclose(ap, metrics.average_precision(scores, labels))


def _results(names, per_rate):
  ap = {n: (None if i == 0 else 0.1 * i) for i, n in enumerate(names)}
  return {
    "split": "test",
    "step": 7,
    "output": "logits",
    "macro_map": 0.25,
    "per_class_ap": ap,
    "per_rate": per_rate,
    "outputs": {"logits": {"macro_map": 0.25, "micro_map": 0.3, "top1": 0.5, "top5": 0.9}},
  }


def _referenced(path):
  text = open(path, encoding="utf-8").read()
  return re.findall(r'src="([^"]+)"', text), text


@pytest.mark.parametrize("mlar", [False, True])
def test_report_files_exist_and_the_html_references_only_them(tmp_path, mlar):
  names = [f"c{i}" for i in range(6)]
  rng = np.random.default_rng(1)
  labels = rng.random((30, 6)) < 0.3
  labels[:, 0] = False  # a class without positives
  scores = rng.random((30, 6))
  one_rate = {"4": {"views": 4, "macro_map": 0.25}}
  rates = {
    "2": {"views": 2, "macro_map": 0.2},
    "4": {"views": 2, "macro_map": 0.22},
    "2+4": {"views": 4, "macro_map": 0.25},
  }

  class Writer:
    def __init__(self):
      self.images = {}

    def write_images(self, step, images):
      assert step == 7
      self.images.update(images)

  writer = Writer()
  mask = np.eye(6) if mlar else None
  path = report.write_report(
    str(tmp_path / "report"),
    _results(names, rates if mlar else one_rate),
    scores,
    labels,
    names,
    mask=mask,
    correlation=np.full((6, 6), 1 / 6) if mlar else None,
    writer=writer,
  )
  assert path == str(tmp_path / "report" / "report.html")
  expected = {"ap_sorted.png", "pr_curves.png"} | (
    {"correlation.png", "per_rate.png"} if mlar else set()
  )
  assert set(os.listdir(tmp_path / "report")) == expected | {"report.html"}
  srcs, text = _referenced(path)
  assert set(srcs) == expected
  for src in srcs:
    assert os.path.getsize(tmp_path / "report" / src) > 1000
  assert "<td>0.2500</td>" in text and "Evaluation of test, step 7" in text
  assert set(writer.images) == {f"report/{n[:-4]}" for n in expected}
  for image in writer.images.values():
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
  json.dumps(_results(names, one_rate))  # the results stay JSON


def test_head_mask_reads_the_mlar_constants_only():
  assert report.head_mask({"batch_stats": {}}) is None
  mask = report.head_mask({"constants": {"head": {"correlation_mask": np.eye(3)}}})
  np.testing.assert_array_equal(mask, np.eye(3, dtype=np.float32))


def test_after_evaluation_logs_a_failure_instead_of_raising(tmp_path):
  names = ["a", "b"]
  labels = np.array([[1, 0], [0, 1]])
  results = _results(names, {"4": {"views": 1, "macro_map": 0.5}})
  path = report.after_evaluation(str(tmp_path), results, np.eye(2), labels, names, {})
  assert path == str(tmp_path / "report" / "report.html")
  (tmp_path / "blocked").write_text("a file where the report folder should go")
  assert (
    report.after_evaluation(str(tmp_path / "blocked"), results, np.eye(2), labels, names, {})
    is None
  )
