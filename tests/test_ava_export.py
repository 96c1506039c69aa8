"""The scenes dataset exported as an AVA folder: the `ava` source reads back
its keyframes, boxes, labels and frames, and a detector scoring the true
labels gets frame mAP 1 from the official-format files."""

import os

import numpy as np
import pytest

from mlar_jax import config_lib
from mlar_jax.data import ava, pipeline, scenes
from mlar_jax.tools import ava_eval

SETTINGS = dict(seed=0, num_train=3, num_test=2, resolution=32, min_frames=64, max_frames=80)
FPS = scenes.FPS


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "ava"
  assert scenes.export_ava(str(out), **SETTINGS) == {"videos": 5, "written": 5, "kept": 0}
  return out


def _data(root, **ava_keys):
  d = config_lib.data_config()
  d.name, d.num_frames, d.rates = "ava", 4, (4,)
  d.extras, d.max_actors = ("boxes", "actor_labels"), scenes.MAX_ACTORS
  d.ava.update(root=str(root), fps=FPS, **ava_keys)
  return d


def _scenes(split, n):
  keys = ("seed", "resolution", "min_frames", "max_frames")
  return scenes.SceneVideos(split, num_videos=n, **{k: SETTINGS[k] for k in keys})


def test_the_ava_source_reads_back_the_keyframes(export):
  assert sorted(os.listdir(export)) == [
    "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "ava_train_excluded_timestamps_v2.2.csv",
    "ava_train_predicted_boxes.csv",
    "ava_train_v2.2.csv",
    "ava_val_excluded_timestamps_v2.2.csv",
    "ava_val_predicted_boxes.csv",
    "ava_val_v2.2.csv",
    "frames",
    "scenes_export.json",
  ]
  source = pipeline.make_source(_data(export), "train")
  assert source.class_names == scenes.AVA_CLASSES
  videos = _scenes("train", SETTINGS["num_train"])
  columns = [scenes.CLASS_NAMES.index(c) for c in scenes.AVA_CLASSES]
  seen = 0
  for i in range(len(source)):
    r = source[i]
    vid, ts = r["id"].split(",")
    record = videos[int(vid[-6:])]
    frame = (int(ts) - ava.SEGMENT_START) * int(FPS)
    boxes, valid = videos.boxes(record, np.array([frame]))
    labels = videos.actor_labels(record, np.array([frame]))[0][:, columns]
    labelled = valid[0] & labels.any(-1)
    # The ground truth: the labelled actors, boxes to AVA's 3 decimals.
    np.testing.assert_allclose(r["boxes"], boxes[0][labelled], atol=5e-4 + 1e-6)
    np.testing.assert_array_equal(r["box_labels"], labels[labelled])
    # The keyframe is the clip's (T/2)-th frame (at T * rate / 2 in the
    # window), through JPEG: nearer to the rendered keyframe than to its
    # neighbours.
    got = source.load_frames(r, np.array([4 * 4 // 2]))[0].astype(int)
    near = [frame - 1, frame, frame + 1]
    errors = [np.abs(got - videos.load_frames(record, np.array([f]))[0]).mean() for f in near]
    assert errors[1] < 6 and errors[1] < min(errors[0], errors[2]), errors
    seen += 1
  # Every keyframe is annotated or excluded.
  excluded = ava.read_exclusions(str(export / "ava_train_excluded_timestamps_v2.2.csv"))
  keyframes = sum((videos[k]["num_frames"] - 1) // int(FPS) for k in range(SETTINGS["num_train"]))
  assert seen + len(excluded) == keyframes and seen > 0


def test_oracle_scores_on_the_person_boxes_give_frame_map_one(export):
  val = pipeline.make_source(_data(export, val_boxes="ava_val_predicted_boxes.csv"), "val")
  truth = pipeline.make_source(_data(export), "val")
  labels = {}
  for i in range(len(truth)):
    r = truth[i]
    for box, lab in zip(r["boxes"], r["box_labels"]):
      labels[(r["id"], tuple(np.round(box, 3)))] = lab
  k, m, a = len(val), val.max_actors, val.num_classes
  boxes, valid, scores = np.zeros((k, m, 4)), np.zeros((k, m), bool), np.zeros((k, m, a))
  for i in range(k):
    r = val[i]
    p = len(r["boxes"])
    boxes[i, :p], valid[i, :p] = r["boxes"], True
    for j, box in enumerate(r["boxes"]):
      scores[i, j] = 0.05 + 0.9 * labels.get((r["id"], tuple(np.round(box, 3))), 0)
  path = str(export / "oracle.csv")
  ava.write_detections(
    path, ava.detection_rows(val.video_ids(), boxes, valid, scores, val.action_ids)
  )
  mean, ap, _ = ava_eval.evaluate_files(
    str(export / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
    str(export / "ava_val_v2.2.csv"),
    path,
    str(export / "ava_val_excluded_timestamps_v2.2.csv"),
  )
  assert mean == 1.0
  assert all(v == 1.0 or np.isnan(v) for v in ap.values())


def test_the_export_command(tmp_path):
  out = tmp_path / "ava"
  small = ["--num_train=1", "--num_test=1", "--resolution=16", "--min_frames=64", "--max_frames=64"]
  scenes.main(["export", "--format=ava", f"--out={out}", *small])
  assert len(os.listdir(out / "frames" / "train000000")) == 64
  assert os.path.exists(out / "frames" / "test000000" / "test000000_000064.jpg")
