"""The scenes dataset: deterministic, its statistics are the data card's, and
its boxes, masks and labels agree with the rendered pixels."""

import dataclasses

import numpy as np
import pytest

from mlar_jax import config_lib
from mlar_jax.data import pipeline, scenes, synthetic

C = {n: i for i, n in enumerate(scenes.CLASS_NAMES)}
N = 400


@pytest.fixture(scope="module")
def train():
  return scenes.SceneVideos("train", seed=0, num_videos=N, resolution=24)


@pytest.fixture(scope="module")
def plans(train):
  return [train.plan(i) for i in range(N)]


def test_deterministic_per_seed_split_index():
  a = scenes.SceneVideos("train", seed=3, num_videos=10, resolution=24)
  b = scenes.SceneVideos("train", seed=3, num_videos=10, resolution=24)
  np.testing.assert_array_equal(a.video(7), b.video(7))
  np.testing.assert_array_equal(a[7]["instances"], b[7]["instances"])
  other_seed = scenes.SceneVideos("train", seed=4, num_videos=10, resolution=24)
  other_split = scenes.SceneVideos("test", seed=3, num_videos=10, resolution=24)
  idx = np.arange(64)
  for other, i in ((other_seed, 7), (other_split, 7), (a, 6)):
    assert not np.array_equal(a.load_frames(a[7], idx), other.load_frames(other[i], idx))
  video = a.video(7)
  assert video.shape == (a[7]["num_frames"], 24, 24, 3) and video.dtype == np.uint8


def test_asked_frames_equal_slices_of_the_whole_video(train):
  record = train[11]
  idx = np.array([0, 5, 9, 95, 5, 40])
  everything = np.arange(record["num_frames"])
  np.testing.assert_array_equal(train.load_frames(record, idx), train.video(11)[idx])
  for method in (train.masks, train.actor_labels):
    np.testing.assert_array_equal(method(record, idx), method(record, everything)[idx])
  for part, whole in zip(train.boxes(record, idx), train.boxes(record, everything)):
    np.testing.assert_array_equal(part, whole[idx])


@pytest.mark.parametrize(
  "module, source", [(synthetic, synthetic.SyntheticVideos), (scenes, scenes.SceneVideos)]
)
def test_video_ids_are_the_records_ids_without_drawing_a_video(monkeypatch, module, source):
  # Both procedural sources get their ids from base.PlannedVideos.
  videos = source("val", seed=1, num_videos=12, resolution=16)
  ref = [videos[i]["id"] for i in range(len(videos))]
  assert ref[:2] == ["val000000", "val000001"] and len(set(ref)) == 12

  def no_plan(*args):
    raise AssertionError("video_ids drew a video's plan")

  monkeypatch.setattr(module, "_plan", no_plan)
  assert videos.video_ids() == ref


def test_actors_and_concurrency(train, plans):
  actors = np.array([p.num_actors for p in plans])
  assert actors.min() == 1 and actors.max() == 4
  np.testing.assert_allclose(
    np.bincount(actors, minlength=5)[1:] / N, (0.25, 0.35, 0.25, 0.15), atol=0.06
  )
  concurrent, idle = 0, []
  for i, p in enumerate(plans):
    assert len(set(p.region)) == len(p.region) and len(set(p.color)) == len(p.color)
    al = train.actor_labels(train[i], np.arange(p.num_frames))[:, : p.num_actors]  # [T, N, A]
    busy = al.any(-1)
    # Two busy actors whose active labels differ in the same frame.
    differ = (al[:, :, None] != al[:, None, :]).any(-1) & busy[:, :, None] & busy[:, None, :]
    concurrent += differ.any()
    idle.extend(~busy.all(0))
  assert concurrent / N >= 0.4
  assert np.mean(idle) > 0.9  # nearly every actor has idle stretches


