"""The backbones of the papers, on channels-last video [B, T, H, W, 3].

  * `ResNet`: I3D, Slow and C2D ResNets (PyTorchVideo's `create_resnet`),
    ir-CSN (`create_csn`: depthwise 3x3x3 in every bottleneck), non-local
    I3D (embedded-Gaussian blocks after chosen residual blocks, Wang et al.
    2018), TSM (2D ResNet with a temporal shift in every residual branch,
    Lin et al. 2019) and, with `BasicBlock`, R3D (Tran et al. 2018,
    torchvision's `r3d_18`) and the small 3D ResNets of the CPU demo.
  * `SlowFast`: two pathways with time-strided lateral convolutions from
    Fast to Slow (Feichtenhofer et al. 2019, PyTorchVideo's `create_slowfast`).
  * `X3D`: expanded 2+1D stem, depthwise bottlenecks with squeeze-excitation
    and swish, conv5 and the 2048-d projection (Feichtenhofer 2020).

Each returns `{"map": [B, T', H', W', C], "pooled": [B, D]}`: the last
feature map (what the MLAR head attends over) and the clip feature a linear
classifier reads (the global mean of the map; X3D adds its projection
"lin5"; SlowFast's map is both pathways fused, the Fast one averaged over
time to the Slow one's length, as its head does).

Every backbone takes `res5_spatial_stride`, the spatial stride of its last
stage (called res5 whatever the number of stages): 2 as published, or 1 for
detection, which doubles the map's height and width (14 x 14 at 224, the
MLAR paper's AVA setting and PySlowFast's AVA configs) with the same
parameters: the stage's first block changes its width anyway, so it has its
projection shortcut at either stride.

The layer arithmetic is PyTorchVideo's: PyTorch padding (`k // 2` on both
sides), batch-norm epsilon 1e-5 and momentum 0.1 (flax's 0.9), so imported
weights (`mlar_jax.tools.convert`) give PyTorch's outputs. Batch statistics in
training are those of the global batch (XLA reduces over every device of a
sharded batch), or frozen with `frozen_bn`.

`remat` (every backbone) recomputes each residual block's activations in
the backward pass instead of storing them (`REMAT_POLICIES`): the same
function, parameters and gradients, for less activation memory and more
FLOPs.

Activations carry logical axis names ("batch", "time", "height", "width",
"channels"); `mlar_jax.sharding` maps them to mesh axes.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax.models import layers

Dtype = Any

# He (MSRA) init on fan-out, PySlowFast's `c2_msra_fill` for convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Common(nn.Module):
  """Attributes every backbone hands all its modules: compute dtype, BN mode,
  conv path, and the convolutions' padding convention and initialiser.

  The ported backbones keep PyTorch's ("torch" padding, He fan-out init), so
  imported weights give PyTorch's outputs; the demo's small ResNets use XLA's
  "SAME" and LeCun-normal init (`layers.Conv3D`'s defaults), which train
  better at 16-64 channels on the embedded data (measured: README, demo).
  """

  dtype: Dtype = jnp.float32
  frozen_bn: bool = False
  conv_impl: str = "auto"
  padding: str = "torch"
  kernel_init: Callable[..., jnp.ndarray] = conv_init

  def shared(self) -> dict[str, Any]:
    """These attributes, for the submodules a backbone builds."""
    return {f: getattr(self, f) for f in _SHARED}

  def conv(self, *args, **kw) -> layers.Conv3D:
    return layers.Conv3D(
      *args,
      padding=self.padding,
      dtype=self.dtype,
      impl=self.conv_impl,
      kernel_init=self.kernel_init,
      **kw,
    )

  def norm(self, train: bool, **kw) -> nn.BatchNorm:
    return nn.BatchNorm(
      use_running_average=not train or self.frozen_bn,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      **kw,
    )

  def shortcut(
    self, x: jnp.ndarray, out: int, strides: tuple[int, int, int], train: bool
  ) -> jnp.ndarray:
    """A residual block's shortcut: x [B, T, H, W, C], or its strided 1x1x1
    projection and BN [B, T', H', W', out] when the block changes the shape."""
    if x.shape[-1] == out and strides == (1, 1, 1):
      return x
    x = self.conv(out, (1, 1, 1), strides, name="shortcut_conv")(x)
    return self.norm(train, name="shortcut_bn")(x)


_SHARED = ("dtype", "frozen_bn", "conv_impl", "padding", "kernel_init")

# config.model.remat -> the `jax.checkpoint` policy of each residual block
# (what its backward pass may keep from the forward one):
#   none:  no checkpoint; every activation is stored (the default).
#   block: nothing inside a block is kept, only its input; the whole block is
#          recomputed in the backward pass.
#   convs: convolution (and matmul) outputs are kept; batch norms, ReLUs and
#          the residual add are recomputed from them. jax's
#          `dots_with_no_batch_dims_saveable`, the transformer policy, keeps
#          no convolution, so for these networks it would equal "block".
REMAT_POLICIES: dict[str, Any] = {
  "none": None,
  "block": jax.checkpoint_policies.nothing_saveable,
  "convs": jax.checkpoint_policies.dots_saveable,
}


def remat_block(block: Any, remat: str) -> Any:
  """`block` (a residual block class, or a partial of one) checkpointed with
  policy `remat` (a `REMAT_POLICIES` name); unchanged for "none".

  The result must be called as `block(...)(x, train)`: `train` is positional
  because `jax.checkpoint` traces keyword arguments, and the Python bool
  that picks batch statistics must stay static (argument 2, counting self).
  The module's name, hence its parameter paths, is the caller's `name=`, so
  the parameter tree is the same with and without remat.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: unknown; choose from {sorted(REMAT_POLICIES)}")
  if remat == "none":
    return block
  wrap = functools.partial(nn.remat, policy=REMAT_POLICIES[remat], static_argnums=(2,))
  if isinstance(block, functools.partial):  # CSN / TSM blocks: keep their options.
    return functools.partial(wrap(block.func), *block.args, **block.keywords)
  return wrap(block)


class _Backbone(_Common):
  """A whole network: the shared attributes plus `remat`, the checkpoint
  policy of its residual blocks (`REMAT_POLICIES`)."""

  remat: str = "none"

  def rematted(self, cls: Any) -> Any:
    """`cls` with this backbone's remat policy; call it as `(...)(x, train)`."""
    return remat_block(cls, self.remat)


def temporal_shift(x: jnp.ndarray, fold_div: int) -> jnp.ndarray:
  """TSM's shift: channels [0, C/d) move one step back in time (frame t sees
  t+1), [C/d, 2C/d) one step forward (t sees t-1), the rest stay; the ends
  are zero-filled. [B, T, H, W, C] -> same."""
  fold = x.shape[-1] // fold_div
  back = jnp.pad(x[:, 1:, ..., :fold], ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))
  fwd = jnp.pad(x[:, :-1, ..., fold : 2 * fold], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
  return jnp.concatenate([back, fwd, x[..., 2 * fold :]], axis=-1)


class Stem(_Common):
  """Conv (kt x 7 x 7, spatial stride 2), BN, ReLU, optional 1x3x3 max pool."""

  features: int = 64
  kernel: tuple[int, int, int] = (1, 7, 7)
  pool: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = self.conv(self.features, self.kernel, (1, 2, 2), name="conv")(x)
    x = nn.relu(self.norm(train, name="bn")(x))
    if self.pool:
      x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding=((0, 0), (1, 1), (1, 1)))
    return x


class Bottleneck(_Common):
  """conv_a (kt x 1 x 1) -> conv_b (kb x 3 x 3, spatial stride) -> conv_c (1x1x1).

  conv_a and conv_b have `width` channels, conv_c `width * expansion`. The
  temporal stride sits on conv_a (Slow, SlowFast) or on conv_b (CSN); the
  shortcut is a strided 1x1x1 projection when the shape changes.
  `depthwise` makes conv_b channel-separated (ir-CSN); `shift_div` > 0 shifts
  the residual branch's input in time first (TSM).
  """

  width: int = 64
  conv_a_t: int = 1
  conv_b_t: int = 1
  spatial_stride: int = 1
  temporal_stride: int = 1
  stride_on_b: bool = False
  depthwise: bool = False
  shift_div: int = 0
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Args: x: [B, T, H, W, C]. Returns [B, T / st, H / s, W / s, width * expansion]."""
    st, s, out = self.temporal_stride, self.spatial_stride, self.width * self.expansion
    a_stride = (1, 1, 1) if self.stride_on_b else (st, 1, 1)
    b_stride = (st if self.stride_on_b else 1, s, s)
    y = temporal_shift(x, self.shift_div) if self.shift_div else x
    y = self.conv(self.width, (self.conv_a_t, 1, 1), a_stride, name="conv_a")(y)
    y = nn.relu(self.norm(train, name="bn_a")(y))
    y = self.conv(
      self.width,
      (self.conv_b_t, 3, 3),
      b_stride,
      groups=self.width if self.depthwise else 1,
      name="conv_b",
    )(y)
    y = nn.relu(self.norm(train, name="bn_b")(y))
    y = self.conv(out, (1, 1, 1), name="conv_c")(y)
    # Zero-initialised last scale: each block starts as the identity.
    y = self.norm(train, name="bn_c", scale_init=nn.initializers.zeros)(y)
    return nn.relu(self.shortcut(x, out, (st, s, s), train) + y)


class BasicBlock(_Common):
  """conv_a (kt x 3 x 3, strided) -> conv_b (kt x 3 x 3), both `width`
  channels: the basic block of R3D (torchvision's `r3d_18`). The shortcut is
  a strided 1x1x1 projection when the shape changes.

  Takes the attributes `ResNet` gives every block; `conv_a_t` is the
  temporal kernel of both convolutions.
  """

  width: int = 64
  conv_a_t: int = 3
  spatial_stride: int = 1
  temporal_stride: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Args: x: [B, T, H, W, C]. Returns [B, T / st, H / s, W / s, width]."""
    st, s = self.temporal_stride, self.spatial_stride
    kernel = (self.conv_a_t, 3, 3)
    y = self.conv(self.width, kernel, (st, s, s), name="conv_a")(x)
    y = nn.relu(self.norm(train, name="bn_a")(y))
    y = self.conv(self.width, kernel, name="conv_b")(y)
    # Zero-initialised last scale: each block starts as the identity.
    y = self.norm(train, name="bn_b", scale_init=nn.initializers.zeros)(y)
    return nn.relu(self.shortcut(x, self.width, (st, s, s), train) + y)


class NonLocal(_Common):
  """Embedded-Gaussian non-local block (Wang et al. 2018, eq. 3 with the
  softmax instantiation), with PySlowFast's choices: theta/phi/g 1x1x1 convs
  with bias to C/2, a 1x2x2 max pool on phi and g, similarities scaled by
  (C/2)^-0.5, output conv and a zero-initialised BN, added to the input.
  """

  pool: tuple[int, int, int] = (1, 2, 2)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    b, t, h, w, c = x.shape
    inner = c // 2
    conv = lambda name: self.conv(inner, (1, 1, 1), use_bias=True, name=name)
    theta = conv("theta")(x).reshape(b, -1, inner)
    pooled = (
      nn.max_pool(x, self.pool, self.pool, padding="VALID") if any(p > 1 for p in self.pool) else x
    )
    phi = conv("phi")(pooled).reshape(b, -1, inner)
    g = conv("g")(pooled).reshape(b, -1, inner)
    attn = jnp.einsum("bqc,bkc->bqk", theta.astype(jnp.float32), phi.astype(jnp.float32))
    attn = nn.softmax(attn * inner**-0.5, axis=-1).astype(self.dtype)
    y = jnp.einsum("bqk,bkc->bqc", attn, g).reshape(b, t, h, w, inner)
    y = self.conv(c, (1, 1, 1), use_bias=True, name="out")(y)
    return x + self.norm(train, name="bn", scale_init=nn.initializers.zeros)(y)


def stage_stride(stage: int, num_stages: int, res5_spatial_stride: int, first: int = 1) -> int:
  """The spatial stride of a stage's first block: `first` for stage 0 (1
  after a strided stem), 2 for the middle stages, `res5_spatial_stride` for
  the last one."""
  if stage == num_stages - 1:
    return res5_spatial_stride
  return first if stage == 0 else 2


def _cycle(kernels: Sequence[int], depth: int) -> list[int]:
  """PyTorchVideo's per-block temporal kernels: the list repeated to `depth`."""
  return (list(kernels) * depth)[:depth]


class ResNet(_Backbone):
  """I3D / Slow / C2D / non-local / CSN / TSM / R3D ResNets.

  Attributes:
    block: the residual block, `Bottleneck` or `BasicBlock`, or a partial of
      one fixing its own options (CSN's depthwise conv_b, TSM's shift). It
      is built with width, conv_a_t, spatial_stride and temporal_stride and
      called as `(x, train)` (positional `train`: see `remat_block`).
    depths: blocks per stage (res2, res3, ...; any number of stages):
      (3, 4, 6, 3) for R50, (3, 4, 23, 3) for R101, (3, 8, 36, 3) for R152,
      (2, 2, 2, 2) for R3D-18.
    conv_a_t: per stage, the temporal kernel sizes of conv_a, cycled over the
      stage's blocks (I3D: ((3,), (3, 1), (3, 1), (1, 3))).
    stem_width: stem channels; stage i's blocks have width stem_width * 2^i
      (a bottleneck outputs 4x its width, a basic block its width).
    stem_kernel: (t, h, w) of the stem convolution.
    stem_pool: 1x3x3 max pool after the stem.
    pool1: 2x1x1 temporal max pool after res2 (I3D).
    temporal_strides: per stage, the first block's temporal stride (CSN,
      R3D: (1, 2, 2, 2)); empty for none.
    nonlocal_blocks: per stage, the block indices after which a non-local
      block is inserted; empty for none.
    res5_spatial_stride: the last stage's spatial stride, 2 or 1.
  """

  block: Any = Bottleneck
  depths: Sequence[int] = (3, 4, 6, 3)
  conv_a_t: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,))
  stem_width: int = 64
  stem_kernel: tuple[int, int, int] = (1, 7, 7)
  stem_pool: bool = True
  pool1: bool = False
  temporal_strides: Sequence[int] = ()
  nonlocal_blocks: Sequence[Sequence[int]] = ()
  res5_spatial_stride: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> layers.Features:
    """Args: x: [B, T, H, W, 3]. Returns {"map": [B, T', H', W', C], "pooled": [B, C]}:
    H' = H / 2^(stages + 1) with the stem pool, H / 2^stages without (twice
    that with res5_spatial_stride=1)."""
    common = self.shared()
    x = Stem(
      features=self.stem_width, kernel=self.stem_kernel, pool=self.stem_pool, name="stem", **common
    )(x.astype(self.dtype), train=train)
    width = self.stem_width
    for i, depth in enumerate(self.depths):
      nonlocal_after = self.nonlocal_blocks[i] if self.nonlocal_blocks else ()
      for j, kt in enumerate(_cycle(self.conv_a_t[i], depth)):
        first = j == 0
        x = self.rematted(self.block)(
          width=width,
          conv_a_t=kt,
          spatial_stride=(
            stage_stride(i, len(self.depths), self.res5_spatial_stride) if first else 1
          ),
          temporal_stride=self.temporal_strides[i] if first and self.temporal_strides else 1,
          name=f"res{i + 2}_block{j}",
          **common,
        )(x, train)
        if j in nonlocal_after:
          x = self.rematted(NonLocal)(name=f"res{i + 2}_nonlocal{j}", **common)(x, train)
      if i == 0 and self.pool1:
        x = nn.max_pool(x, (2, 1, 1), (2, 1, 1), padding="VALID")
      width *= 2
    return layers.features(x)


