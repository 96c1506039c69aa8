"""AVA keyframe clips from PySlowFast's frame layout, through the pipeline."""

import os
import re

import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from mlar_jax import config_lib
from mlar_jax.data import ava, pipeline

FPS = 4  # frames per second of the test's frame folders (AVA's are 30)
LABELMAP = 'item {\n  name: "stand"\n  id: 12\n}\nitem {\n  name: "sit"\n  id: 11\n}\n'
# Video "aa" has 24 frames (900-906 s), "bb" 12 (900-903 s).
GT = """aa,0902,0.1,0.2,0.5,0.9,12,0
aa,0902,0.1,0.2,0.5,0.9,11,0
aa,0902,0.6,0.1,0.9,0.8,11,1
aa,0902,0.6,0.1,0.9,0.8,99,1
aa,0903,0.2,0.2,0.4,0.4,99,0
aa,0905,0.2,0.2,0.4,0.4,12,0
bb,0901,0.3,0.3,0.6,0.7,12,0
bb,0902,0.3,0.3,0.6,0.7,11,0
"""
BOXES = """aa,0902,0.1,0.2,0.5,0.9,,0.95
aa,0902,0.0,0.0,0.3,0.3,,0.85
aa,0902,0.5,0.5,0.6,0.6,,0.5
bb,0902,0.3,0.3,0.6,0.7,-1,0.99
"""


def value(k):
  """The grey level of frame k (0-based): JPEG keeps flat frames to +-2."""
  return 10 * k


def make_dataset(root):
  for vid, n in (("aa", 24), ("bb", 12)):
    os.makedirs(os.path.join(root, "frames", vid))
    for k in range(n):
      img = np.full((16, 20, 3), value(k), np.uint8)
      Image.fromarray(img).save(os.path.join(root, "frames", vid, f"{vid}_{k + 1:06d}.jpg"))
  for name, text in (
    ("labels.pbtxt", LABELMAP),
    ("train.csv", GT),
    ("val.csv", GT),
    ("excluded.csv", "bb,0901\n"),
    ("boxes.csv", BOXES),
  ):
    (root / name).write_text(text)


def data_config(root, **ava_keys):
  d = config_lib.data_config()
  d.name, d.num_frames, d.rates = "ava", 4, (2,)
  d.extras, d.max_actors = ("boxes", "actor_labels"), 3
  d.min_short_side = d.max_short_side = d.eval_short_side = d.crop_size = 16
  d.ava.update(
    root=str(root),
    frames="frames",
    train_csv="train.csv",
    val_csv="val.csv",
    labelmap="labels.pbtxt",
    train_exclusions="excluded.csv",
    val_exclusions="excluded.csv",
    fps=float(FPS),
    **ava_keys,
  )
  return d


def grey(frames):
  """The frame numbers of flat frames [F, H, W, 3]."""
  return np.round(frames.reshape(len(frames), -1).mean(axis=1) / 10).astype(int)


def test_keyframes_boxes_and_labels(tmp_path):
  make_dataset(tmp_path)
  source = pipeline.make_source(data_config(tmp_path), "train")
  # aa,0903 has only an action outside the label map; bb,0901 is excluded.
  assert source.video_ids() == ["aa,0902", "aa,0905", "bb,0902"]
  assert source.class_names == ("stand", "sit") and source.action_ids == (12, 11)
  r = source[0]
  # Rows of the same box are one person; (x1, y1, x2, y2) -> (y1, x1, y2, x2).
  np.testing.assert_allclose(r["boxes"], [[0.2, 0.1, 0.9, 0.5], [0.1, 0.6, 0.8, 0.9]])
  np.testing.assert_array_equal(r["box_labels"], [[1, 1], [0, 1]])
  np.testing.assert_array_equal(r["labels"], [1, 1])
  np.testing.assert_array_equal(source.label_matrix(), [[1, 1], [1, 0], [0, 1]])
  assert source.max_actors == 2
  boxes, valid = source.boxes(r, np.arange(4))
  assert boxes.shape == (4, 2, 4) and valid.all()
  assert source.actor_labels(r, np.arange(4)).shape == (4, 2, 2)


