"""Network dissection: a hand-built model whose units fire exactly on
concepts, the tally against a plain loop of NetDissect's definition, the
Broden format's round trip and the scenes export."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlar_jax.data import broden, scenes
from mlar_jax.explain import dissect

CATEGORIES = {"object": ["box", "ball"], "color": ["red", "blue"], "action": ["jump"]}


def _hand_built(tmp_path, n=6, size=8, seed=0):
  """A Broden folder of n images: a box and a ball (objects) at random
  places, each red or blue; the ball jumps in every other image."""
  rng = np.random.default_rng(seed)
  items = []
  for i in range(n):
    obj = np.zeros((size, size), int)
    y, x = rng.integers(0, size - 3, 2)
    obj[y : y + 3, x : x + 3] = 1
    y, x = rng.integers(0, size - 2, 2)
    obj[y : y + 2, x : x + 2] = 2
    color = np.where(obj > 0, rng.integers(1, 3), 0)
    action = np.where((obj == 2) & (i % 2 == 0), 1, 0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    masks = {"object": obj, "color": color, "action": action}
    items.append(broden.Item(f"v{i // 3}/f{i % 3:04d}.png", "test", image, masks))
  broden.write(str(tmp_path), items, CATEGORIES)
  return broden.read(str(tmp_path))


def test_units_that_fire_exactly_on_a_concept_get_it_with_iou_one(tmp_path):
  data = _hand_built(tmp_path)
  segs = [data.segmentation(i) for i in range(len(data.rows))]
  box, jump = data.names.index("box"), data.names.index("jump")
  # The hand-built model: unit 0 fires on boxes, unit 1 on jumping, unit 2 on
  # nothing in particular (noise), at the segmentations' resolution.
  acts = np.stack(
    [
      np.stack(
        [
          (s["object"] == box) * (1.0 + 0.1 * np.random.default_rng(i).random((8, 8))),
          s.get("action", np.zeros((8, 8))) == jump,
          np.random.default_rng(100 + i).random((8, 8)),
        ],
        axis=-1,
      )
      for i, s in enumerate(segs)
    ]
  ).astype(np.float32)
  # Boxes cover 9 / 64 of the pixels: the top half is above any of them.
  d = dissect.dissect("hand", acts, segs, data, quantile=0.5)
  rows = dissect.units(d)
  assert (rows[0]["category"], rows[0]["label"], rows[0]["iou"]) == ("object", "box", 1.0)
  assert (rows[1]["category"], rows[1]["label"], rows[1]["iou"]) == ("action", "jump", 1.0)
  assert rows[0]["interpretable"] and rows[1]["interpretable"]
  s = dissect.summary(d)
  assert s["all"]["per_category"]["action"] == {"concepts": 1, "units": 1}
  assert s["all"]["per_category"]["object"]["units"] >= 1
  # Without the action category the jumping unit is explained by the ball
  # it jumps with, with a lower IoU.
  label, iou = d.best(exclude=("action",))
  assert data.names[label[1]] == "ball" and 0 < iou[1] < 1
  assert "action" not in s["without_action"]["per_category"]


def _reference_iou(acts, segs, categories, label_category, threshold):
  """NetDissect-Lite's tally as plain loops, image by image and unit by unit."""
  k, num_labels = acts.shape[-1], len(label_category)
  both = np.zeros((k, num_labels))
  units_cat = np.zeros((k, len(categories)))
  labels = np.zeros(num_labels)
  for a, s in zip(acts, segs):
    for seg in s.values():
      for v in seg.ravel():
        if v:
          labels[v] += 1
    for unit in range(k):
      size = next(iter(s.values())).shape
      m = np.asarray(jax.image.resize(jnp.asarray(a[..., unit]), size, "linear"))
      region = m > threshold[unit]
      touched = set()
      for cat, seg in s.items():
        for y, x in itertools.product(range(size[0]), range(size[1])):
          if region[y, x] and seg[y, x]:
            both[unit, seg[y, x]] += 1
            touched.add(cat)
      for cat in touched:
        units_cat[unit, categories.index(cat)] += region.sum()
  iou = np.zeros((k, num_labels))
  for unit, lab in itertools.product(range(k), range(1, num_labels)):
    u = units_cat[unit, label_category[lab]] + labels[lab] - both[unit, lab]
    iou[unit, lab] = both[unit, lab] / u if u > 0 else 0.0
  return iou