def slow_indices(num_frames: int, alpha: int) -> np.ndarray:
  """The Slow pathway's frames of a Fast clip: PySlowFast's PackPathway,
  `linspace(0, T - 1, T // alpha)` truncated to integers."""
  return np.linspace(0, num_frames - 1, num_frames // alpha).astype(np.int64)


class SlowFast(_Backbone):
  """SlowFast ResNet: Slow (T/alpha frames, full width) and Fast (T frames,
  1/beta_inv width) pathways, fused after the stem and res2-res4 by a
  time-strided (k x 1 x 1, stride alpha) convolution from Fast to Slow
  whose output (2x the Fast channels) is concatenated to Slow.

  Input: the Fast clip [B, T, H, W, 3]; the Slow clip is taken from it
  (`slow_indices`). T must be a multiple of alpha. `res5_spatial_stride`
  applies to both pathways' last stage.
  """

  depths: Sequence[int] = (3, 4, 6, 3)
  alpha: int = 4
  beta_inv: int = 8
  fusion_kernel: int = 7
  fusion_ratio: int = 2
  stem_width: int = 64
  slow_conv_a_t: Sequence[int] = (1, 1, 3, 3)
  fast_conv_a_t: Sequence[int] = (3, 3, 3, 3)
  res5_spatial_stride: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> layers.Features:
    """Args: x: [B, T, H, W, 3]. Returns {"map": [B, T/alpha, H/32, W/32, C], "pooled"}
    (H/16, W/16 with res5_spatial_stride=1)."""
    t = x.shape[1]
    if t % self.alpha:
      raise ValueError(f"SlowFast: clip length {t} is not a multiple of alpha={self.alpha}")
    common = self.shared()
    x = x.astype(self.dtype)
    slow = x[:, slow_indices(t, self.alpha)]
    fast = x
    w, beta = self.stem_width, self.beta_inv
    slow = Stem(features=w, kernel=(1, 7, 7), name="slow_stem", **common)(slow, train=train)
    fast = Stem(features=w // beta, kernel=(5, 7, 7), name="fast_stem", **common)(fast, train=train)
    slow = self._fuse(slow, fast, "fuse_stem", train)
    out = w * 4
    for i, depth in enumerate(self.depths):
      for path, kt, width in (
        ("slow", self.slow_conv_a_t[i], out),
        ("fast", self.fast_conv_a_t[i], out // beta),
      ):
        y = slow if path == "slow" else fast
        for j in range(depth):
          y = self.rematted(Bottleneck)(
            width=width // 4,
            conv_a_t=kt,
            spatial_stride=(
              stage_stride(i, len(self.depths), self.res5_spatial_stride) if j == 0 else 1
            ),
            name=f"{path}_res{i + 2}_block{j}",
            **common,
          )(y, train)
        slow, fast = (y, fast) if path == "slow" else (slow, y)
      if i < len(self.depths) - 1:
        slow = self._fuse(slow, fast, f"fuse_res{i + 2}", train)
      out *= 2
    b, tf, h, w_, c = fast.shape
    fast_avg = fast.reshape(b, slow.shape[1], tf // slow.shape[1], h, w_, c).mean(axis=2)
    return layers.features(jnp.concatenate([slow, fast_avg.astype(slow.dtype)], axis=-1))

  def _fuse(self, slow, fast, name: str, train: bool) -> jnp.ndarray:
    k = self.fusion_kernel
    y = self.conv(
      fast.shape[-1] * self.fusion_ratio, (k, 1, 1), (self.alpha, 1, 1), name=f"{name}_conv"
    )(fast)
    y = nn.relu(self.norm(train, name=f"{name}_bn")(y))
    return jnp.concatenate([slow, y], axis=-1)


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
  """X3D's channel rounding (PyTorchVideo `round_width`)."""
  width *= multiplier
  out = max(min_width, int(width + divisor / 2) // divisor * divisor)
  return int(out + divisor if out < 0.9 * width else out)


class X3DBlock(_Common):
  """1x1x1 -> depthwise 3x3x3 (strided) -> BN -> [SE] -> swish -> 1x1x1."""

  inner: int = 54
  out: int = 24
  stride: int = 1
  se_ratio: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    s = (1, self.stride, self.stride)
    y = self.conv(self.inner, (1, 1, 1), name="conv_a")(x)
    y = nn.relu(self.norm(train, name="bn_a")(y))
    y = self.conv(self.inner, (3, 3, 3), s, groups=self.inner, name="conv_b")(y)
    y = self.norm(train, name="bn_b")(y)
    if self.se_ratio:
      se = jnp.mean(y, axis=(1, 2, 3), keepdims=True)
      se = nn.relu(
        nn.Dense(round_width(self.inner, self.se_ratio), dtype=self.dtype, name="se_reduce")(se)
      )
      y = y * nn.sigmoid(nn.Dense(self.inner, dtype=self.dtype, name="se_expand")(se))
    y = nn.swish(y)
    y = self.conv(self.out, (1, 1, 1), name="conv_c")(y)
    y = self.norm(train, name="bn_c", scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.out or self.stride != 1:
      widen = x.shape[-1] != self.out
      x = self.conv(self.out, (1, 1, 1), s, name="shortcut_conv")(x)
      if widen:  # As in the X3D reference code, a stride-only shortcut has no BN.
        x = self.norm(train, name="shortcut_bn")(x)
    return nn.relu(x + y)


class X3D(_Backbone):
  """X3D (Feichtenhofer 2020) from the expansion factors of its variants.

  Attributes:
    width_factor: gamma_w (2.0 for XS/S/M/L).
    depth_factor: gamma_d (2.2 for XS/S/M, 5.0 for L).
    bottleneck_factor: gamma_b, inner width / output width (2.25).
    stem_width: channels before width expansion (12 -> 24).
    se_ratio: squeeze-excitation reduction on every other block.
    head_width: lin5 features (2048).
    res5_spatial_stride: the last stage's spatial stride, 2 or 1.
  """

  width_factor: float = 2.0
  depth_factor: float = 2.2
  bottleneck_factor: float = 2.25
  stem_width: int = 12
  se_ratio: float = 0.0625
  head_width: int = 2048
  base_depths: Sequence[int] = (1, 2, 5, 3)
  res5_spatial_stride: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> layers.Features:
    """Args: x: [B, T, H, W, 3]. Returns {"map": [B, T, H/32, W/32, C5], "pooled": [B, 2048]}
    (H/16, W/16 with res5_spatial_stride=1)."""
    common = self.shared()
    width = round_width(self.stem_width, self.width_factor)
    x = self.conv(width, (1, 3, 3), (1, 2, 2), name="stem_conv_xy")(x.astype(self.dtype))
    x = self.conv(width, (5, 1, 1), groups=width, name="stem_conv_t")(x)
    x = nn.relu(self.norm(train, name="stem_bn")(x))
    dim, inner = self.stem_width, None
    for i, base in enumerate(self.base_depths):
      if i:
        dim = round_width(dim, 2.0)
      out = round_width(dim, self.width_factor)
      inner = int(self.bottleneck_factor * out)
      for j in range(int(math.ceil(self.depth_factor * base))):
        x = self.rematted(X3DBlock)(
          inner=inner,
          out=out,
          stride=(
            stage_stride(i, len(self.base_depths), self.res5_spatial_stride, first=2)
            if j == 0
            else 1
          ),
          se_ratio=self.se_ratio if j % 2 == 0 else 0.0,
          name=f"res{i + 2}_block{j}",
          **common,
        )(x, train)
    x = self.conv(inner, (1, 1, 1), name="conv5")(x)
    x = nn.relu(self.norm(train, name="conv5_bn")(x))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    pooled = nn.relu(nn.Dense(self.head_width, use_bias=False, name="lin5")(pooled))
    return layers.features(x, pooled)
