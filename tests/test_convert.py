"""Backbones against PyTorchVideo's, and weights imported from PyTorch.

Each PyTorchVideo model is built at a small input with its head pooling
global, given random weights and batch-norm statistics, converted, and run
through our model of the same name with a linear head: the logits must agree
to 1e-4 relative error in float32 and the parameter counts exactly.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlar_jax import checkpointing, config_lib
from mlar_jax.models import registry, video_resnets
from mlar_jax.tools import convert

torch = pytest.importorskip("torch")
pytest.importorskip("pytorchvideo")
import ptv_reference  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = 5


def _ours(arch: str, head: str = "linear", num_classes: int = NUM_CLASSES):
  cfg = config_lib.base_config().model
  cfg.backbone, cfg.head, cfg.dropout_rate = arch, head, 0.0
  cfg.mlar.groups = 16  # divides X3D's 432 channels
  return registry.build_model(cfg, num_classes)


def _rel_err(got, want) -> float:
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


# (arch, frames, crop). x3d_s / x3d_m are x3d_xs's network (they differ in
# input), covered by the parameter-count test.
CASES = [
  ("slow_r50", 4, 64),
  ("i3d_r50", 4, 64),
  ("slowfast_r50", 8, 64),
  ("slowfast_r101", 8, 64),
  ("csn_r152", 8, 64),
  ("x3d_xs", 4, 64),
  ("x3d_l", 4, 64),
]


@pytest.mark.parametrize("arch,t,size", CASES)
def test_converted_pytorchvideo_model_gives_the_same_logits(arch, t, size):
  model, to_input = ptv_reference.build(arch, NUM_CLASSES, t, size)
  ptv_reference.randomize_(model, seed=1)
  model.eval()
  x = np.random.RandomState(0).randn(2, t, size, size, 3).astype(np.float32)
  with torch.no_grad():
    want = model(to_input(x)).numpy()
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = convert.convert_state_dict(state, arch, keep_head=True)
  ours = _ours(arch)
  got = jax.jit(lambda v, x: ours.apply(v, x, train=False)["logits"])(
    {"params": variables["params"], **variables["model_state"]}, x
  )
  assert got.shape == want.shape
  assert _rel_err(got, want) < 1e-4
  # Parameter counts, head included, equal PyTorchVideo's.
  assert sum(np.size(p) for p in jax.tree.leaves(variables["params"])) == sum(
    p.numel() for p in model.parameters()
  )


@pytest.mark.parametrize("arch", ["x3d_s", "x3d_m"])
def test_parameter_counts_of_the_other_x3d_sizes(arch):
  model, _ = ptv_reference.build(arch, NUM_CLASSES, 4, 64)
  ours = _ours(arch)
  shapes = jax.eval_shape(
    lambda: ours.init(jax.random.key(0), jnp.zeros((1, 4, 64, 64, 3)), train=False)
  )
  assert sum(np.size(p) for p in jax.tree.leaves(shapes["params"])) == sum(
    p.numel() for p in model.parameters()
  )


def test_nonlocal_block_equals_pytorchvideo():
  from pytorchvideo.layers import nonlocal_net  # pylint: disable=g-import-not-at-top

  c = 16
  ref = nonlocal_net.create_nonlocal(
    dim_in=c, dim_inner=c // 2, pool_size=(1, 2, 2), instantiation="softmax"
  )
  ptv_reference.randomize_(ref, seed=2)
  ref.eval()
  x = np.random.RandomState(1).randn(2, 4, 6, 6, c).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy().transpose(0, 2, 3, 4, 1)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  conv = lambda name: {
    "kernel": sd[f"{name}.weight"]
    .reshape(sd[f"{name}.weight"].shape[:2])
    .T.reshape(1, 1, 1, -1, sd[f"{name}.weight"].shape[0]),
    "bias": sd[f"{name}.bias"],
  }
  params = {
    "theta": conv("conv_theta"),
    "phi": conv("conv_phi"),
    "g": conv("conv_g"),
    "out": conv("conv_out"),
    "bn": {"scale": sd["norm.weight"], "bias": sd["norm.bias"]},
  }
  stats = {"bn": {"mean": sd["norm.running_mean"], "var": sd["norm.running_var"]}}
  got = video_resnets.NonLocal().apply({"params": params, "batch_stats": stats}, x, train=False)
  assert _rel_err(got, want) < 1e-5


def test_temporal_shift_equals_the_tsm_reference_loop():
  x = np.random.RandomState(0).randn(2, 5, 3, 3, 16).astype(np.float32)
  fold = 16 // 8
  want = np.zeros_like(x)  # TSM's reference (Lin et al., ops/temporal_shift.py)
  want[:, :-1, ..., :fold] = x[:, 1:, ..., :fold]
  want[:, 1:, ..., fold : 2 * fold] = x[:, :-1, ..., fold : 2 * fold]
  want[..., 2 * fold :] = x[..., 2 * fold :]
  np.testing.assert_array_equal(np.asarray(video_resnets.temporal_shift(jnp.asarray(x), 8)), want)


# ---------------------------------------------------------------------------
# 2D ResNet-50 (torchvision key names) inflated to I3D and TSM.
# ---------------------------------------------------------------------------


def _torchvision_resnet50_state(seed: int) -> dict[str, np.ndarray]:
  """Random weights and statistics under torchvision's ResNet-50 key names."""
  rng = np.random.RandomState(seed)
  sd = {}

  def conv(name, cout, cin, k):
    sd[f"{name}.weight"] = (rng.randn(cout, cin, k, k) * np.sqrt(2.0 / (cin * k * k))).astype(
      np.float32
    )

  def bn(name, c):
    sd[f"{name}.weight"] = rng.uniform(0.3, 0.7, c).astype(np.float32)
    sd[f"{name}.bias"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
    sd[f"{name}.running_mean"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(0)

  conv("conv1", 64, 3, 7)
  bn("bn1", 64)
  cin = 64
  for layer, depth in enumerate((3, 4, 6, 3), start=1):
    out = 256 * 2 ** (layer - 1)
    for j in range(depth):
      p = f"layer{layer}.{j}"
      conv(f"{p}.conv1", out // 4, cin, 1)
      bn(f"{p}.bn1", out // 4)
      conv(f"{p}.conv2", out // 4, out // 4, 3)
      bn(f"{p}.bn2", out // 4)
      conv(f"{p}.conv3", out, out // 4, 1)
      bn(f"{p}.bn3", out)
      if j == 0:
        conv(f"{p}.downsample.0", out, cin, 1)
        bn(f"{p}.downsample.1", out)
      cin = out
  sd["fc.weight"] = rng.randn(1000, 2048).astype(np.float32) * 0.01
  sd["fc.bias"] = np.zeros(1000, np.float32)
  return sd


def _resnet50_2d_features(sd, image: np.ndarray) -> np.ndarray:
  """torchvision's ResNet-50 forward (eval mode) up to the pooled features,
  written with torch.nn.functional: [N, H, W, 3] -> [N, 2048]."""
  F = torch.nn.functional
  w = lambda k: torch.from_numpy(sd[k])

  def bn(x, name):
    return F.batch_norm(
      x,
      w(f"{name}.running_mean"),
      w(f"{name}.running_var"),
      w(f"{name}.weight"),
      w(f"{name}.bias"),
      False,
      0.0,
      1e-5,
    )

  x = torch.from_numpy(image.transpose(0, 3, 1, 2))
  x = F.relu(bn(F.conv2d(x, w("conv1.weight"), stride=2, padding=3), "bn1"))
  x = F.max_pool2d(x, 3, 2, 1)
  for layer, depth in enumerate((3, 4, 6, 3), start=1):
    for j in range(depth):
      p, s = f"layer{layer}.{j}", 2 if j == 0 and layer > 1 else 1
      y = F.relu(bn(F.conv2d(x, w(f"{p}.conv1.weight")), f"{p}.bn1"))
      y = F.relu(bn(F.conv2d(y, w(f"{p}.conv2.weight"), stride=s, padding=1), f"{p}.bn2"))
      y = bn(F.conv2d(y, w(f"{p}.conv3.weight")), f"{p}.bn3")
      if j == 0:
        x = bn(F.conv2d(x, w(f"{p}.downsample.0.weight"), stride=s), f"{p}.downsample.1")
      x = F.relu(x + y)
  return x.mean(dim=(2, 3)).numpy()


@pytest.mark.parametrize("arch,t", [("i3d_r50", 48), ("tsm_r50", 40)])
def test_inflated_2d_resnet_on_a_static_clip_gives_the_2d_features(arch, t):
  """A static clip through the inflated network gives the 2D network's
  features of its frame at every time position whose receptive field stays
  inside the clip (at the ends, the temporal zero padding of the 3D kernels
  or TSM's zero-filled shift sees beyond the clip, as in any 3D network)."""
  sd = _torchvision_resnet50_state(seed=3)
  frame = np.random.RandomState(4).randn(1, 32, 32, 3).astype(np.float32)
  want = _resnet50_2d_features(sd, frame)[0]
  variables = convert.convert_state_dict(sd, arch, source="auto")
  cfg = config_lib.base_config().model
  cfg.backbone = arch
  backbone = registry.build_backbone(cfg)
  clip = np.repeat(frame[:, None], t, axis=1)
  fmap = backbone.apply(
    {
      "params": variables["params"]["backbone"],
      "batch_stats": variables["model_state"]["batch_stats"]["backbone"],
    },
    clip,
    train=False,
  )["map"]
  per_time = np.asarray(fmap.mean(axis=(2, 3)))[0]  # [T', 2048]
  mid = per_time.shape[0] // 2
  assert _rel_err(per_time[mid], want) < 1e-4
  # ...and the ends do differ, so the check above is not vacuous.
  assert _rel_err(per_time[0], want) > 1e-3


def test_inflation_into_nonlocal_keeps_the_new_blocks_initialised():
  sd = _torchvision_resnet50_state(seed=5)
  variables = convert.convert_state_dict(sd, "nl_r50")
  nl = variables["params"]["backbone"]["res3_nonlocal1"]
  assert nl["theta"]["kernel"].shape == (1, 1, 1, 512, 256)
  np.testing.assert_array_equal(nl["bn"]["scale"], 0.0)  # zero-init: the identity
  kernel = variables["params"]["backbone"]["stem"]["conv"]["kernel"]  # [5, 7, 7, 3, 64]
  np.testing.assert_allclose(
    kernel.sum(0), sd["conv1.weight"].transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-6
  )


def test_mismatched_checkpoint_lists_keys_and_shapes():
  sd = _torchvision_resnet50_state(seed=6)
  sd["layer9.0.conv1.weight"] = np.zeros((4, 4, 1, 1), np.float32)
  sd["layer1.0.conv1.weight"] = np.zeros((65, 64, 1, 1), np.float32)
  del sd["layer4.2.bn3.running_var"]
  with pytest.raises(ValueError) as err:
    convert.convert_state_dict(sd, "i3d_r50")
  msg = str(err.value)
  assert "layer9.0.conv1.weight: (4, 4, 1, 1)" in msg
  assert "layer1.0.conv1.weight: (65, 64, 1, 1)" in msg and "needs (3, 1, 1, 64, 64)" in msg
  assert "batch_stats/backbone/res5_block2/bn_c/var: (2048,)" in msg
  assert "res2_block0/conv_a/kernel: (3" not in msg  # reported once, as a mismatch
  with pytest.raises(ValueError, match="convert to"):
    convert.convert_state_dict(sd, "slowfast_r50")


def test_convert_command_writes_a_checkpoint_that_init_from_loads(tmp_path):
  """torch.save file -> `python -m mlar_jax.tools.convert` -> a model with an MLAR
  head of another class count, merged the way `config.init_from` does."""
  model, _ = ptv_reference.build("x3d_xs", 400, 4, 64)
  ptv_reference.randomize_(model, seed=7)
  path = tmp_path / "X3D_XS.pyth"
  torch.save(
    {"model_state": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 299}, path
  )
  out = tmp_path / "x3d_xs_converted"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "mlar_jax.tools.convert",
      "--arch=x3d_xs",
      f"--checkpoint={path}",
      f"--out={out}",
    ],
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  loaded = checkpointing.load_variables(str(out))
  ours = _ours("x3d_xs", head="mlar", num_classes=7)
  fresh = jax.eval_shape(
    lambda: ours.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, 4, 64, 64, 3)),
      train=False,
    )
  )
  params, skipped = checkpointing.merge_variables(fresh["params"], loaded["params"], "head/")
  assert skipped and all(s.startswith("head/") for s in skipped)
  np.testing.assert_allclose(
    params["backbone"]["conv5"]["kernel"][0, 0, 0],
    model.state_dict()["blocks.5.pool.pre_conv.weight"].numpy()[:, :, 0, 0, 0].T,
  )
  stats, _ = checkpointing.merge_variables(
    {"batch_stats": fresh["batch_stats"]}, loaded["model_state"], "head/"
  )
  np.testing.assert_allclose(
    stats["batch_stats"]["backbone"]["stem_bn"]["var"],
    model.state_dict()["blocks.0.norm.running_var"].numpy(),
  )


class _LoopRoIAlign(torch.nn.Module):
  """torchvision's RoIAlign for PyTorchVideo's detection head, computed by
  the plain loop of test_roi (torchvision is not installed here)."""

  def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
    super().__init__()
    self.size, self.scale, self.ratio, self.aligned = (
      output_size,
      spatial_scale,
      sampling_ratio,
      aligned,
    )

  def forward(self, x, rois):
    from test_roi import reference_roi_align  # pylint: disable=g-import-not-at-top

    feats = x.numpy().transpose(0, 2, 3, 1)  # [B, H, W, C]
    out = []
    for r in rois.numpy():
      one = reference_roi_align(
        feats[int(r[0])], r[None, 1:], *self.size, self.scale, self.ratio, self.aligned
      )
      out.append(one[0].transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def test_pytorchvideo_ava_detector_converts_to_our_detector():
  """PyTorchVideo's create_slowfast_with_roi_head, rebuilt from its parts with
  a loop RoIAlign: its checkpoint converts (task detected from the keys) to
  our detector's tree, and its ROI head on its backbone's features gives our
  ROIHead's scores with the converted classifier."""
  _, ptv = ptv_reference.import_pytorchvideo()
  from pytorchvideo.models import head as ptv_head  # pylint: disable=g-import-not-at-top
  from pytorchvideo.models import net as ptv_net  # pylint: disable=g-import-not-at-top

  t, size, classes = 8, 64, 6
  backbone = ptv.slowfast.create_slowfast(
    model_depth=50,
    slowfast_fusion_conv_kernel_size=(7, 1, 1),
    stage_spatial_strides=((1, 2, 2, 1), (1, 2, 2, 1)),  # res5 stride 1, as AVA
    head=None,
    head_pool=torch.nn.AvgPool3d,
    head_pool_kernel_sizes=((t // 4, 1, 1), (t, 1, 1)),
    model_num_class=classes,
    dropout_rate=0.0,
  )
  roi_head = ptv_head.create_res_roi_pooling_head(
    in_features=2048 + 256,
    out_features=classes,
    pool=None,
    output_size=(1, 1, 1),
    dropout_rate=0.0,
    activation=torch.nn.Sigmoid,
    output_with_global_average=False,
    resolution=(7, 7),
    spatial_scale=1.0 / 16,
    sampling_ratio=0,
    roi=_LoopRoIAlign,
  )
  model = ptv_net.DetectionBBoxNetwork(backbone, roi_head)
  ptv_reference.randomize_(model, seed=2)
  model.eval()
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert any(k.startswith("detection_head.proj") for k in state)
  variables = convert.convert_state_dict(state, "slowfast_r50", keep_head=True)

  cfg = config_lib.base_config().model
  cfg.update(backbone="slowfast_r50", task="detection", dropout_rate=0.0, res5_spatial_stride=1)
  cfg.roi.update(output_size=7, sampling_ratio=0, aligned=False)
  ours = registry.build(cfg, classes)
  boxes = jnp.array([[[0.1, 0.2, 0.8, 0.6], [0.3, 0.0, 0.9, 0.5]]])  # [y1, x1, y2, x2]
  valid = jnp.ones((1, 2), bool)
  shapes = jax.eval_shape(
    lambda: ours.init(
      jax.random.key(0), jnp.zeros((1, t, size, size, 3)), boxes, valid, train=False
    )
  )
  flat = lambda tree: {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  assert flat(variables["params"]) == flat(shapes["params"])
  assert flat(variables["model_state"]["batch_stats"]) == flat(shapes["batch_stats"])

  # The head: PyTorchVideo's on its backbone's pooled features, ours on the
  # same features as a one-frame map.
  x = np.random.RandomState(0).randn(1, t, size, size, 3).astype(np.float32)
  idx = video_resnets.slow_indices(t, 4)
  to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 4, 1, 2, 3)))
  pixels = np.asarray(boxes[0])[:, [1, 0, 3, 2]] * size  # (x1, y1, x2, y2) input pixels
  rois = torch.from_numpy(np.concatenate([np.zeros((2, 1)), pixels], 1).astype(np.float32))
  with torch.no_grad():
    feats = backbone([to_torch(x[:, idx]), to_torch(x)])  # [1, C, 1, H/16, W/16]
    want = model.detection_head(feats, rois).reshape(2, classes).numpy()
  fmap = jnp.asarray(feats.numpy().transpose(0, 2, 3, 4, 1))
  head_vars = {"params": variables["params"]["head"]}
  got = ours.head.apply(
    head_vars, {"map": fmap, "pooled": fmap.mean(axis=(1, 2, 3))}, boxes, valid, train=False
  )["logits"]
  np.testing.assert_allclose(jax.nn.sigmoid(np.asarray(got)[0]), want, rtol=1e-4, atol=1e-5)
