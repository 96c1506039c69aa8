"""Volleyball: the annotations parser on a hand-written file, the source on
frame folders the test writes, the scenes export read back, and
`configs/volleyball.py:runlocal` (group activity from the players' boxes)
trained and evaluated through the normal entry point."""

import json

import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from mlar_jax import train, validation
from mlar_jax.data import pipeline, scenes, video, volleyball

# Two clips of a 1280 x 720 video. The public files spell "r-pass" with a
# hyphen and "l_spike" with an underscore; both are read.
ANNOTATIONS = """\
3596.jpg r-pass 359 470 76 135 digging 616 481 80 135 waiting 758 419 44 135 standing
3606.jpg l_spike 100 200 50 100 spiking   200 200 50 100 blocking

"""


def _write_video(root, vid, text, size=(1280, 720)):
  folder = root / str(vid)
  folder.mkdir(parents=True)
  (folder / volleyball.ANNOTATIONS).write_text(text)
  for line in text.splitlines():
    if not line.strip():
      continue
    frame = int(line.split()[0].split(".")[0])
    clip = folder / str(frame)
    clip.mkdir()
    for n in range(frame - volleyball.HALF_WINDOW, frame + volleyball.HALF_WINDOW + 1):
      # Each frame's pixels hold its number (mod 256): which frame came back.
      Image.fromarray(np.full((size[1], size[0], 3), n % 256, np.uint8)).save(
        clip / f"{n}.jpg", quality=100
      )


def test_parser_reads_a_hand_written_file(tmp_path):
  path = tmp_path / "annotations.txt"
  path.write_text(ANNOTATIONS)
  clips = volleyball.read_annotations(str(path))
  assert [c["frame"] for c in clips] == [3596, 3606]
  assert [volleyball.ACTIVITIES[c["group"]] for c in clips] == ["r_pass", "l_spike"]
  np.testing.assert_array_equal(
    clips[0]["boxes"], [[359, 470, 76, 135], [616, 481, 80, 135], [758, 419, 44, 135]]
  )
  assert [volleyball.ACTIONS[a] for a in clips[0]["actions"]] == ["digging", "waiting", "standing"]
  assert [volleyball.ACTIONS[a] for a in clips[1]["actions"]] == ["spiking", "blocking"]


@pytest.mark.parametrize(
  "line, message",
  [
    ("3596.jpg r_pass 1 2 3 4", r"annotations.txt:2: expected .* got 6 fields"),
    ("3596.jpg r_pass 1 2 3 4 diving", r":2: unknown action 'diving'"),
    ("3596.jpg r_serve 1 2 3 4 waiting", r":2: unknown group activity 'r_serve'"),
    ("frame.jpg r_pass 1 2 3 4 waiting", r":2: 'frame.jpg' is not a frame name"),
    ("3596.jpg r_pass 1 2 x 4 waiting", r":2: player 1: box .* is not numbers"),
    ("3596.jpg r_pass 1 2 0 4 waiting", r":2: player 1: box width and height must be > 0"),
    ("3606.jpg r_pass 1 2 3 4 waiting", r":2: frame 3606 already annotated on line 1"),
  ],
)
def test_parser_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "annotations.txt"
  path.write_text(f"3606.jpg l_set 1 2 3 4 waiting\n{line}\n")
  with pytest.raises(ValueError, match=message):
    volleyball.read_annotations(str(path))


def test_source_labels_boxes_and_frames(tmp_path):
  _write_video(tmp_path, 7, ANNOTATIONS)
  kw = dict(root=str(tmp_path), videos=[7], num_frames=4, rate=4)
  actions = volleyball.VolleyballClips("train", task="actions", **kw)
  group = volleyball.VolleyballClips("train", task="group", **kw)
  assert len(actions) == 2 and actions.video_ids() == ["7/3596", "7/3606"]
  assert actions.class_names == volleyball.ACTIONS and group.class_names == volleyball.ACTIVITIES
  a = volleyball.ACTIONS.index
  expected = np.zeros((2, 9), np.int32)
  expected[0, [a("digging"), a("waiting"), a("standing")]] = 1
  expected[1, [a("spiking"), a("blocking")]] = 1
  np.testing.assert_array_equal(actions.label_matrix(), expected)
  np.testing.assert_array_equal(
    group.label_matrix().argmax(1),
    [volleyball.ACTIVITIES.index("r_pass"), volleyball.ACTIVITIES.index("l_spike")],
  )
  assert (group.label_matrix().sum(1) == 1).all()
  assert actions.max_actors == 3
  record = actions[0]
  # (x, y, w, h) pixels of a 1280 x 720 frame -> (y1, x1, y2, x2) in [0, 1].
  boxes, valid = actions.boxes(record, np.arange(3))
  np.testing.assert_allclose(boxes[2, 0], [470 / 720, 359 / 1280, 605 / 720, 435 / 1280], rtol=1e-6)
  assert boxes.shape == (3, 3, 4) and valid.all()
  labels = actions.actor_labels(record, np.arange(3))
  assert labels.shape == (3, 3, 9) and labels[1, 1, a("waiting")] == 1 and labels.sum() == 9
  # The clip's span is (T - 1) * rate + 1 = 13 frames from target - T * rate / 2:
  # its frame T / 2 (span index 8) is the target, where the boxes are.
  assert record["num_frames"] == 13
  frames = actions.load_frames(record, np.array([0, 8, 12]))
  np.testing.assert_allclose(
    frames[:, 0, 0, 0], [(3596 - 8) % 256, 3596 % 256, (3596 + 4) % 256], atol=1
  )
  # Past the folder's 20 frames each side, the end frame repeats.
  far = dict(record, start=-40)
  np.testing.assert_allclose(
    actions.load_frames(far, np.array([0]))[0, 0, 0, 0], (3596 - 20) % 256, atol=1
  )
  # A missing frame names its file.
  (tmp_path / "7" / "3596" / "3596.jpg").unlink()
  with pytest.raises(video.VideoDecodeError, match=r"7/3596/3596.jpg"):
    actions.load_frames(record, np.array([8]))


