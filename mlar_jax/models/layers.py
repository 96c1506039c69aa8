"""Layers shared by the backbones."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(out_size, pad_lo, pad_hi) of XLA's SAME padding along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, total // 2, total - total // 2


class Conv3D(nn.Module):
  """A 3D convolution, [B, T, H, W, Cin] -> [B, T', H', W', Cout], SAME padding.

  Parameters are those of `flax.linen.Conv` with a 3D kernel ("kernel"
  [kt, kh, kw, Cin, Cout], optional "bias" [Cout]), so checkpoints do not
  depend on the implementation:
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
  dtype: Any = jnp.float32
  impl: str = "auto"
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kt, kh, kw = self.kernel_size
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kt, kh, kw, cin, self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "folded" if jax.default_backend() == "cpu" else "native"
    if impl == "native":
      y = lax.conv_general_dilated(
          x, kernel, self.strides, "SAME",
          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    elif impl == "folded":
      y = self._folded(x, kernel)
    else:
      raise ValueError(f"Conv3D impl must be auto|native|folded, got {impl!r}")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y

  def _folded(self, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    b, t, h, w, cin = x.shape
    t_out, lo, hi = _same_pads(t, kt, st)
    x = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
    last = (t_out - 1) * st + 1
    # taps[..., dt * cin + c] = x[t * st + dt, c]: one frame per output time.
    taps = jnp.concatenate([x[:, dt:dt + last:st] for dt in range(kt)], axis=-1)
    taps = taps.reshape(b * t_out, h, w, kt * cin)
    k2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, self.features)
    y = lax.conv_general_dilated(taps, k2d, (sh, sw), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, t_out, *y.shape[1:])
