"""The scenes' ground truth through the pipelines (`config.data.extras`):
boxes and masks in each clip's view, audio of its time window, the batch
description, the checks, and training and evaluation with every extra."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import load_config

from mlar_jax import config_lib, sharding, train
from mlar_jax.data import pipeline, sampling, scenes, synthetic, transforms

C = {n: i for i, n in enumerate(scenes.CLASS_NAMES)}
SR, FPS = scenes.SAMPLE_RATE, int(scenes.FPS)


def _data(extras=pipeline.EXTRAS, **sizes):
  """`config.data` for scenes of `resolution` pixels (24 unless given),
  sound at their own 16 kHz, 2 s per clip unless `audio_samples` is given."""
  d = config_lib.data_config()
  d.name, d.extras, d.num_frames, d.rates = "scenes", tuple(extras), 4, (1, 2)
  d.audio.update(sample_rate=SR, num_samples=sizes.pop("audio_samples", 2 * SR))
  d.scenes.update(num_train=12, num_val=4, num_test=4, resolution=sizes.pop("resolution", 24))
  d.update(sizes)
  return d


def _clip(d, source, index, seed):
  """TrainClip's example of video `index` for generator `seed`, with the
  frame indices and the view it drew (a twin generator redoing the draws)."""
  clip = pipeline.TrainClip(
    source=source,
    num_frames=d.num_frames,
    rates=d.rates,
    rate_probs=None,
    min_short_side=d.min_short_side,
    max_short_side=d.max_short_side,
    crop_size=d.crop_size,
    flip=d.flip,
    label_mode="video",
    errors=pipeline.DecodeErrors(1.0),
    extras=pipeline.Extras.from_config(d),
  )
  record = source[index]
  example = clip.random_map(record, np.random.default_rng(seed))
  rng = np.random.default_rng(seed)
  rate = int(rng.choice(d.rates))
  n = record["num_frames"]
  idx = transforms.clip_indices(
    n, d.num_frames, rate, transforms.random_clip_start(rng, n, d.num_frames, rate)
  )
  crop = transforms.train_crop(
    rng,
    d.scenes.resolution,
    d.scenes.resolution,
    short_side=transforms.draw_short_side(rng, d.min_short_side, d.max_short_side),
    crop_size=d.crop_size,
    flip=d.flip,
  )
  return record, example, idx, crop


def _examples(d, source):
  """`_clip` of the first 10 videos with 4 generators each; flipped and not."""
  flips = set()
  for index in range(10):
    for seed in range(4):
      record, example, idx, crop = _clip(d, source, index, seed)
      flips.add(crop.flip)
      yield record, example, idx, crop
  assert flips == {True, False}


def _mask_box(mask):
  """[y1, x1, y2, x2] in [0, 1] of the pixels of a bool mask [S, S]."""
  ys, xs = np.nonzero(mask)
  return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]) / len(mask)


def _within(mask):
  """Whether a bool mask [S, S] has pixels, none on its border: an actor
  (one connected shape) seen whole in the view, whose box the crop does not
  cut (a cut box is clipped per axis, not to the bounds of what is seen)."""
  border = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
  return mask.any() and not border


def _unoccluded(source, record, idx):
  """bool [F, N]: actor k is seen whole in frame f (its visible mask is its
  amodal shape: nothing drawn over it)."""
  plan = source.plan(record["index"])
  body, _ = scenes._actors(plan, scenes._state(plan, idx), source.resolution)
  ids = source.masks(record, idx)
  whole = [(ids == k + 1) == body[k] for k in range(plan.num_actors)]
  return np.stack(whole, axis=1).all((2, 3))


def test_no_extras_keeps_the_old_keys():
  assert config_lib.data_config().extras == ()
  assert config_lib.data_config().max_actors == scenes.MAX_ACTORS
  d = _data(extras=())
  source = pipeline.make_source(d, "train")
  _, example, _, _ = _clip(d, source, 0, 0)
  assert set(example) == {"video", "labels"}
  plan = sampling.view_plan(((2, 1),), 1)
  view = next(iter(pipeline.eval_dataset(source, d, plan, local_batch_size=2)))
  assert set(view) == {"video", "labels", "index", "view"}
  assert set(pipeline.batch_spec(d, 2, 26)) == {"video", "labels"}


def test_batches_are_described_by_batch_spec():
  d = _data(max_actors=6, audio_samples=800)  # two empty actor slots
  source = pipeline.make_source(d, "train")
  batch = next(iter(pipeline.train_dataset(source, d, global_batch_size=3, seed=0)))
  plan = sampling.view_plan(((2, 1),), 2)
  views = next(iter(pipeline.eval_dataset(source, d, plan, local_batch_size=3)))
  for got, evaluation in ((batch, False), (views, True)):
    spec = pipeline.batch_spec(d, 3, source.num_classes, evaluation=evaluation)
    spec.pop("mask", None)  # added by the evaluator's padding
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {
      k: (v.shape, v.dtype) for k, v in spec.items()
    }
    assert not got["box_valid"][..., 4:].any() and not got["actor_labels"][..., 4:, :].any()
  # Every extra adds its keys.
  assert set(pipeline.batch_spec(d, 3, 26)) == {
    "video",
    "labels",
    "boxes",
    "box_valid",
    "actor_labels",
    "masks",
    "audio",
    "has_audio",
  }


def test_training_extras_are_those_of_the_clips_frames_and_view():
  # Scale jitter by non-integer factors, crops and flips.
  d = _data(min_short_side=28, max_short_side=40, crop_size=24, flip=True)
  source = pipeline.make_source(d, "train")
  checked = 0
  for record, ex, idx, crop in _examples(d, source):
    np.testing.assert_array_equal(
      ex["video"], transforms.crop_frames(source.load_frames(record, idx), crop)
    )
    np.testing.assert_array_equal(ex["actor_labels"], source.actor_labels(record, idx))
    # Masks: the nearest-neighbour resize of the whole frame, then the crop.
    full = jax.image.resize(
      source.masks(record, idx).astype(np.float32), (len(idx), crop.height, crop.width), "nearest"
    )
    want = np.asarray(full)[:, crop.top :, crop.left :][:, : crop.size, : crop.size]
    np.testing.assert_array_equal(ex["masks"], want[:, :, ::-1] if crop.flip else want)
    # Boxes: those of the view's mask pixels for actors seen whole, to half
    # a pixel of the view (where nearest neighbours put the edges).
    whole = _unoccluded(source, record, idx)
    for f, k in zip(*np.nonzero(whole)):
      seen = ex["masks"][f] == k + 1
      if not ex["box_valid"][f, k]:
        assert not seen.any()
      elif _within(seen):
        np.testing.assert_allclose(ex["boxes"][f, k], _mask_box(seen), atol=0.5 / 24 + 1e-6)
        checked += 1
    assert (ex["boxes"][~ex["box_valid"]] == 0).all()
  assert checked > 100


def test_training_boxes_and_masks_flip_with_the_pixels():
  # No resize (crops and flips only): every pixel of actor k in the masks is
  # actor k's colour (or its head's) in the frames, and an actor seen whole
  # fills its box exactly.
  d = _data(resolution=32, min_short_side=32, max_short_side=32, crop_size=24, flip=True)
  source = pipeline.make_source(d, "train")
  filled = 0
  for record, ex, idx, _ in _examples(d, source):
    state = scenes._state(source.plan(record["index"]), idx)
    whole = _unoccluded(source, record, idx)
    for f, k in zip(*np.nonzero(ex["box_valid"])):
      seen = ex["masks"][f] == k + 1
      colour = scenes._COLORS[state.color_id[k, f]] * state.light[f] * 255
      pixels = ex["video"][f][seen].astype(np.int64)
      body = np.abs(pixels - np.round(colour)).max(-1) <= 1
      head = np.abs(pixels - np.round(colour * 0.3)).max(-1) <= 1
      assert (body | head).all()
      if whole[f, k] and _within(seen):
        np.testing.assert_allclose(ex["boxes"][f, k], _mask_box(seen), atol=1e-6)
        filled += 1
  assert filled > 100


def test_eval_views_extras_for_each_crop():
  # 24-pixel frames resized to 32, three 24-pixel crops along the width.
  d = _data(eval_short_side=32, crop_size=24)
  source = pipeline.make_source(d, "test")
  plan = sampling.view_plan(((2, 1),), 3)
  views_of = pipeline.VideoViews(
    source=source,
    plan=plan,
    num_frames=d.num_frames,
    short_side=32,
    crop_size=24,
    errors=pipeline.DecodeErrors(1.0),
    extras=pipeline.Extras.from_config(d),
  )
  for index in range(4):
    record = source[index]
    idx = sampling.view_indices(record["num_frames"], d.num_frames, plan[0])
    views = list(views_of.map(record))
    boxes, valid = source.boxes(record, idx)
    masks = np.asarray(
      jax.image.resize(source.masks(record, idx).astype(np.float32), (len(idx), 32, 32), "nearest")
    )
    frames = transforms.resize(source.load_frames(record, idx), 32, 32)
    for view, left in zip(views, (0, 4, 8)):
      top = 4
      np.testing.assert_allclose(view["video"], frames[:, top:28, left : left + 24], atol=1)
      np.testing.assert_array_equal(view["masks"], masks[:, top:28, left : left + 24])
      want = np.clip((boxes * 32 - [top, left, top, left]) / 24, 0, 1)
      want_valid = valid & (want[..., 2] > want[..., 0]) & (want[..., 3] > want[..., 1])
      np.testing.assert_array_equal(view["box_valid"], want_valid)
      np.testing.assert_allclose(view["boxes"], want * want_valid[..., None], atol=1e-6)
      np.testing.assert_array_equal(view["actor_labels"], source.actor_labels(record, idx))


def _first_sample(frame):
  """The first sample at or after the time of `frame`: ceil(frame / FPS * SR)."""
  return -(-frame * SR // FPS)


def test_audio_is_the_samples_centred_on_the_clips_window():
  d = _data()  # 32000 samples (2 s) per clip
  source = pipeline.make_source(d, "train")
  zeros_before = 0
  for index in range(4):
    for seed in range(5):
      record, ex, idx, _ = _clip(d, source, index, seed)
      n = d.audio.num_samples
      # Centre (first + last + 1) / 2 / FPS s; start = ceil(centre * SR - n / 2).
      start = -(-((idx.min() + idx.max() + 1) * SR - n * FPS) // (2 * FPS))
      end = _first_sample(record["num_frames"])
      lo, hi = max(start, 0), min(start + n, end)
      want = np.zeros(n, np.float32)
      want[lo - start : hi - start] = source.audio(record, lo, hi)
      np.testing.assert_array_equal(ex["audio"], want)
      assert ex["has_audio"] == record["has_audio"]
      zeros_before += lo > start
  assert zeros_before  # clips near the start: silence before the video


def test_audio_window_of_a_sounding_instance_is_exactly_its_tone(monkeypatch):
  # Without noise, a clip of exactly an instance's frames, with as many
  # samples as its time window [s, e) / FPS, hears the tone in every sample,
  # and the samples just outside are silent: no sample off.
  source = scenes.SceneVideos("train", seed=0, num_videos=200, resolution=16)
  draw = source._draw
  monkeypatch.setattr(source, "_draw", lambda i: dataclasses.replace(draw(i), noise=0.0))
  steady = ("land", "push", "meet", "hand_over", "throw", "camera_shake", "lights_flicker")
  checked = 0
  for index in range(200):
    plan = source.plan(index)
    if not plan.has_audio:
      continue
    sounding = [r for r in plan.instances if scenes.CLASS_NAMES[r[0]] in scenes.SOUNDS]
    for j, (c, _, _, s, e) in enumerate(sounding):
      # No other sound in the window or touching it.
      alone = all(r[4] < s or r[3] > e for i, r in enumerate(sounding) if i != j)
      if scenes.CLASS_NAMES[c] not in steady or not alone or s == 0:
        continue
      record = source[index]
      a, b = _first_sample(s), _first_sample(e)
      audio = pipeline.clip_audio(source, record, np.arange(s, e), plan.num_frames, FPS, b - a)
      tone = 0.3 * np.sin(2 * np.pi * scenes.SOUNDS[scenes.CLASS_NAMES[c]] * np.arange(a, b) / SR)
      np.testing.assert_allclose(audio, tone, atol=1e-6)
      assert source.audio(record, a - 1, a)[0] == 0 and source.audio(record, b, b + 1)[0] == 0
      checked += 1
  assert checked > 20


def test_a_dataset_without_an_extra_fails_naming_the_key(monkeypatch, tmp_path):
  config = load_config("synthetic", "runlocal")
  config.data.extras = ("boxes",)
  pipeline.validate_config(config)  # a known name: the dataset decides
  with pytest.raises(ValueError, match=r"config\.data\.extras=\('boxes',\): the 'synthetic' "):
    pipeline.make_source(config.data, "train")
  with pytest.raises(ValueError, match=r"config\.data\.extras"):
    pipeline.train_dataset(
      synthetic.SyntheticVideos("train", num_videos=4), config.data, global_batch_size=2, seed=0
    )

  # Training fails before building (and compiling) anything.
  def no_build(*args):
    raise AssertionError("built the training step")

  monkeypatch.setattr(train, "build_training", no_build)
  with pytest.raises(ValueError, match=r"config\.data\.extras.*'synthetic'"):
    train.train_and_evaluate(config, str(tmp_path))
  # Unknown or repeated names fail validation; too few actor slots, the source.
  for extras in (("boxes", "depth"), ("masks", "masks")):
    config.data.extras = extras
    with pytest.raises(ValueError, match=r"config\.data\.extras"):
      pipeline.validate_config(config)
  with pytest.raises(ValueError, match=r"config\.data\.max_actors=3: the 'scenes' dataset has"):
    pipeline.make_source(_data(max_actors=3), "train")


def test_trains_and_evaluates_with_every_extra(monkeypatch, tmp_path):
  config = load_config("synthetic", "runlocal")
  d = config.data
  d.name, d.extras = "scenes", pipeline.EXTRAS
  d.scenes.update(num_train=16, num_val=4, num_test=6, resolution=16)
  config.num_train_steps = config.checkpoint.every_steps = 2
  # The batches reach the devices with their extras; the steps ignore them.
  keys = []
  to_global = sharding.to_global
  monkeypatch.setattr(sharding, "to_global", lambda b, s: keys.append(set(b)) or to_global(b, s))
  results = train.train_and_evaluate(config, str(tmp_path))
  extras = {"boxes", "box_valid", "actor_labels", "masks", "audio", "has_audio"}
  assert len(keys) == 3  # 2 training steps, 1 evaluation batch (6 clips padded to 8)
  assert keys[0] == {"video", "labels"} | extras
  assert keys[2] == {"video", "labels", "index", "view", "mask"} | extras
  assert results["num_videos"] == 6 and results["num_videos_without_views"] == 0


def test_eval_views_resize_whole_frames_or_only_crops_alike():
  # One centre crop: only the crop is resized (576 of 1024 pixels a frame);
  # three crops: each frame once, whole (1024 < 3 x 576). Same centre clip.
  d = _data(eval_short_side=32, crop_size=24)
  source = pipeline.make_source(d, "test")
  clips = {}
  for crops in (1, 3):
    views_of = pipeline.VideoViews(
      source, sampling.view_plan(((2, 1),), crops), d.num_frames, 32, 24, pipeline.DecodeErrors(1.0)
    )
    clips[crops] = list(views_of.map(source[0]))
  assert len(clips[1]) == 1 and len(clips[3]) == 3
  one, centre = clips[1][0]["video"].astype(int), clips[3][1]["video"].astype(int)
  assert np.abs(one - centre).max() <= 1 and np.abs(one - centre).mean() < 0.2
