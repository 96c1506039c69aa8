"""The per-box detection head: ROI-Align, then the linear or MLAR head per box."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mlar_jax import config_lib, validation
from mlar_jax.models import heads, registry, roi

BOXES = jnp.array(
  [
    [[0.1, 0.2, 0.8, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.5, 0.4]],
    [[0.5, 0.5, 0.9, 0.95], [0.2, 0.1, 0.7, 0.5], [0.0, 0.0, 0.0, 0.0]],
  ]
)  # [y1, x1, y2, x2]
VALID = jnp.array([[True, True, True], [True, True, False]])


def _features(seed=0, shape=(2, 3, 6, 8, 32)):
  fmap = jax.random.normal(jax.random.key(seed), shape)
  return {"map": fmap, "pooled": fmap.mean(axis=(1, 2, 3))}


def test_linear_roi_head_is_pyslowfast_roi_head():
  """Temporal mean, ROI-Align in feature cells, spatial max, linear."""
  head = heads.ROIHead(heads.LinearHead(5, dropout_rate=0.0), output_size=4)
  feats = _features()
  variables = head.init(jax.random.key(1), feats, BOXES, VALID, train=False)
  got = head.apply(variables, feats, BOXES, VALID, train=False)["logits"]
  _, _, h, w, _ = feats["map"].shape
  cells = np.asarray(BOXES)[..., [1, 0, 3, 2]] * np.array([w, h, w, h])
  aligned = roi.roi_align(feats["map"].mean(axis=1), jnp.asarray(cells), VALID, 4, aligned=True)
  pooled = np.asarray(aligned).max(axis=(2, 3))  # [B, N, C]
  dense = variables["params"]["inner"]["classifier"]
  want = pooled @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
  want = np.where(np.asarray(VALID)[..., None], want, 0.0)
  assert got.shape == (2, 3, 5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inner", ["linear", "mlar"])
def test_boxes_are_independent_and_padding_boxes_give_nothing(inner):
  cfg = config_lib.base_config().model
  cfg.head, cfg.dropout_rate = inner, 0.0
  cfg.mlar.update(num_observations=4, groups=4, features=16)
  head = heads.ROIHead(registry.HEADS.get(inner)(cfg, 6, None), output_size=3)
  feats = _features()
  variables = head.init(jax.random.key(1), feats, BOXES, VALID, train=False)
  out = head.apply(variables, feats, BOXES, VALID, train=False)
  assert set(out) == set(registry.head_outputs(cfg))
  for x in out.values():
    assert x.shape == (2, 3, 6) and not np.asarray(x)[1, 2].any()
  # A box alone in its example scores as it does among others.
  alone = head.apply(variables, feats, BOXES[:, 1:2], VALID[:, 1:2], train=False)
  for name in out:
    np.testing.assert_allclose(
      np.asarray(alone[name])[:, 0], np.asarray(out[name])[:, 1], rtol=1e-5, atol=1e-5
    )
  # Moving a padding box changes nothing, and no gradient reaches it.
  moved = BOXES.at[1, 2].set(jnp.array([0.2, 0.2, 0.9, 0.9]))
  again = head.apply(variables, feats, moved, VALID, train=False)
  for name in out:
    np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(out[name]))

  def loss(f):
    o = head.apply(variables, {**feats, "map": f}, BOXES, VALID, train=False)
    return sum(jnp.sum(v[1, 2]) for v in o.values())

  assert not np.asarray(jax.grad(loss)(feats["map"])).any()


def test_detector_on_a_backbone_with_res5_stride_1():
  cfg = config_lib.base_config().model
  cfg.backbone, cfg.head, cfg.res5_spatial_stride = "resnet3d_tiny", "mlar", 1
  cfg.mlar.update(num_observations=4, groups=4, features=16)
  model = registry.build_detector(cfg, num_classes=7)
  video = jax.random.uniform(jax.random.key(0), (2, 2, 16, 16, 3))
  variables = model.init({"params": jax.random.key(1)}, video, BOXES, VALID, train=False)

  @jax.jit
  def loss(params):
    out, _ = model.apply(
      {**variables, "params": params},
      video,
      BOXES,
      VALID,
      train=True,
      rngs={"dropout": jax.random.key(3)},
      mutable=["batch_stats"],
    )
    return jnp.sum(jax.nn.sigmoid(out["logits"]) * VALID[..., None]), out

  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  assert set(out) == {"logits", "logits_activity"}
  assert out["logits"].shape == (2, 3, 7)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["backbone"]["stem"]["conv"]["kernel"]).sum()) > 0


def test_roi_config_is_validated():
  config = load_config("synthetic", "runlocal")
  config.model.roi.output_size = 0
  with pytest.raises(ValueError, match="config.model.roi.output_size=0: must be a positive"):
    validation.validate(config)


@pytest.mark.parametrize("name", ["bce", "wlsep"])
def test_box_losses_are_the_loss_of_the_valid_boxes(name):
  from mlar_jax import losses

  fn = losses.LOSSES.get(name)
  logits = jax.random.normal(jax.random.key(0), (2, 3, 5)) * 3
  labels = (jax.random.uniform(jax.random.key(1), (2, 3, 5)) < 0.4).astype(jnp.int32)
  sums, counts = losses.box_losses(fn, logits, labels, VALID)
  np.testing.assert_array_equal(np.asarray(counts), [3, 2])
  for i in range(2):
    keep = np.asarray(VALID[i])
    want = float(jnp.sum(fn(logits[i][keep], labels[i][keep], None)))
    assert float(sums[i]) == pytest.approx(want, rel=1e-6)
  # A padding box's logits get no gradient, even when they are not finite.
  bad = logits.at[1, 2].set(jnp.inf)
  grad = jax.grad(lambda x: jnp.sum(losses.box_losses(fn, x, labels, VALID)[0]))(bad)
  assert not np.asarray(grad)[1, 2].any() and np.isfinite(np.asarray(grad)).all()


def test_pooled_boxes_head_scores_the_max_over_the_clips_people():
  """Volleyball's "bb": each ROI bin max-pooled over the valid boxes, then
  the clip head once; padding boxes change nothing."""
  head = heads.ROIHead(heads.LinearHead(5, dropout_rate=0.0), output_size=4, pool_boxes=True)
  feats = _features()
  variables = head.init(jax.random.key(1), feats, BOXES, VALID, train=False)
  got = np.asarray(head.apply(variables, feats, BOXES, VALID, train=False)["logits"])
  _, _, h, w, _ = feats["map"].shape
  cells = np.asarray(BOXES)[..., [1, 0, 3, 2]] * np.array([w, h, w, h])
  aligned = np.asarray(
    roi.roi_align(feats["map"].mean(axis=1), jnp.asarray(cells), VALID, 4, aligned=True)
  )  # [B, N, 4, 4, C]
  dense = variables["params"]["inner"]["classifier"]
  want = []
  for b in range(2):
    people = [aligned[b, n] for n in range(3) if VALID[b, n]]
    bins = np.max(people, axis=0)  # [4, 4, C]
    want.append(bins.max(axis=(0, 1)) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]))
  assert got.shape == (2, 5)
  np.testing.assert_allclose(got, np.array(want), rtol=1e-5, atol=1e-5)
  # A whole-frame box in the padding slot is ignored; made valid, it counts.
  moved = BOXES.at[1, 2].set(jnp.array([0.0, 0.0, 1.0, 1.0]))
  same = head.apply(variables, feats, moved, VALID, train=False)["logits"]
  np.testing.assert_allclose(np.asarray(same), got, rtol=1e-6)
  counted = head.apply(variables, feats, moved, jnp.ones_like(VALID), train=False)["logits"]
  assert np.abs(np.asarray(counted)[1] - got[1]).max() > 1e-4
  # No valid box: the head sees zero features (its bias), not -inf.
  empty = head.apply(variables, feats, BOXES, jnp.zeros_like(VALID), train=False)["logits"]
  np.testing.assert_allclose(
    np.asarray(empty), np.broadcast_to(np.asarray(dense["bias"]), (2, 5)), atol=1e-6
  )


def test_box_classifier_builds_from_config_and_backpropagates():
  config = load_config("volleyball", "runlocal,boxes,head=mlar")
  validation.validate(config)
  model = registry.build(config.model, 7)
  video = jnp.zeros((2, 4, 32, 32, 3))
  variables = model.init(jax.random.key(0), video, BOXES, VALID, train=False)

  def loss(params):
    out = model.apply({**variables, "params": params}, video + 0.1, BOXES, VALID, train=False)
    return sum(jnp.sum(v**2) for v in out.values())

  out = model.apply(variables, video, BOXES, VALID, train=False)
  assert all(v.shape == (2, 7) for v in out.values())
  grads = jax.grad(loss)(variables["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
