"""Audio of video files (`data/audio.py`) against the analytic signal it was
written from: sample count, window alignment to the sample, resampling,
files without sound, corrupt and truncated audio streams, and the "audio"
extra of file sources through the pipelines."""

import dataclasses
import os

import av
import numpy as np
import pytest

from mlar_jax import config_lib
from mlar_jax.data import audio, pipeline, sampling, scenes, transforms, video

FPS, SECONDS, NATIVE = 24, 3, 44100
SWITCH = 1.5  # s: 440 Hz before, 1000 Hz from here on
LOW, HIGH = 440.0, 1000.0


def tone(t: np.ndarray) -> np.ndarray:
  """The written sound at times `t` (s): a tone switching frequency at SWITCH."""
  return np.where(t < SWITCH, 0.5 * np.sin(2 * np.pi * LOW * t), 0.5 * np.sin(2 * np.pi * HIGH * t))


def _frames(n: int = FPS * SECONDS) -> np.ndarray:
  return np.zeros((n, 32, 32, 3), np.uint8)


def _corrupt_audio_packets(src: str, dst: str, after: int = 2048) -> str:
  """A copy of `src` whose audio packets from pts `after` on are random bytes
  (the container and the video stream intact)."""
  with av.open(src) as container:
    spans = [
      (p.pos, p.size)
      for p in container.demux()
      if p.stream.type == "audio" and p.pts is not None and p.pts >= after
    ]
  data = bytearray(open(src, "rb").read())
  rng = np.random.default_rng(0)
  for pos, size in spans:
    data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
  open(dst, "wb").write(bytes(data))
  return dst


def _truncated_faststart(src: str, dst: str, fraction: float = 0.5) -> str:
  """`src` remuxed with its index first (so the container still opens when
  the end is cut off), then cut to `fraction` of its bytes: both streams
  end early while the index declares their full length."""
  tmp = dst + ".full.mp4"
  with av.open(src) as i, av.open(tmp, "w", options={"movflags": "faststart"}) as o:
    streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
    for packet in i.demux():
      if packet.dts is None:
        continue
      packet.stream = streams[packet.stream.index]
      o.mux(packet)
  data = open(tmp, "rb").read()
  os.remove(tmp)
  open(dst, "wb").write(data[: int(len(data) * fraction)])
  return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("audio")
  videos = root / "videos"
  videos.mkdir()
  t = np.arange(SECONDS * NATIVE) / NATIVE
  path = lambda name: str(videos / f"{name}.mp4")
  video.write_video(path("TONE"), _frames(), FPS, audio=tone(t), sample_rate=NATIVE)
  video.write_video(path("MUTE"), _frames(), FPS)
  _corrupt_audio_packets(path("TONE"), path("BADA"))
  _truncated_faststart(path("TONE"), str(root / "cut.mp4"))
  (root / "classes.txt").write_text("a\nb\n")
  rows = ["path,labels", "TONE.mp4,a", "MUTE.mp4,b", "BADA.mp4,a;b"]
  (root / "train.csv").write_text("\n".join(rows) + "\n")
  return root


def _lag(x: np.ndarray, ref: np.ndarray, reach: int = 4) -> int:
  """The shift of `x` against `ref` (samples) that correlates best."""
  n = len(x) - 2 * reach
  scores = [
    np.dot(x[reach + s : reach + s + n], ref[reach : reach + n]) for s in range(-reach, reach + 1)
  ]
  return int(np.argmax(scores)) - reach


