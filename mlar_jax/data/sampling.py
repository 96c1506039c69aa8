"""Which frames and crops a clip uses: training draws, evaluation view plans.

A view plan (MLAR section 3.5, PySlowFast's multi-view test) lists, per
downsampling rate, a number of temporal positions; every position is taken
with each of `spatial_crops` crops. The default plan of the papers is
((4, 4), (8, 3), (2, 3)) x 3 crops = 12 + 9 + 9 = 30 views.

Temporal positions at one rate are spread uniformly: the first clip starts at
frame 0, the last ends at the last frame, the others evenly in between
(rounded). A video shorter than a clip's span gets one position at frame 0
repeated, and the clip repeats the video's last frame (see
`transforms.clip_indices`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np

from mlar_jax import config_lib
from mlar_jax.data import transforms


@dataclasses.dataclass(frozen=True)
class View:
  """One evaluation view of a video."""

  rate: int
  position: int  # temporal position index in [0, num_positions)
  num_positions: int
  crop: int  # spatial crop index in [0, num_crops)
  num_crops: int


def view_plan(views: Sequence[Sequence[int]], spatial_crops: int) -> tuple[View, ...]:
  """The views of a plan: for each (rate, positions), positions x crops views.

  Args:
    views: ((rate, num_temporal_positions), ...), e.g. ((4, 4), (8, 3), (2, 3)).
    spatial_crops: crops per temporal position (1 or 3).
  """
  plan = []
  for rate, positions in views:
    for p in range(positions):
      for c in range(spatial_crops):
        plan.append(View(int(rate), p, int(positions), c, int(spatial_crops)))
  return tuple(plan)


def temporal_windows(plan: Sequence[View]) -> tuple[tuple[int, ...], ...]:
  """The plan's view ids grouped by temporal window (rate and position): the
  views of a group read the same frames and differ only in their crop."""
  groups: dict[tuple[int, int, int], list[int]] = {}
  for view_id, v in enumerate(plan):
    groups.setdefault((v.rate, v.position, v.num_positions), []).append(view_id)
  return tuple(tuple(ids) for ids in groups.values())


def view_start(num_video_frames: int, num_frames: int, view: View) -> int:
  """First frame of `view`'s clip: positions evenly from 0 to the last fit."""
  if view.num_positions == 1:
    return transforms.center_clip_start(num_video_frames, num_frames, view.rate)
  room = max(num_video_frames - transforms.clip_span(num_frames, view.rate), 0)
  return int(round(view.position * room / (view.num_positions - 1)))


def view_indices(num_video_frames: int, num_frames: int, view: View) -> np.ndarray:
  """int32 [num_frames] frame indices of `view`."""
  return transforms.clip_indices(
    num_video_frames, num_frames, view.rate, view_start(num_video_frames, num_frames, view)
  )


# How a video's view scores combine (`config.eval.aggregate`).
AGGREGATIONS = ("sum", "mean", "max")


def aggregate_views(
  scores: np.ndarray,
  video: np.ndarray,
  view_ids: np.ndarray,
  num_videos: int,
  how: str = "sum",
  keep_views: Sequence[int] | None = None,
) -> np.ndarray:
  """Per-video scores from per-view scores.

  Args:
    scores: [M, A] sigmoid scores of M view clips.
    video: [M] video position of each clip.
    view_ids: [M] view index of each clip in the plan.
    num_videos: N.
    how: "sum" (the paper's), "mean" or "max".
    keep_views: the plan's view ids to use (None: all).

  Returns:
    [N, A] aggregated scores; a video without a kept view scores -inf.
  """
  scores = np.asarray(scores, np.float64)
  keep = np.ones(len(video), bool) if keep_views is None else np.isin(view_ids, keep_views)
  s, v = scores[keep], np.asarray(video)[keep]
  out = np.zeros((num_videos, scores.shape[1]))
  if how == "max":
    out[:] = -np.inf
    np.maximum.at(out, v, s)
    return out
  if how not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
  np.add.at(out, v, s)
  counts = np.bincount(v, minlength=num_videos)
  out[counts == 0] = -np.inf
  if how == "mean":
    out = out / np.maximum(counts, 1)[:, None]
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """The view plan and its aggregation (`config.eval`)."""
  config_lib.check_positive(config, "eval.spatial_crops", "eval.batch_size")
  config_lib.check_choice(config, "eval.aggregate", AGGREGATIONS)
  views = config.eval.views
  if (
    not views
    or any(len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v) for v in views)
    or len({v[0] for v in views}) != len(views)
  ):
    config_lib.fail(
      "eval.views",
      views,
      "must be ((rate, positions), ...) with positive integers and each rate once",
    )
