"""What every video data source provides, and the label statistics built on it.

A source is a grain random-access data source (`__len__`, `__getitem__`) of
*records*: small picklable dicts describing one video (its id, multi-hot
labels, frame count and whatever the source needs to produce frames). Frames
are produced separately by `load_frames(record, indices)`, so the pipeline
samples the frame indices first and only those frames are decoded or
rendered.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import numpy as np

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ClassStats:
  """Training-label statistics that heads, losses and reports are built from.

  Attributes:
    counts: int64 [A], videos labelled with each activity.
    cooccurrence: int64 [A, A], `N[j, k]` = videos labelled with both j and
      k; the diagonal is `counts`, so `N / diag(N)[:, None]` is the
      conditional `P(k | j)` of the MLAR correlation mask (eq. 10).
    num_videos: videos in the split.
  """

  counts: np.ndarray
  cooccurrence: np.ndarray
  num_videos: int

  @classmethod
  def from_labels(cls, labels: np.ndarray) -> ClassStats:
    """Statistics of a label matrix int [N, A]."""
    labels = np.asarray(labels, np.int64)
    return cls(counts=labels.sum(axis=0), cooccurrence=labels.T @ labels, num_videos=len(labels))

  @classmethod
  def placeholder(cls, num_classes: int) -> ClassStats:
    """Statistics of the right shapes without data (one video per class, no
    co-occurrence): for compiling, counting FLOPs or parameters, and tests.
    Only values derived from them (the MLAR mask, class weights) differ from
    a real run's."""
    return cls(
      counts=np.ones(num_classes, np.int64),
      cooccurrence=np.eye(num_classes, dtype=np.int64),
      num_videos=num_classes,
    )

  @property
  def num_classes(self) -> int:
    return len(self.counts)

  @property
  def frequency(self) -> np.ndarray:
    """float64 [A], the fraction of videos with each activity."""
    return self.counts / max(self.num_videos, 1)