def _peak(x: np.ndarray, rate: int) -> float:
  """The dominant frequency of `x` (Hz)."""
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [NATIVE, 22050, 16000])
def test_a_window_is_the_written_tone_to_the_sample(files, rate):
  # A 1 s window across the switch, resampled (or not) to `rate`: exactly
  # stop - start samples, the analytic tone at k / rate within AAC's error,
  # the switch at its sample (a shift of one sample at 1 kHz and 16 kHz
  # drops the correlation from ~1 to cos(2 pi 1000 / 16000) = 0.92).
  path = str(files / "videos" / "TONE.mp4")
  start = int(1.0 * rate) + 7
  stop = start + rate
  got = audio.decode_audio(path, start, stop, rate)
  assert got.dtype == np.float32 and got.shape == (stop - start,)
  want = tone(np.arange(start, stop) / rate)
  assert np.corrcoef(got, want)[0, 1] > 0.99
  assert _lag(got, want) == 0
  switch = int(np.ceil(SWITCH * rate)) - start
  assert _lag(got[switch - 400 : switch + 400], want[switch - 400 : switch + 400]) == 0
  assert abs(_peak(got[: switch - 50], rate) - LOW) < 5
  assert abs(_peak(got[switch + 50 :], rate) - HIGH) < 5
  # Away from the switch (the codec smears it over a frame) the error is
  # the codec's (measured: median 6e-4, 99th percentile 0.07 at every
  # rate), far below the signal's 0.5.
  error = np.abs(got - want)[np.r_[0 : switch - 1100, switch + 1100 : stop - start]]
  assert np.median(error) < 0.002 and error.max() < 0.15


def test_windows_reaching_outside_the_sound_are_padded_with_zeros(files):
  path = str(files / "videos" / "TONE.mp4")
  rate = 22050
  got = audio.decode_audio(path, -500, 2000, rate)
  assert got.shape == (2500,)
  assert not got[:480].any()  # before time 0 (a few samples of filter ringing at 0)
  want = tone(np.arange(0, 2000) / rate)
  assert np.corrcoef(got[520:], want[20:])[0, 1] > 0.99
  end = SECONDS * rate
  got = audio.decode_audio(path, end - 2000, end + 1000, rate)
  assert got.shape == (3000,) and np.abs(got[2100:]).max() < 0.01
  assert audio.decode_audio(path, 5 * rate, 5 * rate + 10, rate).tolist() == [0.0] * 10


def test_a_file_without_sound_has_no_audio(files):
  path = str(files / "videos" / "MUTE.mp4")
  assert not audio.audio_info(path).has_audio
  assert audio.decode_audio(path, 0, 100, 22050) is None
  assert audio.decode_audio(str(files / "videos"), 0, 100, 22050) is None  # a frame folder


def test_corrupt_and_truncated_audio_streams_raise_the_decode_error(files):
  with pytest.raises(audio.AudioDecodeError, match="BADA.mp4: audio decoding failed"):
    audio.decode_audio(str(files / "videos" / "BADA.mp4"), 0, 22050, 22050)
  cut = str(files / "cut.mp4")
  assert audio.audio_info(cut).duration == pytest.approx(SECONDS, abs=0.05)
  ok = audio.decode_audio(cut, 2205, 6615, 22050)  # 0.1-0.3 s: still in the file
  assert np.corrcoef(ok, tone(np.arange(2205, 6615) / 22050))[0, 1] > 0.99
  with pytest.raises(audio.AudioDecodeError, match="cut.mp4"):
    audio.decode_audio(cut, 2 * 22050, 3 * 22050 - 2000, 22050)
  with pytest.raises(audio.AudioDecodeError, match="no-such.mp4"):
    audio.decode_audio(str(files / "no-such.mp4"), 0, 10, 22050)
  assert issubclass(audio.AudioDecodeError, video.VideoDecodeError)  # skipped as one


def _config(root, **audio_cfg):
  d = config_lib.data_config()
  d.name, d.extras, d.num_frames, d.rates = "csv", ("audio",), 4, (4,)
  d.min_short_side = d.max_short_side = d.eval_short_side = d.crop_size = 32
  d.csv.update(root=str(root), train_csv="train.csv", classes="classes.txt", videos="videos")
  d.csv.fps = float(FPS)
  d.audio.update(audio_cfg)
  return d


