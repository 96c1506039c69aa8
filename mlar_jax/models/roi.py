"""ROI-Align (He et al. 2017) on channels-last feature maps, with static shapes.

The arithmetic is torchvision's `roi_align` (and detectron2's `ROIAlign`,
which calls it): for each box, each output bin (ph, pw) averages
`grid_h x grid_w` bilinear samples taken at the centres of a regular grid
inside the bin,

    y = y1 * spatial_scale - offset + ph * bin_h + (iy + 0.5) * bin_h / grid_h

(likewise x), with `offset = 0.5` when `aligned` (the half-pixel
convention: a box corner at pixel coordinate 0 is the left edge of pixel 0,
whose centre is at 0.5) and 0 otherwise; `bin_h = box_h / out_h`. Without
`aligned`, boxes are widened to at least 1 x 1 feature cells (torchvision's
legacy behaviour). A sample is zero when it falls outside
`[-1, H] x [-1, W]`; otherwise coordinates below 0 are clamped to 0 and
those past the last row or column read that row or column. `sampling_ratio`
> 0 fixes the grid; <= 0 chooses it per box, `ceil(box_h / out_h)` by
`ceil(box_w / out_w)`, and a box with an empty grid (zero height when
aligned) gives zeros.

Bilinear sampling factors into a row and a column interpolation, and so does
the bin average, so each box becomes two small matrices: `A_y [out_h, H]`
and `A_x [out_w, W]`, and `out = A_y · F · A_x^T` per channel. That is two
einsums (differentiable in the features, jittable, no gathers), with the
per-box adaptive grid handled by masking the samples past the box's grid
count in a static maximum grid.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def _axis_weights(
  start: jnp.ndarray,
  length: jnp.ndarray,
  out: int,
  size: int,
  sampling_ratio: int,
  max_grid: int,
) -> jnp.ndarray:
  """One axis of ROI-Align: the averaging bilinear weights of every bin.

  Args:
    start: [...] the boxes' first coordinate on the feature map (offset applied).
    length: [...] the boxes' extent on the feature map (after the 1-cell floor).
    out: output bins along the axis.
    size: feature map extent along the axis (H or W).
    sampling_ratio: samples per bin (> 0), or <= 0 for ceil(length / out).
    max_grid: static bound on the adaptive grid (ignored when sampling_ratio > 0).

  Returns:
    [..., out, size] float32: out[p] = sum_k weights[p, k] * row k.
  """
  bin_size = length / out
  if sampling_ratio > 0:
    grid = jnp.full(length.shape, float(sampling_ratio))
    slots = sampling_ratio
  else:
    # Capped at the static slot count: exact for every box no larger than
    # max_grid * out cells (`roi_align` explains the default bound).
    grid = jnp.minimum(jnp.ceil(length / out), float(max_grid))
    slots = max_grid
  g = grid[..., None, None]
  b = bin_size[..., None, None]
  p = jnp.arange(out, dtype=jnp.float32)[:, None]
  k = jnp.arange(slots, dtype=jnp.float32)[None, :]
  # [..., out, slots] sample coordinates, torchvision's order of operations.
  coord = start[..., None, None] + p * b + (k + 0.5) * b / jnp.maximum(g, 1.0)
  used = (k < g) & (coord >= -1.0) & (coord <= size)
  c = jnp.maximum(coord, 0.0)
  low = jnp.floor(c)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  c = jnp.where(at_end, low, c)
  frac = c - low
  high = jnp.where(at_end, low, low + 1)
  cells = jnp.arange(size, dtype=jnp.float32)
  w = (1.0 - frac)[..., None] * (low[..., None] == cells) + frac[..., None] * (
    high[..., None] == cells
  )
  # Out-of-map samples still count in the average (torchvision divides by
  # the full grid); only the slots past the box's own grid are dropped.
  w = jnp.where(used[..., None], w, 0.0)
  return w.sum(axis=-2) / jnp.maximum(grid, 1.0)[..., None, None]


def roi_align(
  features: jnp.ndarray,
  boxes: jnp.ndarray,
  valid: jnp.ndarray,
  output_size: int | tuple[int, int],
  *,
  spatial_scale: float = 1.0,
  sampling_ratio: int = 0,
  aligned: bool = True,
  max_grid: int | tuple[int, int] | None = None,
) -> jnp.ndarray:
  """ROI-Align of a batch of boxes per example, torchvision's definition.

  Args:
    features: [B, H, W, C] feature maps, or [B, T, H, W, C] video features,
      averaged over time first (PySlowFast's ROI head pools time before
      aligning).
    boxes: [B, N, 4] (x1, y1, x2, y2) per box, in the coordinates that
      `spatial_scale` maps to feature cells (e.g. crop pixels with
      spatial_scale = 1/16 for a stride-16 map).
    valid: [B, N] bool; False marks padding boxes, whose output is zero.
    output_size: out_h, out_w (an int for both).
    spatial_scale: feature cells per box coordinate unit.
    sampling_ratio: samples per bin along each axis; <= 0 adapts it to each
      box (ceil of the box's size in cells over the bins), as torchvision.
    aligned: the half-pixel convention (detectron2's ROIAlignV2; pass False
      for the original Mask R-CNN / torchvision default behaviour).
    max_grid: static bound (h, w) on the adaptive grid, which is data
      dependent and so needs a fixed number of sample slots under jit. The
      default, ceil(H / out_h) and ceil(W / out_w), is exact for every box
      inside the feature map; a larger box samples a grid capped at the
      bound (pass a larger bound to make it exact).

  Returns:
    [B, N, out_h, out_w, C] in the features' dtype (computed in float32).
  """
  if features.ndim == 5:
    features = features.mean(axis=1)
  if features.ndim != 4:
    raise ValueError(
      f"roi_align: features must be [B, H, W, C] or [B, T, H, W, C], got {features.shape}"
    )
  if boxes.ndim != 3 or boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
    raise ValueError(
      f"roi_align: boxes {boxes.shape} and valid {valid.shape} must be [B, N, 4] and [B, N]"
    )
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, h, w, _ = features.shape
  if max_grid is None:
    max_grid = (math.ceil(h / out_h), math.ceil(w / out_w))
  elif isinstance(max_grid, int):
    max_grid = (max_grid, max_grid)
  offset = 0.5 if aligned else 0.0
  scaled = boxes.astype(jnp.float32) * spatial_scale - offset
  x1, y1, x2, y2 = (scaled[..., i] for i in range(4))
  box_h, box_w = y2 - y1, x2 - x1
  if not aligned:
    box_h, box_w = jnp.maximum(box_h, 1.0), jnp.maximum(box_w, 1.0)
  wy = _axis_weights(y1, box_h, out_h, h, sampling_ratio, max_grid[0])
  wx = _axis_weights(x1, box_w, out_w, w, sampling_ratio, max_grid[1])
  wy = jnp.where(valid[..., None, None], wy, 0.0)
  f = features.astype(jnp.float32)
  rows = jnp.einsum("bnph,bhwc->bnpwc", wy, f)
  out = jnp.einsum("bnqw,bnpwc->bnpqc", wx, rows)
  return out.astype(features.dtype)
