"""The embedded dataset: deterministic, and its labels follow its rules."""

import numpy as np
import pytest

from mlar_jax.data import synthetic

C = {n: i for i, n in enumerate(synthetic.CLASS_NAMES)}


@pytest.fixture(scope="module")
def train():
  return synthetic.SyntheticVideos("train", seed=0, num_videos=3000, resolution=32)


def test_deterministic_per_seed_split_index():
  a = synthetic.SyntheticVideos("train", seed=3, num_videos=10, resolution=24)
  b = synthetic.SyntheticVideos("train", seed=3, num_videos=10, resolution=24)
  np.testing.assert_array_equal(a.video(7), b.video(7))
  np.testing.assert_array_equal(a[7]["labels"], b[7]["labels"])
  other_seed = synthetic.SyntheticVideos("train", seed=4, num_videos=10, resolution=24)
  other_split = synthetic.SyntheticVideos("test", seed=3, num_videos=10, resolution=24)
  assert not np.array_equal(a.video(7), other_seed.video(7))
  assert not np.array_equal(a.video(7), other_split.video(7))
  assert a.video(7).shape == (32, 24, 24, 3) and a.video(7).dtype == np.uint8


def test_rendering_a_subset_equals_indexing_the_whole_video(train):
  idx = np.array([0, 5, 9, 31, 5])
  np.testing.assert_array_equal(train.load_frames(train[11], idx), train.video(11)[idx])


def test_label_statistics_follow_the_rules(train):
  labels = train.label_matrix()
  stats = train.class_stats()
  n = stats.cooccurrence
  freq = labels.mean(0)
  assert len(synthetic.CLASS_NAMES) >= 12
  assert labels.sum(1).mean() >= 2.0
  # Mutually exclusive pairs never co-occur.
  for a, b in [
    ("move_right", "move_left"),
    ("move_up", "move_down"),
    ("grow", "shrink"),
    ("meet", "vanish"),
  ]:
    assert n[C[a], C[b]] == 0, (a, b)
  # Co-occurring pairs: P(shake | jump) ~ 0.75 >> P(shake | no jump) ~ 0.04.
  p_shake_jump = n[C["jump"], C["shake"]] / n[C["jump"], C["jump"]]
  p_shake_nojump = (n[C["shake"], C["shake"]] - n[C["jump"], C["shake"]]) / (
    len(labels) - n[C["jump"], C["jump"]]
  )
  assert 0.65 < p_shake_jump < 0.85 and p_shake_nojump < 0.08
  assert n[C["vanish"], C["flash"]] / n[C["vanish"], C["vanish"]] > 0.45
  assert n[C["move_down"], C["grow"]] / n[C["move_down"], C["move_down"]] > 0.5
  # Long tail: the most frequent class is >10x the rarest.
  assert freq.max() / freq.min() > 10
  np.testing.assert_allclose(freq[C["move_right"]], 0.7 * 0.65, atol=0.03)
  # Counts and co-occurrence agree with the labels.
  np.testing.assert_array_equal(np.diag(n), labels.sum(0))
  np.testing.assert_array_equal(stats.counts, labels.sum(0))
  np.testing.assert_allclose(stats.frequency, freq)


def test_durations_long_and_short(train):
  for i in range(200):
    rec, plan = train[i], train.plan(i)
    for name in ("move_right", "rotate", "grow"):
      if rec["labels"][C[name]]:
        assert tuple(plan.segments[C[name]]) == (0, 32)
    for name, dur in (("jump", 4), ("shake", 4), ("vanish", 4), ("flash", 3)):
      if rec["labels"][C[name]]:
        s, e = plan.segments[C[name]]
        assert e - s == dur and 0 <= s and e <= 32
    assert (plan.segments[rec["labels"] == 0] == -1).all()
    # The record's segments, in seconds, are the labelled classes.
    np.testing.assert_array_equal(rec["segments"][:, 0], np.flatnonzero(rec["labels"]))
    np.testing.assert_allclose(
      rec["segments"][:, 1:] * synthetic.FPS, plan.segments[rec["labels"] > 0]
    )


def test_activities_are_visible_in_their_frames(train):
  # A vanish removes the actor: those frames differ from the frames around.
  i = next(
    i
    for i in range(3000)
    if train[i]["labels"][C["vanish"]] and not train[i]["labels"][C["lights_dim"]]
  )
  s, e = train.plan(i).segments[C["vanish"]]
  plan = train.plan(i)
  v = train.video(i).astype(np.float32)
  colour = synthetic._PALETTE[plan.color0] * 255 * plan.brightness

  def actor_pixels(frame):
    return (np.abs(frame - colour).sum(-1) < 40).sum()

  assert actor_pixels(v[s + 1]) == 0
  assert actor_pixels(v[max(s - 4, 0)]) > 0 or actor_pixels(v[min(e + 1, 31)]) > 0
