"""The scenes dataset exported as a Charades folder: the `charades` source
reads it back as the dataset itself (ids, labels, segments, frames, sound),
training runs on it by config alone, and the command refuses what it should."""

import json
import os
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from conftest import ROOT, load_config

from mlar_jax import config_lib, train
from mlar_jax.data import pipeline, scenes

SETTINGS = dict(seed=0, num_train=6, num_test=4, resolution=32, min_frames=64, max_frames=72)
SPLITS = {"train": SETTINGS["num_train"], "test": SETTINGS["num_test"]}
CLASSES = [f"c{i:03d} {name}" for i, name in enumerate(scenes.CLASS_NAMES)]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "charades"
  assert scenes.export_charades(str(out), **SETTINGS) == {"videos": 10, "written": 10, "kept": 0}
  return out


def _scenes(split):
  keys = ("seed", "resolution", "min_frames", "max_frames")
  return scenes.SceneVideos(split, num_videos=SPLITS[split], **{k: SETTINGS[k] for k in keys})


def _charades(root, split):
  # What `config.data.name=charades` builds, with only the root set.
  data = config_lib.data_config()
  data.name, data.charades.root = "charades", str(root)
  return pipeline.make_source(data, split)


def test_the_charades_source_reads_the_splits_back(export):
  for split in SPLITS:
    ref, got = _scenes(split), _charades(export, split)
    assert got.video_ids() == ref.video_ids() == [got[i]["id"] for i in range(len(got))]
    assert list(got.class_names) == CLASSES
    np.testing.assert_array_equal(got.label_matrix(), ref.label_matrix())
    for i in range(len(ref)):
      want, have = ref[i], got[i]
      np.testing.assert_array_equal(have["segments"][:, 0], want["segments"][:, 0])
      # Times are written with 2 decimals.
      np.testing.assert_allclose(have["segments"][:, 1:], want["segments"][:, 1:], atol=0.0051)
      assert got.video_info(have) == (want["num_frames"], scenes.FPS)


def test_decoded_frames_are_the_rendered_frames(export):
  ref, got = _scenes("test"), _charades(export, "test")
  checked = 0
  for i in range(len(ref)):
    rendered = ref.video(i).astype(np.float32)
    decoded = got.load_frames(got[i], np.arange(ref[i]["num_frames"])).astype(np.float32)
    assert decoded.shape == rendered.shape
    # crf 10: 1.8 to 3 grey levels on average (measured; 4:2:0 chroma blurs
    # the actors' coloured edges), about as much in every frame.
    per_frame = np.abs(decoded - rendered).mean(axis=(1, 2, 3))
    assert per_frame.mean() < 4.0 and per_frame.max() < 6.0
    # Aligned: on the pixels that move between rendered frames k and k +- 3,
    # decoded frame k is far closer to rendered frame k (ratios measured at
    # 0.13 to 0.53).
    for d in (-3, 3):
      for k in range(3, len(rendered) - 3):
        moving = np.abs(rendered[k] - rendered[k + d]).max(-1) > 32
        if moving.sum() >= 4:
          same = np.abs(decoded[k] - rendered[k])[moving].mean()
          assert same < 0.75 * np.abs(decoded[k] - rendered[k + d])[moving].mean(), (i, k, d)
          checked += 1
  assert checked >= 40  # frame pairs compared, over the split's videos


def _decoded_sound(path):
  """float32 [N'] mono samples of the file's audio stream, or None."""
  with av.open(str(path)) as container:
    if not container.streams.audio:
      return None
    stream = container.streams.audio[0]
    assert (stream.codec_context.name, stream.rate, stream.channels) == (
      "aac",
      scenes.SAMPLE_RATE,
      1,
    )
    return np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])


def _tone(x, freq):
  """Amplitude of the `freq` Hz component of samples `x` (Hann window)."""
  w = np.hanning(len(x))
  t = np.arange(len(x)) / scenes.SAMPLE_RATE
  return 2 * abs(np.sum(x * w * np.exp(-2j * np.pi * freq * t))) / w.sum()