def test_tally_matches_a_plain_loop_with_upsampled_maps(tmp_path):
  data = _hand_built(tmp_path, n=5)
  segs = [data.segmentation(i) for i in range(len(data.rows))]
  acts = np.random.default_rng(3).random((5, 4, 4, 6)).astype(np.float32)
  thr = dissect.thresholds(acts, 0.1)
  np.testing.assert_allclose(thr, np.percentile(acts.reshape(-1, 6), 90, axis=0))
  got = dissect.tally(acts, segs, data.categories, data.label_category, thr)
  want = _reference_iou(acts, segs, data.categories, data.label_category, thr)
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert got.max() > 0.1


def test_broden_round_trip_with_label_numbers_past_255(tmp_path):
  many = {"object": [f"o{i}" for i in range(300)], "action": ["run"]}
  seg = np.zeros((4, 5), int)
  seg[0, 0], seg[1, 2] = 300, 7
  act = np.zeros((4, 5), int)
  act[3, 4] = 1
  image = np.full((4, 5, 3), 9, np.uint8)
  items = [broden.Item("a/f0.png", "test", image, {"object": seg, "action": act})]
  items.append(broden.Item("a/f1.png", "test", image, {"object": seg}))
  assert broden.write(str(tmp_path), items, many) == 2
  data = broden.read(str(tmp_path))
  assert data.categories == ["object", "action"] and data.names[300] == "o299"
  assert data.names[301] == "run" and data.label_category[301] == 1
  s = data.segmentation(0)
  np.testing.assert_array_equal(s["object"], seg)  # codes 1..300 are numbers 1..300
  assert s["action"][3, 4] == 301 and s["action"].sum() == 301
  assert set(data.segmentation(1)) == {"object"}  # no action pixels: no file
  np.testing.assert_array_equal(data.image(1), image)
  assert data.rows[1]["action"] == ""


def test_clips_cut_each_folder_in_name_order(tmp_path):
  data = _hand_built(tmp_path, n=7)  # folders v0 (3), v1 (3), v2 (1)
  assert list(dissect.clips(data, 2)) == [[0, 1], [3, 4]]
  assert list(dissect.clips(data, 3)) == [[0, 1, 2], [3, 4, 5]]
  acts = np.arange(2)[:, None, None, None] * np.ones((2, 1, 1, 1))
  np.testing.assert_array_equal(dissect.frame_activations(acts, 4)[:, 0, 0, 0], [0, 0, 1, 1])


def test_scenes_export_broden_matches_the_concepts(tmp_path):
  out = tmp_path / "broden"
  scenes.export_broden(
    str(out), seed=0, num_train=0, num_test=2, resolution=24, min_frames=64, max_frames=72
  )
  data = broden.read(str(out))
  assert data.categories == ["object", "color", "texture", "action"]
  src = scenes.SceneVideos("test", num_videos=2, resolution=24, min_frames=64, max_frames=72)
  frames = [src[i]["num_frames"] for i in range(2)]
  assert len(data.rows) == sum(-(-n // scenes.BRODEN_FRAME_STEP) for n in frames)
  # A frame with an action: its masks are the source's concepts, renumbered.
  record = src[0]
  i = next(
    j for j, r in enumerate(data.rows) if r["image"].startswith(record["id"]) and r["action"]
  )
  t = int(data.rows[i]["image"].split("/f")[1][:4])
  concepts = src.concepts(record, np.array([t]))
  seg = data.segmentation(i)
  first = {c: data.names.index(names[0]) for c, _, names in scenes.BRODEN_CATEGORIES}
  for cat, key, _ in scenes.BRODEN_CATEGORIES:
    want = np.where(concepts[key][0] > 0, concepts[key][0] + first[cat] - 1, 0)
    np.testing.assert_array_equal(seg.get(cat, np.zeros_like(want)), want)
  np.testing.assert_array_equal(data.image(i), src.load_frames(record, np.array([t]))[0])
  with pytest.raises(FileExistsError):
    scenes.export_broden(
      str(out), seed=0, num_train=0, num_test=1, resolution=24, min_frames=64, max_frames=72
    )
