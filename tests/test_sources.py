"""Charades / M-MiT / CSV sources on real encoded files, corrupt-file handling,
and a training run on a Charades-format folder through the config alone."""

import json
import logging
import os
import re

import numpy as np
import pytest
from conftest import load_config
from etils import epath
from video_fixtures import read_index, truncated_copy, write_frame_folder, write_mp4

from mlar_jax import train
from mlar_jax.data import pipeline, sources

CLASSES = [
  "c000 Holding a cup",
  "c001 Opening a door",
  "c002 Sitting in a chair",
  "c003 Reading a book",
]
HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"


@pytest.fixture(scope="module")
def charades_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("charades")
  (root / "Charades_v1_classes.txt").write_text("\n".join(CLASSES) + "\n")
  rows = {
    "AAA01": "c000 0.00 2.00;c002 1.00 4.00",  # 4 s at 24 fps = 96 frames
    "AAA02": "c001 2.50 3.50",
    "AAA03": "c003 0.00 4.00;c000 3.00 4.00",
    "AAA04": "",  # no action
    "BAD01": "c002 0.00 4.00",  # truncated file
  }
  lines = [HEADER] + [
    f'{vid},S1,Kitchen,6,7,Yes,"a script",cup;door,"desc",{acts},4.0' for vid, acts in rows.items()
  ]
  (root / "Charades_v1_train.csv").write_text("\n".join(lines) + "\n")
  (root / "Charades_v1_test.csv").write_text("\n".join(lines[:3]) + "\n")
  videos = root / "videos"
  videos.mkdir()
  for vid in rows:
    write_mp4(str(videos / f"{vid}.mp4"), 96)
  truncated_copy(str(videos / "BAD01.mp4"), str(videos / "BAD01.mp4.tmp"), 0.3)
  os.replace(videos / "BAD01.mp4.tmp", videos / "BAD01.mp4")
  return root


def _charades(root, split="train", frames=False, videos="videos"):
  return sources.charades(
    split,
    root=str(root),
    train_csv="Charades_v1_train.csv",
    test_csv="Charades_v1_test.csv",
    classes="Charades_v1_classes.txt",
    videos=videos,
    frames=frames,
    video_ext=".mp4",
    fps=24.0,
  )


def test_charades_labels_counts_cooccurrence(charades_root):
  src = _charades(charades_root)
  assert len(src) == 5 and src.class_names[1] == "c001 Opening a door"
  np.testing.assert_array_equal(src[0]["labels"], [1, 0, 1, 0])
  np.testing.assert_array_equal(src[3]["labels"], [0, 0, 0, 0])
  np.testing.assert_allclose(src[0]["segments"], [[0, 0.0, 2.0], [2, 1.0, 4.0]])
  np.testing.assert_array_equal(src.class_stats().counts, [2, 1, 2, 1])
  assert src.class_stats().cooccurrence[0, 2] == 1 and src.class_stats().cooccurrence[0, 3] == 1
  assert len(_charades(charades_root, "test")) == 2
  assert src.video_info(src[0]) == (96, 24.0)
  for split in ("train", "test"):
    videos = _charades(charades_root, split)
    assert videos.video_ids() == [videos[i]["id"] for i in range(len(videos))]
  assert src.video_ids() == ["AAA01", "AAA02", "AAA03", "AAA04", "BAD01"]


def test_window_labels(charades_root):
  rec = _charades(charades_root)[0]  # c000 in [0, 2) s, c002 in [1, 4) s
  w = lambda first, last: list(pipeline.window_labels(rec, np.array([first, last]), 24.0))
  assert w(0, 20) == [1, 0, 0, 0]  # 0.00-0.875 s
  assert w(30, 50) == [1, 0, 1, 0]  # 1.25-2.125 s
  assert w(60, 95) == [0, 0, 1, 0]  # 2.5-4.0 s


