"""Hockey through the generic CSV source: a scenes CSV export reads back
with the scenes labels, and `configs/hockey.py:runlocal` trains and
evaluates on it through the normal entry point."""

import json

import numpy as np
from conftest import load_config

from mlar_jax import train
from mlar_jax.data import pipeline, scenes


def test_csv_export_reads_back_and_runlocal_trains(tmp_path):
  out = tmp_path / "csv"
  summary = scenes.export_csv(
    str(out), seed=0, num_train=8, num_test=4, resolution=32, min_frames=64, max_frames=72
  )
  assert summary == {"videos": 12, "written": 12, "kept": 0}
  config = load_config("hockey", f"runlocal,root={out}")
  for split, n in (("train", 8), ("test", 4)):
    source = pipeline.make_source(config.data, split)
    truth = scenes.SceneVideos(
      split, seed=0, num_videos=n, resolution=32, min_frames=64, max_frames=72
    )
    assert list(source.class_names) == list(scenes.CLASS_NAMES)
    assert source.video_ids() == truth.video_ids()
    np.testing.assert_array_equal(source.label_matrix(), truth.label_matrix())
  # The mp4 holds the video's frames (H.264 at crf 10: close, not equal).
  record = pipeline.make_source(config.data, "test")[1]
  got = pipeline.make_source(config.data, "test").load_frames(record, np.array([0, 30]))
  want = truth.load_frames(truth[1], np.array([0, 30]))
  assert np.abs(got.astype(float) - want).mean() < 4
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert saved["split"] == "test" and saved["num_videos"] == 4
  assert saved["macro_map"] == results["macro_map"] and 0 < saved["macro_map"] <= 1
