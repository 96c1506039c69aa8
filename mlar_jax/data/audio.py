"""Sample-accurate decoding of a video file's sound track (PyAV), as mono
float32 at a chosen sample rate (SoundNet's 22050 Hz by default,
`config.data.audio.sample_rate`).

Sample k of the output is the sound at time k / rate on the frames' clock:
time 0 is the start of the video stream, as frame numbers in
`video.decode_frames` count from it. Only the span asked for is decoded: the
container seeks to a little before it (AAC needs the previous frame to
decode a frame right, and the resampling filter needs context on both
sides), decodes past its end, places each decoded frame at its presentation
time, averages the channels, and resamples with a polyphase filter
(`scipy.signal.resample_poly`) on a grid chosen so that output sample k
falls exactly on time k / rate.

A file without an audio stream (or a folder of frames) has no sound:
`decode_audio` returns None and the caller gives silence. Every failure of
a file that has one (missing or unreadable file, a decoder error, a stream
that ends before its declared duration) raises `AudioDecodeError`, a
`video.VideoDecodeError`, so the pipeline skips the sample and counts it as
it does an undecodable video.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import av
import numpy as np
from scipy import signal

from mlar_jax.data import video

# Decoded before and after the span asked for, in seconds: an AAC frame
# (1024 samples, 64 ms at 16 kHz) decodes right only after the one before it,
# and resample_poly's filter reaches about 10 * max(up, down) input samples
# (< 10 ms at common rates) each side.
MARGIN = 0.15
# Stream end (declared duration) minus decoded end beyond which a window is
# truncated rather than at the end of the sound: an encoder pads the last
# frame, a demuxer may round the duration.
END_SLACK = 0.05


class AudioDecodeError(video.VideoDecodeError):
  """A file whose audio stream cannot give the requested samples."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """The sound track of a file, as its container declares it.

  Attributes:
    sample_rate: native samples per second (0 without an audio stream).
    channels: channels of the stream (0 without one).
    duration: seconds from the video's start to the end of the stream
      (0.0 without one; -1.0 when the container does not say).
  """

  sample_rate: int
  channels: int
  duration: float

  @property
  def has_audio(self) -> bool:
    return self.sample_rate > 0


NO_AUDIO = AudioInfo(0, 0, 0.0)


def _origin(container) -> float:
  """Seconds of the frames' clock origin: the video stream's start (frame 0),
  or the container's start for a file with sound only."""
  if container.streams.video:
    v = container.streams.video[0]
    return float((v.start_time or 0) * v.time_base)
  return 0.0


def _info(container, stream) -> AudioInfo:
  end = -1.0
  if stream.duration is not None:
    end = float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    end -= _origin(container)
  return AudioInfo(int(stream.rate), int(stream.codec_context.channels), end)


@functools.lru_cache(maxsize=4096)
def audio_info(path: str) -> AudioInfo:
  """What the container says about the sound track of `path`; `NO_AUDIO`
  for a file without an audio stream or a folder of frames. Cached: a
  training run asks once per clip.

  Raises:
    AudioDecodeError: the file is missing or its container unreadable.
  """
  if os.path.isdir(path):
    return NO_AUDIO
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        return NO_AUDIO
      return _info(container, container.streams.audio[0])
  except (av.FFmpegError, OSError, ValueError) as e:
    raise AudioDecodeError(path, f"cannot open ({e})") from e


def _mono(frame) -> np.ndarray:
  """float64 [n], the mean of a decoded frame's channels, in [-1, 1]."""
  x = frame.to_ndarray()
  channels = len(frame.layout.channels)
  if not frame.format.is_planar:  # interleaved: [1, n * channels]
    x = x.reshape(-1, channels).T
  x = x.astype(np.float64)
  kind = frame.format.name.rstrip("p")
  if kind == "u8":
    x = (x - 128.0) / 128.0
  elif kind in ("s16", "s32", "s64"):
    x /= 2.0 ** (int(kind[1:]) - 1)
  return x.mean(axis=0)


def decode_audio(path: str, start: int, stop: int, sample_rate: int) -> np.ndarray | None:
  """float32 [stop - start]: samples start..stop of the sound track of `path`,
  mono at `sample_rate`; sample k is the sound at k / sample_rate seconds
  of the frames' clock. Samples before 0 or past the end of the stream are
  zeros. None when the file has no audio stream (or is a frame folder).

  Args:
    path: a video file (or a folder of frames).
    start, stop: sample indices at `sample_rate`, start <= stop; may reach
      outside the sound.
    sample_rate: output samples per second.

  Raises:
    AudioDecodeError: the file is missing or unreadable, the decoder fails,
      or the stream ends before its declared end inside the window
      (truncated).
  """
  if stop < start:
    raise ValueError(f"decode_audio: stop {stop} < start {start}")
  info = audio_info(path)
  if not info.has_audio:
    return None
  rate = info.sample_rate
  # Output sample k <- input position k * down / up: decode [a, b) native
  # samples with `a` a multiple of `down`, so that the output grid of
  # resample_poly (every down / up input samples from `a`) holds k / rate.
  g = math.gcd(sample_rate, rate)
  up, down = sample_rate // g, rate // g
  margin = math.ceil(MARGIN * rate)
  a = (start * down // up - margin) // down * down
  b = -(-stop * down // up) + margin
  native = np.zeros(b - a, np.float64)
  covered = a  # native samples decoded so far from `a`
  try:
    with av.open(path) as container:
      stream = container.streams.audio[0]
      origin = _origin(container)
      tb = float(stream.time_base)
      if a > 0:
        container.seek(
          int(((stream.start_time or 0) * tb + a / rate) / tb),
          stream=stream,
          backward=True,
          any_frame=False,
        )
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        n0 = round((frame.pts * tb - origin) * rate)
        x = _mono(frame)
        lo, hi = max(n0, a), min(n0 + len(x), b)
        if lo < hi:
          native[lo - a : hi - a] = x[lo - n0 : hi - n0]
        covered = max(covered, n0 + len(x))
        if n0 + len(x) >= b:
          break
  except (av.FFmpegError, OSError, ValueError) as e:
    raise AudioDecodeError(path, f"audio decoding failed ({e})") from e
  declared_end = info.duration * rate if info.duration >= 0 else covered
  if covered < min(b, declared_end - END_SLACK * rate):
    raise AudioDecodeError(
      path,
      f"audio stream ends at {covered / rate:.3f} s, declared {info.duration:.3f} s (truncated)",
    )
  out = native if up == down == 1 else signal.resample_poly(native, up, down)
  k0 = a * up // down
  return out[start - k0 : stop - k0].astype(np.float32)
