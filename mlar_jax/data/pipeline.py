"""grain input pipelines: per-host shard, shuffle, repeat, clip sampling,
augmentation, batching and prefetch.

Every random choice comes from grain's per-example generator (seeded from the
config seed and the element's position in the stream), and the iterator state
is a position, so a restored iterator yields exactly the batches that the
uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from mlar_jax import registry
from mlar_jax.data import base
from mlar_jax.data import sampling
from mlar_jax.data import synthetic
from mlar_jax.data import transforms

# name -> fn(data_config, split) -> VideoSource
SOURCES: registry.Registry = registry.Registry("dataset")


@SOURCES.register("synthetic")
def _synthetic(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  s = cfg.synthetic
  return synthetic.SyntheticVideos(
      split, seed=s.seed, num_videos=s[f"num_{split}"],
      video_frames=s.video_frames, resolution=s.resolution)


def make_source(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  """The `split` of the dataset named by `cfg.name`."""
  return SOURCES.get(cfg.name)(cfg, split)


@dataclasses.dataclass(frozen=True)
class TrainClip(grain.transforms.RandomMap):
  """Record -> training example: a random rate and window, then augmentation.

  Output: {"video": uint8 [T, S, S, 3], "labels": int32 [C]}.
  """
  source: base.VideoSource
  num_frames: int
  rates: Sequence[int]
  rate_probs: Sequence[float] | None
  min_short_side: int
  max_short_side: int
  crop_size: int
  flip: bool

  def random_map(self, record: base.Record, rng: np.random.Generator) -> dict[str, Any]:
    rate = int(rng.choice(self.rates, p=self.rate_probs))
    start = transforms.random_clip_start(rng, record["num_frames"], self.num_frames, rate)
    idx = transforms.clip_indices(record["num_frames"], self.num_frames, rate, start)
    frames = transforms.train_augment(
        rng, self.source.load_frames(record, idx),
        min_short_side=self.min_short_side, max_short_side=self.max_short_side,
        crop_size=self.crop_size, flip=self.flip)
    return {"video": frames, "labels": record["labels"].astype(np.int32)}


class VideoViews:
  """Random-access (video, view) pairs: element i is view i % V of video i // V.

  Flattening the views lets evaluation batch clips of different videos and
  views together, and shard them over hosts like any source.
  """

  def __init__(self, source: base.VideoSource, plan: Sequence[sampling.View]):
    self.source, self.plan = source, tuple(plan)

  def __len__(self) -> int:
    return len(self.source) * len(self.plan)

  def __getitem__(self, i: int) -> tuple[int, base.Record, int]:
    video, view = divmod(int(i), len(self.plan))
    return video, self.source[video], view


@dataclasses.dataclass(frozen=True)
class EvalClip(grain.transforms.Map):
  """(video position, record, view id) -> that view's clip.

  Output: {"video": uint8 [T, S, S, 3], "labels": int32 [C], "index": int32
  video position in the split, "view": int32 view id in the plan}.
  """
  source: base.VideoSource
  plan: tuple[sampling.View, ...]
  num_frames: int
  short_side: int
  crop_size: int

  def map(self, element: tuple[int, base.Record, int]) -> dict[str, Any]:
    video, record, view_id = element
    view = self.plan[view_id]
    idx = sampling.view_indices(record["num_frames"], self.num_frames, view)
    frames = transforms.eval_view(self.source.load_frames(record, idx),
                                  short_side=self.short_side, crop_size=self.crop_size,
                                  crop_index=view.crop, num_crops=view.num_crops)
    return {"video": frames, "labels": record["labels"].astype(np.int32),
            "index": np.int32(video), "view": np.int32(view_id)}


def _read_options(cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=cfg.num_threads,
                           prefetch_buffer_size=cfg.prefetch_buffer_size)


def _maybe_multiprocess(ds: grain.IterDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
  if cfg.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return ds


def train_dataset(source: base.VideoSource, cfg: ml_collections.ConfigDict, *,
                  local_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The infinite, shuffled, augmented and batched training stream of one host.

  Args:
    source: the training split.
    cfg: `config.data`.
    local_batch_size: examples per batch on this host.
    seed: shuffle and augmentation seed.
    process_index, process_count: this host's shard of the source.

  Returns:
    An IterDataset of {"video": uint8 [b, T, S, S, 3], "labels": int32 [b, C]}.
    Its iterator's state goes into checkpoints.
  """
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat(None)
  rate_probs = None if not cfg.rate_probs else tuple(cfg.rate_probs)
  ds = ds.random_map(
      TrainClip(source=source, num_frames=cfg.num_frames, rates=tuple(cfg.rates),
                rate_probs=rate_probs, min_short_side=cfg.min_short_side,
                max_short_side=cfg.max_short_side, crop_size=cfg.crop_size,
                flip=cfg.flip),
      seed=seed)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return _maybe_multiprocess(ds.to_iter_dataset(_read_options(cfg)), cfg)


def eval_dataset(source: base.VideoSource, cfg: ml_collections.ConfigDict,
                 plan: Sequence[sampling.View], *, local_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """One pass over this host's shard of every (video, view) of `source`.

  Args:
    source: the split to evaluate.
    cfg: `config.data`.
    plan: the views of each video (`sampling.view_plan`).
    local_batch_size: clips per batch on this host.
    process_index, process_count: this host's shard.

  The last batch may be short; the evaluator pads it and masks the padding.
  """
  ds = grain.MapDataset.source(VideoViews(source, plan))[process_index::process_count]
  ds = ds.map(EvalClip(source=source, plan=tuple(plan), num_frames=cfg.num_frames,
                       short_side=cfg.eval_short_side, crop_size=cfg.crop_size))
  ds = ds.batch(local_batch_size, drop_remainder=False)
  return _maybe_multiprocess(ds.to_iter_dataset(_read_options(cfg)), cfg)

