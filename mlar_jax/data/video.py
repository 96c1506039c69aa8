"""Frame-accurate decoding of requested frames, from video files (PyAV) or
folders of JPEG frames (Charades' `ID/ID-000001.jpg`).

Only the needed span is decoded: the container seeks to the keyframe at or
before the first requested frame and decodes up to the last one. Frame
numbers come from presentation timestamps (`round((pts - start) * time_base *
fps)`), so they are exact for constant-frame-rate video whatever the GOP.

Every failure (missing file, unreadable container, truncated stream, a
requested frame past the end) raises `VideoDecodeError`, a ValueError naming
the file, so the pipeline can skip the sample and count it.
"""

from __future__ import annotations

import dataclasses
import os

import av
import numpy as np
from PIL import Image

JPEG_SUFFIXES = (".jpg", ".jpeg", ".png")


class VideoDecodeError(ValueError):
  """A video or frame folder that cannot give the requested frames."""

  def __init__(self, path: str, why: str):
    super().__init__(f"{path}: {why}")
    self.path = path


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  num_frames: int
  fps: float
  height: int
  width: int


def _frame_files(path: str) -> list[str]:
  try:
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(JPEG_SUFFIXES))
  except OSError as e:
    raise VideoDecodeError(path, f"cannot list frames ({e})") from e
  if not names:
    raise VideoDecodeError(path, "folder holds no .jpg/.png frames")
  return [os.path.join(path, n) for n in names]


def video_info(path: str, frames_fps: float = 24.0) -> VideoInfo:
  """Frame count, rate and size of a video file or frame folder.

  Args:
    path: a video file, or a folder of frames (sorted by name).
    frames_fps: the frame rate of frame folders (Charades: 24).
  """
  if os.path.isdir(path):
    files = _frame_files(path)
    h, w = _read_image(files[0]).shape[:2]
    return VideoInfo(len(files), frames_fps, h, w)
  try:
    with av.open(path) as container:
      stream = _video_stream(container, path)
      fps = float(stream.average_rate or stream.guessed_rate or 0)
      if fps <= 0:
        raise VideoDecodeError(path, "unknown frame rate")
      n = stream.frames
      if not n and stream.duration is not None:
        n = int(round(float(stream.duration * stream.time_base) * fps))
      if not n:
        n = sum(1 for _ in container.decode(stream))
      return VideoInfo(int(n), fps, stream.codec_context.height, stream.codec_context.width)
  except VideoDecodeError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoDecodeError(path, f"cannot open ({e})") from e


def _video_stream(container, path):
  if not container.streams.video:
    raise VideoDecodeError(path, "has no video stream")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  return stream


def _read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except OSError as e:
    raise VideoDecodeError(path, f"cannot read image ({e})") from e


def decode_frames(path: str, indices) -> np.ndarray:
  """uint8 [len(indices), H, W, 3]: frames `indices` (0-based, any order,
  repeats allowed) of a video file or frame folder.

  Raises:
    VideoDecodeError: the file is missing, corrupt or truncated, or an index
      is past its last frame.
  """
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    raise ValueError("decode_frames needs at least one index")
  if indices.min() < 0:
    raise VideoDecodeError(path, f"negative frame index {indices.min()}")
  if os.path.isdir(path):
    files = _frame_files(path)
    if indices.max() >= len(files):
      raise VideoDecodeError(path, f"frame {indices.max()} requested, {len(files)} frames")
    return np.stack([_read_image(files[i]) for i in indices])
  if not os.path.exists(path):
    raise VideoDecodeError(path, "no such file")
  wanted = set(indices.tolist())
  first, last = int(indices.min()), int(indices.max())
  got: dict[int, np.ndarray] = {}
  try:
    with av.open(path) as container:
      stream = _video_stream(container, path)
      fps = float(stream.average_rate or stream.guessed_rate)
      tb = float(stream.time_base)
      start = stream.start_time or 0
      if first > 0:
        # The keyframe at or before `first`; decoding runs forward from it.
        container.seek(int(start + first / fps / tb), stream=stream, backward=True, any_frame=False)
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        i = int(round((frame.pts - start) * tb * fps))
        if i in wanted:
          got[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
          break
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoDecodeError(path, f"decoding failed ({e})") from e
  missing = sorted(wanted - got.keys())
  if missing:
    raise VideoDecodeError(
      path,
      f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} "
      f"not found (truncated or shorter than expected)",
    )
  return np.stack([got[int(i)] for i in indices])