def test_file_sources_give_each_view_the_sound_of_its_window(files):
  # 4 frames at rate 4 of 24 fps video, frames f, f + 4, f + 8, f + 12: the
  # window [f, f + 13) / 24 s is exactly 13000 samples at 24 kHz, from
  # sample 1000 f.
  rate, n = 24000, 13000
  d = _config(files, sample_rate=rate, num_samples=n)
  src = pipeline.make_source(d, "train")
  assert src.extras == ("audio",) and src.sample_rate == rate
  plan = sampling.view_plan(((4, 5),), 1)
  errors = pipeline.DecodeErrors(1.0)
  clips = [
    c
    for b in pipeline.eval_dataset(src, d, plan, local_batch_size=5, errors=errors)
    for c in _rows(b)
  ]
  assert pipeline.batch_spec(d, 5, 2)["audio"].shape == (5, n)
  tone_views = [c for c in clips if c["index"] == 0]
  assert len(tone_views) == 5 and all(c["has_audio"] for c in tone_views)
  for c in tone_views:
    first = int(sampling.view_indices(FPS * SECONDS, 4, plan[c["view"]])[0])
    k0 = first * 1000
    want = tone(np.arange(k0, k0 + n) / rate)
    assert c["audio"].shape == (n,)
    np.testing.assert_array_equal(c["audio"], audio.decode_audio(src[0]["path"], k0, k0 + n, rate))
    assert np.corrcoef(c["audio"], want)[0, 1] > 0.99 and _lag(c["audio"], want) == 0
  mute = [c for c in clips if c["index"] == 1]
  assert len(mute) == 5 and not any(c["has_audio"] or c["audio"].any() for c in mute)
  assert errors.silent == {"MUTE"}  # counted once, not skipped
  assert not [c for c in clips if c["index"] == 2]  # BADA's views are skipped
  assert errors.failed == 5 and errors.files == {src[2]["path"]}


def test_training_clips_carry_the_sound_of_their_own_window(files):
  rate, n = 16000, 16000
  d = _config(files, sample_rate=rate, num_samples=n)
  src = pipeline.make_source(d, "train")
  errors = pipeline.DecodeErrors(1.0, min_samples=1000)
  clip = pipeline.TrainClip(
    source=src,
    num_frames=4,
    rates=(4,),
    rate_probs=None,
    min_short_side=32,
    max_short_side=32,
    crop_size=32,
    flip=False,
    label_mode="video",
    errors=errors,
    extras=pipeline.Extras.from_config(d),
  )
  seen = set()
  for seed in range(6):
    ex = clip.random_map(src[0], np.random.default_rng(seed))
    # The clip's frames are all black, so its window comes from the twin draw.
    rng = np.random.default_rng(seed)
    rng.choice((4,))
    first = transforms.random_clip_start(rng, FPS * SECONDS, 4, 4)
    # Centred on the window [first, first + 13) / fps (frames first + 4j).
    k0 = -(-((2 * first + 13) * rate - n * FPS) // (2 * FPS))
    want = tone(np.arange(k0, k0 + n) / rate) * (np.arange(k0, k0 + n) >= 0)
    assert ex["has_audio"] and ex["audio"].shape == (n,)
    assert np.corrcoef(ex["audio"], want)[0, 1] > 0.99 and _lag(ex["audio"], want) == 0
    seen.add(first)
  assert len(seen) > 2
  assert clip.random_map(src[2], np.random.default_rng(0)) is None
  assert errors.failed == 1


def _rows(batch):
  return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["index"]))]


