"""How well a class's map points at the actor doing the class: the pointing
game and the IoU with the actor's mask, against the scenes dataset's
per-frame ground truth, with a random-map baseline.

One *event* is (class a, frame t) where some actor does a at t and is seen
(its box is valid); its *targets* are the actors doing a at t (two for an
interaction). For an event, with the class's map normalised to [0, 1] over
the clip (`cam.normalize`):
  pointing hit: the map's maximum pixel of frame t lies in a target's box
    (pixel centres; a maximum shared by several pixels counts the fraction
    of them inside, the expected hit of a random tie-break);
  IoU: of {map >= threshold} with the union of the targets' visible pixels
    (undefined, NaN, when both are empty).
Scene-level classes have no actor, hence no events.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def inside_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Which pixel centres lie in each box.

  Args:
    boxes: [..., 4] float, [y1, x1, y2, x2] in [0, 1] (pixel edges).
    height, width: the frame's pixels.

  Returns:
    bool [..., height, width].
  """
  cy = (np.arange(height) + 0.5) / height
  cx = (np.arange(width) + 0.5) / width
  b = np.asarray(boxes)[..., None, None, :]
  rows = (cy[:, None] >= b[..., 0]) & (cy[:, None] <= b[..., 2])
  cols = (cx[None, :] >= b[..., 1]) & (cx[None, :] <= b[..., 3])
  return rows & cols


def pointing_hits(maps: np.ndarray, boxes: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """The pointing game per frame.

  Args:
    maps: [N, H, W] one map per event frame.
    boxes: [N, M, 4] the actors' boxes ([y1, x1, y2, x2] in [0, 1]).
    targets: bool [N, M], the actors that count.

  Returns:
    float64 [N] in [0, 1]: the fraction of the frame's maximal pixels inside
    a target's box (1 or 0 unless the maximum is tied); NaN without targets.
  """
  n, h, w = maps.shape
  top = maps == maps.reshape(n, -1).max(axis=1)[:, None, None]  # [N, H, W]
  inside = (inside_boxes(boxes, h, w) & targets[:, :, None, None]).any(axis=1)
  hits = (top & inside).sum(axis=(1, 2)) / top.sum(axis=(1, 2))
  return np.where(targets.any(axis=1), hits, np.nan)


def mask_ious(
  maps: np.ndarray, masks: np.ndarray, targets: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
  """IoU of each thresholded map with its targets' pixels.

  Args:
    maps: [N, H, W] normalised maps.
    masks: int [N, H, W], k + 1 where actor k is seen (`SceneVideos.masks`).
    targets: bool [N, M].
    threshold: the map's pixels >= threshold are its region.

  Returns:
    float64 [N]; NaN where the region and the targets' pixels are both empty.
  """
  ids = np.arange(1, targets.shape[1] + 1)
  # The target actors' pixels: mask id k + 1 for a target slot k.
  truth = ((masks[:, None] == ids[None, :, None, None]) & targets[:, :, None, None]).any(axis=1)
  region = maps >= threshold
  union = (region | truth).sum(axis=(1, 2))
  inter = (region & truth).sum(axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def clip_events(
  maps: np.ndarray,
  classes: Sequence[int],
  *,
  boxes: np.ndarray,
  box_valid: np.ndarray,
  masks: np.ndarray,
  actor_labels: np.ndarray,
  threshold: float = 0.5,
) -> dict[str, np.ndarray]:
  """The events of one clip and their pointing hits and IoUs.

  Args:
    maps: [A', T, H, W] maps of `classes`, at the clip's frame resolution and
      normalised to [0, 1] over the clip.
    classes: [A'] the class index of each map.
    boxes: [T, M, 4], box_valid: bool [T, M], masks: int [T, H, W],
      actor_labels: int [T, M, A]: the clip's ground truth in its view
      (`pipeline.Extras`).
    threshold: of `mask_ious`.

  Returns:
    {"class": int [E], "frame": int [E], "hit": [E], "iou": [E]}, one entry
    per event.
  """
  out = {"class": [], "frame": [], "hit": [], "iou": []}
  for i, a in enumerate(classes):
    targets = (np.asarray(actor_labels)[:, :, a] > 0) & box_valid  # [T, M]
    frames = np.flatnonzero(targets.any(axis=1))
    if not len(frames):
      continue
    out["class"].append(np.full(len(frames), a))
    out["frame"].append(frames)
    out["hit"].append(pointing_hits(maps[i][frames], boxes[frames], targets[frames]))
    out["iou"].append(mask_ious(maps[i][frames], masks[frames], targets[frames], threshold))
  return {
    k: np.concatenate(v) if v else np.zeros(0, int if k in ("class", "frame") else float)
    for k, v in out.items()
  }


def random_maps(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
  """The baseline: independent uniform [0, 1) pixels, float32 `shape`."""
  return rng.random(tuple(shape), dtype=np.float32)


def summarize(events: Sequence[dict[str, np.ndarray]]) -> dict[str, float | int]:
  """{"events", "pointing", "iou"}: the number of events and the means of
  their hits and IoUs (NaN IoUs left out) over the events of many clips."""
  hit = np.concatenate([e["hit"] for e in events]) if events else np.zeros(0)
  iou = np.concatenate([e["iou"] for e in events]) if events else np.zeros(0)
  iou = iou[~np.isnan(iou)]
  return {
    "events": int(len(hit)),
    "pointing": float(hit.mean()) if len(hit) else float("nan"),
    "iou": float(iou.mean()) if len(iou) else float("nan"),
  }
