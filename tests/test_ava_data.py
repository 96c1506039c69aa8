"""AVA's official files: strict parsers, and the ava_eval command on them."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mlar_jax.data import ava
from mlar_jax.tools import ava_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The official 60-class list's layout (ava_action_list_v2.1_for_activitynet_2018.pbtxt).
LABELMAP = """item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
item {
  name: "dance"
  id: 4
}
"""
# The v2.2 full list's layout.
LABELMAP_V22 = """label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crawl"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
"""
GT = """-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,1,0
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,4,0
-5KQ66BBWC4,0902,0.332,0.194,0.481,0.891,3,1
-5KQ66BBWC4,0903,0.100,0.100,0.400,0.900,1,0
-5KQ66BBWC4,0904,0.100,0.100,0.400,0.900,4,0
-5KQ66BBWC4,0905,0.100,0.100,0.400,0.900,2,0
"""


def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_labelmap_both_layouts(tmp_path):
  assert ava.read_labelmap(write(tmp_path, "a.pbtxt", LABELMAP)) == {
    1: "bend/bow (at the waist)",
    3: "crouch/kneel",
    4: "dance",
  }
  assert ava.read_labelmap(write(tmp_path, "b.pbtxt", LABELMAP_V22)) == {
    1: "bend/bow (at the waist)",
    2: "crawl",
  }


@pytest.mark.parametrize(
  "text,message",
  [
    ('item {\n  name: "a"\n}\n', "x.pbtxt:1: block has no id"),
    ("item {\n  id: 2\n}\n", "x.pbtxt:1: block has no name"),
    ('item {\n  name: "a"\n  id: two\n}\n', "x.pbtxt:3: id 'two' is not an integer"),
    ('item {\n  name: "a"\n  id: 0\n}\n', "x.pbtxt:3: id 0 (ids start at 1)"),
    (
      'item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n  id: 1\n}\n',
      "x.pbtxt:7: duplicate id 1",
    ),
    ('item {\n  name: "a"\n  id: 1\n', "x.pbtxt:1: block not closed"),
    ("item {\n  name: a\n  id: 1\n}\n", "x.pbtxt:2: name must be quoted"),
    ('item {\n  name "a"\n}\n', "x.pbtxt:2: expected 'key: value'"),
    ('name: "a"\n', "x.pbtxt:1: expected 'item {'"),
    ("\n", "x.pbtxt: no labels"),
  ],
)
def test_labelmap_errors_name_file_and_line(tmp_path, text, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    ava.read_labelmap(write(tmp_path, "x.pbtxt", text))


def test_annotations(tmp_path):
  rows = ava.read_boxes(write(tmp_path, "gt.csv", GT))
  assert len(rows) == 6
  assert rows.frames[0] == "-5KQ66BBWC4,0902" and rows.timestamps[3] == 903
  np.testing.assert_allclose(rows.boxes[2], [0.332, 0.194, 0.481, 0.891])
  np.testing.assert_array_equal(rows.actions, [1, 4, 3, 1, 4, 2])
  np.testing.assert_array_equal(rows.extra, [0, 0, 1, 0, 0, 0])  # person ids
  # Seven columns (no person id) are valid, as in the official reader.
  seven = ava.read_boxes(write(tmp_path, "g7.csv", "v,902,0.1,0.1,0.2,0.2,5\n"))
  assert seven.frames == ["v,0902"] and np.isnan(seven.extra[0])


@pytest.mark.parametrize(
  "text,message",
  [
    ("v,0902,0.1,0.1,0.2,0.2\n", "a.csv:1: 6 fields; expected video_id,timestamp,x1,y1,x2,y2,"),
    ("v,0902,0.1,0.1,0.2,0.2,1,0\n,0902,0.1,0.1,0.2,0.2,1,0\n", "a.csv:2: empty video id"),
    ("v,09o2,0.1,0.1,0.2,0.2,1,0\n", "a.csv:1: timestamp '09o2' is not an integer"),
    ("v,0902,0.1,x,0.2,0.2,1,0\n", "a.csv:1: y1 'x' is not a number"),
    ("v,0902,0.1,0.1,nan,0.2,1,0\n", "a.csv:1: x2 'nan' is not finite"),
    ("\nv,0902,0.3,0.1,0.2,0.2,1,0\n", "a.csv:2: box ['0.3', '0.1', '0.2', '0.2'] has x2 < x1"),
    ("v,0902,0.1,0.1,0.2,0.2,walk,0\n", "a.csv:1: action_id 'walk' is not an integer"),
    ("v,0902,0.1,0.1,0.2,0.2,1,p0\n", "a.csv:1: person_id 'p0' is not an integer"),
  ],
)
def test_annotation_errors_name_file_and_line(tmp_path, text, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    ava.read_boxes(write(tmp_path, "a.csv", text))


def test_person_boxes_keep_scores_at_or_above_the_threshold(tmp_path):
  text = (
    "v,0902,0.1,0.1,0.2,0.2,,0.95\nv,0902,0.3,0.1,0.5,0.6,,0.8\nv,0903,0.1,0.1,0.2,0.2,-1,0.79\n"
  )
  path = write(tmp_path, "boxes.csv", text)
  kept = ava.read_person_boxes(path, 0.8)
  assert kept.frames == ["v,0902", "v,0902"]
  np.testing.assert_array_equal(kept.actions, [-1, -1])
  np.testing.assert_allclose(kept.extra, [0.95, 0.8])
  assert len(ava.read_person_boxes(path, 0.0)) == 3
  with pytest.raises(ValueError, match="p.csv:1: 7 fields; expected .*action_id,score$"):
    ava.read_person_boxes(write(tmp_path, "p.csv", "v,0902,0.1,0.1,0.2,0.2,\n"), 0.8)
  with pytest.raises(ValueError, match="q.csv:1: score 'high' is not a number"):
    ava.read_person_boxes(write(tmp_path, "q.csv", "v,0902,0.1,0.1,0.2,0.2,,high\n"), 0.8)


def test_exclusions(tmp_path):
  keys = ava.read_exclusions(write(tmp_path, "ex.csv", "v,0904\nw,1798\n"))
  assert keys == {"v,0904", "w,1798"}
  with pytest.raises(ValueError, match="ex2.csv:2: 3 fields; expected video_id,timestamp"):
    ava.read_exclusions(write(tmp_path, "ex2.csv", "v,0904\nv,0905,x\n"))


def test_detections_round_trip_through_the_official_format(tmp_path):
  path = str(tmp_path / "det.csv")
  ava.write_detections(
    path, [("v", 902, (0.1, 0.2, 0.3, 0.4), 12, 0.98765), ("w", 1798, (0, 0, 1, 1), 3, 0.5)]
  )
  assert open(path).read().splitlines() == [
    "v,0902,0.100,0.200,0.300,0.400,12,0.9877",
    "w,1798,0.000,0.000,1.000,1.000,3,0.5000",
  ]
  rows = ava.read_boxes(path, last="score", require_last=True)
  assert rows.frames == ["v,0902", "w,1798"]
  np.testing.assert_allclose(rows.extra, [0.9877, 0.5])


# Detections for GT: class 1 found in frames 0902 and 0903 after a false
# positive ranked first (AP 2/3); class 4 found in 0902, its 0904 box missed
# (AP 1/2); class 3 never detected (AP 0); class 2 is outside the label map;
# frame 0905 excluded.
DETECTIONS = """-5KQ66BBWC4,0902,0.600,0.600,0.900,0.900,1,0.99
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,1,0.9
-5KQ66BBWC4,0903,0.100,0.100,0.400,0.900,1,0.8
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,4,0.7
-5KQ66BBWC4,0905,0.100,0.100,0.400,0.900,2,0.9
-5KQ66BBWC4,0905,0.100,0.100,0.400,0.900,4,0.95
"""


def test_ava_eval_on_the_official_files(tmp_path):
  files = dict(
    labelmap=write(tmp_path, "labels.pbtxt", LABELMAP),
    groundtruth=write(tmp_path, "gt.csv", GT),
    detections=write(tmp_path, "det.csv", DETECTIONS),
    exclusions=write(tmp_path, "ex.csv", "-5KQ66BBWC4,0905\n"),
  )
  mean, ap, labels = ava_eval.evaluate_files(**files)
  assert ap == pytest.approx({1: 2 / 3, 3: 0.0, 4: 0.5})
  assert mean == pytest.approx((2 / 3 + 0.5) / 3)
  # Without the exclusions, the class-4 detection in 0905 is a false
  # positive ranked first: precision 0, 1/2 at 0902's hit, AP 1/4.
  _, ap, _ = ava_eval.evaluate_files(**{**files, "exclusions": None})
  assert ap[4] == pytest.approx(0.25)

  cmd = [sys.executable, "-m", "mlar_jax.tools.ava_eval"]
  cmd += [f"--{k}={v}" for k, v in files.items()]
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
  lines = out.strip().splitlines()
  assert lines[0] == "AP@0.5IOU 1 bend/bow (at the waist): 0.6667"
  assert lines[-1] == f"frame mAP@0.5IOU over 3 classes: {(2 / 3 + 0.5) / 3:.4f}"

  bad = write(tmp_path, "bad.csv", DETECTIONS + "-5KQ66BBWC4,0906,0.1,0.1,0.4,0.9,1\n")
  cmd[-2] = f"--detections={bad}"
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert proc.returncode != 0
  assert f"ava_eval: {bad}:7: 7 fields; expected" in proc.stderr
