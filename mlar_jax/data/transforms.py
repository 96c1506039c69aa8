"""Clip sampling and frame augmentation on host numpy arrays.

A view's geometry (`Crop`: scale, crop, flip) is drawn once per clip and
applied alike to its frames, boxes and masks. Frames stay uint8 through the
whole host pipeline (4x less to copy to the device); normalisation to float
happens on the device in the model step.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from PIL import Image


def clip_indices(num_video_frames: int, num_frames: int, rate: int, start: int) -> np.ndarray:
  """Frame indices of a clip of `num_frames` frames every `rate` frames.

  A clip that runs past the end of a short video repeats its last frame
  (indices are clamped), so every clip has exactly `num_frames` frames.

  Returns:
    int32 [num_frames] indices in [0, num_video_frames).
  """
  idx = start + rate * np.arange(num_frames)
  return np.clip(idx, 0, num_video_frames - 1).astype(np.int32)


def clip_span(num_frames: int, rate: int) -> int:
  """Frames of the video covered by a clip, first to last inclusive."""
  return (num_frames - 1) * rate + 1


def random_clip_start(
  rng: np.random.Generator, num_video_frames: int, num_frames: int, rate: int
) -> int:
  """A uniformly random start frame such that the clip fits when it can."""
  return int(rng.integers(0, max(num_video_frames - clip_span(num_frames, rate), 0) + 1))


def center_clip_start(num_video_frames: int, num_frames: int, rate: int) -> int:
  return max(num_video_frames - clip_span(num_frames, rate), 0) // 2


def resize(
  frames: np.ndarray,
  height: int,
  width: int,
  window: tuple[int, int, int, int] | None = None,
  flip: bool = False,
) -> np.ndarray:
  """Bilinear resize of uint8 frames [T, H, W, 3] to [T, height, width, 3].

  Pixel centres are at half-integers (as jax.image.resize, torch
  align_corners=False); shrinking filters over the whole footprint of the
  output pixel (antialiased, as jax.image.resize and torchvision's default).
  PIL does the work in C, one frame at a time.

  Args:
    frames: uint8 [T, H, W, 3].
    height, width: size of the resized frame.
    window: (top, left, h, w), a crop of the resized frame to compute instead
      of all of it: cropping the full resize (to +-1 of rounding), at the cost
      of the crop only (a 224 crop of a 320-short-side frame: 2-3x cheaper).

  Returns:
    uint8 [T, h, w, 3] (the window's size, or height and width).
  """
  t, h, w, c = frames.shape
  top, left, out_h, out_w = window or (0, 0, height, width)
  if (h, w) == (height, width):
    frames = frames[:, top : top + out_h, left : left + out_w]
    return frames[:, :, ::-1] if flip else frames
  sy, sx = h / height, w / width
  box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
  out = np.empty((t, out_h, out_w, c), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(frame).resize((out_w, out_h), Image.BILINEAR, box=box)
    if flip:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out[i] = np.asarray(image)
  return out


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """(height, width) scaled so that the shorter side is `size`."""
  scale = size / min(height, width)
  return max(size, round(height * scale)), max(size, round(width * scale))


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  """Resizes [T, H, W, 3] so that min(H, W) == size, keeping aspect ratio."""
  return resize(frames, *short_side_shape(*frames.shape[1:3], size))


def uniform_crop_origin(
  height: int, width: int, size: int, index: int, num_crops: int
) -> tuple[int, int]:
  """(top, left) of crop `index` of `num_crops`, spread along the longer side
  (PySlowFast's 3-crop test: first, centre, last) and centred on the shorter
  one; along the width when the frame is square. One crop is the centre crop."""
  if num_crops == 1:
    return (height - size) // 2, (width - size) // 2
  offset = lambda n: int(round(index * (n - size) / (num_crops - 1)))
  if height > width:
    return offset(height), (width - size) // 2
  return (height - size) // 2, offset(width)


@dataclasses.dataclass(frozen=True)
class Crop:
  """A view's geometry: the frame resized to (height, width), a square of
  `size` at (top, left) of it, then a horizontal flip or not. Drawn once per
  clip (`train_crop`, `eval_crop`) and applied alike to its frames
  (`crop_frames`), boxes (`crop_boxes`) and masks (`crop_masks`)."""

  height: int
  width: int
  top: int
  left: int
  size: int
  flip: bool = False


def draw_short_side(rng: np.random.Generator, min_short_side: int, max_short_side: int) -> int:
  """The jittered short side of a training clip, uniform in [min, max]: the
  first draw of its geometry, made before its frames are loaded so that a
  source can decode them at that size (`VideoSource.load_frames`)."""
  return int(rng.integers(min_short_side, max_short_side + 1))


def train_crop(
  rng: np.random.Generator,
  height: int,
  width: int,
  *,
  short_side: int,
  crop_size: int,
  flip: bool,
) -> Crop:
  """Short-side scale jitter, a random square crop and, with `flip`, a
  horizontal flip with probability 1/2, for frames of `height` x `width`.

  The draws (the short side by `draw_short_side` first, then top, left, and
  the flip only when `flip`) are in the order the training clips, and so the
  demo's numbers, depend on.

  Args:
    rng: per-example generator (grain seeds it from the example index).
    height, width: the frames' size.
    short_side: the jittered short side (`draw_short_side`).
    crop_size: output height and width.
    flip: whether to flip horizontally with probability 1/2.
  """
  resized_height, resized_width = short_side_shape(height, width, short_side)
  top = int(rng.integers(0, resized_height - crop_size + 1))
  left = int(rng.integers(0, resized_width - crop_size + 1))
  flipped = flip and rng.random() < 0.5
  return Crop(resized_height, resized_width, top, left, crop_size, bool(flipped))


def eval_crop(
  height: int,
  width: int,
  *,
  short_side: int,
  crop_size: int,
  crop_index: int = 0,
  num_crops: int = 1,
) -> Crop:
  """An evaluation view of frames of `height` x `width`: the short side
  resized to `short_side`, then crop `crop_index` of `num_crops`
  (`uniform_crop_origin`)."""
  resized_height, resized_width = short_side_shape(height, width, short_side)
  top, left = uniform_crop_origin(resized_height, resized_width, crop_size, crop_index, num_crops)
  return Crop(resized_height, resized_width, top, left, crop_size)


def crop_frames(frames: np.ndarray, crop: Crop) -> np.ndarray:
  """uint8 frames [T, H, W, 3] -> their view [T, S, S, 3], S = crop.size.

  Only the crop is resized (the pixels of resizing the whole frame and
  cropping, to +-1; see `resize`).
  """
  window = (crop.top, crop.left, crop.size, crop.size)
  return np.ascontiguousarray(resize(frames, crop.height, crop.width, window, crop.flip))


def crop_boxes(boxes: np.ndarray, valid: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
  """Boxes of a frame -> the same boxes in its view.

  A box's edges move with the frame's pixel edges: x' = (x * width - left) /
  size (and y alike), then clipped to the crop; a flip mirrors x' -> 1 - x'.

  Args:
    boxes: float [..., 4], [y1, x1, y2, x2] in [0, 1] of the frame.
    valid: bool [...], which boxes exist.
    crop: the view.

  Returns:
    boxes: float32 [..., 4], [y1, x1, y2, x2] in [0, 1] of the view; zeros
      where not valid.
    valid: bool [...], `valid` and the box has area inside the crop.
  """
  scale = np.array([crop.height, crop.width] * 2, np.float64)
  origin = np.array([crop.top, crop.left] * 2, np.float64)
  out = np.clip((boxes * scale - origin) / crop.size, 0.0, 1.0)
  if crop.flip:
    out = out[..., [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1]
  valid = valid & (out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])
  return np.where(valid[..., None], out, 0.0).astype(np.float32), valid


def region_boxes(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The bounding box of each region's pixels.

  Args:
    region: bool [..., H, W].

  Returns:
    boxes: float32 [..., 4], [y1, x1, y2, x2] in [0, 1], the pixel-edge
      bounds of the region; zeros where it is empty.
    valid: bool [...], the region has pixels.
  """
  rows, cols = region.any(-1), region.any(-2)  # [..., H], [..., W]
  h, w = rows.shape[-1], cols.shape[-1]
  box = np.stack(
    [
      rows.argmax(-1),
      cols.argmax(-1),
      h - rows[..., ::-1].argmax(-1),
      w - cols[..., ::-1].argmax(-1),
    ],
    axis=-1,
  ) / np.array([h, w, h, w])
  valid = rows.any(-1)
  return np.where(valid[..., None], box, 0.0).astype(np.float32), valid


def _nearest(start: int, size: int, length: int, resized: int) -> np.ndarray:
  """int [size], the pixel of a `length`-pixel axis under the centres of
  pixels start..start+size of its resize to `resized` pixels."""
  centres_x2 = 2 * np.arange(start, start + size) + 1  # twice, to stay in integers
  return np.minimum(centres_x2 * length // (2 * resized), length - 1)


def crop_masks(masks: np.ndarray, crop: Crop) -> np.ndarray:
  """Integer masks [T, H, W] (ids per pixel) -> their view [T, S, S]: the
  nearest-neighbour resize (pixel centres, as jax.image.resize "nearest"),
  of the crop only, so that ids are never blended."""
  rows = _nearest(crop.top, crop.size, masks.shape[1], crop.height)
  cols = _nearest(crop.left, crop.size, masks.shape[2], crop.width)
  masks = masks[:, rows[:, None], cols[None, :]]
  return np.ascontiguousarray(masks[:, :, ::-1] if crop.flip else masks)


def normalize(video, mean, std, dtype=None):
  """uint8 [..., 3] frames -> (x / 255 - mean) / std, on device (jnp).

  Args:
    video: uint8 [B, T, H, W, 3].
    mean, std: per-channel statistics in [0, 1] units.
    dtype: result dtype (the model's compute dtype); float32 by default.
  """
  x = video.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype or jnp.float32)
