"""Clip sampling and frame augmentation on host numpy arrays.

Frames stay uint8 through the whole host pipeline (4x less to copy to the
device); normalisation to float happens on the device in the model step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def clip_indices(num_video_frames: int, num_frames: int, rate: int,
                 start: int) -> np.ndarray:
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


def random_clip_start(rng: np.random.Generator, num_video_frames: int,
                      num_frames: int, rate: int) -> int:
  """A uniformly random start frame such that the clip fits when it can."""
  return int(rng.integers(0, max(num_video_frames - clip_span(num_frames, rate), 0) + 1))


def center_clip_start(num_video_frames: int, num_frames: int, rate: int) -> int:
  return max(num_video_frames - clip_span(num_frames, rate), 0) // 2


def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] bilinear interpolation weights (half-pixel centres)."""
  pos = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  pos = np.clip(pos, 0, in_size - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (pos - lo).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  m[np.arange(out_size), lo] += 1 - frac
  m[np.arange(out_size), hi] += frac
  return m


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of uint8 frames [T, H, W, 3] to [T, height, width, 3]."""
  t, h, w, c = frames.shape
  if (h, w) == (height, width):
    return frames
  mh, mw = _interp_matrix(h, height), _interp_matrix(w, width)
  out = np.einsum("yh,thwc,xw->tyxc", mh, frames.astype(np.float32), mw,
                  optimize=True)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  """Resizes [T, H, W, 3] so that min(H, W) == size, keeping aspect ratio."""
  _, h, w, _ = frames.shape
  scale = size / min(h, w)
  return resize(frames, max(size, round(h * scale)), max(size, round(w * scale)))


def crop(frames: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  return frames[:, top:top + size, left:left + size]


def random_crop(rng: np.random.Generator, frames: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = frames.shape
  return crop(frames, int(rng.integers(0, h - size + 1)),
              int(rng.integers(0, w - size + 1)), size)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = frames.shape
  return crop(frames, (h - size) // 2, (w - size) // 2, size)


def uniform_crop(frames: np.ndarray, size: int, index: int, num_crops: int) -> np.ndarray:
  """Crop `index` of `num_crops` spread along the longer side (PySlowFast's
  3-crop test: first, centre, last), centred on the shorter side; the width
  when the frame is square. One crop is the centre crop."""
  _, h, w, _ = frames.shape
  if num_crops == 1:
    return center_crop(frames, size)
  offsets = lambda n: int(round(index * (n - size) / (num_crops - 1)))
  if h > w:
    return crop(frames, offsets(h), (w - size) // 2, size)
  return crop(frames, (h - size) // 2, offsets(w), size)


def train_augment(rng: np.random.Generator, frames: np.ndarray, *,
                  min_short_side: int, max_short_side: int, crop_size: int,
                  flip: bool) -> np.ndarray:
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
  frames = random_crop(rng, resize_short_side(frames, short), crop_size)
  if flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  return np.ascontiguousarray(frames)


def eval_view(frames: np.ndarray, *, short_side: int, crop_size: int,
              crop_index: int = 0, num_crops: int = 1) -> np.ndarray:
  """An evaluation view: resize the short side, then crop `crop_index` of
  `num_crops` (`uniform_crop`)."""
  frames = resize_short_side(frames, short_side)
  return np.ascontiguousarray(uniform_crop(frames, crop_size, crop_index, num_crops))


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