def test_durations_and_one_activity_at_a_time(plans):
  frames = np.array([p.num_frames for p in plans])
  assert frames.min() >= 96 and frames.max() <= 160
  durations, fractions = [], []
  for p in plans:
    c, a, b, s, e = p.instances.T
    assert (s >= 0).all() and (e <= p.num_frames).all()
    durations.extend(e - s)
    fractions.extend((e - s) / p.num_frames)
    for k in range(p.num_actors):
      mine = p.instances[(a == k) | (b == k)]
      assert (mine[1:, 3] >= mine[:-1, 4]).all(), "an actor does one thing at a time"
  assert min(durations) == 3 and max(fractions) > 0.6
  assert np.mean(np.array(durations) <= 8) > 0.2 and np.mean(np.array(fractions) > 0.25) > 0.05


def test_cooccurrence_exclusion_and_tail(train, plans):
  labels = train.label_matrix()
  n = train.class_stats().cooccurrence
  for first, second, p in (("jump", "land", 0.8), ("crouch", "stand_up", 0.7)):
    assert n[C[first], C[second]] == n[C[second], C[second]]  # only after the first
    assert n[C[first], C[second]] / n[C[first], C[first]] > p - 0.1
  for p in plans:
    inst = p.instances
    for first, second in (("land", "jump"), ("stand_up", "crouch"), ("throw", "carry")):
      for row in inst[inst[:, 0] == C[first]]:
        before = inst[(inst[:, 0] == C[second]) & (inst[:, 1] == row[1])]
        assert row[3] in before[:, 4], "a follower starts where its cause ends"
  for a, b in (("spin", "wave"), ("inflate", "shrink"), ("lights_dim", "lights_flicker")):
    assert n[C[a], C[b]] == 0 and n[C[a], C[a]] > 0 and n[C[b], C[b]] > 0
  freq = labels.mean(0)
  assert freq.min() > 0 and freq.max() / freq.min() > 8
  assert 4 < labels.sum(1).mean() < 12