def test_source_names_a_missing_video(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"3/annotations.txt"):
    volleyball.VolleyballClips(
      "train", root=str(tmp_path), videos=[3], task="group", num_frames=4, rate=2
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  out = tmp_path_factory.mktemp("scenes") / "volleyball"
  summary = scenes.export_volleyball(
    str(out), seed=0, num_train=48, num_test=20, resolution=32, min_frames=64, max_frames=80
  )
  return out, summary


def test_export_reads_back_with_the_scenes_ground_truth(export):
  out, summary = export
  assert summary["videos"] + summary["skipped"] == 68 and summary["videos"] > 50
  for split in volleyball.OFFICIAL_SPLITS.values():
    for vid in split:
      assert (out / str(vid) / volleyball.ANNOTATIONS).exists()
  actions = volleyball.read_names(str(out / "actions.txt"))
  activities = volleyball.read_names(str(out / "activities.txt"))
  assert actions == scenes.VOLLEYBALL_ACTIONS and activities == scenes.VOLLEYBALL_ACTIVITIES
  # The first train video went to the first official train id, clip 100.
  videos = scenes.SceneVideos(
    "train", seed=0, num_videos=48, resolution=32, min_frames=64, max_frames=80
  )
  record = videos[0]
  target, group, players = scenes._volleyball_clip(videos, record)
  vid = volleyball.OFFICIAL_SPLITS["train"][0]
  clip = volleyball.read_annotations(
    str(out / str(vid) / volleyball.ANNOTATIONS), actions, activities
  )[0]
  assert clip["frame"] == 100 and activities[clip["group"]] == group
  # Its boxes are the actors' boxes at the target frame, in pixels.
  box, valid = videos.boxes(record, np.array([target]))
  np.testing.assert_allclose(clip["boxes"][:, :2], box[0, valid[0]][:, [1, 0]] * 32, atol=0.5)
  # Its frames are the video's, around the target (JPEG: close, not equal).
  source = volleyball.VolleyballClips(
    "train",
    root=str(out),
    videos=[vid],
    task="actions",
    num_frames=4,
    rate=4,
    actions=actions,
    activities=activities,
  )
  got = source.load_frames(source[0], np.array([8]))[0].astype(float)
  want = videos.load_frames(record, np.array([target]))[0].astype(float)
  assert np.abs(got - want).mean() < 6


def test_runlocal_group_from_boxes_trains_and_evaluates(export, tmp_path):
  out, _ = export
  config = load_config("volleyball", f"runlocal,root={out},task=group,boxes")
  assert config.model.task == "boxes" and config.loss.name == "softmax"
  workdir = tmp_path / "run"
  results = train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / "eval_results.json").read_text())
  assert saved["split"] == "test" and saved["macro_map"] == results["macro_map"]
  assert saved["num_videos"] == len(pipeline.make_source(config.data, "test"))
  assert set(saved["per_class_ap"]) == set(scenes.VOLLEYBALL_ACTIVITIES)
  assert 0.0 <= saved["top1"] <= 1.0 and 0.0 < saved["chance_top1"] <= 1.0
  assert set(saved["set_accuracy"]) == {"jaccard", "hamming", "exact_match"}


def test_config_checks(export):
  out, _ = export
  config = load_config("volleyball", f"runlocal,root={out}")
  config.eval.split = "val"
  with pytest.raises(ValueError, match=r"config.eval.split='val': is trained on"):
    validation.validate(config)
  config = load_config("volleyball", f"runlocal,root={out}")
  config.data.volleyball.train_splits = ("train", "dev")
  with pytest.raises(ValueError, match=r"config.data.volleyball.train_splits=\('train', 'dev'\)"):
    validation.validate(config)
  config = load_config("volleyball", f"runlocal,root={out},boxes")
  config.data.extras = ()
  with pytest.raises(ValueError, match=r"model.task='boxes' needs \['boxes'\]"):
    validation.validate(config)
  # A box classifier reads a classification dataset.
  config = load_config("volleyball", f"runlocal,root={out},boxes")
  pipeline.check_task(pipeline.make_source(config.data, "test"), config)
