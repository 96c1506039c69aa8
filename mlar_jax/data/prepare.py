"""Decode a video dataset once into ArrayRecord shards readable by TFDS.

  python -m mlar_jax.data.prepare --dataset charades --manual_dir /data/charades \
      --data_dir /data/tfds [--short_side 256] [--fps 12] [--shard_size 64] \
      [--sample_rate 22050]

Writes the dataset of `builders.MlarCharades` (or MlarMmit, MlarCsv) into the
builder's directory, `DATA_DIR/mlar_DATASET/VERSION/`, shard by shard: a shard
is written under a temporary name and renamed when complete, its video ids,
labels and skipped videos are kept in `progress_SPLIT.json`, and a rerun does
only the shards missing. When every split asked for is complete the TFDS metadata is
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
from absl import app, flags, logging
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from mlar_jax import cli, config_lib
from mlar_jax.data import base, builders


def _progress_path(out_dir: str, split: str) -> str:
  return os.path.join(out_dir, f"progress_{split}.json")


def _file_template(
  out_dir: str, builder: tfds.core.DatasetBuilder, split: str | None = None
) -> tfds.core.ShardedFileTemplate:
  # TFDS's default file names, so both writers produce the same files.
  return tfds.core.ShardedFileTemplate(
    data_dir=epath.Path(out_dir),
    dataset_name=builder.name,
    split=split,
    template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    filetype_suffix="array_record",
  )


def prepare_split(
  source: base.VideoSource,
  template: tfds.core.ShardedFileTemplate,
  *,
  short_side: int,
  fps: float,
  shard_size: int,
) -> dict[str, Any]:
  """Writes (or completes) the shards of one split.

  Progress (settings, the video ids and labels of each complete shard,
  skipped videos) is kept in `progress_SPLIT.json` beside the shards.

  Returns:
    A summary: split, shards, written_now, skipped.
  """
  split, out_dir = template.split, os.fspath(template.data_dir)
  feats = builders.features()
  num_shards = max(1, math.ceil(len(source) / shard_size))
  settings = {
    "videos": len(source),
    "shard_size": shard_size,
    "short_side": short_side,
    "fps": fps,
    "sample_rate": source.sample_rate,
  }
  path = _progress_path(out_dir, split)
  progress = {"settings": settings, "shards": {}, "skipped": {}}
  if os.path.exists(path):
    with open(path) as f:
      progress = json.load(f)
    if progress["settings"] != settings:
      raise ValueError(
        f"{path}: split {split!r} was being prepared with "
        f"{progress['settings']}, now {settings}; use the same settings to "
        f"resume, or delete {out_dir} to start again"
      )
  written = 0
  for shard in tqdm.trange(num_shards, desc=f"{template.dataset_name}/{split}", unit="shard"):
    shard_path = os.fspath(template.sharded_filepath(shard_index=shard, num_shards=num_shards))
    if os.path.exists(shard_path) and str(shard) in progress["shards"]:
      continue
    ids, labels = [], []
    # Uncompressed: JPEG frames do not compress further, and reading a record
    # (every frame of its video) through zstd took 30 ms of CPU where the same
    # 19 MB record uncompressed took 22 (benchmarks/README.md). The reader
    # takes either, so shards written before read as they are.
    writer = ArrayRecordWriter(shard_path + ".tmp", "group_size:1,uncompressed")
    for _, example in builders.examples(
      source,
      shard * shard_size,
      min((shard + 1) * shard_size, len(source)),
      progress["skipped"],
      short_side=short_side,
      fps=fps,
    ):
      writer.write(feats.serialize_example(feats.encode_example(example)))
      ids.append(example["id"])
      labels.append(builders.label_list(example))
      written += 1
    writer.close()
    # Progress first: a crash before the rename leaves a shard to redo, never a
    # shard without its ids and labels.
    progress["shards"][str(shard)] = {"ids": ids, "labels": labels}
    with open(path + ".tmp", "w") as f:
      json.dump(progress, f)
    os.replace(path + ".tmp", path)
    os.replace(shard_path + ".tmp", shard_path)
  return {
    "split": split,
    "shards": num_shards,
    "written_now": written,
    "skipped": len(progress["skipped"]),
  }


def prepare(
  data_cfg: ml_collections.ConfigDict,
  dataset: str,
  splits: Sequence[str] | None,
  data_dir: str,
  *,
  short_side: int,
  fps: float,
  shard_size: int,
) -> list[dict[str, Any]]:
  """Prepares `splits` of `dataset` under `data_dir`, resumably.

  Splits prepared earlier into the same directory stay listed.

  Args:
    data_cfg: `config.data`; `data_cfg.<dataset>.root` is the manual dir.
    dataset: "charades", "mmit" or "csv".
    splits: splits to write (complete shards are kept); None: the builder's
      SPLITS (M-MiT: train and val).
    data_dir: TFDS data dir.
    short_side, fps: as the builder's.
    shard_size: videos per shard.

  Returns:
    One summary per split (see `prepare_split`).
  """
  builder = builders.BUILDERS[dataset](
    data_dir=data_dir,
    file_format="array_record",
    data_cfg=data_cfg,
    short_side=short_side,
    fps=fps,
    splits=splits,
  )
  # Every split's annotations are read first: a missing or malformed file
  # fails before hours of decoding, not after.
  sources = {split: builder.source(split, data_cfg[dataset].root) for split in builder.splits}
  out_dir = os.fspath(builder.data_path)
  os.makedirs(out_dir, exist_ok=True)
  summaries = [
    prepare_split(
      source,
      _file_template(out_dir, builder, split),
      short_side=short_side,
      fps=fps,
      shard_size=shard_size,
    )
    for split, source in sources.items()
  ]
  # Publish every complete split here, of this run or an earlier one.
  info = builder.info
  first = sources[builder.splits[0]]
  info.metadata.update(
    class_names=list(first.class_names),
    ids={},
    labels={},
    skipped={},
    sample_rate=first.sample_rate,
  )
  split_infos = []
  for name in sorted(os.listdir(out_dir)):
    m = re.fullmatch(r"progress_(\w+)\.json", name)
    if not m:
      continue
    split = m.group(1)
    with open(os.path.join(out_dir, name)) as f:
      progress = json.load(f)
    settings = progress["settings"]
    num_shards = max(1, math.ceil(settings["videos"] / settings["shard_size"]))
    if len(progress["shards"]) < num_shards:
      logging.warning(
        "Split %r is not complete (%d of %d shards): not published; rerun "
        "with --splits=%s to finish it",
        split,
        len(progress["shards"]),
        num_shards,
        split,
      )
      continue
    shards = [progress["shards"][str(i)] for i in range(num_shards)]
    template = _file_template(out_dir, builder, split)
    for key in ("ids", "labels"):
      info.metadata[key][split] = [x for shard in shards for x in shard[key]]
    info.metadata["skipped"][split] = progress["skipped"]
    split_infos.append(
      tfds.core.SplitInfo(
        name=split,
        shard_lengths=[len(shard["ids"]) for shard in shards],
        num_bytes=sum(os.path.getsize(f) for f in template.sharded_filepaths(num_shards)),
        filename_template=template,
      )
    )
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(out_dir)
  return summaries


def main(argv):
  del argv
  f = flags.FLAGS
  data_cfg = config_lib.data_config()
  with data_cfg.unlocked():
    data_cfg[f.dataset].root = f.manual_dir
    data_cfg.audio.sample_rate = f.sample_rate
    for item in f.set:
      key, _, value = item.partition("=")
      if key not in data_cfg[f.dataset]:
        raise app.UsageError(
          f"--set {key}: not a key of config.data.{f.dataset}: {sorted(data_cfg[f.dataset])}"
        )
      kind = type(data_cfg[f.dataset][key])
      data_cfg[f.dataset][key] = value.lower() in ("1", "true") if kind is bool else kind(value)
  cli.quiet_library_logs()
  with cli.fatal_errors():
    for s in prepare(
      data_cfg,
      f.dataset,
      f.splits,
      f.data_dir,
      short_side=f.short_side,
      fps=f.fps,
      shard_size=f.shard_size,
    ):
      print(json.dumps(s))


def define_flags() -> None:
  """The command's flags; defined only when it runs."""
  flags.DEFINE_enum("dataset", None, ["charades", "mmit", "csv"], "Dataset format.")
  flags.DEFINE_string("manual_dir", None, "Folder with the annotations and videos.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.")
  flags.DEFINE_list(
    "splits",
    None,
    "Splits to prepare (default: the dataset's; "
    "train,test for Charades, train,val for M-MiT, all three for csv).",
  )
  flags.DEFINE_integer("short_side", 256, "Resize frames to this short side.")
  flags.DEFINE_float("fps", 0.0, "Frames per second to keep (0: all).")
  flags.DEFINE_integer("shard_size", 64, "Videos per ArrayRecord shard.")
  flags.DEFINE_integer(
    "sample_rate", 22050, "Hz of the stored sound (config.data.audio.sample_rate of training)."
  )
  flags.DEFINE_multi_string("set", [], "KEY=VALUE for config.data.<dataset>.")
  flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
