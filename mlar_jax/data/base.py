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
from typing import Any, Sequence

import numpy as np

Record = dict[str, Any]


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
  """

  split: str

  @abc.abstractmethod
  def __len__(self) -> int:
    ...

  @abc.abstractmethod
  def __getitem__(self, index: int) -> Record:
    ...

  @property
  @abc.abstractmethod
  def class_names(self) -> Sequence[str]:
    ...

  def video_info(self, record: Record) -> tuple[int, float]:
    """(frames, fps) of the record's video."""
    return record["num_frames"], record["fps"]

  @abc.abstractmethod
  def load_frames(self, record: Record, indices: np.ndarray) -> np.ndarray:
    """Returns uint8 frames [len(indices), H, W, 3] of the record's video."""

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

  def class_counts(self) -> np.ndarray:
    """Videos per class, int64 [C]."""
    return self.label_matrix().sum(axis=0, dtype=np.int64)

  def cooccurrence(self) -> np.ndarray:
    """`N[j, k]`: videos labelled with both j and k, int64 [C, C].

    The diagonal is `N[j, j] = class_counts()[j]`, so `N / diag(N)[:, None]` is
    the conditional `P(k | j)` used by the MLAR correlation mask (eq. 10).
    """
    labels = self.label_matrix().astype(np.int64)
    return labels.T @ labels
