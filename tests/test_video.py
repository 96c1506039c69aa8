"""decode_frames on real H.264 files and JPEG folders; write_video."""

import os

import av
import numpy as np
import pytest
from PIL import Image
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


def test_frames_far_apart_are_reached_by_seeking(mp4, monkeypatch):
  # With a gap of 1 s (24 frames), [2, 5] and [60, 61] and [97] are three
  # spans, each decoded after its own seek; the frames are those of one pass.
  monkeypatch.setattr(video, "SEEK_GAP_SECONDS", 1.0)
  spans = []
  real_span = video._decode_span
  monkeypatch.setattr(
    video,
    "_decode_span",
    lambda c, s, fps, first, last, *a: (
      spans.append((first, last)) or real_span(c, s, fps, first, last, *a)
    ),
  )
  idx = [61, 2, 97, 5, 60, 2]
  frames = video.decode_frames(mp4, idx)
  assert [read_index(f) for f in frames] == idx
  assert spans == [(2, 5), (60, 61), (97, 97)]
  with av.open(mp4) as container:
    every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  np.testing.assert_array_equal(frames, np.stack([every[i] for i in idx]))


def test_jpeg_frames_are_decoded_at_reduced_scale_when_that_is_enough(tmp_path):
  # A smooth 240x320 JPEG: asked for short side 100, libjpeg decodes it at
  # 1/2 (120x160 >= 100); the pixels are those of resizing the full decode.
  y, x = np.mgrid[0:240, 0:320]
  image = np.stack([x * 0.7, y, 128 + 60 * np.sin(x / 13 + y / 17)], -1).astype(np.uint8)
  path = str(tmp_path / "f.jpg")
  Image.fromarray(image).save(path, quality=95)
  full = video.decode_image(path)
  assert full.shape == (240, 320, 3)
  for short, shape in [(100, (120, 160)), (60, (60, 80)), (40, (30, 40)), (121, (240, 320))]:
    got = video.decode_image(path, short)
    want_shape = shape if short != 40 else (60, 80)  # 1/8 would be 30 < 40: 1/4
    assert got.shape[:2] == want_shape, short
    if got.shape != full.shape:
      ref = transforms.resize(full[None], *got.shape[:2])[0].astype(int)
      assert np.abs(got.astype(int) - ref)[2:-2, 2:-2].mean() < 2.0
  with pytest.raises(video.VideoDecodeError, match="f.png"):
    video.decode_image(str(tmp_path / "f.png"))
