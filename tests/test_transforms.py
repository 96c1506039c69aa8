"""Clip sampling and augmentation."""

import jax
import numpy as np

from mlar_jax.data import transforms


def test_clip_indices_and_short_videos():
  np.testing.assert_array_equal(transforms.clip_indices(32, 8, 4, 0), np.arange(0, 32, 4))
  # Past the end of a short video the last frame repeats.
  np.testing.assert_array_equal(transforms.clip_indices(10, 4, 4, 2), [2, 6, 9, 9])
  assert transforms.center_clip_start(32, 8, 2) == (32 - 15) // 2
  rng = np.random.default_rng(0)
  starts = {transforms.random_clip_start(rng, 32, 8, 2) for _ in range(500)}
  assert starts == set(range(0, 32 - 15 + 1))
  assert transforms.random_clip_start(rng, 10, 8, 4) == 0


def test_resize_matches_jax_image_resize():
  frames = np.random.default_rng(0).integers(0, 256, (2, 24, 28, 3), dtype=np.uint8)
  # Up, down (antialiased on both sides), and down on one axis only.
  for height, width in ((48, 44), (12, 14), (24, 10)):
    got = transforms.resize(frames, height, width).astype(np.float32)
    want = np.asarray(
      jax.image.resize(frames.astype(np.float32), (2, height, width, 3), "bilinear", antialias=True)
    )
    np.testing.assert_allclose(got, np.clip(np.round(want), 0, 255), atol=1)


def test_resize_window_is_a_crop_of_the_full_resize():
  frames = np.random.default_rng(1).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
  for height, width in ((30, 40), (12, 16), (24, 40)):  # up, down, one axis only
    full = transforms.resize(frames, height, width)
    window = transforms.resize(frames, height, width, (2, 3, 8, 9))
    np.testing.assert_allclose(window, full[:, 2:10, 3:12], atol=1)  # PIL's rounding
  # Each view of a 3-crop evaluation is that crop of the resized frames.
  full = transforms.resize_short_side(frames, 30)
  assert full.shape == (3, 30, 40, 3)
  for i, left in enumerate((0, 5, 10)):
    np.testing.assert_allclose(
      transforms.eval_view(frames, short_side=30, crop_size=30, crop_index=i, num_crops=3),
      full[:, :, left : left + 30],
      atol=1,
    )


def test_train_augment_shapes_and_determinism():
  frames = np.random.default_rng(0).integers(0, 256, (4, 40, 50, 3), dtype=np.uint8)
  a = transforms.train_augment(
    np.random.default_rng(7), frames, min_short_side=32, max_short_side=40, crop_size=28, flip=True
  )
  b = transforms.train_augment(
    np.random.default_rng(7), frames, min_short_side=32, max_short_side=40, crop_size=28, flip=True
  )
  assert a.shape == (4, 28, 28, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  view = transforms.eval_view(frames, short_side=40, crop_size=40)
  np.testing.assert_array_equal(view, frames[:, :, 5:45])