def test_bad_annotations_name_file_and_line(tmp_path):
  (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
  (tmp_path / "train.csv").write_text(HEADER + "\nX1,S,K,1,1,Y,s,o,d,c009 0.0 1.0,3\n")
  with pytest.raises(ValueError, match=r"train.csv:2: bad action 'c009 0.0 1.0'"):
    sources.charades(
      "train",
      root=str(tmp_path),
      train_csv="train.csv",
      test_csv="",
      classes="classes.txt",
      videos="v",
      frames=False,
      video_ext=".mp4",
      fps=24,
    )
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    sources.video_list(
      "train",
      root=str(tmp_path),
      csv_file="nope.csv",
      classes="classes.txt",
      videos="",
      fps=30,
      header=False,
    )


def test_mmit_and_csv_lists(tmp_path):
  (tmp_path / "cats.txt").write_text("running,0\njumping,1\nsinging,2\n")
  (tmp_path / "train.csv").write_text("a/v1.mp4,running,singing\nb/v2.mp4,1\n")
  mmit = sources.video_list(
    "train",
    root=str(tmp_path),
    csv_file="train.csv",
    classes="cats.txt",
    videos="vids",
    fps=30,
    header=False,
  )
  np.testing.assert_array_equal(mmit.label_matrix(), [[1, 0, 1], [0, 1, 0]])
  assert mmit[0]["path"] == str(tmp_path / "vids" / "a/v1.mp4") and mmit[0]["id"] == "a/v1"
  (tmp_path / "names.txt").write_text("running\njumping\n")
  (tmp_path / "gen.csv").write_text("id,path,labels\nx,x.mp4,running;jumping\ny,y.mp4,\n")
  gen = sources.video_list(
    "train",
    root=str(tmp_path),
    csv_file="gen.csv",
    classes="names.txt",
    videos="",
    fps=30,
    header=True,
  )
  np.testing.assert_array_equal(gen.label_matrix(), [[1, 1], [0, 0]])
  for videos, ids in ((mmit, ["a/v1", "b/v2"]), (gen, ["x", "y"])):
    assert videos.video_ids() == [videos[i]["id"] for i in range(len(videos))] == ids
  (tmp_path / "bad.csv").write_text("id,path,labels\nz,z.mp4,flying\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: unknown labels \['flying'\]"):
    sources.video_list(
      "train",
      root=str(tmp_path),
      csv_file="bad.csv",
      classes="names.txt",
      videos="",
      fps=30,
      header=True,
    )


def test_frame_folders_source(tmp_path, charades_root):
  for vid in ("AAA01", "AAA02", "AAA03", "AAA04", "BAD01"):
    write_frame_folder(str(tmp_path / "frames" / vid), vid, 40)
  src = _charades(charades_root, frames=True, videos=str(tmp_path / "frames"))
  assert src.video_info(src[1]) == (40, 24.0)
  assert [read_index(f) for f in src.load_frames(src[1], [3, 9])] == [3, 9]


def _config(root, prepared="", **data):
  # The Charades config itself, with a tiny backbone and this folder's layout.
  config = load_config(
    "charades", f"runlocal,root={root},prepared={prepared},backbone=resnet3d_tiny"
  )
  d = config.data
  assert d.name == ("prepared" if prepared else "charades") and d.charades.root == str(root)
  d.charades.videos = "videos"
  d.update(
    min_short_side=32,
    max_short_side=36,
    crop_size=32,
    eval_short_side=32,
    num_frames=4,
    rates=(4,),
    label_mode="window",
    **data,
  )
  config.eval.views, config.eval.spatial_crops = ((4, 2),), 1
  config.batch_size, config.eval.batch_size = 8, 8
  return config


def test_pipeline_skips_and_counts_corrupt_videos(charades_root):
  config = _config(charades_root, max_error_ratio=0.5)
  src = pipeline.make_source(config.data, "train")
  errors = pipeline.DecodeErrors(0.5, min_samples=1000)
  it = iter(pipeline.train_dataset(src, config.data, global_batch_size=4, seed=0, errors=errors))
  batches = [next(it) for _ in range(5)]
  assert all(b["video"].shape == (4, 4, 32, 32, 3) for b in batches)
  assert errors.failed >= 1 and errors.files == {str(charades_root / "videos" / "BAD01.mp4")}
  # Above the ratio the run stops with a clear message.
  strict = pipeline.DecodeErrors(0.01, min_samples=3)
  it = iter(pipeline.train_dataset(src, config.data, global_batch_size=4, seed=0, errors=strict))
  with pytest.raises(RuntimeError, match="max_error_ratio"):
    for _ in range(10):
      next(it)


def test_eval_pipeline_decodes_a_video_once_for_its_views(charades_root, monkeypatch):
  from mlar_jax.data import sampling

  config = _config(charades_root, max_error_ratio=0.5)
  config.data.eval_short_side = 40  # room for two different 32-pixel crops
  src = pipeline.make_source(config.data, "train")  # BAD01 (index 4) is truncated
  plan = sampling.view_plan(((4, 2),), 2)
  decodes = []
  load = src.load_frames
  monkeypatch.setattr(
    src, "load_frames", lambda r, i, s=None: decodes.append((r["id"], len(i))) or load(r, i, s)
  )
  errors = pipeline.DecodeErrors(0.5, min_samples=1000)
  batches = list(pipeline.eval_dataset(src, config.data, plan, local_batch_size=3, errors=errors))
  got = sorted((int(i), int(v)) for b in batches for i, v in zip(b["index"], b["view"]))
  assert got == [(i, v) for i in range(4) for v in range(4)]  # each clip once
  # One decode per video, of the union of its two windows' frames (each
  # frame once); BAD01 fails when opened, before decoding.
  assert [vid for vid, _ in sorted(decodes)] == ["AAA01", "AAA02", "AAA03", "AAA04"]
  for (vid, frames), record in zip(sorted(decodes), [src[i] for i in range(4)]):
    assert vid == record["id"]
    n, _ = src.video_info(record)
    windows = [sampling.view_indices(n, config.data.num_frames, plan[v]) for v in (0, 2)]
    assert frames == len(np.unique(np.concatenate(windows)))
  assert errors.failed == 4  # BAD01's 4 views
  # The two crops of a window are different clips.
  b = batches[0]
  assert b["view"][0] == 0 and b["view"][1] == 1
  assert not np.array_equal(b["video"][0], b["video"][1])
  assert pipeline.eval_num_batches(5, plan, local_batch_size=3) == 7  # 20 clips
  assert pipeline.eval_num_batches(5, plan, local_batch_size=3, process_count=2) == 4


def test_training_on_a_charades_folder_by_config_alone(charades_root, tmp_path, caplog):
  config = _config(charades_root)
  config.data.max_error_ratio = 0.5
  config.num_train_steps = 3
  caplog.set_level(logging.INFO)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  # The step log says how much of the time went to waiting for the pipeline.
  waits = [float(m) for m in re.findall(r"clips/s, (\d+)% waiting for input", caplog.text)]
  assert waits and all(0 <= w <= 100 for w in waits)
  on_disk = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert on_disk["num_videos"] == 2 and on_disk["skipped_clips"] == 0
  assert on_disk["train_skipped_samples"] >= 1
  assert results["per_class_ap"].keys() == {n for n in CLASSES}


def test_training_on_an_mmit_folder_by_config_alone(charades_root, tmp_path):
  # M-MiT layout: "path,label,label" lines (names or indices) and a class file.
  (tmp_path / "moments_categories.txt").write_text("holding,0\nopening,1\nsitting,2\n")
  (tmp_path / "trainingSet.csv").write_text(
    "AAA01.mp4,holding,sitting\nAAA02.mp4,opening\nAAA03.mp4,0\nAAA04.mp4,2,1\n"
  )
  (tmp_path / "validationSet.csv").write_text("AAA01.mp4,holding\nAAA02.mp4,opening\n")
  config = _config(charades_root)
  config.data.name = "mmit"
  config.data.mmit.update(root=str(tmp_path), videos=str(charades_root / "videos"), fps=24.0)
  config.data.label_mode = "video"
  config.num_train_steps = 2
  # M-MiT has no test CSV: asking for it fails before any training step.
  with pytest.raises(ValueError, match="no test_csv for split 'test'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
    tmp_path / "run" / "checkpoints"
  )
  config.eval.split = "val"
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["num_videos"] == 2 and results["split"] == "val"
  assert list(results["per_class_ap"]) == ["holding", "opening", "sitting"]


def _data_cfg(charades_root):
  from mlar_jax import config_lib

  data_cfg = config_lib.data_config()
  data_cfg.charades.update(root=str(charades_root), videos="videos")
  return data_cfg


def _prepared_source(out, split="train"):
  # Through the Charades config's switch to prepared data.
  config = load_config("charades", f"runlocal,prepared={out}")
  return pipeline.make_source(config.data, split)


@pytest.fixture(scope="module")
def prepared(charades_root, tmp_path_factory):
  from mlar_jax.data import prepare

  out = str(tmp_path_factory.mktemp("tfds"))
  summaries = prepare.prepare(
    _data_cfg(charades_root),
    "charades",
    ["train", "test"],
    out,
    short_side=32,
    fps=12.0,
    shard_size=2,
  )
  return out, summaries


def test_prepare_writes_array_record_read_back_by_tfds(prepared):
  import tensorflow_datasets as tfds

  out, summaries = prepared
  assert summaries[0]["shards"] == 3 and summaries[0]["skipped"] == 1
  ds = tfds.data_source("mlar_charades", data_dir=out, split="train")
  assert len(ds) == 4  # BAD01 left out
  ex = ds[0]
  assert len(ex["frames"]) == 48 and float(ex["fps"]) == 12.0  # 96 frames at 24 -> 12 fps
  np.testing.assert_allclose(ex["timestamps"][:3], [0, 2 / 24, 4 / 24], rtol=1e-6)
  # The same pipeline reads it back, labels and class names from metadata.json.
  src = _prepared_source(out)
  ids = [src[i]["id"] for i in range(len(src))]
  assert ids == ["AAA01", "AAA02", "AAA03", "AAA04"] and src.video_ids() == ids
  test = _prepared_source(out, "test")
  assert test.video_ids() == [test[i]["id"] for i in range(len(test))] == ["AAA01", "AAA02"]
  assert list(src.class_names) == CLASSES
  np.testing.assert_array_equal(src.class_stats().counts, [2, 1, 1, 1])
  np.testing.assert_array_equal(src.label_matrix(), np.stack([src[i]["labels"] for i in range(4)]))
  # Frames keep their identity: stored frame k is source frame 2k.
  frames = src.load_frames(src[1], [0, 5, 47])
  assert frames.shape == (3, 32, 32, 3)
  assert [read_index(f) for f in frames] == [0, 10, 94]
  meta = json.loads(
    open(os.path.join(sources.prepared_dir(out, "charades"), "metadata.json")).read()
  )
  assert list(meta["skipped"]["train"]) == ["BAD01"] and meta["skipped"]["test"] == {}
  with pytest.raises(FileNotFoundError, match="split 'val' is not prepared"):
    _prepared_source(out, "val")


def test_prepared_video_ids_read_no_example(prepared, monkeypatch):
  src = _prepared_source(prepared[0])

  def no_read(self, index):
    raise AssertionError("video_ids read an example")

  monkeypatch.setattr(type(src._data), "__getitem__", no_read)
  assert src.video_ids() == ["AAA01", "AAA02", "AAA03", "AAA04"]


def test_data_of_an_older_version_is_not_prepared(prepared, tmp_path):
  import shutil

  # Version 1.1.0 had no ids in metadata.json: it is to be prepared again.
  shutil.copytree(
    sources.prepared_dir(prepared[0], "charades"), tmp_path / "mlar_charades" / "1.1.0"
  )
  hint = re.escape(f"version {sources.PREPARED_VERSION} (run python -m mlar_jax.data.prepare")
  with pytest.raises(FileNotFoundError, match="no prepared 'charades' data of " + hint):
    _prepared_source(str(tmp_path))


def test_training_on_prepared_data(prepared, tmp_path):
  config = _config("unused", prepared=prepared[0])
  config.num_train_steps = 2
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["num_videos"] == 2 and results["skipped_clips"] == 0
  assert list(results["per_class_ap"]) == CLASSES


def test_prepare_resumes_after_a_lost_shard(charades_root, prepared, tmp_path):
  import shutil

  from mlar_jax.data import prepare

  out = str(tmp_path / "tfds")
  shutil.copytree(prepared[0], out)
  root = sources.prepared_dir(out, "charades")
  again = prepare.prepare(
    _data_cfg(charades_root), "charades", ["train"], out, short_side=32, fps=12.0, shard_size=2
  )
  assert again[0]["written_now"] == 0  # complete: nothing to do
  # A run killed mid-shard leaves no shard file (only its .tmp): a rerun
  # writes that shard alone and publishes the same dataset.
  os.remove(os.path.join(root, "mlar_charades-train.array_record-00001-of-00003"))
  again = prepare.prepare(
    _data_cfg(charades_root), "charades", ["train"], out, short_side=32, fps=12.0, shard_size=2
  )
  assert again[0]["written_now"] == 2
  src, ref = _prepared_source(out), _prepared_source(prepared[0])
  assert [src[i]["id"] for i in range(len(src))] == [ref[i]["id"] for i in range(len(ref))]
  assert src.video_ids() == ref.video_ids()
  np.testing.assert_array_equal(src.label_matrix(), ref.label_matrix())
  assert len(_prepared_source(out, "test")) == 2  # the other split is still listed
  # A split left half done by an earlier run is not published until finished.
  progress_path = os.path.join(root, "progress_test.json")
  progress = json.loads(open(progress_path).read())
  progress["shards"].pop("0")
  open(progress_path, "w").write(json.dumps(progress))
  prepare.prepare(
    _data_cfg(charades_root), "charades", ["train"], out, short_side=32, fps=12.0, shard_size=2
  )
  with pytest.raises(FileNotFoundError, match="split 'test' is not prepared"):
    _prepared_source(out, "test")
  again = prepare.prepare(
    _data_cfg(charades_root), "charades", ["test"], out, short_side=32, fps=12.0, shard_size=2
  )
  assert again[0]["written_now"] == 2 and len(_prepared_source(out, "test")) == 2
  with pytest.raises(ValueError, match="shard_size"):
    prepare.prepare(
      _data_cfg(charades_root), "charades", ["train"], out, short_side=32, fps=12.0, shard_size=3
    )


def test_prepare_reads_every_split_before_decoding(charades_root, tmp_path):
  from mlar_jax import config_lib
  from mlar_jax.data import prepare

  (tmp_path / "moments_categories.txt").write_text("holding,0\nopening,1\n")
  (tmp_path / "trainingSet.csv").write_text("AAA01.mp4,holding\n")
  data_cfg = config_lib.data_config()
  data_cfg.mmit.update(root=str(tmp_path), videos=str(charades_root / "videos"))
  out = tmp_path / "tfds"
  # M-MiT's default splits are train and val; val's CSV is missing here.
  with pytest.raises(FileNotFoundError, match="validationSet.csv"):
    prepare.prepare(data_cfg, "mmit", None, str(out), short_side=32, fps=12.0, shard_size=2)
  assert not list(out.rglob("*array_record*"))  # nothing decoded or written


def test_tfds_builder_writes_what_the_command_writes(charades_root, prepared, tmp_path):
  import tensorflow_datasets as tfds

  from mlar_jax.data import builders  # registers mlar_charades

  out = str(tmp_path / "tfds")
  builder = tfds.builder(
    "mlar_charades", data_dir=out, data_cfg=_data_cfg(charades_root), short_side=32, fps=12.0
  )
  builder.download_and_prepare(
    file_format="array_record",
    download_config=tfds.download.DownloadConfig(manual_dir=str(charades_root)),
  )
  assert isinstance(builder, builders.MlarCharades)
  assert builder.data_path == epath.Path(sources.prepared_dir(out, "charades"))
  for split in ("train", "test"):
    ours = tfds.data_source("mlar_charades", data_dir=prepared[0], split=split)
    theirs = tfds.data_source("mlar_charades", data_dir=out, split=split)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  for split in ("train", "test"):
    src, ref = _prepared_source(out, split), _prepared_source(prepared[0], split)
    np.testing.assert_array_equal(src.label_matrix(), ref.label_matrix())
    assert src.video_ids() == [src[i]["id"] for i in range(len(src))] == ref.video_ids()
  assert src.class_names == ref.class_names
  assert list(builder.info.metadata["skipped"]["train"]) == ["BAD01"]
  # Videos are decoded a chunk of frames at a time; the chunk changes nothing.
  videos = _charades(charades_root)
  whole, chunked = (
    builders.encode_video(videos, videos[0], short_side=32, fps=12.0, chunk=c) for c in (64, 5)
  )
  np.testing.assert_array_equal(whole["frames"], chunked["frames"])
  np.testing.assert_array_equal(whole["timestamps"], chunked["timestamps"])
