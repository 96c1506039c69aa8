"""ROI-Align against a plain loop over torchvision's definition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mlar_jax.models import roi


def reference_roi_align(feat, boxes, out_h, out_w, scale, ratio, aligned):
  """One [H, W, C] map, boxes [N, 4] (x1, y1, x2, y2): [N, out_h, out_w, C].

  Written per sample point from torchvision's roi_align CPU kernel, in float64.
  """
  h, w, c = feat.shape
  out = np.zeros((len(boxes), out_h, out_w, c))

  def sample(y, x):
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
      return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
      y_low = y_high = h - 1
      y = float(y_low)
    else:
      y_high = y_low + 1
    if x_low >= w - 1:
      x_low = x_high = w - 1
      x = float(x_low)
    else:
      x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
      hy * hx * feat[y_low, x_low]
      + hy * lx * feat[y_low, x_high]
      + ly * hx * feat[y_high, x_low]
      + ly * lx * feat[y_high, x_high]
    )

  for n, (x1, y1, x2, y2) in enumerate(boxes):
    off = 0.5 if aligned else 0.0
    sw, sh, ew, eh = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
    rw, rh = ew - sw, eh - sh
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out_h, rw / out_w
    gh = ratio if ratio > 0 else math.ceil(rh / out_h)
    gw = ratio if ratio > 0 else math.ceil(rw / out_w)
    count = max(gh * gw, 1)
    for ph in range(out_h):
      for pw in range(out_w):
        acc = np.zeros(c)
        for iy in range(gh):
          y = sh + ph * bh + (iy + 0.5) * bh / gh
          for ix in range(gw):
            x = sw + pw * bw + (ix + 0.5) * bw / gw
            acc += sample(y, x)
        out[n, ph, pw] = acc / count
  return out


# Boxes in image pixels of a 40 x 48 image over a stride-4 10 x 12 map:
# inside, at each border, past the border, tiny, degenerate (zero width),
# wholly outside, and larger than the map.
BOXES = np.array(
  [
    [4.0, 6.0, 30.0, 22.0],
    [0.0, 0.0, 48.0, 40.0],
    [40.5, 33.0, 48.0, 40.0],
    [-6.0, -3.0, 10.0, 7.0],
    [20.0, 20.0, 21.0, 20.5],
    [12.0, 8.0, 12.0, 30.0],
    [60.0, 50.0, 70.0, 58.0],
    [-20.0, -16.0, 70.0, 60.0],
  ]
)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("out", [(2, 2), (3, 5), (7, 7)])
def test_roi_align_matches_the_reference_loop(aligned, ratio, out):
  rng = np.random.default_rng(0)
  feat = rng.normal(size=(2, 10, 12, 3))
  # The second set is shifted off the round numbers where a sample lands
  # exactly on the -1 border, which float32 and float64 can decide apart.
  boxes = np.stack([BOXES, BOXES[::-1] * 0.93 + 1.3])
  valid = np.ones(boxes.shape[:2], bool)
  # The largest box needs an adaptive grid of ceil(90 / 4 / out) cells: a
  # bound past the default (exact only inside the map) makes it exact too.
  got = roi.roi_align(
    jnp.asarray(feat, jnp.float32),
    jnp.asarray(boxes, jnp.float32),
    jnp.asarray(valid),
    out,
    spatial_scale=0.25,
    sampling_ratio=ratio,
    aligned=aligned,
    max_grid=12,
  )
  want = np.stack(
    [reference_roi_align(feat[b], boxes[b], *out, 0.25, ratio, aligned) for b in range(2)]
  )
  assert got.shape == (2, len(BOXES), *out, 3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_default_adaptive_bound_is_exact_inside_the_map():
  rng = np.random.default_rng(1)
  feat = rng.normal(size=(1, 9, 14, 2))
  # Normalised boxes clipped to [0, 1], scaled to cells: AVA's case.
  boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.3, 0.6, 0.95], [0.5, 0.5, 0.52, 0.51]]])
  boxes = boxes * np.array([14.0, 9.0, 14.0, 9.0])
  for aligned in (True, False):
    got = roi.roi_align(
      jnp.asarray(feat, jnp.float32),
      jnp.asarray(boxes, jnp.float32),
      jnp.ones((1, 3), bool),
      (2, 3),
      aligned=aligned,
    )
    want = reference_roi_align(feat[0], boxes[0], 2, 3, 1.0, 0, aligned)
    np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-5)


def test_invalid_boxes_give_zeros_and_valid_ones_do_not_change():
  rng = np.random.default_rng(2)
  feat = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
  boxes = jnp.asarray(rng.uniform(0, 5, size=(2, 3, 2)), jnp.float32)
  boxes = jnp.concatenate([boxes, boxes + 1.0], axis=-1)
  valid = jnp.array([[True, False, True], [False, False, True]])
  got = roi.roi_align(feat, boxes, valid, 2, sampling_ratio=2)
  full = roi.roi_align(feat, boxes, jnp.ones_like(valid), 2, sampling_ratio=2)
  assert not np.asarray(got)[~np.asarray(valid)].any()
  np.testing.assert_array_equal(
    np.asarray(got)[np.asarray(valid)], np.asarray(full)[np.asarray(valid)]
  )


def test_video_features_are_averaged_over_time_first():
  rng = np.random.default_rng(3)
  video = jnp.asarray(rng.normal(size=(1, 4, 5, 5, 2)), jnp.float32)
  boxes = jnp.array([[[0.5, 1.0, 4.0, 3.5]]])
  valid = jnp.ones((1, 1), bool)
  got = roi.roi_align(video, boxes, valid, 3)
  want = roi.roi_align(video.mean(axis=1), boxes, valid, 3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_jit_and_gradients():
  rng = np.random.default_rng(4)
  feat = jnp.asarray(rng.normal(size=(1, 6, 7, 2)), jnp.float32)
  boxes = jnp.array([[[0.3, 0.7, 5.2, 4.9], [2.0, 1.0, 6.5, 5.5]]])
  valid = jnp.array([[True, False]])
  fn = jax.jit(lambda f: roi.roi_align(f, boxes, valid, 2, sampling_ratio=0))
  np.testing.assert_allclose(
    np.asarray(fn(feat)), np.asarray(roi.roi_align(feat, boxes, valid, 2)), atol=1e-6
  )
  check_grads(fn, (feat,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  # The output is linear in the features: its gradient is the torchvision
  # backward's scatter of the bin weights, and the padding box's is zero.
  g = jax.grad(lambda f: fn(f)[0, 0, 0, 0, 0])(feat)
  box = np.asarray(boxes[0, :1])
  weights = np.array(
    [
      [
        reference_roi_align(_unit(6, 7, i, j), box, 2, 2, 1.0, 0, True)[0, 0, 0, 0]
        for j in range(7)
      ]
      for i in range(6)
    ]
  )
  np.testing.assert_allclose(np.asarray(g)[0, :, :, 0], weights, atol=1e-6)
  assert not np.asarray(g)[0, :, :, 1].any()


def _unit(h, w, i, j):
  x = np.zeros((h, w, 1))
  x[i, j] = 1.0
  return x
