"""decode_frames on real H.264 files and JPEG folders; write_video."""

import os

import av
import numpy as np
import pytest
from video_fixtures import index_frame, read_index, truncated_copy, write_frame_folder, write_mp4

from mlar_jax.data import transforms, video


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
  return write_mp4(str(tmp_path_factory.mktemp("v") / "clip.mp4"), 100)


def test_video_info(mp4):
  info = video.video_info(mp4)
  assert (info.num_frames, info.fps, info.height, info.width) == (100, 24.0, 64, 64)


@pytest.mark.parametrize("rate", [1, 2, 4, 8])
@pytest.mark.parametrize("start", [0, 5, 37, 43])
def test_decode_returns_exactly_the_requested_frames(mp4, rate, start):
  idx = transforms.clip_indices(100, 8, rate, start)
  frames = video.decode_frames(mp4, idx)
  assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
  assert [read_index(f) for f in frames] == list(idx)


def test_unordered_and_repeated_indices(mp4):
  idx = [50, 3, 99, 3, 50]
  assert [read_index(f) for f in video.decode_frames(mp4, idx)] == idx


def test_bad_files_raise_video_decode_error_naming_the_file(mp4, tmp_path):
  bad = truncated_copy(mp4, str(tmp_path / "trunc.mp4"))
  with pytest.raises(video.VideoDecodeError, match="trunc.mp4"):
    video.decode_frames(bad, [90, 95])
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"not a video at all" * 100)
  with pytest.raises(video.VideoDecodeError, match="junk.mp4"):
    video.decode_frames(str(junk), [0])
  with pytest.raises(video.VideoDecodeError, match="missing.mp4"):
    video.decode_frames(str(tmp_path / "missing.mp4"), [0])
  with pytest.raises(video.VideoDecodeError, match="clip.mp4"):
    video.decode_frames(mp4, [100])
  assert issubclass(video.VideoDecodeError, ValueError)


def test_frame_folders(tmp_path):
  folder = write_frame_folder(str(tmp_path / "ABC12"), "ABC12", 30)
  assert video.video_info(folder).num_frames == 30
  idx = [0, 7, 29, 7]
  assert [read_index(f) for f in video.decode_frames(folder, idx)] == idx
  with pytest.raises(video.VideoDecodeError, match="ABC12"):
    video.decode_frames(folder, [30])


def test_write_video_with_and_without_sound(tmp_path):
  frames = np.stack([index_frame(i) for i in range(30)])
  rate = 16000
  t = np.arange(30 * rate // 24) / rate
  tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.5)).astype(np.float32)
  loud = video.write_video(str(tmp_path / "a.mp4"), frames, 24, audio=tone, sample_rate=rate)
  silent = video.write_video(str(tmp_path / "b.mp4"), frames, 24.0)  # float rates too
  for path in (loud, silent):
    info = video.video_info(path)
    assert (info.num_frames, info.fps) == (30, 24.0)
    assert [read_index(f) for f in video.decode_frames(path, range(30))] == list(range(30))
  with av.open(silent) as container:
    assert not container.streams.audio
  with av.open(loud) as container:
    stream = container.streams.audio[0]
    assert (stream.codec_context.name, stream.rate, stream.channels) == ("aac", rate, 1)
    decoded = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
  # The mp4 edit list drops the encoder's priming samples: no lag to undo.
  assert len(decoded) >= len(tone)
  assert np.corrcoef(decoded[: len(tone)], tone)[0, 1] > 0.99
  assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]  # no temporary file left


def test_write_video_leaves_no_file_when_it_fails(tmp_path, monkeypatch):
  frames = np.stack([index_frame(i) for i in range(10)])
  with pytest.raises(ValueError, match="even height and width"):
    video.write_video(str(tmp_path / "odd.mp4"), frames[:, 1:], 24)
  made = []
  real = av.VideoFrame.from_ndarray

  def crash_on_the_fifth(*args, **kwargs):
    made.append(1)
    if len(made) == 5:
      raise RuntimeError("killed")
    return real(*args, **kwargs)

  monkeypatch.setattr(av.VideoFrame, "from_ndarray", crash_on_the_fifth)
  with pytest.raises(RuntimeError, match="killed"):
    video.write_video(str(tmp_path / "a.mp4"), frames, 24)
  assert os.listdir(tmp_path) == []
