"""Frame-accurate decoding of requested frames, from video files (PyAV) or
folders of JPEG frames (Charades' `ID/ID-000001.jpg`), and the one mp4 writer
(`write_video`: H.264, optionally AAC sound).

Only the needed spans are decoded: the container seeks to the keyframe at or
before the first requested frame and decodes up to the last one; requested
frames more than `SEEK_GAP_SECONDS` apart start a new span with a new seek
(an evaluation's windows spread over a long video are not decoded through). Frame
numbers come from presentation timestamps (`round((pts - start) * time_base *
fps)`), so they are exact for constant-frame-rate video whatever the GOP.

Every failure (missing file, unreadable container, truncated stream, a
requested frame past the end) raises `VideoDecodeError`, a ValueError naming
the file, so the pipeline can skip the sample and count it.
"""

from __future__ import annotations

import dataclasses
import fractions
import os

import av
import numpy as np
from PIL import Image

from mlar_jax.data import transforms

JPEG_SUFFIXES = (".jpg", ".jpeg", ".png")

# Requested frames further apart than this are reached by seeking rather than
# by decoding what lies between (a seek lands on a keyframe, typically at most
# 2-10 s before the frame; decoding runs at hundreds of frames per second).
SEEK_GAP_SECONDS = 10.0


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
    h, w = decode_image(files[0]).shape[:2]
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
  # One decoder thread: the pipeline decodes many clips at once (grain
  # threads and worker processes), so decoder threads add no throughput and
  # cost CPU: frame threading took 56 ms of CPU per 32-frame clip of a 320x240
  # H.264 file where one thread took 47 (benchmarks/README.md).
  stream.thread_type = "NONE"
  return stream


def decode_image(file, short_side: int | None = None, name: str | None = None) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of an image file (a path or a file object).

  Args:
    file: a path, or a binary file object (`io.BytesIO` of JPEG bytes).
    short_side: the shorter side the caller resizes to next, or None. A
      JPEG whose shorter side is at least twice it is decoded at 1/2, 1/4 or
      1/8 scale in the DCT domain (libjpeg's scaled IDCT: the largest such
      reduction that keeps the shorter side >= `short_side`), which skips
      most of the decoding work; other images come at their stored size.
    name: what errors call the image (default: `file` when it is a path).

  Raises:
    VideoDecodeError: the image cannot be read.
  """
  try:
    with Image.open(file) as im:
      if short_side:
        im.draft("RGB", transforms.short_side_shape(im.height, im.width, short_side)[::-1])
      # convert() copies even an RGB image; asarray of a loaded RGB image does not.
      return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
  except OSError as e:
    raise VideoDecodeError(name or str(file), f"cannot read image ({e})") from e


def decode_frames(path: str, indices, short_side: int | None = None) -> np.ndarray:
  """uint8 [len(indices), H, W, 3]: frames `indices` (0-based, any order,
  repeats allowed) of a video file or frame folder.

  Args:
    path: a video file, or a folder of frames (sorted by name).
    indices: int [N] frame numbers.
    short_side: the shorter side the caller resizes the frames to next, or
      None. JPEG frames come DCT-scaled towards it (`decode_image`). Video
      frames come at their stored size: H.264 has no reduced-resolution
      decoding, and shrinking in swscale while converting to RGB measured no
      cheaper than converting and then resizing only the crop (114-119 ms
      of CPU per 32-frame clip of a 640x480 file either way).

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
    return np.stack([decode_image(files[i], short_side) for i in indices])
  if not os.path.exists(path):
    raise VideoDecodeError(path, "no such file")
  wanted = set(indices.tolist())
  got: dict[int, np.ndarray] = {}
  try:
    with av.open(path) as container:
      stream = _video_stream(container, path)
      fps = float(stream.average_rate or stream.guessed_rate)
      for first, last in _spans(sorted(wanted), SEEK_GAP_SECONDS * fps):
        _decode_span(container, stream, fps, first, last, wanted, got)
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


def _spans(frames: list[int], max_gap: float) -> list[tuple[int, int]]:
  """Sorted frame numbers -> (first, last) of runs without a gap > max_gap."""
  spans = [[frames[0], frames[0]]]
  for f in frames[1:]:
    if f - spans[-1][1] > max_gap:
      spans.append([f, f])
    spans[-1][1] = f
  return [(a, b) for a, b in spans]


