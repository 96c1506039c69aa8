"""Decode a video dataset once into ArrayRecord shards readable by TFDS.

  python -m mlar_jax.data.prepare --dataset charades --manual_dir /data/charades \
      --data_dir /data/tfds [--short_side 256] [--fps 12] [--shard_size 64]

Every video of each split is decoded (PyAV, or its frame folder), sampled at
`--fps` (0 keeps every frame), resized to `--short_side`, and stored as one
example: JPEG frames, their time stamps, the video labels and the temporal
segments. Examples go to `DATA_DIR/mlar_DATASET/1.0.0/` as
`mlar_DATASET-SPLIT.array_record-0000i-of-0000n` with TFDS metadata, so
`tfds.data_source("mlar_DATASET", data_dir=DATA_DIR, split=SPLIT)` reads them,
and `config.data.name=prepared` trains on them through the same pipeline.

Resumable: a shard is written under a temporary name and renamed when
complete; a rerun skips complete shards. Videos that fail to decode are left
out, logged and listed in `skipped_SPLIT.json`. The annotation files are
found in `--manual_dir` with the same names and options as the training config
(`config.data.<dataset>`), which `--set KEY=VALUE` overrides.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import app
from absl import flags
from absl import logging
from array_record.python.array_record_module import ArrayRecordReader
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from PIL import Image

from mlar_jax import config_lib
from mlar_jax.data import base
from mlar_jax.data import pipeline
from mlar_jax.data import sources
from mlar_jax.data import transforms
from mlar_jax.data import video

def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      # JPEG bytes of each stored frame: decoding happens per sampled frame.
      "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
      "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "segments": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
      "fps": tfds.features.Scalar(dtype=np.float32),
  })


def _shard_name(dataset: str, split: str, i: int, n: int) -> str:
  return f"mlar_{dataset}-{split}.array_record-{i:05d}-of-{n:05d}"


def encode_video(source: base.VideoSource, record: base.Record, *, short_side: int,
                 fps: float, quality: int = 90) -> dict[str, Any]:
  """One example: the record's frames sampled at `fps` and resized."""
  n, native_fps = source.video_info(record)
  step = 1.0 if fps <= 0 else max(native_fps / fps, 1.0)
  indices = np.unique(np.round(np.arange(0, n, step)).astype(np.int64).clip(0, n - 1))
  frames = transforms.resize_short_side(source.load_frames(record, indices), short_side)
  encoded = []
  for frame in frames:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    encoded.append(buf.getvalue())
  return {"id": record["id"], "frames": np.array(encoded, dtype=object),
          "timestamps": (indices / native_fps).astype(np.float32),
          "labels": record["labels"].astype(np.int32),
          "segments": np.asarray(record["segments"], np.float32).reshape(-1, 3),
          "fps": np.float32(native_fps / step)}


def prepare_split(source: base.VideoSource, dataset: str, split: str, out_dir: str, *,
                  short_side: int, fps: float, shard_size: int) -> dict[str, Any]:
  """Writes (or completes) the shards of one split; returns a summary."""
  feats = features()
  num_shards = max(1, math.ceil(len(source) / shard_size))
  skipped_path = os.path.join(out_dir, f"skipped_{split}.json")
  skipped = json.load(open(skipped_path)) if os.path.exists(skipped_path) else {}
  written = 0
  for shard in tqdm.trange(num_shards, desc=f"{dataset}/{split}", unit="shard"):
    path = os.path.join(out_dir, _shard_name(dataset, split, shard, num_shards))
    if os.path.exists(path):
      continue
    writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
    for i in range(shard * shard_size, min((shard + 1) * shard_size, len(source))):
      record = source[i]
      try:
        example = encode_video(source, record, short_side=short_side, fps=fps)
      except video.VideoDecodeError as e:
        logging.warning("Skipping %s", e)
        skipped[record["id"]] = str(e)
        continue
      writer.write(feats.serialize_example(feats.encode_example(example)))
      written += 1
    writer.close()
    os.replace(path + ".tmp", path)
    with open(skipped_path, "w") as f:
      json.dump(skipped, f, indent=1)
  return {"split": split, "shards": num_shards, "written_now": written,
          "skipped": len(skipped)}


