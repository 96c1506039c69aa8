"""PyTorchVideo reference models for the conversion tests (test-only).

PyTorchVideo's model package imports `torchvision.ops.RoIAlign` for its
detection heads; the CPU torch build here has no matching torchvision, so a
stand-in module provides that name (the classification models never use it).
"""

from __future__ import annotations

import sys
import types

import numpy as np


def import_pytorchvideo():
  """(torch, pytorchvideo.models) or raises ImportError."""
  import torch  # pylint: disable=g-import-not-at-top

  try:
    import torchvision.ops  # noqa: F401  pylint: disable=g-import-not-at-top
  except Exception:  # missing, or built against another torch
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")

    class RoIAlign:  # pylint: disable=too-few-public-methods
      def __init__(self, *args, **kwargs):
        raise NotImplementedError("torchvision stand-in: detection heads are not available")

    ops.RoIAlign = RoIAlign
    tv.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
  import pytorchvideo.models  # noqa: F401  pylint: disable=g-import-not-at-top
  from pytorchvideo.models import csn, resnet, slowfast, x3d  # pylint: disable=g-import-not-at-top

  return torch, types.SimpleNamespace(csn=csn, resnet=resnet, slowfast=slowfast, x3d=x3d)


def build(arch: str, num_classes: int, t: int, size: int):
  """The PyTorchVideo model of `arch` for [t, size, size] clips, its head
  pooling global at that size (as the hub models are at theirs).

  Returns (model, input builder: numpy [B, T, H, W, 3] -> model input).
  """
  torch, ptv = import_pytorchvideo()
  nn = torch.nn
  s = size // 32
  common = dict(model_num_class=num_classes, dropout_rate=0.0)
  to_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
  if arch in ("slow_r50", "i3d_r50"):
    kw = dict(stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(t, s, s))
    if arch == "i3d_r50":  # PyTorchVideo hub i3d_r50
      kw = dict(
        stem_conv_kernel_size=(5, 7, 7),
        stage1_pool=nn.MaxPool3d,
        stage_conv_a_kernel_size=(
          (3, 1, 1),
          [(3, 1, 1), (1, 1, 1)],
          [(3, 1, 1), (1, 1, 1)],
          [(1, 1, 1), (3, 1, 1)],
        ),
        head_pool_kernel_size=(t // 2, s, s),
      )
    return ptv.resnet.create_resnet(model_depth=50, **kw, **common), to_torch
  if arch.startswith("slowfast"):
    from mlar_jax.models import video_resnets  # pylint: disable=g-import-not-at-top

    depth = int(arch.split("_r")[1])
    model = ptv.slowfast.create_slowfast(
      model_depth=depth,
      slowfast_fusion_conv_kernel_size=(7 if depth == 50 else 5, 1, 1),
      head_pool_kernel_sizes=((t // 4, s, s), (t, s, s)),
      **common,
    )
    idx = video_resnets.slow_indices(t, 4)
    return model, lambda x: [to_torch(x[:, idx]), to_torch(x)]
  if arch == "csn_r152":
    return ptv.csn.create_csn(
      model_depth=152, stem_pool=nn.MaxPool3d, head_pool_kernel_size=(t // 8, s, s), **common
    ), to_torch
  if arch.startswith("x3d"):
    depth = 5.0 if arch == "x3d_l" else 2.2
    return ptv.x3d.create_x3d(
      input_clip_length=t, input_crop_size=size, depth_factor=depth, head_activation=None, **common
    ), to_torch
  raise KeyError(arch)


def randomize_(model, seed: int = 0) -> None:
  """Non-trivial values for every weight and batch-norm statistic, so that a
  wrongly mapped tensor shows (fresh BN is the identity, final BNs zero)."""
  import torch  # pylint: disable=g-import-not-at-top

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      u = torch.rand(tensor.shape, generator=gen)
      if name.endswith("running_var"):
        tensor.copy_(0.5 + u)
      elif name.endswith("running_mean") or name.endswith("bias"):
        tensor.copy_(0.2 * (u - 0.5))
      elif tensor.ndim == 1:  # BN scale
        tensor.copy_(0.3 + 0.4 * u)
      else:
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
