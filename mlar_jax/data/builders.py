"""TFDS builders of prepared video datasets: `mlar_charades`, `mlar_mmit`,
`mlar_csv`.

One prepared example is one video: its frames sampled at a frame rate and
resized, as JPEG bytes, with their time stamps, the video labels, the
temporal segments and its whole sound track, 16-bit mono at
`config.data.audio.sample_rate` (`features()`). A dataset is written, into
`DATA_DIR/mlar_DATASET/VERSION/` as ArrayRecord shards, either by TFDS in one
go (not resumable):

    import mlar_jax.data.builders  # registers the builders
    builder = tfds.builder("mlar_charades", data_dir=DATA_DIR, short_side=256, fps=12)
    builder.download_and_prepare(file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))

or shard by shard, resumably, by `python -m mlar_jax.data.prepare`, which
writes the same files. `metadata.json` holds the class names, every split's
video ids and labels in example order, the videos that failed to decode (or
whose audio stream did) and the sound's sample rate, so
`sources.PreparedVideos` has ids, counts and co-occurrence without reading an
example.
(The `tfds build` command line needs apache_beam, not a dependency here.)
"""

from __future__ import annotations

import copy
import io
import math
import os
from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from mlar_jax import config_lib
from mlar_jax.data import base, pipeline, sources, transforms, video

PCM_SCALE = sources.PCM_SCALE


def features() -> tfds.features.FeaturesDict:
  """One prepared video: its sampled frames, their times, labels, segments and sound."""
  return tfds.features.FeaturesDict(
    {
      "id": tfds.features.Text(),
      # JPEG bytes of each stored frame: decoding happens per sampled frame.
      "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
      "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "segments": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
      "fps": tfds.features.Scalar(dtype=np.float32),
      # The whole sound track, int16 PCM (sample / 32767), at the dataset's
      # sample rate (metadata.json); empty when the video has none.
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
      "has_audio": tfds.features.Scalar(dtype=np.bool_),
    }
  )


def encode_video(
  source: base.VideoSource,
  record: base.Record,
  *,
  short_side: int,
  fps: float,
  quality: int = 90,
  chunk: int = 64,
) -> dict[str, Any]:
  """One example: the record's frames sampled at `fps` and resized, and its
  sound at `source.sample_rate` (none when the source has no "audio").

  Frames are decoded `chunk` at a time, so memory stays that of `chunk`
  frames (a 30 s 480p video is 660 MB decoded whole); the sound is read
  whole (30 s at 22050 Hz: 2.6 MB).
  """
  n, native_fps = source.video_info(record)
  step = 1.0 if fps <= 0 else max(native_fps / fps, 1.0)
  indices = np.unique(np.round(np.arange(0, n, step)).astype(np.int64).clip(0, n - 1))
  encoded = []
  for start in range(0, len(indices), chunk):
    frames = source.load_frames(record, indices[start : start + chunk])
    for frame in transforms.resize_short_side(frames, short_side):
      buf = io.BytesIO()
      Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
      encoded.append(buf.getvalue())
  sound = np.zeros(0, np.int16)
  has_audio = "audio" in source.extras and source.has_audio(record)
  if has_audio:
    samples = math.ceil(n / native_fps * source.sample_rate)
    wave = np.clip(source.audio(record, 0, samples), -1.0, 1.0)
    sound = np.round(wave * PCM_SCALE).astype(np.int16)
  return {
    "id": record["id"],
    "frames": np.array(encoded, dtype=object),
    "timestamps": (indices / native_fps).astype(np.float32),
    "labels": record["labels"].astype(np.int32),
    "segments": np.asarray(record["segments"], np.float32).reshape(-1, 3),
    "fps": np.float32(native_fps / step),
    "audio": sound,
    "has_audio": np.bool_(has_audio),
  }


def examples(
  source: base.VideoSource,
  start: int,
  stop: int,
  skipped: dict[str, str],
  *,
  short_side: int,
  fps: float,
) -> Iterator[tuple[int, dict[str, Any]]]:
  """(record index, example) for records [start, stop) of `source`.

  A video that fails to decode is logged, recorded in `skipped` (id -> error)
  and left out: preparation never stops for one bad file.
  """
  for i in range(start, stop):
    record = source[i]
    try:
      yield i, encode_video(source, record, short_side=short_side, fps=fps)
    except video.VideoDecodeError as e:
      logging.warning("Skipping %s", e)
      skipped[record["id"]] = str(e)


