"""grain input pipelines: per-host shard, shuffle, repeat, clip sampling,
augmentation, batching and prefetch.

Every random choice comes from grain's per-example generator (seeded from the
config seed and the element's position in the stream), and the iterator state
is a position, so a restored iterator yields exactly the batches that the
uninterrupted run would have.

A video that cannot be decoded (`video.VideoDecodeError`) is skipped: the
sample is dropped before batching, the file is logged once, and counted in
`DecodeErrors`; when more than `config.data.max_error_ratio` of the samples
seen (after the first 50) failed, the pipeline raises, naming the last file.
With `num_workers > 0` each worker process keeps its own count and log.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from mlar_jax import config_lib, registry
from mlar_jax.data import base, sampling, scenes, sources, synthetic, transforms, video

# name -> fn(data_config, split) -> VideoSource
SOURCES: registry.Registry = registry.Registry("dataset")
# Training labels: a video's (video) or those of the actions overlapping the
# sampled clip (window; needs segment annotations, e.g. Charades).
LABEL_MODES = ("video", "window")


@SOURCES.register("synthetic")
def _synthetic(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  s = cfg.synthetic
  return synthetic.SyntheticVideos(
    split,
    seed=s.seed,
    num_videos=s[f"num_{split}"],
    video_frames=s.video_frames,
    resolution=s.resolution,
  )


@SOURCES.register("scenes")
def _scenes(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  s = cfg.scenes
  return scenes.SceneVideos(
    split,
    seed=s.seed,
    num_videos=s[f"num_{split}"],
    resolution=s.resolution,
    min_frames=s.min_frames,
    max_frames=s.max_frames,
  )


@SOURCES.register("charades")
def _charades(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  c = cfg.charades
  return sources.charades(
    split,
    root=c.root,
    train_csv=c.train_csv,
    test_csv=c.test_csv,
    classes=c.classes,
    videos=c.videos,
    frames=c.frames,
    video_ext=c.video_ext,
    fps=c.fps,
  )


def _list_source(c: ml_collections.ConfigDict, split: str, header: bool) -> base.VideoSource:
  csv_file = c[f"{split}_csv"]
  if not csv_file:
    raise ValueError(f"config.data: no {split}_csv for split {split!r}")
  return sources.video_list(
    split,
    root=c.root,
    csv_file=csv_file,
    classes=c.classes,
    videos=c.videos,
    fps=c.fps,
    header=header,
  )


@SOURCES.register("mmit")
def _mmit(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  return _list_source(cfg.mmit, split, header=False)


@SOURCES.register("csv")
def _csv(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  return _list_source(cfg.csv, split, header=True)


@SOURCES.register("prepared")
def _prepared(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  return sources.PreparedVideos(split, data_dir=cfg.prepared.data_dir, dataset=cfg.prepared.dataset)


class DecodeErrors:
  """Thread-safe count of skipped samples, shared by a pipeline's transforms."""

  def __init__(self, max_ratio: float, min_samples: int = 50):
    self.max_ratio, self.min_samples = max_ratio, min_samples
    self.seen = self.failed = 0
    self.files: set[str] = set()
    self._lock = threading.Lock()

  def __getstate__(self):  # worker processes get their own lock
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def ok(self) -> None:
    with self._lock:
      self.seen += 1

  def failed_on(self, error: video.VideoDecodeError) -> None:
    with self._lock:
      self.seen += 1
      self.failed += 1
      first = error.path not in self.files
      self.files.add(error.path)
      ratio = self.failed / self.seen
    if first:
      logging.warning("Skipping undecodable video (%d so far): %s", self.failed, error)
    if self.seen >= self.min_samples and ratio > self.max_ratio:
      raise RuntimeError(
        f"{self.failed} of {self.seen} samples failed to decode ({ratio:.1%} > "
        f"config.data.max_error_ratio={self.max_ratio:.1%}); last: {error}"
      )


