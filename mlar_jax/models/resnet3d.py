"""3D ResNets on channels-last video [B, T, H, W, C].

One module covers the family: per stage a block type, a width, a depth and a
temporal kernel size (1 gives an inflated 2D stage as in Slow/I3D early
stages, 3 a full 3D stage). Batch norm statistics are the global batch's:
under `jax.jit` with a batch sharded over devices, XLA reduces the mean and
variance over the whole global batch, so 1 device and 8 devices compute the
same thing.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlar_jax.models import layers

Dtype = Any


class BasicBlock3D(nn.Module):
  """Two 3D convolutions with an identity or projected shortcut."""
  features: int
  strides: tuple[int, int, int]
  temporal_kernel: int
  norm: Any
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv = functools.partial(layers.Conv3D, dtype=self.dtype, impl=self.conv_impl)
    kt = self.temporal_kernel
    y = conv(self.features, (kt, 3, 3), self.strides, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.features, (kt, 3, 3), name="conv2")(y)
    # Zero-initialised last scale: each block starts as the identity.
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.features or self.strides != (1, 1, 1):
      x = conv(self.features, (1, 1, 1), self.strides, name="proj")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class Bottleneck3D(nn.Module):
  """1x1x1 -> kt x3x3 -> 1x1x1 (x4) bottleneck; temporal kernel on the first conv
  as in the Slow/I3D ResNets."""
  features: int
  strides: tuple[int, int, int]
  temporal_kernel: int
  norm: Any
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv = functools.partial(layers.Conv3D, dtype=self.dtype, impl=self.conv_impl)
    out = self.features * self.expansion
    y = conv(self.features, (self.temporal_kernel, 1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.features, (1, 3, 3), self.strides, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = conv(out, (1, 1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != out or self.strides != (1, 1, 1):
      x = conv(out, (1, 1, 1), self.strides, name="proj")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


BLOCKS = {"basic": BasicBlock3D, "bottleneck": Bottleneck3D}


class ResNet3D(nn.Module):
  """A 3D ResNet returning its last feature map and its global mean.

  Attributes:
    stage_sizes: blocks per stage.
    widths: block width per stage (bottleneck output is 4x this).
    temporal_kernels: temporal kernel size per stage.
    block: "basic" or "bottleneck".
    stem_features: channels of the stem convolution.
    stem_kernel: (t, h, w) kernel of the stem.
    stem_pool: whether a 1x3x3 stride-(1,2,2) max pool follows the stem.
    temporal_strides: per-stage temporal stride of the first block.
    dtype: compute dtype (parameters stay float32).
    frozen_bn: use the stored statistics even in training (fine-tuning).
    conv_impl: `layers.Conv3D` implementation ("auto", "native", "folded").
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  temporal_kernels: Sequence[int]
  block: str = "basic"
  stem_features: int = 64
  stem_kernel: tuple[int, int, int] = (3, 7, 7)
  stem_pool: bool = True
  temporal_strides: Sequence[int] | None = None
  dtype: Dtype = jnp.float32
  frozen_bn: bool = False
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> layers.Features:
    """Args: x: [B, T, H, W, 3] normalised frames. Returns {"map": [B, T', H', W', C],
    "pooled": [B, C]}."""
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train or self.frozen_bn,
        momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = layers.Conv3D(self.stem_features, self.stem_kernel, (1, 2, 2),
                      dtype=self.dtype, impl=self.conv_impl, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    if self.stem_pool:
      x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding="SAME")
    block_cls = BLOCKS[self.block]
    t_strides = self.temporal_strides or (1,) * len(self.stage_sizes)
    for i, (depth, width, kt) in enumerate(
        zip(self.stage_sizes, self.widths, self.temporal_kernels)):
      for j in range(depth):
        s = 1 if i == 0 or j > 0 else 2
        strides = (t_strides[i] if j == 0 else 1, s, s)
        x = block_cls(width, strides, kt, norm, self.dtype, self.conv_impl,
                      name=f"stage{i + 1}_block{j + 1}")(x)
    return layers.features(x)
