"""Decode a video dataset once into ArrayRecord shards readable by TFDS.

  python -m mlar_jax.data.prepare --dataset charades --manual_dir /data/charades \
      --data_dir /data/tfds [--short_side 256] [--fps 12] [--shard_size 64]

Writes the dataset of `builders.MlarCharades` (or MlarMmit, MlarCsv) into the
builder's directory, `DATA_DIR/mlar_DATASET/VERSION/`, shard by shard: a shard
is written under a temporary name and renamed when complete, its labels and
skipped videos are kept in `progress_SPLIT.json`, and a rerun does only the
shards missing. When every split asked for is complete the TFDS metadata is
written, so `tfds.data_source("mlar_DATASET", data_dir=DATA_DIR, split=SPLIT)`
reads it and `config.data.name=prepared` trains on it. Videos that fail to
decode are logged, left out and listed in metadata.json. The annotation files
are found in `--manual_dir` with the names and options of the training config
(`config.data.<dataset>`), which `--set KEY=VALUE` overrides.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import ml_collections
import tensorflow_datasets as tfds
import tqdm
from absl import app
from absl import flags
from array_record.python.array_record_module import ArrayRecordReader
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from mlar_jax import config_lib
from mlar_jax.data import base
from mlar_jax.data import builders


def _shard_name(dataset: str, split: str, i: int, n: int) -> str:
  # TFDS's default file template, so both writers produce the same files.
  return f"mlar_{dataset}-{split}.array_record-{i:05d}-of-{n:05d}"


def prepare_split(source: base.VideoSource, dataset: str, split: str, out_dir: str, *,
                  short_side: int, fps: float, shard_size: int) -> dict[str, Any]:
  """Writes (or completes) the shards of one split.

  Returns:
    A summary: split, shards, written_now, skipped, and (once every shard is
    on disk) `labels`, the class indices of each written example in order.
  """
  feats = builders.features()
  num_shards = max(1, math.ceil(len(source) / shard_size))
  settings = {"videos": len(source), "shard_size": shard_size, "short_side": short_side,
              "fps": fps}
  progress_path = os.path.join(out_dir, f"progress_{split}.json")
  progress = {"settings": settings, "shards": {}, "skipped": {}}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      progress = json.load(f)
    if progress["settings"] != settings:
      raise ValueError(f"{progress_path}: split {split!r} was being prepared with "
                       f"{progress['settings']}, now {settings}; use the same settings to "
                       f"resume, or delete {out_dir} to start again")
  written = 0
  for shard in tqdm.trange(num_shards, desc=f"{dataset}/{split}", unit="shard"):
    path = os.path.join(out_dir, _shard_name(dataset, split, shard, num_shards))
    if os.path.exists(path) and str(shard) in progress["shards"]:
      continue
    labels = []
    writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
    for _, example in builders.examples(source, shard * shard_size,
                               min((shard + 1) * shard_size, len(source)),
                               progress["skipped"], short_side=short_side, fps=fps):
      writer.write(feats.serialize_example(feats.encode_example(example)))
      labels.append(builders.label_list(example))
      written += 1
    writer.close()
    # Progress first: a crash before the rename leaves a shard to redo, never a
    # shard without its labels.
    progress["shards"][str(shard)] = labels
    with open(progress_path + ".tmp", "w") as f:
      json.dump(progress, f)
    os.replace(progress_path + ".tmp", progress_path)
    os.replace(path + ".tmp", path)
  return {"split": split, "shards": num_shards, "written_now": written,
          "skipped": len(progress["skipped"]),
          "labels": [l for s in range(num_shards) for l in progress["shards"][str(s)]],
          "skipped_videos": progress["skipped"]}


def prepare(data_cfg: ml_collections.ConfigDict, dataset: str, splits: Sequence[str],
            data_dir: str, *, short_side: int, fps: float,
            shard_size: int) -> list[dict[str, Any]]:
  """Prepares `splits` of `dataset` under `data_dir`, resumably.

  Args:
    data_cfg: `config.data`; `data_cfg.<dataset>.root` is the manual dir.
    dataset: "charades", "mmit" or "csv".
    splits: splits to write (any already complete are kept).
    data_dir: TFDS data dir.
    short_side, fps: as the builder's.
    shard_size: videos per shard.

  Returns:
    One summary per split (see `prepare_split`).
  """
  if not splits:
    raise ValueError("no splits to prepare")
  builder = builders.BUILDERS[dataset](data_dir=data_dir, data_cfg=data_cfg,
                                       short_side=short_side, fps=fps, splits=splits)
  out_dir = os.fspath(builder.data_path)
  os.makedirs(out_dir, exist_ok=True)
  summaries = []
  for split in splits:
    source = builder.source(split, data_cfg[dataset].root)
    summaries.append(prepare_split(source, dataset, split, out_dir, short_side=short_side,
                                   fps=fps, shard_size=shard_size))
  # Splits prepared by an earlier run stay listed: read their metadata back.
  metadata = tfds.core.MetadataDict()
  if os.path.exists(os.path.join(out_dir, "metadata.json")):
    metadata.load_metadata(out_dir)
  metadata["class_names"] = list(source.class_names)
  for s in summaries:
    metadata.setdefault("labels", {})[s["split"]] = s["labels"]
    metadata.setdefault("skipped", {})[s["split"]] = s["skipped_videos"]
  info = builder.info
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=info.features, version=info.version,
      split_infos=_split_infos(out_dir, dataset, set(metadata["labels"])),
      check_data=False,  # TFDS's check reads through tf.data, not ArrayRecord
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=epath.Path(out_dir), dataset_name=builder.name,
          template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
          filetype_suffix="array_record"),
      description=info.description,
      disable_shuffling=True, metadata=metadata)
  return summaries


def _split_infos(out_dir: str, dataset: str, splits: set[str]) -> list[tfds.core.SplitInfo]:
  """SplitInfos of `splits`, all of whose shards are on disk."""
  pattern = re.compile(rf"^mlar_{re.escape(dataset)}-(\w+)\.array_record-(\d+)-of-(\d+)$")
  shards: dict[str, list[str]] = {}
  for name in sorted(os.listdir(out_dir)):
    m = pattern.match(name)
    if m and m.group(1) in splits:
      shards.setdefault(m.group(1), []).append(name)
  infos = []
  for split, files in sorted(shards.items()):
    lengths = []
    for name in files:
      reader = ArrayRecordReader(os.path.join(out_dir, name))
      lengths.append(reader.num_records())
      reader.close()
    infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=lengths,
        num_bytes=sum(os.path.getsize(os.path.join(out_dir, f)) for f in files)))
  return infos


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
    print(json.dumps({k: s[k] for k in ("split", "shards", "written_now", "skipped")}))


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
