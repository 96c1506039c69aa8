"""Real encoded test videos whose frames carry their own index."""

import os

import av
import numpy as np
from PIL import Image

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
  with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    stream.options = {"g": str(gop), "bf": "2", "crf": "10"}
    for i in range(num_frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  return path


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
