"""Builds a model from `config.model` through name registries."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlar_jax import config_lib
from mlar_jax import registry
from mlar_jax.models import heads
from mlar_jax.models import layers
from mlar_jax.models import resnet3d
from mlar_jax.models import video_resnets as vr

# name -> fn(model_config) -> backbone module mapping [B,T,H,W,3] -> [B,T',H',W',C]
BACKBONES: registry.Registry = registry.Registry("backbone")
# name -> fn(model_config, num_classes, class_stats) -> head module
HEADS: registry.Registry = registry.Registry("head")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(cfg: ml_collections.ConfigDict):
  return DTYPES[cfg.dtype]


@BACKBONES.register("resnet3d_tiny")
def _resnet3d_tiny(cfg):
  """3 stages of one basic block, 16-64 channels: the CPU demo and tests."""
  return resnet3d.ResNet3D(
      stage_sizes=(1, 1, 1), widths=(16, 32, 64), temporal_kernels=(3, 3, 3),
      stem_features=16, stem_kernel=(3, 5, 5), stem_pool=False,
      dtype=_dtype(cfg), frozen_bn=cfg.frozen_bn, conv_impl=cfg.conv_impl)


@BACKBONES.register("resnet3d_small")
def _resnet3d_small(cfg):
  """4 stages of one basic block, 32-256 channels."""
  return resnet3d.ResNet3D(
      stage_sizes=(1, 1, 1, 1), widths=(32, 64, 128, 256),
      temporal_kernels=(1, 1, 3, 3), stem_features=32, stem_kernel=(3, 5, 5),
      stem_pool=False, dtype=_dtype(cfg), frozen_bn=cfg.frozen_bn, conv_impl=cfg.conv_impl)


@BACKBONES.register("r3d_18")
def _r3d_18(cfg):
  """R3D-18 (Tran et al. 2018): basic blocks, 3x3x3 everywhere."""
  return resnet3d.ResNet3D(
      stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
      temporal_kernels=(3, 3, 3, 3), stem_features=64, stem_kernel=(3, 7, 7),
      stem_pool=False, temporal_strides=(1, 2, 2, 2), dtype=_dtype(cfg),
      frozen_bn=cfg.frozen_bn, conv_impl=cfg.conv_impl)


def _common(cfg) -> dict:
  return dict(dtype=_dtype(cfg), frozen_bn=cfg.frozen_bn, conv_impl=cfg.conv_impl)


R50, R101, R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
TINY = (1, 1, 1, 1)
# I3D's temporal kernels (PySlowFast / PyTorchVideo I3D 8x8 R50): 3x1x1 on
# conv_a of every res2 block, every other block of res3/res4, one of res5.
I3D_CONV_A = ((3,), (3, 1), (3, 1), (1, 3))
SLOW_CONV_A = ((1,), (1,), (3,), (3,))
# Non-local blocks after every other block of res3 and res4 (the 5-block
# models of Wang et al. 2018, PySlowFast's I3D_NLN configs).
NL_BLOCKS = ((), (1, 3), (1, 3, 5), ())
NL_TINY = ((), (0,), (0,), ())

# name -> (module class, architecture arguments). PyTorchVideo hub names where
# they exist; `*_tiny` keep each family's structure at widths/depths a CPU
# test or the demo can afford.
_ARCHS = {
    "i3d_r50": (vr.ResNet, dict(depths=R50, stem_kernel=(5, 7, 7), pool1=True,
                                conv_a_t=I3D_CONV_A)),
    "slow_r50": (vr.ResNet, dict(depths=R50, stem_kernel=(1, 7, 7), conv_a_t=SLOW_CONV_A)),
    "nl_r50": (vr.ResNet, dict(depths=R50, stem_kernel=(5, 7, 7), pool1=True,
                               conv_a_t=I3D_CONV_A, nonlocal_blocks=NL_BLOCKS)),
    "nl_r101": (vr.ResNet, dict(depths=R101, stem_kernel=(5, 7, 7), pool1=True,
                                conv_a_t=I3D_CONV_A, nonlocal_blocks=NL_BLOCKS)),
    "slowfast_r50": (vr.SlowFast, dict(depths=R50, fusion_kernel=7)),
    "slowfast_r101": (vr.SlowFast, dict(depths=R101, fusion_kernel=5)),
    # ir-CSN: depthwise 3x3x3 conv_b, temporal stride 2 in res3-res5.
    "csn_r152": (vr.ResNet, dict(depths=R152, stem_kernel=(3, 7, 7), conv_a_t=((1,),) * 4,
                                 conv_b_t=3, temporal_strides=(1, 2, 2, 2), stride_on_b=True,
                                 depthwise=True)),
    # X3D-XS/S/M share the network; they differ in input (4x160, 13x160,
    # 16x224 frames x crop: config.data).
    "x3d_xs": (vr.X3D, dict(width_factor=2.0, depth_factor=2.2)),
    "x3d_s": (vr.X3D, dict(width_factor=2.0, depth_factor=2.2)),
    "x3d_m": (vr.X3D, dict(width_factor=2.0, depth_factor=2.2)),
    "x3d_l": (vr.X3D, dict(width_factor=2.0, depth_factor=5.0)),
    # TSM: 2D ResNet-50 with the residual shift; 8 segments = 8 input frames.
    "tsm_r50": (vr.ResNet, dict(depths=R50, stem_kernel=(1, 7, 7), conv_a_t=((1,),) * 4,
                                shift_div=8)),
    "i3d_tiny": (vr.ResNet, dict(depths=TINY, stem_width=8, stem_kernel=(5, 7, 7),
                                 pool1=True, conv_a_t=I3D_CONV_A)),
    "nl_tiny": (vr.ResNet, dict(depths=TINY, stem_width=8, stem_kernel=(5, 7, 7),
                                conv_a_t=I3D_CONV_A, nonlocal_blocks=NL_TINY)),
    "slowfast_tiny": (vr.SlowFast, dict(depths=TINY, stem_width=16, beta_inv=4)),
    "csn_tiny": (vr.ResNet, dict(depths=TINY, stem_width=8, stem_kernel=(3, 7, 7),
                                 conv_a_t=((1,),) * 4, conv_b_t=3,
                                 temporal_strides=(1, 2, 2, 2), stride_on_b=True,
                                 depthwise=True)),
    "x3d_tiny": (vr.X3D, dict(width_factor=1.0, depth_factor=1.0, stem_width=8,
                              head_width=256)),
    "tsm_tiny": (vr.ResNet, dict(depths=TINY, stem_width=8, conv_a_t=((1,),) * 4,
                                 shift_div=8)),
}


def _register_arch(name: str) -> None:
  cls, kwargs = _ARCHS[name]
  BACKBONES.register(name)(lambda cfg: cls(**kwargs, **_common(cfg)))


for _name in _ARCHS:
  _register_arch(_name)


@HEADS.register("linear")
def _linear(cfg, num_classes, class_stats):
  del class_stats
  return heads.LinearHead(num_classes, dropout_rate=cfg.dropout_rate)


@HEADS.register("mlar")
def _mlar(cfg, num_classes, class_stats):
  """The MLAR head; its correlation mask comes from the training labels."""
  m = cfg.mlar
  mask = None
  if class_stats is not None:
    mask = heads.correlation_mask(class_stats.cooccurrence)
  return heads.MLARHead(
      num_classes, num_observations=m.num_observations, groups=m.groups,
      features=m.features, use_activity_specific=m.use_activity_specific,
      use_correlation=m.use_correlation, dropout_rate=cfg.dropout_rate, mask=mask)


class VideoClassifier(nn.Module):
  """Backbone then head: [B, T, H, W, 3] -> dict of [B, A] logits."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, video: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    return self.head(self.backbone(video, train=train), train=train)


