"""Clip sampling and frame augmentation on host numpy arrays.

Frames stay uint8 through the whole host pipeline (4x less to copy to the
device); normalisation to float happens on the device in the model step.
"""

from __future__ import annotations

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
  frames: np.ndarray, height: int, width: int, window: tuple[int, int, int, int] | None = None
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
    return frames[:, top : top + out_h, left : left + out_w]
  sy, sx = h / height, w / width
  box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
  out = np.empty((t, out_h, out_w, c), np.uint8)
  for i, frame in enumerate(frames):
    out[i] = np.asarray(Image.fromarray(frame).resize((out_w, out_h), Image.BILINEAR, box=box))
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


def train_augment(
  rng: np.random.Generator,
  frames: np.ndarray,
  *,
  min_short_side: int,
  max_short_side: int,
  crop_size: int,
  flip: bool,
) -> np.ndarray:
  """Short-side scale jitter, random square crop and optional horizontal flip.

  Args:
    rng: per-example generator (grain seeds it from the example index).
    frames: uint8 [T, H, W, 3].
    min_short_side, max_short_side: range of the jittered short side.
    crop_size: output height and width.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    uint8 [T, crop_size, crop_size, 3].
  """
  short = int(rng.integers(min_short_side, max_short_side + 1))
  height, width = short_side_shape(*frames.shape[1:3], short)
  # The crop is drawn first and only it is resized (the pixels of resizing
  # the whole frame and cropping, to +-1).
  top = int(rng.integers(0, height - crop_size + 1))
  left = int(rng.integers(0, width - crop_size + 1))
  frames = resize(frames, height, width, (top, left, crop_size, crop_size))
  if flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  return np.ascontiguousarray(frames)


def eval_view(
  frames: np.ndarray, *, short_side: int, crop_size: int, crop_index: int = 0, num_crops: int = 1
) -> np.ndarray:
  """An evaluation view: resize the short side to `short_side`, then take crop
  `crop_index` of `num_crops` (`uniform_crop_origin`), resizing only the crop."""
  height, width = short_side_shape(*frames.shape[1:3], short_side)
  top, left = uniform_crop_origin(height, width, crop_size, crop_index, num_crops)
  return resize(frames, height, width, (top, left, crop_size, crop_size))


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
