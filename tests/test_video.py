"""decode_frames on real H.264 files and JPEG folders."""

import numpy as np
import pytest
from video_fixtures import read_index, truncated_copy, write_frame_folder, write_mp4

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