def build_model(cfg: ml_collections.ConfigDict, num_classes: int,
                class_stats: dict[str, np.ndarray] | None = None) -> VideoClassifier:
  """The model named by `cfg.backbone` and `cfg.head`.

  Args:
    cfg: `config.model`.
    num_classes: activities A.
    class_stats: training-label statistics (`data.base.ClassStats`: counts [A], cooccurrence
      [A, A]) for heads that are built from them.
  """
  return VideoClassifier(
      backbone=BACKBONES.get(cfg.backbone)(cfg),
      head=HEADS.get(cfg.head)(cfg, num_classes, class_stats))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.model`: registered backbone and head, dtype, conv path, head sizes."""
  config_lib.check_choice(config, "model.backbone", BACKBONES.names())
  config_lib.check_choice(config, "model.head", HEADS.names())
  config_lib.check_choice(config, "model.dtype", DTYPES)
  config_lib.check_choice(config, "model.conv_impl", layers.CONV_IMPLS)
  config_lib.check_positive(config, "model.mlar.num_observations", "model.mlar.groups",
                            "model.mlar.features")
  m = config.model.mlar
  if m.features % m.groups:
    config_lib.fail("model.mlar.features", m.features,
                    f"must be divisible by model.mlar.groups={m.groups}")
  if not 0.0 <= config.model.dropout_rate < 1.0:
    config_lib.fail("model.dropout_rate", config.model.dropout_rate, "must be in [0, 1)")