def label_list(example: dict[str, Any]) -> list[int]:
  # Class indices rather than the multi-hot row: metadata.json stays small.
  return np.flatnonzero(example["labels"]).tolist()


class MlarVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A video dataset of `DATASET`'s annotation format, decoded into examples of
  `features()`; subclasses name the format.

  Args (beyond DatasetBuilder's):
    data_cfg: `config.data` whose `<DATASET>` section names the annotation
      files (its `root` is replaced by the manual dir); defaults to the
      training config's defaults.
    short_side: frames are resized to this short side.
    fps: frames kept per second (0: every frame).
    splits: splits to build (default: the format's SPLITS).
  """

  DATASET = ""
  SPLITS: tuple[str, ...] = ("train", "test")
  VERSION = tfds.core.Version(sources.PREPARED_VERSION)
  RELEASE_NOTES = {
    "1.0.0": "JPEG frames, time stamps, labels and segments per video.",
    "1.1.0": "Class names, labels per split and skipped videos in metadata.json.",
    "1.2.0": "Video ids per split in metadata.json.",
    "1.3.0": "The sound track (int16, sample rate in metadata.json) per video.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the dataset's annotation files and its videos (or frame folders) in the
  manual dir, with the names of `config.data.<dataset>` in
  mlar_jax/config_lib.py (for Charades: Charades_v1_train.csv,
  Charades_v1_test.csv, Charades_v1_classes.txt and Charades_v1_480/).
  """

  def __init__(
    self,
    *,
    data_cfg: ml_collections.ConfigDict | None = None,
    short_side: int = 256,
    fps: float = 0.0,
    splits: Sequence[str] | None = None,
    **kwargs,
  ):
    self._data_cfg = config_lib.data_config() if data_cfg is None else data_cfg
    self._short_side, self._fps = short_side, fps
    self.splits = tuple(splits or self.SPLITS)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=features(),
      metadata=tfds.core.MetadataDict(),
      # Example order is record order, so metadata ids and labels line up
      # with it.
      disable_shuffling=True,
      description=f"{self.DATASET} decoded by mlar_jax (short side {self._short_side}, "
      f"fps {self._fps or 'native'})",
    )

  def source(self, split: str, manual_dir: str) -> base.VideoSource:
    """The annotation-file source of `split`, with files under `manual_dir`."""
    cfg = copy.deepcopy(self._data_cfg)
    with cfg.unlocked():
      cfg.name = self.DATASET
      cfg[self.DATASET].root = os.fspath(manual_dir)
    return pipeline.make_source(cfg, split)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {
      split: self._generate_examples(split, self.source(split, dl_manager.manual_dir))
      for split in self.splits
    }

  def _generate_examples(self, split: str, source: base.VideoSource):
    # TFDS writes metadata.json after every split is generated, so ids and
    # labels gathered while generating land in it.
    meta = self.info.metadata
    meta["class_names"] = list(source.class_names)
    meta["sample_rate"] = source.sample_rate
    ids = meta.setdefault("ids", {}).setdefault(split, [])
    labels = meta.setdefault("labels", {}).setdefault(split, [])
    skipped = meta.setdefault("skipped", {}).setdefault(split, {})
    for i, example in examples(
      source, 0, len(source), skipped, short_side=self._short_side, fps=self._fps
    ):
      ids.append(example["id"])
      labels.append(label_list(example))
      yield i, example


class MlarCharades(MlarVideos):
  """Charades (or any folder in its CSV format) as `mlar_charades`."""

  DATASET = "charades"


class MlarMmit(MlarVideos):
  """Multi-Moments in Time style `path,label,...` lists as `mlar_mmit`."""

  DATASET = "mmit"
  SPLITS = ("train", "val")  # M-MiT's test labels are not public


class MlarCsv(MlarVideos):
  """A generic CSV with `path` and `labels` columns as `mlar_csv`."""

  DATASET = "csv"
  SPLITS = ("train", "val", "test")


BUILDERS = {b.DATASET: b for b in (MlarCharades, MlarMmit, MlarCsv)}
