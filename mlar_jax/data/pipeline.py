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

Examples are {"video": uint8 [T, S, S, 3], "labels": int32 [A]} (plus the
evaluation keys), and the per-frame ground truth named in
`config.data.extras` (from `EXTRAS`), read from the source only when asked,
for exactly the clip's frames and in its view (M = `config.data.max_actors`
slots, N = `config.data.audio.num_samples`):
  boxes: "boxes" float32 [T, M, 4], [y1, x1, y2, x2] in [0, 1] of the view
    (scaled, cropped and flipped as the frames, clipped to the crop), and
    "box_valid" bool [T, M] (the actor is in the view; its box is zeros
    otherwise).
  actor_labels: "actor_labels" int32 [T, M, A], each actor's labels, in or
    out of the view (read them with "box_valid").
  masks: "masks" int32 [T, S, S], k + 1 where actor slot k is seen, 0
    elsewhere: the nearest-neighbour view of the source's masks.
  audio: "audio" float32 [N] at `config.data.audio.sample_rate`, the N
    samples centred on the clip's time window [first, last + 1) / fps,
    zeros outside the video; "has_audio" bool [], whether the video has
    sound (zeros when not: such clips are counted, `DecodeErrors.silent`,
    never skipped). Files are decoded by `audio.decode_audio`; a file whose
    audio stream cannot be decoded is skipped like an undecodable video.
A source lists the extras it provides (`base.VideoSource.extras`); asking a
dataset for others fails when its source is made (`make_source`), before
anything is compiled. Models and steps read the keys they use and ignore
the rest.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import fractions
import math
import os
import threading
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from mlar_jax import config_lib, registry
from mlar_jax.data import (
  ava,
  base,
  sampling,
  scenes,
  sources,
  synthetic,
  transforms,
  video,
  volleyball,
)

# name -> fn(data_config, split) -> VideoSource
SOURCES: registry.Registry = registry.Registry("dataset")
# Training labels: a video's (video) or those of the actions overlapping the
# sampled clip (window; needs segment annotations, e.g. Charades).
LABEL_MODES = ("video", "window")
# Per-frame ground truth a pipeline may ask for (`config.data.extras`); the
# keys each adds are in the module docstring and `batch_spec`.
EXTRAS = ("boxes", "actor_labels", "masks", "audio")


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
    sample_rate=cfg.audio.sample_rate,
    single_label=s.single_label,
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
    sample_rate=cfg.audio.sample_rate,
  )


def _list_source(cfg: ml_collections.ConfigDict, name: str, split: str) -> base.VideoSource:
  c = cfg[name]
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
    header=name == "csv",  # M-MiT's lists have no header
    sample_rate=cfg.audio.sample_rate,
  )