def window_labels(record: base.Record, indices: np.ndarray, fps: float) -> np.ndarray:
  """Classes whose segments overlap the clip's time window [first, last+1) / fps.

  Falls back to the video labels when the record has no segments.
  """
  segments = record["segments"]
  if len(segments) == 0:
    return record["labels"].astype(np.int32)
  t0, t1 = indices.min() / fps, (indices.max() + 1) / fps
  hit = (segments[:, 1] < t1) & (segments[:, 2] > t0)
  labels = np.zeros_like(record["labels"], np.int32)
  labels[segments[hit, 0].astype(np.int64)] = 1
  return labels


def make_source(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  """The `split` of the dataset named by `cfg.name`."""
  return SOURCES.get(cfg.name)(cfg, split)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.data` and the split `config.eval.split` evaluates."""
  config_lib.check_choice(config, "data.name", SOURCES.names())
  config_lib.check_choice(config, "data.label_mode", LABEL_MODES)
  config_lib.check_choice(config, "eval.split", base.SPLITS)
  config_lib.check_positive(
    config,
    "data.num_frames",
    "data.crop_size",
    "data.min_short_side",
    "data.max_short_side",
    "data.eval_short_side",
  )
  d = config.data
  if not d.rates or any(not isinstance(r, int) or r <= 0 for r in d.rates):
    config_lib.fail("data.rates", d.rates, "must be a non-empty tuple of positive integers")
  if d.rate_probs:
    if len(d.rate_probs) != len(d.rates):
      config_lib.fail("data.rate_probs", d.rate_probs, f"needs one probability per rate {d.rates}")
    if any(p < 0 for p in d.rate_probs) or abs(sum(d.rate_probs) - 1) > 1e-6:
      config_lib.fail("data.rate_probs", d.rate_probs, "must be non-negative and sum to 1")
  if d.min_short_side > d.max_short_side:
    config_lib.fail(
      "data.min_short_side", d.min_short_side, f"exceeds data.max_short_side={d.max_short_side}"
    )
  if d.crop_size > d.min_short_side:
    config_lib.fail(
      "data.crop_size", d.crop_size, f"exceeds data.min_short_side={d.min_short_side}"
    )
  if d.crop_size > d.eval_short_side:
    config_lib.fail(
      "data.crop_size", d.crop_size, f"exceeds data.eval_short_side={d.eval_short_side}"
    )
  if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
    config_lib.fail("data.std", d.std, "mean and std need 3 channels, std > 0")
  if d.num_workers < 0 or d.num_threads <= 0:
    config_lib.fail("data.num_workers", d.num_workers, "workers >= 0 and threads > 0")


def batch_spec(
  cfg: ml_collections.ConfigDict, batch_size: int, num_classes: int, evaluation: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of the batches the pipelines yield: the one description
  of a batch for model initialisation, compilation and padding.

  Args:
    cfg: `config.data`.
    batch_size: B.
    num_classes: A.
    evaluation: add the evaluation keys.

  Returns:
    {"video": uint8 [B, T, S, S, 3], "labels": int32 [B, A]} and, for
    evaluation, "index" (video position) and "view" (view id) int32 [B] and
    "mask" bool [B] (False on padding rows).
  """
  s = cfg.crop_size
  spec = {
    "video": jax.ShapeDtypeStruct((batch_size, cfg.num_frames, s, s, 3), np.uint8),
    "labels": jax.ShapeDtypeStruct((batch_size, num_classes), np.int32),
  }
  if evaluation:
    spec.update(
      index=jax.ShapeDtypeStruct((batch_size,), np.int32),
      view=jax.ShapeDtypeStruct((batch_size,), np.int32),
      mask=jax.ShapeDtypeStruct((batch_size,), np.bool_),
    )
  return spec


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
  label_mode: str
  errors: DecodeErrors

  def random_map(self, record: base.Record, rng: np.random.Generator) -> dict[str, Any] | None:
    rate = int(rng.choice(self.rates, p=self.rate_probs))
    try:
      n, fps = self.source.video_info(record)
      start = transforms.random_clip_start(rng, n, self.num_frames, rate)
      idx = transforms.clip_indices(n, self.num_frames, rate, start)
      frames = self.source.load_frames(record, idx)
    except video.VideoDecodeError as e:
      self.errors.failed_on(e)
      return None
    self.errors.ok()
    crop = transforms.train_crop(
      rng,
      *frames.shape[1:3],
      min_short_side=self.min_short_side,
      max_short_side=self.max_short_side,
      crop_size=self.crop_size,
      flip=self.flip,
    )
    labels = (
      window_labels(record, idx, fps)
      if self.label_mode == "window"
      else record["labels"].astype(np.int32)
    )
    return {"video": transforms.crop_frames(frames, crop), "labels": labels}


class VideoWindows:
  """Random-access (video, temporal window) pairs of a view plan.

  The views of one window differ only in their spatial crop, so a window's
  frames are decoded once for all its crops (3x fewer decodes for the
  papers' 3-crop plans). Flattening videos x windows lets evaluation batch
  clips of different videos together and shard them over hosts like any
  source.
  """

  def __init__(self, source: base.VideoSource, plan: Sequence[sampling.View]):
    self.source, self.windows = source, sampling.temporal_windows(plan)

  def __len__(self) -> int:
    return len(self.source) * len(self.windows)

  def __getitem__(self, i: int) -> tuple[int, base.Record, tuple[int, ...]]:
    video, window = divmod(int(i), len(self.windows))
    return video, self.source[video], self.windows[window]


@dataclasses.dataclass(frozen=True)
class EvalWindow(grain.transforms.Map):
  """(video position, record, view ids of one window) -> a clip per view.

  Output: a list with, per view, {"video": uint8 [T, S, S, 3], "labels":
  int32 [C], "index": int32 video position in the split, "view": int32 view
  id in the plan}; empty when the video cannot be decoded (each of its views
  counts as a skipped clip).
  """

  source: base.VideoSource
  plan: tuple[sampling.View, ...]
  num_frames: int
  short_side: int
  crop_size: int
  errors: DecodeErrors

  def map(self, element: tuple[int, base.Record, tuple[int, ...]]) -> list[dict[str, Any]]:
    position, record, view_ids = element
    try:
      n, _ = self.source.video_info(record)
      frames = self.source.load_frames(
        record, sampling.view_indices(n, self.num_frames, self.plan[view_ids[0]])
      )
    except video.VideoDecodeError as e:
      for _ in view_ids:
        self.errors.failed_on(e)
      return []
    clips = []
    for view_id in view_ids:
      self.errors.ok()
      view = self.plan[view_id]
      crop = transforms.eval_crop(
        *frames.shape[1:3],
        short_side=self.short_side,
        crop_size=self.crop_size,
        crop_index=view.crop,
        num_crops=view.num_crops,
      )
      clips.append(
        {
          "video": transforms.crop_frames(frames, crop),
          "labels": record["labels"].astype(np.int32),
          "index": np.int32(position),
          "view": np.int32(view_id),
        }
      )
    return clips


class _Views(grain.experimental.FlatMapTransform):
  """A window's list of clips -> its clips, one element each."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return clips


def _read_options(cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(
    num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch_buffer_size
  )


def _maybe_multiprocess(ds: grain.IterDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
  if cfg.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  return ds


class HostRows(grain.MapDataset):
  """This process's rows of every global batch of a global-order dataset.

  Global batch k is positions [kG, (k+1)G) of the parent; process p of P
  takes its contiguous block [kG + pL, kG + (p+1)L), L = G / P, which
  `sharding.to_global` places on p's devices. So the global batches, and the
  training run, are the same for any number of processes. `start_batch`
  skips whole global batches (resuming on a different process count).
  """

  def __init__(
    self,
    parent: grain.MapDataset,
    global_batch: int,
    process_index: int,
    process_count: int,
    start_batch: int = 0,
  ):
    super().__init__(parent)
    if global_batch % process_count:
      raise ValueError(
        f"global batch {global_batch} is not a multiple of the {process_count} processes"
      )
    self._local = global_batch // process_count
    self._global, self._p, self._start = global_batch, process_index, start_batch
    self._length = (len(parent) // global_batch - start_batch) * self._local

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[(batch + self._start) * self._global + self._p * self._local + row]

  def __str__(self) -> str:
    return f"HostRows(process {self._p}, {self._local} of {self._global} rows per batch)"


def train_dataset(
  source: base.VideoSource,
  cfg: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  start_batch: int = 0,
  errors: DecodeErrors | None = None,
) -> grain.IterDataset:
  """The infinite, shuffled, augmented and batched training stream of one host.

  The order (shuffle, then clip sampling and augmentation seeded by global
  position) is the same on every host; each host decodes only its rows of
  each global batch (`HostRows`).

  Args:
    source: the training split.
    cfg: `config.data`.
    global_batch_size: examples per global batch (all hosts).
    seed: shuffle and augmentation seed.
    process_index, process_count: this host and the number of hosts.
    start_batch: the first global batch (0, or the step when resuming on a
      different number of hosts).
    errors: where skipped samples are counted (a fresh one if None).

  Returns:
    An IterDataset of {"video": uint8 [b, T, S, S, 3], "labels": int32 [b, C]},
    b = global_batch_size / process_count. Its iterator's state goes into
    checkpoints.
  """
  errors = errors or DecodeErrors(cfg.max_error_ratio)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  rate_probs = None if not cfg.rate_probs else tuple(cfg.rate_probs)
  ds = ds.random_map(
    TrainClip(
      source=source,
      num_frames=cfg.num_frames,
      rates=tuple(cfg.rates),
      rate_probs=rate_probs,
      min_short_side=cfg.min_short_side,
      max_short_side=cfg.max_short_side,
      crop_size=cfg.crop_size,
      flip=cfg.flip,
      label_mode=cfg.label_mode,
      errors=errors,
    ),
    seed=seed,
  )
  ds = HostRows(ds, global_batch_size, process_index, process_count, start_batch)
  # Skipped samples are None; the IterDataset drops them before batching (a
  # host then takes the next of its rows, so with skips the global batches
  # differ slightly between host counts).
  ds = ds.to_iter_dataset(_read_options(cfg)).batch(
    global_batch_size // process_count, drop_remainder=True
  )
  return _maybe_multiprocess(ds, cfg)


def eval_dataset(
  source: base.VideoSource,
  cfg: ml_collections.ConfigDict,
  plan: Sequence[sampling.View],
  *,
  local_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  errors: DecodeErrors | None = None,
) -> grain.IterDataset:
  """One pass over this host's shard of every (video, view) of `source`.

  Hosts split the (video, temporal window) pairs; each window's frames are
  decoded once and give a clip per spatial crop (`VideoWindows`).

  Args:
    source: the split to evaluate.
    cfg: `config.data`.
    plan: the views of each video (`sampling.view_plan`).
    local_batch_size: clips per batch on this host.
    process_index, process_count: this host's shard.
    errors: where skipped clips are counted (a fresh one if None).

  The last batch may be short; the evaluator pads it and masks the padding.
  A video whose views all fail has no scores: it ranks last (-inf), as a
  video missing from a Charades submission.
  """
  errors = errors or DecodeErrors(cfg.max_error_ratio)
  windows = VideoWindows(source, plan)
  ds = grain.MapDataset.source(windows)[process_index::process_count]
  ds = ds.map(
    EvalWindow(
      source=source,
      plan=tuple(plan),
      num_frames=cfg.num_frames,
      short_side=cfg.eval_short_side,
      crop_size=cfg.crop_size,
      errors=errors,
    )
  )
  ds = grain.experimental.FlatMapIterDataset(
    ds.to_iter_dataset(_read_options(cfg)), _Views(max(len(ids) for ids in windows.windows))
  )
  ds = ds.batch(local_batch_size, drop_remainder=False)
  return _maybe_multiprocess(ds, cfg)


def eval_num_batches(
  num_videos: int, plan: Sequence[sampling.View], *, local_batch_size: int, process_count: int = 1
) -> int:
  """Batches of `eval_dataset` on the host with the most clips: every host
  runs that many evaluation steps (they are collective), padding the rest."""
  sizes = np.tile([len(ids) for ids in sampling.temporal_windows(plan)], num_videos)
  most = max(int(sizes[p::process_count].sum()) for p in range(process_count))
  return -(-most // local_batch_size)
