"""Clip sampling and augmentation."""

import dataclasses

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
    crop = transforms.eval_crop(24, 32, short_side=30, crop_size=30, crop_index=i, num_crops=3)
    assert crop == transforms.Crop(30, 40, 0, left, 30)
    np.testing.assert_allclose(
      transforms.crop_frames(frames, crop), full[:, :, left : left + 30], atol=1
    )
  # Frames already at the short side are only cropped.
  crop = transforms.eval_crop(24, 32, short_side=24, crop_size=24)
  np.testing.assert_array_equal(transforms.crop_frames(frames, crop), frames[:, :, 4:28])


def _train_augment_before_crops(rng, frames, *, min_short_side, max_short_side, crop_size, flip):
  """`transforms.train_augment` as it was before `Crop`: the reference the
  training clips (and the demo's numbers) must not move from."""
  short = int(rng.integers(min_short_side, max_short_side + 1))
  height, width = transforms.short_side_shape(*frames.shape[1:3], short)
  top = int(rng.integers(0, height - crop_size + 1))
  left = int(rng.integers(0, width - crop_size + 1))
  frames = transforms.resize(frames, height, width, (top, left, crop_size, crop_size))
  if flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  return np.ascontiguousarray(frames)


def test_train_crop_draws_and_frames_are_as_before():
  frames = np.random.default_rng(0).integers(0, 256, (4, 40, 50, 3), dtype=np.uint8)
  flipped = set()
  for seed in range(40):
    for flip in (True, False):
      sizes = dict(min_short_side=32, max_short_side=44, crop_size=28, flip=flip)
      rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
      short = transforms.draw_short_side(rng, sizes["min_short_side"], sizes["max_short_side"])
      crop = transforms.train_crop(rng, 40, 50, short_side=short, crop_size=28, flip=flip)
      np.testing.assert_array_equal(
        transforms.crop_frames(frames, crop), _train_augment_before_crops(ref_rng, frames, **sizes)
      )
      # The same draws: the generators are left in the same state.
      assert rng.random() == ref_rng.random()
      assert crop.size == 28 and min(crop.height, crop.width) in range(32, 45)
      flipped.add(crop.flip)
  assert flipped == {True, False}


def test_crop_boxes_follow_the_pixel_edges():
  # A frame resized to 48x48, the 32-pixel crop at (12, 16): y' = (48 y - 12) / 32.
  crop = transforms.Crop(48, 48, 12, 16, 32)
  boxes = np.array(
    [
      [0.375, 0.5, 0.75, 0.875],  # inside
      [0.125, 0.25, 0.5, 0.5],  # cut by the crop's top and left
      [0.0, 0.0, 0.125, 0.5],  # above the crop
      [0.0, 0.0, 0.25, 0.5],  # touches the crop's top edge: no area inside
      [0.2, 0.2, 0.4, 0.4],  # not valid
    ],
    np.float32,
  )
  valid = np.array([True, True, True, True, False])
  out, out_valid = transforms.crop_boxes(boxes, valid, crop)
  want = [[0.1875, 0.25, 0.75, 0.8125], [0.0, 0.0, 0.375, 0.25], [0] * 4, [0] * 4, [0] * 4]
  np.testing.assert_allclose(out, want, atol=1e-6)
  np.testing.assert_array_equal(out_valid, [True, True, False, False, False])
  assert out.dtype == np.float32 and out_valid.dtype == bool
  # A flip mirrors x (x' -> 1 - x') and keeps validity.
  flipped, flipped_valid = transforms.crop_boxes(boxes, valid, dataclasses.replace(crop, flip=True))
  np.testing.assert_allclose(flipped[:2], [[0.1875, 0.1875, 0.75, 0.75], [0, 0.75, 0.375, 1]])
  np.testing.assert_array_equal(flipped_valid, out_valid)


def test_crop_masks_is_the_nearest_resize_then_the_crop():
  masks = np.random.default_rng(2).integers(0, 5, (3, 24, 30), dtype=np.int32)
  for crop in (
    transforms.Crop(24, 30, 2, 3, 20),  # no resize
    transforms.Crop(40, 50, 7, 11, 32, flip=True),  # up, not by an integer
    transforms.Crop(48, 60, 0, 28, 32),  # up by 2
    transforms.Crop(16, 20, 0, 4, 16, flip=True),  # down
  ):
    full = jax.image.resize(masks.astype(np.float32), (3, crop.height, crop.width), "nearest")
    want = np.asarray(full)[:, crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]
    want = want[:, :, ::-1] if crop.flip else want
    got = transforms.crop_masks(masks, crop)
    assert got.dtype == np.int32 and got.shape == (3, crop.size, crop.size)
    np.testing.assert_array_equal(got, want.astype(np.int32))