def test_the_sound_track_is_the_scenes_audio(export):
  kinds, heard = set(), 0
  for split in SPLITS:
    ref = _scenes(split)
    for i in range(len(ref)):
      record = ref[i]
      sound = _decoded_sound(export / "Charades_v1_480" / f"{record['id']}.mp4")
      kinds.add(record["has_audio"])
      assert (sound is not None) == record["has_audio"]
      if sound is None:
        continue
      n = round(record["num_frames"] / scenes.FPS * scenes.SAMPLE_RATE)
      want = ref.audio(record, 0, n)
      # AAC's priming samples are dropped on decoding by the mp4 edit list,
      # so the tracks line up at lag 0; the coder's loss is in the noise.
      assert len(sound) >= n and np.corrcoef(sound[:n], want)[0, 1] > 0.98
      # Each sounding instance is heard while it lasts and not elsewhere.
      for c, _, _, start, end in record["instances"]:
        name = scenes.CLASS_NAMES[c]
        if name not in scenes.SOUNDS:
          continue
        span = slice(*(round(f / scenes.FPS * scenes.SAMPLE_RATE) for f in (start, end)))
        # A silent stretch of the class, of the instance's length up to 1/8 s
        # (3 frames, the shortest instance): 8 Hz resolution at most.
        length = min(span.stop - span.start, scenes.SAMPLE_RATE // 8)
        same = [
          slice(*(round(f / scenes.FPS * scenes.SAMPLE_RATE) for f in inst[3:]))
          for inst in record["instances"]
          if inst[0] == c
        ]
        quiet = next(
          s
          for s in range(0, n - length, length // 4)
          if all(s + length <= o.start or s >= o.stop for o in same)
        )
        # Amplitude 0.3, times a third to a half for ring and knock's pulses.
        assert _tone(sound[span], scenes.SOUNDS[name]) > 0.07
        assert _tone(sound[quiet : quiet + length], scenes.SOUNDS[name]) < 0.02
        heard += 1
  assert kinds == {True, False} and heard > 0  # the settings cover both cases


def test_training_on_the_export_by_config_alone(export, tmp_path):
  # The scenes config (window labels: the exported segments label each clip)
  # with only the dataset switched.
  config = load_config("scenes", "runlocal")
  d = config.data
  d.name = "charades"
  d.charades.update(root=str(export), fps=24.0)
  config.num_train_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert results["num_videos"] == SETTINGS["num_test"] and results["skipped_clips"] == 0
  assert list(results["per_class_ap"]) == CLASSES


def _command(*args):
  return subprocess.run(
    [sys.executable, "-m", "mlar_jax.data.scenes", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )


def test_the_export_command(tmp_path, capsys):
  out = tmp_path / "charades"
  small = ["--num_train=2", "--num_test=1", "--resolution=16", "--min_frames=64"]
  small += ["--max_frames=64", f"--out={out}"]
  bad = _command("export", "--format", "mmit", *small)
  assert bad.returncode == 2 and not out.exists()
  assert re.search(
    r"--format: invalid choice: 'mmit' \(choose from '?ava'?, '?broden'?, '?charades'?, "
    r"'?csv'?, '?volleyball'?\)",
    bad.stderr,
  )
  done = _command("export", "--format", "charades", *small)
  assert done.returncode == 0, done.stderr
  assert re.fullmatch(
    rf"{re.escape(str(out))}: 3 scenes videos as charades \(3 written, 0 kept\) in [\d.]+ s\n",
    done.stdout,
  )
  assert sorted(os.listdir(out)) == [
    "Charades_v1_480",
    "Charades_v1_classes.txt",
    "Charades_v1_test.csv",
    "Charades_v1_train.csv",
    "scenes_export.json",
  ]
  assert sorted(os.listdir(out / "Charades_v1_480")) == [
    "test000000.mp4",
    "train000000.mp4",
    "train000001.mp4",
  ]

  # A rerun finishes an interrupted export: it keeps the videos written.
  table = (out / "Charades_v1_train.csv").read_text()
  os.remove(out / "Charades_v1_480" / "train000001.mp4")
  scenes.main(["export", "--format=charades", *small])
  assert "(1 written, 2 kept)" in capsys.readouterr().out
  assert (out / "Charades_v1_train.csv").read_text() == table

  # Another export or other files in the folder: refused unless --overwrite.
  with pytest.raises(SystemExit, match=r"holds an export of .*'seed': 0.* pass --overwrite"):
    scenes.main(["export", "--format=charades", "--seed=1", *small])
  scenes.main(["export", "--format=charades", "--seed=1", "--overwrite", *small])
  assert "(3 written, 0 kept)" in capsys.readouterr().out
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(SystemExit, match="holds files that are not a scenes export"):
    scenes.main(["export", "--format=charades", f"--out={other}"])
  assert os.listdir(other) == ["notes.txt"]