def _split_infos(out_dir: str, dataset: str) -> list[tfds.core.SplitInfo]:
  """SplitInfos of every split whose shards are all on disk."""
  pattern = re.compile(rf"^mlar_{re.escape(dataset)}-(\w+)\.array_record-(\d+)-of-(\d+)$")
  shards: dict[str, list[tuple[int, int, str]]] = {}
  for name in sorted(os.listdir(out_dir)):
    m = pattern.match(name)
    if m:
      shards.setdefault(m.group(1), []).append((int(m.group(2)), int(m.group(3)), name))
  infos = []
  for split, files in sorted(shards.items()):
    if len(files) != files[0][1]:
      continue  # an incomplete split: not published until all its shards exist
    lengths = []
    for _, _, name in sorted(files):
      reader = ArrayRecordReader(os.path.join(out_dir, name))
      lengths.append(reader.num_records())
      reader.close()
    infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=lengths,
        num_bytes=sum(os.path.getsize(os.path.join(out_dir, f[2])) for f in files)))
  return infos


def _labels_sidecar(out_dir: str, split: str, class_names: Sequence[str]) -> None:
  """Labels of the prepared split in example order, and the class names, so a
  reader gets counts and co-occurrence without reading the frames."""
  src = tfds.builder_from_directory(out_dir).as_data_source(split)
  labels = np.stack([np.asarray(ex["labels"]) for ex in src]) if len(src) else (
      np.zeros((0, len(class_names)), np.int32))
  np.save(os.path.join(out_dir, f"labels_{split}.npy"), labels)
  with open(os.path.join(out_dir, "class_names.txt"), "w") as f:
    f.write("\n".join(class_names) + "\n")


def prepare(data_cfg, dataset: str, splits: Sequence[str], data_dir: str, *,
            short_side: int, fps: float, shard_size: int) -> list[dict[str, Any]]:
  """Prepares `splits` of `dataset` (config `data_cfg`) under `data_dir`."""
  out_dir = sources.prepared_dir(data_dir, dataset)
  os.makedirs(out_dir, exist_ok=True)
  with data_cfg.unlocked():
    data_cfg.name = dataset
  summaries, class_names = [], None
  for split in splits:
    source = pipeline.make_source(data_cfg, split)
    class_names = list(source.class_names)
    summaries.append(prepare_split(source, dataset, split, out_dir, short_side=short_side,
                                   fps=fps, shard_size=shard_size))
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=features(),
      split_infos=_split_infos(out_dir, dataset),
      check_data=False,  # TFDS's check reads through tf.data, not ArrayRecord
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=epath.Path(out_dir), dataset_name=f"mlar_{dataset}",
          template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
          filetype_suffix="array_record"),
      description=f"{dataset} prepared by mlar_jax.data.prepare "
                  f"(short side {short_side}, fps {fps or 'native'})")
  for split in splits:
    _labels_sidecar(out_dir, split, class_names)
  return summaries


def main(argv):
  del argv
  f = flags.FLAGS
  data_cfg = config_lib.data_config()
  with data_cfg.unlocked():
    data_cfg[f.dataset].root = f.manual_dir
    for item in f.set:
      key, _, value = item.partition("=")
      if key not in data_cfg[f.dataset]:
        raise app.UsageError(f"--set {key}: not a key of config.data.{f.dataset}: "
                             f"{sorted(data_cfg[f.dataset])}")
      kind = type(data_cfg[f.dataset][key])
      data_cfg[f.dataset][key] = (value.lower() in ("1", "true") if kind is bool
                                  else kind(value))
  for s in prepare(data_cfg, f.dataset, f.splits, f.data_dir, short_side=f.short_side,
                   fps=f.fps, shard_size=f.shard_size):
    print(json.dumps(s))


def define_flags() -> None:
  """The command's flags; defined only when it runs."""
  flags.DEFINE_enum("dataset", None, ["charades", "mmit", "csv"], "Dataset format.")
  flags.DEFINE_string("manual_dir", None, "Folder with the annotations and videos.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
  flags.DEFINE_list("splits", ["train", "test"], "Splits to prepare.")
  flags.DEFINE_integer("short_side", 256, "Resize frames to this short side.")
  flags.DEFINE_float("fps", 0.0, "Frames per second to keep (0: all).")
  flags.DEFINE_integer("shard_size", 64, "Videos per ArrayRecord shard.")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE for config.data.<dataset>.")
  flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