def test_segments_agree_with_labels(train):
  labels = train.label_matrix()
  for i in range(50):
    record = train[i]
    np.testing.assert_array_equal(record["labels"], labels[i])
    seg, inst = record["segments"], record["instances"]
    assert seg.dtype == np.float32 and seg.shape == (len(inst), 3)
    np.testing.assert_array_equal(np.unique(seg[:, 0]), np.flatnonzero(labels[i]))
    np.testing.assert_allclose(seg[:, 1:] * scenes.FPS, inst[:, 3:], atol=1e-3)
    # Per-actor labels: every labelled class but the scene-level ones.
    per_actor = train.actor_labels(record, np.arange(record["num_frames"])).any((0, 1))
    scene = np.isin(np.arange(len(C)), [C[s] for s in scenes.SCENE + scenes.AUDIO_ONLY])
    np.testing.assert_array_equal(per_actor, labels[i].astype(bool) & ~scene)
    # A window around one instance has its label.
    c, _, _, s, e = inst[len(inst) // 2]
    assert pipeline.window_labels(record, np.arange(s, e), scenes.FPS)[c] == 1


def test_boxes_and_masks_agree_with_the_pixels():
  videos = scenes.SceneVideos("val", seed=2, num_videos=30, resolution=32)
  equal = total = body_pixels = actor_pixels = 0
  for i in range(30):
    record, plan = videos[i], videos.plan(i)
    idx = np.arange(0, record["num_frames"], 7)
    frames = videos.load_frames(record, idx).astype(np.int64)
    ids = videos.masks(record, idx)
    boxes, valid = videos.boxes(record, idx)
    state = scenes._state(plan, idx)
    assert not valid[:, plan.num_actors :].any() and (boxes[~valid] == 0).all()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    for k in range(plan.num_actors):
      for f in range(len(idx)):
        ys, xs = np.nonzero(ids[f] == k + 1)
        if not valid[f, k]:
          assert len(ys) == 0
          continue
        y1, x1, y2, x2 = np.round(boxes[f, k] * 32).astype(int)
        if len(ys):
          # Visible pixels lie in the (amodal) box, in the actor's colour or
          # its head's.
          assert y1 <= ys.min() and ys.max() < y2 and x1 <= xs.min() and xs.max() < x2
          colour = scenes._COLORS[state.color_id[k, f]] * state.light[f] * 255
          pixels = frames[f, ys, xs]
          body = np.abs(pixels - np.round(colour)).max(-1) <= 1
          head = np.abs(pixels - np.round(colour * 0.3)).max(-1) <= 1
          assert (body | head).all()
          body_pixels += body.sum()
          actor_pixels += len(body)
          equal += (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y1, x1, y2, x2)
          total += 1
    # A vanished actor has no box.
    for c, a, _, s, e in record["instances"]:
      if c == C["vanish"]:
        assert not valid[(idx >= s) & (idx < e), a].any()
  # Unoccluded actors (most) fill their boxes exactly.
  assert equal / total > 0.9
  assert body_pixels / actor_pixels > 0.7  # the head dot is small


def test_every_activity_changes_its_frames(train, plans):
  # Rendering a plan without one instance changes nearly all of its frames,
  # at 32 pixels, for the first 5 instances of each class
  # (none for the audio-only classes).
  for name, c in C.items():
    found = [
      (i, j) for i, p in enumerate(plans) for j, row in enumerate(p.instances) if row[0] == c
    ]
    changed = []
    for i, j in found[:5]:
      plan = plans[i]
      _, _, _, s, e = plan.instances[j]
      keep = np.arange(len(plan.instances)) != j
      without = dataclasses.replace(plan, instances=plan.instances[keep], param=plan.param[keep])
      t = np.arange(s, e)
      diff = scenes._render(plan, t, 32) != scenes._render(without, t, 32)
      changed.extend(diff.any((1, 2, 3)))
    changed = np.array(changed)
    if name in scenes.AUDIO_ONLY:
      assert not changed.any(), name
    else:
      assert changed.mean() >= 0.9, (name, changed)


def test_trains_through_the_pipeline():
  config = config_lib.base_config()
  d = config.data
  d.name, d.num_frames, d.rates, d.label_mode, d.flip = "scenes", 4, (2, 4, 8), "window", False
  d.crop_size = d.min_short_side = d.max_short_side = d.eval_short_side = 24
  d.scenes.update(num_train=8, num_val=4, num_test=4, resolution=24)
  pipeline.validate_config(config)
  source = pipeline.make_source(d, "train")
  assert isinstance(source, scenes.SceneVideos) and source.num_classes == len(C) == 26
  batch = next(iter(pipeline.train_dataset(source, d, global_batch_size=4, seed=0)))
  assert batch["video"].shape == (4, 4, 24, 24, 3) and batch["video"].dtype == np.uint8
  assert batch["labels"].shape == (4, 26)


def test_concept_masks_agree_with_instances_and_pixels():
  videos = scenes.SceneVideos("val", seed=5, num_videos=20, resolution=32)
  for i in range(20):
    record, plan = videos[i], videos.plan(i)
    idx = np.arange(0, record["num_frames"], 5)
    concepts = videos.concepts(record, idx)
    ids = videos.masks(record, idx)
    labels = videos.actor_labels(record, idx)
    frames = videos.load_frames(record, idx).astype(np.int64)
    light = scenes._state(plan, idx).light
    assert all(m.shape == ids.shape and m.dtype == np.int32 for m in concepts.values())
    for k in range(plan.num_actors):
      mine = ids == k + 1
      np.testing.assert_array_equal(concepts["shape"][mine], plan.shape[k] + 1)
      # The action region is the actor's mask while it does something.
      busy = labels[:, k].any(-1)[:, None, None] & mine
      assert (concepts["action"][busy] > 0).all() and (concepts["action"][mine & ~busy] == 0).all()
      f, y, x = np.nonzero(busy)
      assert labels[f, k, concepts["action"][f, y, x] - 1].all()
    # The background's texture shows exactly where no object is.
    items = scenes._items(scenes._state(plan, idx), 32)
    background = (concepts["shape"] == 0) & (ids == 0) & ~items
    np.testing.assert_array_equal(concepts["texture"] > 0, background)
    assert (concepts["texture"][concepts["texture"] > 0] == plan.texture + 1).all()
    # An actor pixel's colour concept is its colour on screen.
    on_actor = (concepts["color"] > 0) & (ids > 0)
    f, y, x = np.nonzero(on_actor)
    expected = scenes._COLORS[concepts["color"][f, y, x] - 1] * light[f, None] * 255
    assert (np.abs(frames[f, y, x] - np.round(expected)) <= 1).all()


def test_audio_sounds_with_its_activities(train, plans):
  has_audio = np.array([p.has_audio for p in plans])
  np.testing.assert_allclose(has_audio.mean(), 0.85, atol=0.06)
  silent = next(i for i in range(N) if not has_audio[i])
  assert not train.audio(train[silent], 0, 16000).any()

  def tone(wave, hz, start):
    """Amplitude of a `hz` sine in samples from `start` (a Fourier coefficient)."""
    time = (start + np.arange(len(wave))) / scenes.SAMPLE_RATE
    return 2 * np.abs(np.mean(wave * np.exp(-2j * np.pi * hz * time)))

  heard = checked = 0
  for i in np.flatnonzero(has_audio)[:60]:
    record, plan = train[i], plans[i]
    n = int(plan.num_frames / scenes.FPS * scenes.SAMPLE_RATE)
    wave = train.audio(record, 0, n)
    assert wave.dtype == np.float32 and (np.abs(wave) <= 1).all()
    np.testing.assert_array_equal(train.audio(record, 1234, 5678), wave[1234:5678])
    sounding = [r for r in plan.instances if scenes.CLASS_NAMES[r[0]] in scenes.SOUNDS]
    for c, _, _, s, e in plan.instances:
      a, b = int(s / scenes.FPS * scenes.SAMPLE_RATE), int(e / scenes.FPS * scenes.SAMPLE_RATE)
      others = [r for r in sounding if r[3] < e and r[4] > s and r[0] != c]
      if others:
        continue  # overlapping sounds: checked in the videos where they are alone
      name = scenes.CLASS_NAMES[c]
      if name in scenes.SOUNDS:
        # Full amplitude 0.3 while on (ring 50%, knock 30% of the time).
        duty = {"ring": 0.5, "knock": 0.3}.get(name, 1.0)
        assert tone(wave[a:b], scenes.SOUNDS[name], a) > 0.2 * duty, name
        heard += 1
      else:
        loud = max(tone(wave[a:b], hz, a) for hz in scenes.SOUNDS.values())
        assert loud < 0.02, name
        checked += 1
  assert heard > 30 and checked > 100


def test_single_label_annotates_each_video_with_its_dominant_activity():
  full = scenes.SceneVideos(
    "train", seed=0, num_videos=12, resolution=16, min_frames=64, max_frames=80
  )
  single = scenes.SceneVideos(
    "train", seed=0, num_videos=12, resolution=16, min_frames=64, max_frames=80, single_label=True
  )
  labels = single.label_matrix()
  assert (labels.sum(1) == 1).all()
  assert (labels <= full.label_matrix()).all()
  for i in range(12):
    a, b = full[i], single[i]
    # The dominant class by a plain loop: total frames per class, ties to the lower id.
    total = {}
    for c, _, _, start, end in a["instances"]:
      total[int(c)] = total.get(int(c), 0) + int(end - start)
    best = min(total, key=lambda c: (-total[c], c))
    assert np.flatnonzero(b["labels"]).tolist() == [best]
    np.testing.assert_array_equal(b["labels"], labels[i])
    assert set(b["segments"][:, 0].astype(int)) == {best}
    # The same video: frames and extras do not change.
    np.testing.assert_array_equal(single.load_frames(b, [0, 9]), full.load_frames(a, [0, 9]))
    np.testing.assert_array_equal(single.actor_labels(b, [5]), full.actor_labels(a, [5]))
