"""Layers and models: the CPU conv path equals XLA's 3D convolution."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlar_jax import config_lib
from mlar_jax.models import layers, registry, video_resnets


@pytest.mark.parametrize(
  "kernel,strides,t,groups,padding",
  [
    ((3, 3, 3), (1, 1, 1), 8, 1, "SAME"),
    ((3, 5, 5), (1, 2, 2), 7, 1, "SAME"),
    ((5, 1, 1), (2, 1, 1), 9, 1, "SAME"),
    ((1, 3, 3), (2, 2, 2), 4, 1, "SAME"),
    ((3, 7, 7), (2, 2, 2), 8, 1, "torch"),
    ((3, 3, 3), (1, 2, 2), 6, 6, "torch"),  # depthwise (CSN, X3D)
    ((3, 3, 3), (2, 1, 1), 6, 2, "SAME"),
  ],
)
def test_folded_conv_equals_native(kernel, strides, t, groups, padding):
  x = jax.random.normal(jax.random.key(0), (2, t, 9, 10, 6))
  kw = dict(use_bias=True, groups=groups, padding=padding)
  native = layers.Conv3D(6, kernel, strides, impl="native", **kw)
  folded = layers.Conv3D(6, kernel, strides, impl="folded", **kw)
  params = native.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
  want = native.apply(params, x)
  got = folded.apply(params, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  # The kernel layout is flax.linen.Conv's, so checkpoints interchange, and
  # "torch" padding is PyTorch's padding=k//2.
  pad = "SAME" if padding == "SAME" else [(k // 2, k // 2) for k in kernel]
  flax_conv = nn.Conv(6, kernel, strides, padding=pad, feature_group_count=groups)
  ref = flax_conv.apply(params, x)
  np.testing.assert_allclose(np.asarray(want), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "length,kernel,stride,pad",
  [(40, 8, 2, 4), (4, 4, 2, 2), (3, 4, 2, 2), (17, 5, 1, 0), (9, 8, 2, 0)],
)
def test_folded_conv1d_equals_flax_conv(length, kernel, stride, pad):
  # SoundNet's short layers included (length 3 and 4 with k4 p2, conv6-7).
  x = jax.random.normal(jax.random.key(0), (2, length, 5))
  convs = {
    impl: layers.Conv1D(7, kernel, stride, (pad, pad), impl=impl) for impl in ("native", "folded")
  }
  flax_conv = nn.Conv(7, (kernel,), (stride,), padding=[(pad, pad)])
  params = flax_conv.init(jax.random.key(1), x)
  # The same parameter tree and initial values as flax.linen.Conv.
  assert jax.tree.map(jnp.shape, convs["folded"].init(jax.random.key(1), x)) == jax.tree.map(
    jnp.shape, params
  )
  np.testing.assert_array_equal(
    convs["folded"].init(jax.random.key(1), x)["params"]["kernel"], params["params"]["kernel"]
  )
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
  want = flax_conv.apply(params, x)
  grad_want = jax.grad(lambda p: (flax_conv.apply(p, x) ** 2).sum())(params)
  for impl, conv in convs.items():
    np.testing.assert_allclose(conv.apply(params, x), want, rtol=1e-5, atol=1e-5, err_msg=impl)
    grad = jax.grad(lambda p, conv=conv: (conv.apply(p, x) ** 2).sum())(params)
    jax.tree.map(
      lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4), grad, grad_want
    )


@pytest.mark.parametrize("backbone", registry.BACKBONES.names())
def test_every_backbone_builds_and_maps_video_to_logits(backbone):
  cfg = config_lib.base_config().model
  cfg.backbone = backbone
  model = registry.build_model(cfg, num_classes=5)
  x = jax.ShapeDtypeStruct((2, 8, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros(x.shape), train=False
    )
  )
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape), train=False), variables)
  assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32


@pytest.mark.parametrize("backbone", registry.BACKBONES.names())
def test_res5_spatial_stride_1_doubles_the_map_with_the_same_parameters(backbone):
  x = jnp.zeros((1, 8, 64, 64, 3))
  maps, counts = {}, {}
  for stride in (2, 1):
    cfg = config_lib.base_config().model
    cfg.backbone, cfg.res5_spatial_stride = backbone, stride
    net = registry.build_backbone(cfg)
    variables = jax.eval_shape(partial(net.init, jax.random.key(0), x, train=False))
    out = jax.eval_shape(partial(net.apply, x=x, train=False), variables)
    maps[stride] = out["map"].shape
    counts[stride] = jax.tree.map(lambda p: p.shape, variables)
  (b, t, h, w, c), (b1, t1, h1, w1, c1) = maps[2], maps[1]
  assert (b1, t1, c1) == (b, t, c) and (h1, w1) == (2 * h, 2 * w)
  assert counts[1] == counts[2]  # the same parameter and statistics tree, leaf by leaf


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = config_lib.base_config().model
  cfg.dtype = "bfloat16"
  model = registry.build_model(cfg, num_classes=3)
  x = jnp.ones((1, 4, 16, 16, 3))
  variables = model.init({"params": jax.random.key(0)}, x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert model.apply(variables, x, train=False)["logits"].dtype == jnp.float32


def test_basic_block_starts_as_the_identity_and_projects_when_the_shape_changes():
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 16))
  same = video_resnets.BasicBlock(width=16)
  variables = same.init(jax.random.key(1), x, train=False)
  # Zero-initialised last BN scale: relu(x + 0).
  np.testing.assert_allclose(same.apply(variables, x, train=False), jax.nn.relu(x), atol=1e-6)
  assert "shortcut_conv" not in variables["params"]
  down = video_resnets.BasicBlock(width=32, spatial_stride=2, temporal_stride=2)
  variables = down.init(jax.random.key(1), x, train=False)
  assert down.apply(variables, x, train=False).shape == (2, 2, 4, 4, 32)
  assert variables["params"]["shortcut_conv"]["kernel"].shape == (1, 1, 1, 16, 32)


def test_r3d_18_has_torchvision_r3d_18_parameter_count():
  cfg = config_lib.base_config().model
  cfg.backbone = "r3d_18"
  shapes = jax.eval_shape(
    lambda: registry.build_backbone(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False
    )
  )
  count = sum(p.size for p in jax.tree.leaves(shapes["params"]))
  # torchvision.models.video.r3d_18(): 33,371,472 with its 400-way classifier.
  assert count + 512 * 400 + 400 == 33_371_472
