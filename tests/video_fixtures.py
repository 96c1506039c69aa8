"""Real encoded test videos whose frames carry their own index."""

import os

import numpy as np
from PIL import Image

from mlar_jax.data import video

BITS = 8


def index_frame(i: int, size: int = 64) -> np.ndarray:
  """A frame whose 8 vertical stripes spell i in binary (white = 1)."""
  frame = np.zeros((size, size, 3), np.uint8)
  w = size // BITS
  for b in range(BITS):
    if (i >> b) & 1:
      frame[:, b * w : (b + 1) * w] = 255
  return frame


def read_index(frame: np.ndarray) -> int:
  w = frame.shape[1] // BITS
  return sum(1 << b for b in range(BITS) if frame[:, b * w : (b + 1) * w].mean() > 127)


def write_mp4(path: str, num_frames: int, fps: int = 24, gop: int = 8) -> str:
  """H.264 mp4 of index frames, a keyframe every `gop` frames."""
  frames = np.stack([index_frame(i) for i in range(num_frames)])
  return video.write_video(path, frames, fps, options={"g": str(gop), "bf": "2", "crf": "10"})


def write_frame_folder(path: str, video_id: str, num_frames: int) -> str:
  """Charades-style frames: path/ID-000001.jpg, ..."""
  os.makedirs(path, exist_ok=True)
  for i in range(num_frames):
    Image.fromarray(index_frame(i)).save(
      os.path.join(path, f"{video_id}-{i + 1:06d}.jpg"), quality=95
    )
  return path


def truncated_copy(src: str, dst: str, fraction: float = 0.4) -> str:
  data = open(src, "rb").read()
  open(dst, "wb").write(data[: int(len(data) * fraction)])
  return dst