def test_clips_are_pyslowfast_keyframe_sequences(tmp_path):
  """T frames every rate from keyframe - T * rate / 2, clamped to the video."""
  make_dataset(tmp_path)
  d = data_config(tmp_path)
  source = pipeline.make_source(d, "train")
  clip = pipeline.TrainClip(
    source=source,
    num_frames=4,
    rates=(2,),
    rate_probs=None,
    min_short_side=16,
    max_short_side=16,
    crop_size=16,
    flip=False,
    label_mode="video",
    errors=pipeline.DecodeErrors(1.0),
    extras=pipeline.Extras.from_config(d),
  )
  # aa,0902: keyframe frame (902 - 900) * 4 = 8; frames 4, 6, 8, 10.
  # aa,0905: keyframe 20 of 24 frames; 16, 18, 20, 22.
  # bb,0902: keyframe 8 of 12; 4, 6, 8, 10.
  for index, want in ((0, [4, 6, 8, 10]), (1, [16, 18, 20, 22]), (2, [4, 6, 8, 10])):
    record = source[index]
    assert ava.keyframe_index(int(record["id"][-4:]), FPS) - 4 == record["start"]
    ex = clip.random_map(record, np.random.default_rng(0))
    np.testing.assert_array_equal(grey(ex["video"]), want)
    np.testing.assert_array_equal(
      ex["actor_labels"][:, : len(record["box_labels"])][0], record["box_labels"]
    )
    assert ex["box_valid"].shape == (4, 3) and ex["box_valid"][:, : len(record["boxes"])].all()
  # Past the ends the first and last frames repeat.
  near_start = dict(source[0], start=-3)
  np.testing.assert_array_equal(
    grey(source.load_frames(near_start, np.array([0, 2, 4, 6]))), [0, 0, 1, 3]
  )
  near_end = dict(source[1], start=21)
  np.testing.assert_array_equal(
    grey(source.load_frames(near_end, np.array([0, 2, 4]))), [21, 23, 23]
  )


def test_person_boxes_above_the_threshold(tmp_path):
  make_dataset(tmp_path)
  # Training: detections add boxes (0.95 and 0.85; not 0.5) to the ground
  # truth; one repeats a ground-truth box and merges with it.
  train = pipeline.make_source(data_config(tmp_path, train_boxes="boxes.csv"), "train")
  r = train[0]
  assert len(r["boxes"]) == 3
  np.testing.assert_allclose(r["boxes"][2], [0.0, 0.0, 0.3, 0.3])
  np.testing.assert_array_equal(r["box_labels"], [[1, 1], [0, 1], [0, 0]])
  # Evaluation with val_boxes: the detections only, unlabelled.
  val = pipeline.make_source(data_config(tmp_path, val_boxes="boxes.csv"), "val")
  assert val.video_ids() == ["aa,0902", "bb,0902"]
  assert len(val[0]["boxes"]) == 2 and not val[0]["box_labels"].any()
  strict = pipeline.make_source(
    data_config(tmp_path, val_boxes="boxes.csv", box_threshold=0.9), "val"
  )
  assert len(strict[0]["boxes"]) == 1


def test_too_few_actor_slots_and_bad_settings_name_the_key(tmp_path):
  make_dataset(tmp_path)
  d = data_config(tmp_path)
  d.max_actors = 1
  with pytest.raises(ValueError, match=re.escape("config.data.max_actors=1")):
    pipeline.check_extras(pipeline.make_source(d, "train"), d)
  config = load_config("synthetic", "runlocal")
  config.data = data_config(tmp_path)
  config.eval.views = ((2, 1),)
  pipeline.validate_config(config)
  config.data.rates = (2, 4)
  with pytest.raises(ValueError, match=re.escape("config.data.rates=(2, 4): AVA clips")):
    pipeline.validate_config(config)
  config.data.rates = (2,)
  config.eval.views = ((2, 3),)
  with pytest.raises(ValueError, match=re.escape("config.eval.views=((2, 3),): AVA evaluates")):
    pipeline.validate_config(config)
  config.eval.views = ((2, 1),)
  config.data.ava.box_threshold = 1.5
  with pytest.raises(ValueError, match=re.escape("config.data.ava.box_threshold=1.5")):
    pipeline.validate_config(config)


def test_scores_round_trip_through_the_official_csv_and_evaluator(tmp_path):
  """Source boxes -> per-box scores -> official CSV -> ava_eval: the true
  labels scored highest give AP 1 on every class with ground truth."""
  from mlar_jax.tools import ava_eval

  make_dataset(tmp_path)
  source = pipeline.make_source(data_config(tmp_path), "val")
  records = [source[i] for i in range(len(source))]
  boxes = np.zeros((len(records), 3, 4), np.float32)
  valid = np.zeros((len(records), 3), bool)
  scores = np.zeros((len(records), 3, 2), np.float32)
  for i, r in enumerate(records):
    p = len(r["boxes"])
    boxes[i, :p], valid[i, :p] = r["boxes"], True
    scores[i, :p] = 0.1 + 0.8 * r["box_labels"]
  rows = ava.detection_rows(source.video_ids(), boxes, valid, scores, source.action_ids)
  assert len(rows) == 2 * 4  # 4 boxes x 2 classes
  assert rows[0] == ("aa", 902, pytest.approx((0.1, 0.2, 0.5, 0.9)), 12, pytest.approx(0.9))
  ava.write_detections(str(tmp_path / "det.csv"), rows)
  mean, ap, _ = ava_eval.evaluate_files(
    str(tmp_path / "labels.pbtxt"),
    str(tmp_path / "val.csv"),
    str(tmp_path / "det.csv"),
    str(tmp_path / "excluded.csv"),
  )
  assert ap == {12: 1.0, 11: 1.0} and mean == 1.0