class VideoSource(abc.ABC):
  """A split of a multi-label video dataset.

  Records hold at least:
    id: str, the video id (used in predictions and reports).
    index: int, the record's position in the split.
    labels: [C] int32 multi-hot video-level labels.
    segments: [S, 3] float32 (class, start s, end s) temporal annotations
      (may be empty).
    num_frames: int, frames in the video, or -1 when `video_info` must probe.
    fps: float, frames per second.
    has_audio: bool, whether the video has sound (sources with "audio"
      that know it without opening the video; others override `has_audio`).

  Per-frame ground truth beyond the labels (`extras`, asked for by a
  pipeline with `config.data.extras`) comes from the method of each name,
  computed only when asked:
    boxes: `boxes(record, indices)`, each actor's box and validity.
    actor_labels: `actor_labels(record, indices)`, each actor's labels.
    masks: `masks(record, indices)`, which actor each pixel shows.
    audio: `audio(record, start, stop)`, samples at `sample_rate`.
  Actors have `max_actors` slots, the same in every frame (actor k of a
  video is slot k throughout).
  """

  split: str
  extras: tuple[str, ...] = ()  # names from `pipeline.EXTRAS`
  max_actors: int = 0  # actor slots of boxes, actor_labels and masks
  sample_rate: int = 0  # of audio, in Hz
  # Whether its labels are per person box at a keyframe (AVA): a dataset for
  # config.model.task = "detection" rather than "classification".
  detection: bool = False

  @abc.abstractmethod
  def __len__(self) -> int: ...

  @abc.abstractmethod
  def __getitem__(self, index: int) -> Record: ...

  @property
  @abc.abstractmethod
  def class_names(self) -> Sequence[str]: ...

  def video_info(self, record: Record) -> tuple[int, float]:
    """(frames, fps) of the record's video."""
    return record["num_frames"], record["fps"]

  @abc.abstractmethod
  def load_frames(
    self, record: Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    """Returns uint8 frames [len(indices), H, W, 3] of the record's video.

    `short_side` is a hint: the caller resizes the frames to this shorter
    side next (`transforms.short_side_shape`). A source that can decode
    straight to a smaller size (video files, JPEG) may return them at it, or
    between it and the stored size; others ignore it. Callers compute their
    crops from the shape they get.
    """

  @abc.abstractmethod
  def label_matrix(self) -> np.ndarray:
    """Returns the labels of every video of the split, int32 [N, C]."""

  @abc.abstractmethod
  def video_ids(self) -> list[str]:
    """Returns the id of every video of the split, in index order.

    The same N strings as `self[i]["id"]`, taken from the annotations (or the
    prepared metadata) without building records: a record may read a whole
    video, and reports such as `predictions.txt` need only the ids.
    """

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def class_stats(self) -> ClassStats:
    """Label counts and co-occurrence of the split, from its annotations."""
    return ClassStats.from_labels(self.label_matrix())

  def _not_provided(self, name: str):
    raise NotImplementedError(f"{type(self).__name__} provides no {name} (extras: {self.extras})")

  def boxes(self, record: Record, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each actor's box at frames `indices` ([F]), if "boxes" is in `extras`.

    Returns:
      boxes: float32 [F, max_actors, 4], [y1, x1, y2, x2] in [0, 1] of the
        frame; zeros where not valid.
      valid: bool [F, max_actors], the actor is in the frame.
    """
    self._not_provided("boxes")

  def actor_labels(self, record: Record, indices: np.ndarray) -> np.ndarray:
    """int32 [F, max_actors, C], each actor's labels at frames `indices`, if
    "actor_labels" is in `extras`."""
    self._not_provided("actor_labels")

  def masks(self, record: Record, indices: np.ndarray) -> np.ndarray:
    """int32 [F, H, W] at frames `indices`, if "masks" is in `extras`: k + 1
    where actor slot k is seen, 0 elsewhere."""
    self._not_provided("masks")

  def audio(self, record: Record, start: int, stop: int) -> np.ndarray:
    """float32 [stop - start], samples start..stop (0 <= start <= stop <= the
    video's samples) of the sound track at `sample_rate`, if "audio" is in
    `extras`; zeros when `has_audio(record)` is False."""
    self._not_provided("audio")

  def has_audio(self, record: Record) -> bool:
    """Whether the record's video has a sound track, if "audio" is in
    `extras`: its record's `has_audio`, unless the source must look."""
    return bool(record["has_audio"])


# The splits a dataset may have (`config.eval.split`); a procedural split's
# position here enters the random seed of each of its videos.
SPLITS = ("train", "val", "test")
SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}


class PlannedVideos(VideoSource):
  """A split rendered procedurally: video `index` is a *plan* of random
  choices, a pure function of (seed, split, index), drawn by `_draw`; frames
  and ground truth are computed from the plan alone.

  Subclasses implement `_draw(index)` (a plan with an int32 [C] `labels`
  attribute), `class_names`, `__getitem__` (records carry their plan under
  "plan") and `load_frames` (reading it with `plan_of`).

  Attributes:
    split: "train", "val" or "test".
    seed: dataset seed; (seed, split, index) fixes a video.
    num_videos: number of videos in the split.
  """

  def __init__(self, split: str, seed: int, num_videos: int):
    if split not in SPLIT_IDS:
      raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
    self.split = split
    self.seed = seed
    self.num_videos = num_videos
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return self.num_videos

  @abc.abstractmethod
  def _draw(self, index: int) -> Any: ...

  def plan(self, index: int) -> Any:
    """The plan of video `index`."""
    if not 0 <= index < self.num_videos:
      raise IndexError(f"index {index} out of range for {self!r}")
    return self._draw(int(index))

  def plan_of(self, record: Record) -> Any:
    """The plan of a record of this source: the one `__getitem__` put in it
    (so a clip draws its video's plan once, not once per frame or ground
    truth request), else drawn from its index."""
    plan = record.get("plan")
    return plan if plan is not None else self.plan(record["index"])

  def _video_id(self, index: int) -> str:
    return f"{self.split}{int(index):06d}"

  def video(self, index: int) -> np.ndarray:
    """All frames of a video, uint8 [T_v, H, W, 3]."""
    record = self[index]
    return self.load_frames(record, np.arange(record["num_frames"]))

  def label_matrix(self) -> np.ndarray:
    # Every video's plan is drawn once, then kept with the source (a
    # functools.cache on the method would keep every source alive).
    if self._labels is None:
      self._labels = np.stack([self.plan(i).labels for i in range(self.num_videos)])
    return self._labels

  def video_ids(self) -> list[str]:
    # From the split and index alone: no plan is drawn, no frame rendered.
    return [self._video_id(i) for i in range(self.num_videos)]


class AnnotatedVideos(VideoSource):
  """A split whose annotations are in memory (parsed files, prepared
  metadata): class names, the label matrix and the ids are given once."""

  def __init__(
    self, split: str, class_names: Sequence[str], labels: np.ndarray, ids: Sequence[str]
  ):
    """Args: split; class_names [A]; labels int32 [N, A]; ids [N] in index order."""
    if len(ids) != len(labels):
      raise ValueError(f"split {split!r}: {len(ids)} ids for {len(labels)} label rows")
    self.split = split
    self._class_names = tuple(class_names)
    self._labels = labels
    self._ids = list(ids)

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def class_names(self) -> Sequence[str]:
    return self._class_names

  def label_matrix(self) -> np.ndarray:
    return self._labels

  def video_ids(self) -> list[str]:
    return list(self._ids)


class RecordVideos(AnnotatedVideos):
  """A split whose records were all built up front (parsed annotation
  files): each gets its position as "index", and the label matrix and ids
  come from the records."""

  def __init__(self, split: str, class_names: Sequence[str], records: list[Record]):
    for i, r in enumerate(records):
      r["index"] = i
    labels = (
      np.stack([r["labels"] for r in records])
      if records
      else np.zeros((0, len(class_names)), np.int32)
    )
    super().__init__(split, class_names, labels, [r["id"] for r in records])
    self._records = records

  def __getitem__(self, index: int) -> Record:
    return self._records[index]


class KeyframeClips(RecordVideos):
  """Clips annotated at one frame only (AVA's keyframes, Volleyball's target
  frames): each record holds that frame's person "boxes" [P, 4] (y1, x1,
  y2, x2 in [0, 1]) and their "box_labels" [P, L], given at every frame of
  the clip as the "boxes" and "actor_labels" extras (so crops and flips move
  them with the pixels)."""

  extras = ("boxes", "actor_labels")

  def __init__(self, split: str, class_names: Sequence[str], records: list[Record]):
    super().__init__(split, class_names, records)
    self.max_actors = max((len(r["boxes"]) for r in records), default=0)

  def boxes(self, record: Record, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The annotated frame's boxes at every frame: [F, P, 4] and valid [F, P]."""
    f, p = len(indices), len(record["boxes"])
    return np.broadcast_to(record["boxes"], (f, p, 4)), np.ones((f, p), bool)

  def actor_labels(self, record: Record, indices: np.ndarray) -> np.ndarray:
    """[F, P, L] each box's labels, the same at every frame."""
    return np.broadcast_to(record["box_labels"], (len(indices), *record["box_labels"].shape))


class Subset(VideoSource):
  """The videos `indices` of `parent`, in that order, as a split of their own:
  records, labels, ids and every extra are the parent's, positions 0..n-1.

  Attributes:
    parent: the whole split.
    indices: int64 [n], the parent positions kept.
  """

  def __init__(self, parent: VideoSource, indices: Sequence[int]):
    self.parent = parent
    self.indices = np.asarray(indices, np.int64).reshape(-1)
    self.split = parent.split
    self.extras, self.max_actors = parent.extras, parent.max_actors
    self.sample_rate = parent.sample_rate

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Record:
    # A copy: the parent's records may be its own (FileVideos keeps them).
    return {**self.parent[int(self.indices[index])], "index": int(index)}

  @property
  def class_names(self) -> Sequence[str]:
    return self.parent.class_names

  def video_info(self, record: Record) -> tuple[int, float]:
    return self.parent.video_info(record)

  def load_frames(
    self, record: Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    return self.parent.load_frames(record, indices, short_side)

  def label_matrix(self) -> np.ndarray:
    return self.parent.label_matrix()[self.indices]

  def video_ids(self) -> list[str]:
    ids = self.parent.video_ids()
    return [ids[i] for i in self.indices]

  def boxes(self, record: Record, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.parent.boxes(record, indices)

  def actor_labels(self, record: Record, indices: np.ndarray) -> np.ndarray:
    return self.parent.actor_labels(record, indices)

  def masks(self, record: Record, indices: np.ndarray) -> np.ndarray:
    return self.parent.masks(record, indices)

  def audio(self, record: Record, start: int, stop: int) -> np.ndarray:
    return self.parent.audio(record, start, stop)

  def has_audio(self, record: Record) -> bool:
    return self.parent.has_audio(record)
