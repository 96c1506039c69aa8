"""Layers shared by the backbones."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# What every backbone returns: {"map": [B, T, H, W, C], "pooled": [B, D]}.
Features = dict
# Logical axis names of a feature map; `mlar_jax.sharding` maps them to mesh axes.
MAP_AXES = ("batch", "time", "height", "width", "channels")


def features(fmap: jnp.ndarray, pooled: jnp.ndarray | None = None) -> Features:
  """A backbone's output: the last feature map (logically constrained) and the
  clip feature a linear classifier reads (default: its float32 global mean)."""
  fmap = nn.with_logical_constraint(fmap, MAP_AXES)
  if pooled is None:
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2, 3))
  return {"map": fmap, "pooled": pooled}


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(out_size, pad_lo, pad_hi) of XLA's SAME padding along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, total // 2, total - total // 2


def _torch_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(out_size, pad_lo, pad_hi) of PyTorch's `padding=kernel // 2` on both sides."""
  p = kernel // 2
  return (size + 2 * p - kernel) // stride + 1, p, p


PADDINGS = {"SAME": _same_pads, "torch": _torch_pads}
# `Conv3D.impl` (`config.model.conv_impl`).
CONV_IMPLS = ("auto", "native", "folded")


# Conv1D "auto" on CPU: a layer with fewer output positions than this runs
# folded. XLA:CPU's convolution is pathological on SoundNet's short deep
# layers (conv7, 2 positions of 4 x 512 -> 1024: 338 ms forward against
# 1.0 ms as a matmul, batch 32) and faster on its long shallow ones (conv1,
# 14700 positions: 10.7 against 120 ms); measured in benchmarks/README.md.
FOLD_BELOW = 64


class Conv1D(nn.Module):
  """A 1D convolution, [B, L, Cin] -> [B, L', Cout], with explicit padding.

  Parameters are `flax.linen.Conv`'s ("kernel" [k, Cin, Cout] from
  lecun_normal, "bias" [Cout] from zeros), so checkpoints and initial values
  do not depend on the implementation.

  Implementations (`config.model.conv_impl`, as `Conv3D`):
    * "native": `lax.conv_general_dilated`.
    * "folded": the k taps stacked on the channel axis, one matmul
      [B, L', k * Cin] x [k * Cin, Cout]. Same result.
    * "auto": on CPU "folded" for layers with fewer than `FOLD_BELOW`
      output positions, else "native".
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  use_bias: bool = True
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, s, (lo, hi) = self.kernel_size, self.stride, self.padding
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    out_len = (x.shape[1] + lo + hi - k) // s + 1
    impl = self.impl
    if impl == "auto":
      cpu = jax.default_backend() == "cpu"
      impl = "folded" if cpu and out_len < FOLD_BELOW else "native"
    if impl == "native":
      y = lax.conv_general_dilated(
        x, kernel, (s,), [(lo, hi)], dimension_numbers=("NWC", "WIO", "NWC")
      )
    elif impl == "folded":
      x = jnp.pad(x, ((0, 0), (lo, hi), (0, 0)))
      last = (out_len - 1) * s + 1
      # taps[b, t, j, c] = x[b, t * s + j, c]
      taps = jnp.stack([x[:, j : j + last : s] for j in range(k)], axis=2)
      y = jnp.einsum("btjc,jco->bto", taps, kernel)
    else:
      raise ValueError(f"Conv1D impl must be one of {CONV_IMPLS}, got {impl!r}")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class Conv3D(nn.Module):
  """A 3D convolution, [B, T, H, W, Cin] -> [B, T', H', W', Cout].

  Parameters are those of `flax.linen.Conv` with a 3D kernel ("kernel"
  [kt, kh, kw, Cin / groups, Cout], optional "bias" [Cout]), so checkpoints do
  not depend on the implementation.

  Padding: "SAME" (XLA's; extra padding at the end for even totals) or
  "torch" (k // 2 on both sides, PyTorch's `padding=k // 2`). The two differ
  for strided even-sized inputs; backbones ported from PyTorch use "torch" so
  that imported weights give PyTorch's numbers.

  `groups` splits the channels into groups with their own filters
  (`feature_group_count`); groups = Cin is a depthwise convolution (CSN, X3D).

  Implementations:
    * "native": one `lax.conv_general_dilated` over (T, H, W) (TPU, GPU).
    * "folded": the kt temporal taps are stacked on the channel axis and one
      2D convolution runs over the B*T' frames. Same result; XLA on CPU runs
      2D convolutions through a far faster path than 3D ones (measured 3-6x
      on the small layers of the CPU demo).
    * "auto": "folded" on CPU, "native" elsewhere.
  """

  features: int
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  use_bias: bool = False
  groups: int = 1
  padding: str = "SAME"
  dtype: Any = jnp.float32
  impl: str = "auto"
  kernel_init: Any = nn.initializers.lecun_normal()

  def _pads(self, shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    if self.padding not in PADDINGS:
      raise ValueError(f"Conv3D padding must be one of {sorted(PADDINGS)}, got {self.padding!r}")
    return [
      PADDINGS[self.padding](n, k, s) for n, k, s in zip(shape, self.kernel_size, self.strides)
    ]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kt, kh, kw = self.kernel_size
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(
        f"Conv3D {self.name}: channels {cin} -> {self.features} are not "
        f"divisible by groups={self.groups}"
      )
    kernel = self.param("kernel", self.kernel_init, (kt, kh, kw, cin // self.groups, self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "folded" if jax.default_backend() == "cpu" else "native"
    if impl == "native":
      y = lax.conv_general_dilated(
        x,
        kernel,
        self.strides,
        [(lo, hi) for _, lo, hi in self._pads(x.shape[1:4])],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=self.groups,
      )
    elif impl == "folded":
      y = self._folded(x, kernel)
    else:
      raise ValueError(f"Conv3D impl must be one of {CONV_IMPLS}, got {impl!r}")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y

  def _folded(self, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    b, t, h, w, cin = x.shape
    (t_out, lo, hi), *spatial = self._pads(x.shape[1:4])
    x = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
    last = (t_out - 1) * st + 1
    # taps[..., c * kt + dt] = x[t * st + dt, c]: one frame per output time.
    # Channel-major, so each channel group's taps stay contiguous for
    # feature_group_count.
    taps = jnp.stack([x[:, dt : dt + last : st] for dt in range(kt)], axis=-1)
    taps = taps.reshape(b * t_out, h, w, cin * kt)
    cg = cin // self.groups
    k2d = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, cg * kt, self.features)
    y = lax.conv_general_dilated(
      taps,
      k2d,
      (sh, sw),
      [(lo, hi) for _, lo, hi in spatial],
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=self.groups,
    )
    return y.reshape(b, t_out, *y.shape[1:])
