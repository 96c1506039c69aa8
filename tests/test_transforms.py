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


def test_resize_matches_jax_image_resize_when_upsampling():
  frames = np.random.default_rng(0).integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
  got = transforms.resize(frames, 12, 11).astype(np.float32)
  want = np.asarray(jax.image.resize(frames.astype(np.float32), (2, 12, 11, 3), "bilinear"))
  np.testing.assert_allclose(got, np.clip(np.round(want), 0, 255), atol=1)


def test_train_augment_shapes_and_determinism():
  frames = np.random.default_rng(0).integers(0, 256, (4, 40, 50, 3), dtype=np.uint8)
  a = transforms.train_augment(np.random.default_rng(7), frames, min_short_side=32,
                               max_short_side=40, crop_size=28, flip=True)
  b = transforms.train_augment(np.random.default_rng(7), frames, min_short_side=32,
                               max_short_side=40, crop_size=28, flip=True)
  assert a.shape == (4, 28, 28, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  view = transforms.eval_view(frames, short_side=40, crop_size=40)
  np.testing.assert_array_equal(view, frames[:, :, 5:45])