def test_scenes_render_their_sound_at_the_configured_rate():
  # The tones are functions of time: at 22050 Hz the scenes' sound is the
  # 16 kHz one's tones, sampled at the other rate (noise aside).
  d = config_lib.data_config()
  d.name, d.extras = "scenes", ("audio",)
  d.scenes.update(num_train=40, resolution=16)
  src = pipeline.make_source(d, "train")
  assert src.sample_rate == 22050
  for i in range(40):
    plan = src.plan(i)
    if plan.has_audio and any(scenes.CLASS_NAMES[c] in scenes.SOUNDS for c, *_ in plan.instances):
      break
  quiet = dataclasses.replace(plan, noise=0.0)
  t = np.arange(0, plan.num_frames * 22050 // scenes.FPS)
  hi = scenes._audio(quiet, 0, len(t), 22050)
  lo = scenes._audio(quiet, 0, len(t) * 16000 // 22050, 16000)
  assert np.abs(hi).max() > 0.2
  # Resampling the 16 kHz track at the 22050 Hz times: equal up to the
  # on/off edges (linear interpolation of a 1 kHz-ish tone is close).
  on = np.interp(t / 22050, np.arange(len(lo)) / 16000, lo)
  assert np.corrcoef(on, hi)[0, 1] > 0.95


def test_prepared_data_stores_the_sound_track(files, tmp_path):
  from mlar_jax.data import prepare  # pylint: disable=g-import-not-at-top

  rate, n = 24000, 13000
  d = _config(files, sample_rate=rate, num_samples=n)
  out = str(tmp_path / "tfds")
  (summary,) = prepare.prepare(d, "csv", ["train"], out, short_side=32, fps=0.0, shard_size=2)
  assert summary["skipped"] == 1  # BADA: its audio stream does not decode
  p = _config(files, sample_rate=rate, num_samples=n)
  p.name, p.prepared.data_dir, p.prepared.dataset = "prepared", out, "csv"
  prepared = pipeline.make_source(p, "train")
  assert prepared.video_ids() == ["TONE", "MUTE"] and prepared.sample_rate == rate
  plan = sampling.view_plan(((4, 5),), 1)
  files_src = pipeline.make_source(d, "train")
  got = [c for b in pipeline.eval_dataset(prepared, p, plan, local_batch_size=5) for c in _rows(b)]
  want = [
    c for b in pipeline.eval_dataset(files_src, d, plan, local_batch_size=5) for c in _rows(b)
  ]
  assert [(c["index"], c["view"]) for c in got] == [(c["index"], c["view"]) for c in want][:10]
  for g, w in zip(got, want):
    assert g["has_audio"] == w["has_audio"]
    # int16 quantisation (1.5e-5) plus what a window decoded on its own
    # differs from the whole track decoded at once (AAC decoding after a
    # seek; measured: at most 2.2e-5, and 3.8e-4 in the last 30 ms of the
    # stream, where the encoder's final frame is).
    np.testing.assert_allclose(g["audio"], w["audio"], atol=5e-4)
  p.audio.sample_rate = 22050
  with pytest.raises(ValueError, match="data.audio.sample_rate.*24000 Hz"):
    pipeline.make_source(p, "train")


def test_required_audio_keeps_the_videos_with_sound(files):
  d = _config(files, sample_rate=24000, num_samples=13000, require=True)
  src = pipeline.make_source(d, "train")
  # MUTE is left out; BADA has an audio stream (that fails to decode: the
  # pipelines skip and count it).
  assert src.video_ids() == ["TONE", "BADA"] == [src[i]["id"] for i in range(len(src))]
  assert [src[i]["index"] for i in range(2)] == [0, 1]
  np.testing.assert_array_equal(src.label_matrix(), [[1, 0], [1, 1]])
  scenes_cfg = config_lib.data_config()
  scenes_cfg.name, scenes_cfg.extras = "scenes", ("audio",)
  scenes_cfg.scenes.update(num_train=30, resolution=16)
  scenes_cfg.audio.update(require=True, num_samples=2000)
  everything = pipeline.make_source(_audio_settings(scenes_cfg, require=False), "train")
  heard = pipeline.make_source(scenes_cfg, "train")
  sound = [i for i in range(30) if everything.plan(i).has_audio]
  assert 0 < len(heard) == len(sound) < 30
  np.testing.assert_array_equal(heard.label_matrix(), everything.label_matrix()[sound])
  plan = sampling.view_plan(((2, 1),), 1)
  clips = [
    c for b in pipeline.eval_dataset(heard, scenes_cfg, plan, local_batch_size=8) for c in _rows(b)
  ]
  assert len(clips) == len(sound) and all(c["has_audio"] for c in clips)
  np.testing.assert_array_equal([c["labels"] for c in clips], everything.label_matrix()[sound])
  bad = config_lib.base_config()
  bad.data.audio.require = True
  with pytest.raises(ValueError, match="data.audio.require.*needs 'audio' in data.extras"):
    pipeline.validate_config(bad)


def _audio_settings(cfg, **audio_cfg):
  """A copy of `config.data` `cfg` with `audio` settings changed."""
  cfg = cfg.copy_and_resolve_references()
  cfg.audio.update(audio_cfg)
  return cfg
