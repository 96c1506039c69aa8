"""Pointing game and mask IoU on hand-built maps, an oracle on the scenes
dataset's ground truth, and the random baseline's expected scores."""

import numpy as np

from mlar_jax.data import scenes
from mlar_jax.explain import localisation as loc


def test_inside_boxes_uses_pixel_centres():
  inside = loc.inside_boxes(np.array([0.0, 0.0, 0.5, 0.5]), 4, 4)
  want = np.zeros((4, 4), bool)
  want[:2, :2] = True
  np.testing.assert_array_equal(inside, want)
  # A box edge between pixel edges: the centre 0.625 of pixel 2 is outside 0.6.
  assert loc.inside_boxes(np.array([0.0, 0.0, 0.6, 1.0]), 4, 4)[:, 0].tolist() == [
    True,
    True,
    False,
    False,
  ]


def test_pointing_hits_on_hand_built_maps():
  boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]] * 4)  # [4, 2, 4]
  maps = np.zeros((4, 4, 4))
  maps[0, 1, 1] = 1.0  # in actor 0's box
  maps[1, 3, 3] = 1.0  # in actor 1's box
  maps[2, 1, 1] = maps[2, 1, 3] = 1.0  # tied: one in actor 0's box, one in neither
  targets = np.array([[True, False], [True, False], [True, False], [False, False]])
  hits = loc.pointing_hits(maps, boxes, targets)
  np.testing.assert_array_equal(hits[:3], [1.0, 0.0, 0.5])
  assert np.isnan(hits[3])
  # Either target counts (an interaction's two actors).
  assert loc.pointing_hits(maps[1:2], boxes[1:2], np.array([[True, True]]))[0] == 1.0


def test_mask_ious_on_hand_built_maps():
  masks = np.zeros((3, 4, 4), np.int32)
  masks[:, :2, :2] = 1  # actor 0
  masks[:, 2:, 2:] = 2  # actor 1
  maps = np.zeros((3, 4, 4))
  maps[0, :2, :3] = 0.9  # actor 0's 4 pixels and 2 more
  maps[1, :2, :2] = 0.4  # below the threshold: no region
  targets = np.array([[True, False], [True, False], [False, False]])
  ious = loc.mask_ious(maps, masks, targets, threshold=0.5)
  np.testing.assert_allclose(ious[:2], [4 / 6, 0.0])
  assert np.isnan(ious[2])  # no region, no target pixels
  # Both actors: the union of their pixels.
  both = loc.mask_ious(maps[:1], masks[:1], np.array([[True, True]]))
  np.testing.assert_allclose(both, [4 / 10])


def test_clip_events_pick_the_performing_actors():
  t, m, a = 2, 2, 3
  boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]] * t, np.float32)
  valid = np.ones((t, m), bool)
  masks = np.zeros((t, 4, 4), np.int32)
  masks[:, :2, :2], masks[:, 2:, 2:] = 1, 2
  labels = np.zeros((t, m, a), np.int32)
  labels[0, 0, 0] = 1  # actor 0 does class 0 at frame 0
  labels[1, :, 1] = 1  # both do class 1 (an interaction) at frame 1
  maps = np.zeros((3, t, 4, 4), np.float32)
  maps[0, :, 3, 3] = 1.0  # class 0's map points at the wrong actor
  maps[1, :, :2, :2] = maps[1, :, 2:, 2:] = 1.0  # class 1's at both
  events = loc.clip_events(
    maps, [0, 1, 2], boxes=boxes, box_valid=valid, masks=masks, actor_labels=labels
  )
  np.testing.assert_array_equal(events["class"], [0, 1])
  np.testing.assert_array_equal(events["frame"], [0, 1])
  np.testing.assert_allclose(events["hit"], [0.0, 1.0])
  np.testing.assert_allclose(events["iou"], [0.0, 1.0])
  s = loc.summarize([events, events])
  assert s == {"events": 4, "pointing": 0.5, "iou": 0.5}
  # An actor out of view (box not valid) makes no event.
  gone = loc.clip_events(maps, [0], boxes=boxes, box_valid=~valid, masks=masks, actor_labels=labels)
  assert len(gone["hit"]) == 0


def test_oracle_maps_score_one_on_the_scenes_ground_truth():
  source = scenes.SceneVideos("test", num_videos=6, resolution=32)
  events = []
  for i in range(len(source)):
    record = source[i]
    idx = np.arange(0, record["num_frames"], 7)
    boxes, valid = source.boxes(record, idx)
    masks = source.masks(record, idx)
    labels = source.actor_labels(record, idx)
    classes = np.flatnonzero(labels.any(axis=(0, 1)))
    # The oracle: each class's map is its performing actors' pixels.
    doing = labels[:, :, classes].transpose(2, 0, 1) > 0  # [A', T, M]
    ids = np.arange(1, labels.shape[1] + 1)
    maps = ((masks[None, :, None] == ids[None, None, :, None, None]) & doing[..., None, None]).any(
      axis=2
    )
    events.append(
      loc.clip_events(
        maps.astype(np.float32),
        classes,
        boxes=boxes,
        box_valid=valid,
        masks=masks,
        actor_labels=labels,
      )
    )
  s = loc.summarize(events)
  assert s["events"] > 20
  # Every visible performer's pixels lie in its box; an actor with a valid
  # box can still be fully hidden (IoU with no pixels then counts 0 or NaN).
  assert s["pointing"] == 1.0
  assert s["iou"] > 0.95


def test_random_maps_score_the_box_area_and_half_the_pixels():
  rng = np.random.default_rng(0)
  n = 4000
  maps = loc.random_maps(rng, (n, 8, 8))
  boxes = np.tile(np.array([[[0.0, 0.0, 0.5, 0.5]]]), (n, 1, 1))
  hits = loc.pointing_hits(maps, boxes, np.ones((n, 1), bool))
  assert abs(hits.mean() - 0.25) < 0.03
  masks = np.zeros((n, 8, 8), np.int32)
  masks[:, :4, :4] = 1
  # E|R & G| / E|R | G| = (0.5 * 16) / (16 + 0.5 * 48) = 0.2.
  ious = loc.mask_ious(maps, masks, np.ones((n, 1), bool))
  assert abs(ious.mean() - 0.2) < 0.01