def _decode_span(container, stream, fps, first, last, wanted, got) -> None:
  """Decodes frames `first`..`last` into `got` (those in `wanted`, RGB)."""
  tb = float(stream.time_base)
  start = stream.start_time or 0
  if first > 0:
    # The keyframe at or before `first`; decoding runs forward from it.
    container.seek(int(start + first / fps / tb), stream=stream, backward=True, any_frame=False)
  for frame in container.decode(stream):
    if frame.pts is None:
      continue
    i = int(round((frame.pts - start) * tb * fps))
    if i in wanted and i not in got:
      got[i] = frame.to_ndarray(format="rgb24")
    if i >= last:
      break


def write_video(
  path: str,
  frames: np.ndarray,
  fps: float,
  *,
  audio: np.ndarray | None = None,
  sample_rate: int | None = None,
  options: dict[str, str] | None = None,
) -> str:
  """Writes an H.264 video (libx264, yuv420p), with a mono AAC track when
  `audio` is given and no audio stream otherwise.

  The file is written under a temporary name in the same folder and renamed
  when complete, so a crash never leaves a partial file at `path`.

  Args:
    path: output file; its suffix picks the container (.mp4, .mkv, ...).
    frames: uint8 [T, H, W, 3] RGB frames; H and W even (yuv420p).
    fps: frame rate; frame t is shown at t / fps seconds.
    audio: float32 [N] mono samples in [-1, 1], sample n at n / sample_rate
      seconds (the frames' clock).
    sample_rate: samples per second of `audio`; required with it.
    options: libx264 options over the defaults {"crf": "10", "g": fps}: crf
      10 keeps decoded frames within a few grey levels of the source (written
      datasets are read back as ground truth), and a keyframe every second
      bounds what a seek decodes. E.g. {"g": "8", "bf": "2"}.

  Returns:
    `path`.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(
      f"{path}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
    )
  _, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"{path}: yuv420p needs an even height and width, got {h}x{w}")
  if audio is not None and not sample_rate:
    raise ValueError(f"{path}: audio needs a sample_rate")
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  # Hidden, and with the final suffix, which picks the container.
  tmp = os.path.join(folder, f".{stem}.{os.getpid()}.tmp{ext}")
  try:
    with av.open(tmp, "w") as out:
      # PyAV takes the rate as a fraction (24, 30000/1001), not a float.
      vstream = out.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
      vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
      vstream.options = {"crf": "10", "g": str(max(1, round(fps))), **(options or {})}
      send_audio = _audio_sender(out, audio, int(sample_rate or 0))
      for t, frame in enumerate(frames):
        vframe = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vframe.pts = t
        out.mux(vstream.encode(vframe))
        # Sound up to the end of this frame, so that the streams interleave.
        send_audio((t + 1) / fps)
      send_audio(None)
      out.mux(vstream.encode())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _audio_sender(out, audio: np.ndarray | None, sample_rate: int):
  """A function `send(until)` that encodes and muxes the samples of `audio`
  before time `until` (seconds) not sent yet, in whole encoder frames, and
  with `until=None` the rest and the encoder's flush; a no-op without audio."""
  if audio is None:
    return lambda until: None
  stream = out.add_stream("aac", rate=sample_rate)
  stream.layout = "mono"
  stream.codec_context.open()  # its frame size (1024) is known once open
  samples = np.clip(np.asarray(audio, np.float32).reshape(1, -1), -1.0, 1.0)
  size, sent = stream.codec_context.frame_size, 0

  def send(until: float | None) -> None:
    nonlocal sent
    stop = samples.shape[1] if until is None else min(samples.shape[1], until * sample_rate)
    while sent < stop:
      frame = av.AudioFrame.from_ndarray(
        samples[:, sent : sent + size], format="fltp", layout="mono"
      )
      frame.sample_rate, frame.pts = sample_rate, sent
      out.mux(stream.encode(frame))
      sent += size
    if until is None:
      out.mux(stream.encode())

  return send
