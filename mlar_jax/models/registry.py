"""Builds a model from `config.model` through name registries."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlar_jax import registry
from mlar_jax.models import heads
from mlar_jax.models import resnet3d

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
    mask = heads.correlation_mask(class_stats["cooccurrence"])
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
    class_stats: training-label statistics ("counts" [A], "cooccurrence"
      [A, A]) for heads that are built from them.
  """
  return VideoClassifier(
      backbone=BACKBONES.get(cfg.backbone)(cfg),
      head=HEADS.get(cfg.head)(cfg, num_classes, class_stats))