@SOURCES.register("mmit")
def _mmit(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  return _list_source(cfg, "mmit", split)


@SOURCES.register("csv")
def _csv(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  return _list_source(cfg, "csv", split)


@SOURCES.register("ava")
def _ava(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  a = cfg.ava
  j = lambda name: os.path.join(a.root, name) if name else ""
  part = "train" if split == "train" else "val"
  return ava.AvaKeyframes(
    split,
    frames=j(a.frames),
    annotations=j(a[f"{part}_csv"]),
    labelmap=j(a.labelmap),
    num_frames=cfg.num_frames,
    rate=cfg.rates[0],
    exclusions=j(a[f"{part}_exclusions"]),
    person_boxes=j(a[f"{part}_boxes"]),
    box_threshold=a.box_threshold,
    detections_only=part == "val" and bool(a.val_boxes),
    fps=a.fps,
  )


@SOURCES.register("volleyball")
def _volleyball(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  v = cfg.volleyball
  parts = v.train_splits if split == "train" else (split,)
  return volleyball.VolleyballClips(
    split,
    root=v.root,
    videos=[i for p in parts for i in volleyball.OFFICIAL_SPLITS[p]],
    task=v.task,
    num_frames=cfg.num_frames,
    rate=cfg.rates[0],
    fps=v.fps,
    actions=volleyball.read_names(os.path.join(v.root, v.actions)) if v.actions else None,
    activities=volleyball.read_names(os.path.join(v.root, v.activities)) if v.activities else None,
  )


@SOURCES.register("prepared")
def _prepared(cfg: ml_collections.ConfigDict, split: str) -> base.VideoSource:
  source = sources.PreparedVideos(
    split, data_dir=cfg.prepared.data_dir, dataset=cfg.prepared.dataset
  )
  if "audio" in cfg.extras and source.sample_rate != cfg.audio.sample_rate:
    config_lib.fail(
      "data.audio.sample_rate",
      cfg.audio.sample_rate,
      f"the prepared {cfg.prepared.dataset!r} data's sound is at {source.sample_rate} Hz "
      f"(prepare it again with --sample_rate={cfg.audio.sample_rate})",
    )
  return source


class DecodeLimitError(RuntimeError):
  """More samples failed to decode than `config.data.max_error_ratio` allows."""


class DecodeErrors:
  """Thread-safe count of skipped samples, shared by a pipeline's transforms,
  and of the videos whose clips were given silence for want of a sound
  track (`silent`: ids, each logged once; their samples are not skipped)."""

  def __init__(self, max_ratio: float, min_samples: int = 50):
    self.max_ratio, self.min_samples = max_ratio, min_samples
    self.seen = self.failed = 0
    self.files: set[str] = set()
    self.silent: set[str] = set()
    self._lock = threading.Lock()

  def __getstate__(self):  # worker processes get their own lock
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def ok(self) -> None:
    with self._lock:
      self.seen += 1

  def no_audio(self, video_id: str) -> None:
    with self._lock:
      first = video_id not in self.silent
      self.silent.add(video_id)
      count = len(self.silent)
    if first:
      logging.info("Video %s has no sound track: silent audio (%d so far)", video_id, count)

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
      raise DecodeLimitError(
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
  """The `split` of the dataset named by `cfg.name`, checked to provide the
  extras `cfg.extras` asks for (`check_extras`); with `cfg.audio.require`
  only its videos with a sound track (`with_audio`)."""
  source = SOURCES.get(cfg.name)(cfg, split)
  check_extras(source, cfg)
  return with_audio(source) if cfg.audio.require else source


def with_audio(source: base.VideoSource) -> base.Subset:
  """The videos of `source` that have a sound track (looked up once per video:
  one container opened per file), and those whose file cannot be opened,
  which the pipelines then skip and count; the number kept is logged."""
  keep = []
  for i in range(len(source)):
    try:
      sound = source.has_audio(source[i])
    except video.VideoDecodeError:
      sound = True
    if sound:
      keep.append(i)
  logging.info(
    "%s split %r: %d of %d videos have sound (data.audio.require)",
    type(source).__name__,
    source.split,
    len(keep),
    len(source),
  )
  return base.Subset(source, keep)


def check_extras(source: base.VideoSource, cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError, naming the key, when `source` does not provide the
  extras `cfg.extras` (`config.data`) asks for or has more actors per frame
  than `cfg.max_actors` slots."""
  missing = [name for name in cfg.extras if name not in source.extras]
  if missing:
    config_lib.fail(
      "data.extras",
      tuple(cfg.extras),
      f"the {cfg.name!r} dataset ({type(source).__name__}) does not provide {missing}; "
      f"it provides {list(source.extras)}",
    )
  per_actor = {"boxes", "actor_labels", "masks"}.intersection(cfg.extras)
  if per_actor and source.max_actors > cfg.max_actors:
    config_lib.fail(
      "data.max_actors",
      cfg.max_actors,
      f"the {cfg.name!r} dataset has up to {source.max_actors} actors per frame",
    )


def check_task(source: base.VideoSource, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, naming `model.task`, when `source` is not a dataset of
  that task (`base.VideoSource.detection`): a detector needs per-box labels,
  and a classifier trained on a detection dataset would ignore its boxes. A
  box classifier ("boxes") reads a classification dataset's clip labels."""
  kind = "detection" if source.detection else "classification"
  wants = "detection" if config.model.task == "detection" else "classification"
  if wants != kind:
    config_lib.fail(
      "model.task",
      config.model.task,
      f"the {config.data.name!r} dataset ({type(source).__name__}) is a {kind} dataset",
    )


def model_inputs(
  config: ml_collections.ConfigDict, batch: dict[str, Any], dtype: Any = None
) -> tuple[Any, ...]:
  """The model's positional inputs from a batch (`models.registry.build`).

  A classifier reads what `config.model.inputs` names: (video,) normalised
  to `dtype`, (audio,) the [B, N] waveform, or (video, audio). A detector
  or box classifier (`config.model.task` "detection", "boxes") reads (video,
  the keyframe's person boxes [B, M, 4], their validity [B, M]) (`keyframe`:
  boxes outside the training crop are not valid).
  """
  video = None
  on_boxes = config.model.task in ("detection", "boxes")
  if on_boxes or "video" in config.model.inputs.split("+"):
    video = transforms.normalize(batch["video"], config.data.mean, config.data.std, dtype)
  if on_boxes:
    kf = keyframe(batch)
    return video, kf["boxes"], kf["box_valid"]
  return tuple(
    video if name == "video" else batch["audio"] for name in config.model.inputs.split("+")
  )


def keyframe(batch: dict[str, Any]) -> dict[str, Any]:
  """A detection batch's boxes at its keyframe, the clip's middle frame T // 2
  (AVA annotates the keyframe only; `ava.clip_start` centres the clip on it).

  Args:
    batch: with "boxes" [B, T, M, 4], "box_valid" [B, T, M] and, if present,
      "actor_labels" [B, T, M, A] (numpy or jax arrays).

  Returns:
    The same keys at frame T // 2: [B, M, 4], [B, M], [B, M, A].
  """
  t = batch["boxes"].shape[1]
  keys = [k for k in ("boxes", "box_valid", "actor_labels") if k in batch]
  return {k: batch[k][:, t // 2] for k in keys}


def clip_audio(
  source: base.VideoSource,
  record: base.Record,
  indices: np.ndarray,
  num_video_frames: int,
  fps: float,
  num_samples: int,
) -> np.ndarray:
  """The sound of a clip: float32 [num_samples] at `source.sample_rate`
  (`config.data.audio.sample_rate` for the registered datasets).

  The samples k whose times k / rate lie in [c - d, c + d), c the centre of
  the clip's window [first, last + 1) / fps and d = num_samples / 2 / rate:
  when num_samples spans the window, exactly the window's samples. Samples
  outside the video, [0, num_video_frames / fps), are zeros.
  """
  rate, fps = fractions.Fraction(source.sample_rate), fractions.Fraction(fps)
  # In exact fractions: a rounding error would move a window by a sample.
  centre = fractions.Fraction(int(indices.min()) + int(indices.max()) + 1, 2) / fps * rate
  start = math.ceil(centre - fractions.Fraction(num_samples, 2))
  end = math.ceil(num_video_frames / fps * rate)
  lo, hi = max(start, 0), min(start + num_samples, end)
  out = np.zeros(num_samples, np.float32)
  if lo < hi:
    out[lo - start : hi - start] = source.audio(record, lo, hi)
  return out


@dataclasses.dataclass(frozen=True)
class Extras:
  """The extras a pipeline asks for: read from a source for a clip's frames,
  then put in the clip's view.

  Attributes:
    names: from EXTRAS (`config.data.extras`).
    max_actors: M, actor slots per frame; a source's fewer slots are padded
      with empty (not valid) ones.
    audio_samples: N, samples of audio per clip (`config.data.audio.num_samples`).
  """

  names: tuple[str, ...] = ()
  max_actors: int = 0
  audio_samples: int = 0

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> Extras:
    """From `config.data`."""
    return cls(tuple(cfg.extras), cfg.max_actors, cfg.audio.num_samples)

  def _slots(self, x: np.ndarray, dtype) -> np.ndarray:
    """[F, m, ...] -> [F, M, ...] of `dtype`, padded with zeros (False)."""
    pad = [(0, 0), (0, self.max_actors - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return np.pad(np.asarray(x, dtype), pad)

  def load(
    self,
    source: base.VideoSource,
    record: base.Record,
    indices: np.ndarray,
    num_video_frames: int,
    fps: float,
  ) -> dict[str, np.ndarray]:
    """The extras of frames `indices` ([T]) as the source gives them: boxes
    of its frames, masks [T, H, W] at its resolution."""
    out = {}
    if "boxes" in self.names:
      boxes, valid = source.boxes(record, indices)
      out["boxes"], out["box_valid"] = self._slots(boxes, np.float32), self._slots(valid, bool)
    if "actor_labels" in self.names:
      out["actor_labels"] = self._slots(source.actor_labels(record, indices), np.int32)
    if "masks" in self.names:
      out["masks"] = np.asarray(source.masks(record, indices), np.int32)
    if "audio" in self.names:
      out["has_audio"] = np.bool_(source.has_audio(record))
      out["audio"] = clip_audio(source, record, indices, num_video_frames, fps, self.audio_samples)
    return out

  def count(self, extras: dict[str, np.ndarray], record: base.Record, errors: DecodeErrors) -> None:
    """Counts a clip given silence for want of a sound track in `errors`."""
    if "has_audio" in extras and not extras["has_audio"]:
      errors.no_audio(record["id"])

  def view(self, extras: dict[str, np.ndarray], crop: transforms.Crop) -> dict[str, np.ndarray]:
    """`load`'s extras in the view `crop` of the frames (boxes and masks
    follow the frames; labels and audio are the clip's as they are)."""
    out = dict(extras)
    if "boxes" in out:
      out["boxes"], out["box_valid"] = transforms.crop_boxes(out["boxes"], out["box_valid"], crop)
    if "masks" in out:
      out["masks"] = transforms.crop_masks(out["masks"], crop)
    return out


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
    "data.max_actors",
    "data.audio.sample_rate",
    "data.audio.num_samples",
  )
  config_lib.check_seed(config, "data.synthetic.seed", "data.scenes.seed")
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
  if any(name not in EXTRAS for name in d.extras) or len(set(d.extras)) != len(d.extras):
    config_lib.fail("data.extras", d.extras, f"must be distinct names from {list(EXTRAS)}")
  if d.audio.require and "audio" not in d.extras:
    config_lib.fail("data.audio.require", True, "needs 'audio' in data.extras")
  if d.name in ("ava", "volleyball"):
    dataset = {"ava": "AVA", "volleyball": "Volleyball"}[d.name]
    # A record is the window of one clip at one rate around its keyframe.
    if len(d.rates) != 1:
      config_lib.fail("data.rates", d.rates, f"{dataset} clips are taken at one rate")
    if tuple(map(tuple, config.eval.views)) != ((d.rates[0], 1),):
      config_lib.fail(
        "eval.views",
        config.eval.views,
        f"{dataset} evaluates one clip per keyframe: (({d.rates[0]}, 1),)",
      )
  if d.name == "volleyball":
    config_lib.check_choice(config, "data.volleyball.task", volleyball.TASKS)
    v = d.volleyball
    if not v.train_splits or any(p not in volleyball.OFFICIAL_SPLITS for p in v.train_splits):
      config_lib.fail(
        "data.volleyball.train_splits",
        tuple(v.train_splits),
        f"must name official splits from {list(volleyball.OFFICIAL_SPLITS)}",
      )
    if config.eval.split in v.train_splits:
      config_lib.fail(
        "eval.split",
        config.eval.split,
        f"is trained on (data.volleyball.train_splits={tuple(v.train_splits)})",
      )
  if d.name == "ava":
    if not 0.0 <= d.ava.box_threshold <= 1.0:
      config_lib.fail("data.ava.box_threshold", d.ava.box_threshold, "must be in [0, 1]")


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
    {"video": uint8 [B, T, S, S, 3], "labels": int32 [B, A]}; the keys of
    the extras `cfg.extras` asks for (M = `cfg.max_actors`, N =
    `cfg.audio.num_samples`; semantics in the module docstring):
      boxes: "boxes" float32 [B, T, M, 4], "box_valid" bool [B, T, M];
      actor_labels: "actor_labels" int32 [B, T, M, A];
      masks: "masks" int32 [B, T, S, S];
      audio: "audio" float32 [B, N], "has_audio" bool [B];
    and, for evaluation, "index" (video position) and "view" (view id)
    int32 [B] and "mask" bool [B] (False on padding rows).
  """
  t, s, m = cfg.num_frames, cfg.crop_size, cfg.max_actors
  per_clip = {
    "video": ((t, s, s, 3), np.uint8),
    "labels": ((num_classes,), np.int32),
  }
  extras = {
    "boxes": {"boxes": ((t, m, 4), np.float32), "box_valid": ((t, m), np.bool_)},
    "actor_labels": {"actor_labels": ((t, m, num_classes), np.int32)},
    "masks": {"masks": ((t, s, s), np.int32)},
    "audio": {"audio": ((cfg.audio.num_samples,), np.float32), "has_audio": ((), np.bool_)},
  }
  for name in cfg.extras:
    per_clip.update(extras[name])
  if evaluation:
    per_clip.update(index=((), np.int32), view=((), np.int32), mask=((), np.bool_))
  return {
    k: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for k, (shape, dtype) in per_clip.items()
  }


@dataclasses.dataclass(frozen=True)
class TrainClip(grain.transforms.RandomMap):
  """Record -> training example: a random rate and window, then augmentation.

  Output: {"video": uint8 [T, S, S, 3], "labels": int32 [C]} and the
  `extras` of its frames, in its view (module docstring).
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
  extras: Extras = Extras()

  def random_map(self, record: base.Record, rng: np.random.Generator) -> dict[str, Any] | None:
    rate = int(rng.choice(self.rates, p=self.rate_probs))
    try:
      n, fps = self.source.video_info(record)
      start = transforms.random_clip_start(rng, n, self.num_frames, rate)
      idx = transforms.clip_indices(n, self.num_frames, rate, start)
      # The short side is drawn first so that the source can decode at it.
      short = transforms.draw_short_side(rng, self.min_short_side, self.max_short_side)
      frames = self.source.load_frames(record, idx, short)
      extras = self.extras.load(self.source, record, idx, n, fps)
    except video.VideoDecodeError as e:
      self.errors.failed_on(e)
      return None
    self.errors.ok()
    self.extras.count(extras, record, self.errors)
    crop = transforms.train_crop(
      rng, *frames.shape[1:3], short_side=short, crop_size=self.crop_size, flip=self.flip
    )
    labels = (
      window_labels(record, idx, fps)
      if self.label_mode == "window"
      else record["labels"].astype(np.int32)
    )
    return {
      "video": transforms.crop_frames(frames, crop),
      "labels": labels,
      **self.extras.view(extras, crop),
    }


class VideoViews(grain.transforms.Map):
  """A video's record -> its clips in every view of a plan, from one
  decode of the frames they use.

  The union of the views' frames (every rate and temporal position) is
  decoded in one pass over the video (`VideoSource.load_frames`; windows
  further apart than `video.SEEK_GAP_SECONDS` are reached by seeking), and
  each frame is resized once: to the evaluation size when the views' crops
  together cover more pixels than the resized frames (the papers' 3 crops),
  else each view resizes only its crop. Clips are cut when read from the
  returned `VideoClips`, so a video's 30 clips are never all in memory.
  """

  def __init__(
    self,
    source: base.VideoSource,
    plan: Sequence[sampling.View],
    num_frames: int,
    short_side: int,
    crop_size: int,
    errors: DecodeErrors,
    extras: Extras = Extras(),
  ):
    self.source, self.plan, self.num_frames = source, tuple(plan), num_frames
    self.short_side, self.crop_size = short_side, crop_size
    self.errors, self.extras = errors, extras
    self.windows = sampling.temporal_windows(self.plan)

  def map(self, record: base.Record) -> VideoClips:
    position = record["index"]
    try:
      n, fps = self.source.video_info(record)
      window_indices = [
        sampling.view_indices(n, self.num_frames, self.plan[ids[0]]) for ids in self.windows
      ]
      frames_of = np.unique(np.concatenate(window_indices))
      frames = self.source.load_frames(record, frames_of, self.short_side)
      extras = [self.extras.load(self.source, record, idx, n, fps) for idx in window_indices]
    except video.VideoDecodeError as e:
      for _ in self.plan:
        self.errors.failed_on(e)
      return VideoClips(position, record, np.zeros((0, 1, 1, 3), np.uint8), ())
    resized = transforms.short_side_shape(*frames.shape[1:3], self.short_side)
    if (
      len(frames_of) * resized[0] * resized[1]
      < len(self.plan) * self.num_frames * self.crop_size**2
    ):
      frames = transforms.resize(frames, *resized)
    views = []
    for ids, idx, window_extras in zip(self.windows, window_indices, extras):
      self.extras.count(window_extras, record, self.errors)
      rows = np.searchsorted(frames_of, idx)
      for view_id in ids:
        self.errors.ok()
        view = self.plan[view_id]
        crop = transforms.eval_crop(
          *frames.shape[1:3],
          short_side=self.short_side,
          crop_size=self.crop_size,
          crop_index=view.crop,
          num_crops=view.num_crops,
        )
        views.append((view_id, rows, crop, window_extras))
    return VideoClips(position, record, frames, tuple(views), self.extras)


@dataclasses.dataclass(frozen=True)
class VideoClips(collections.abc.Sequence):
  """A video's evaluation clips (`VideoViews`), each cut when indexed: a dict
  {"video": uint8 [T, S, S, 3], "labels": int32 [C], "index": int32 video
  position in the split, "view": int32 view id in the plan} and the `extras`
  of its frames, in its view (module docstring). Empty when the video cannot
  be decoded (each of its views counts as a skipped clip)."""

  position: int
  record: base.Record
  frames: np.ndarray  # uint8 [U, H, W, 3], the views' frames, decoded once
  views: tuple[tuple[int, np.ndarray, transforms.Crop, dict[str, np.ndarray]], ...]
  extras: Extras = Extras()

  def __len__(self) -> int:
    return len(self.views)

  def __getitem__(self, k: int) -> dict[str, Any]:
    view_id, rows, crop, extras = self.views[k]
    return {
      "video": transforms.crop_frames(self.frames[rows], crop),
      "labels": self.record["labels"].astype(np.int32),
      "index": np.int32(self.position),
      "view": np.int32(view_id),
      **self.extras.view(extras, crop),
    }


class _Views(grain.experimental.FlatMapTransform):
  """A video's clips -> its clips, one element each."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, clips: VideoClips) -> VideoClips:
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
    An IterDataset of {"video": uint8 [b, T, S, S, 3], "labels": int32 [b, C]}
    and the extras (`batch_spec`), b = global_batch_size / process_count. Its
    iterator's state goes into checkpoints.
  """
  check_extras(source, cfg)
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
      extras=Extras.from_config(cfg),
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

  Hosts split the videos; each video's frames are decoded once and give a
  clip per view (`VideoViews`).

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
  check_extras(source, cfg)
  errors = errors or DecodeErrors(cfg.max_error_ratio)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.map(
    VideoViews(
      source=source,
      plan=plan,
      num_frames=cfg.num_frames,
      short_side=cfg.eval_short_side,
      crop_size=cfg.crop_size,
      errors=errors,
      extras=Extras.from_config(cfg),
    )
  )
  # An element is a whole video's frames (up to ~85 MB for the papers' 30
  # views at 256 pixels): prefetch as many as there are reader threads.
  read = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.num_threads)
  ds = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(read), _Views(len(plan)))
  ds = ds.batch(local_batch_size, drop_remainder=False)
  return _maybe_multiprocess(ds, cfg)


def eval_num_batches(
  num_videos: int, plan: Sequence[sampling.View], *, local_batch_size: int, process_count: int = 1
) -> int:
  """Batches of `eval_dataset` on the host with the most clips: every host
  runs that many evaluation steps (they are collective), padding the rest."""
  most = len(plan) * -(-num_videos // process_count)  # videos of host 0
  return -(-most // local_batch_size)
