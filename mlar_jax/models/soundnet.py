"""SoundNet (Aytar, Vondrick and Torralba 2016): the 8-layer network over the
raw waveform whose audio features the M-MiT paper fine-tunes and fuses with
I3D's (Table 1, section 6.1).

Layers as the original (the Torch release and its PyTorch port,
smallflyingpig/SoundNet_Pytorch, `SoundNet8_pytorch`): each a 1D convolution
(stride 2, padding p on both sides), batch norm (epsilon 1e-5) and ReLU,
some followed by max pooling (kernel = stride, floor):

  conv1   16, k64 p32, pool 8     conv5  256, k4 p2, pool 4
  conv2   32, k32 p16, pool 8     conv6  512, k4 p2
  conv3   64, k16 p8              conv7 1024, k4 p2
  conv4  128, k8  p4              conv8 object 1000 / scene 401 logits, k8 p0

conv8 is the teacher heads of SoundNet's training (ImageNet objects and
Places scenes of the video frames); the backbone ends at conv7, and the
heads are built only with `teacher_heads` (to import and check the
released weights). An output length is floor((L + 2p - k) / 2) + 1 per
convolution and floor(L / pool) per pooling: 5 s at 22050 Hz (110250
samples) gives 4 conv7 steps; conv8 needs 8 of them (10 s of sound;
the original extracts over 20 s, giving 15 conv7 steps and 4 conv8 ones).

The released weights take the waveform in [-256, 256] (the TensorFlow port
multiplies librosa's [-1, 1] samples by 256), so `input_scale` = 256 maps
the pipeline's [-1, 1] audio to it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mlar_jax.models import layers as layers_lib

# (features, kernel, padding, max-pool after ReLU or 0) of conv1..conv7; every
# convolution has stride 2.
LAYERS = (
  (16, 64, 32, 8),
  (32, 32, 16, 8),
  (64, 16, 8, 0),
  (128, 8, 4, 0),
  (256, 4, 2, 4),
  (512, 4, 2, 0),
  (1024, 4, 2, 0),
)
# The teacher heads on conv7: kernel 8, stride 2, no padding.
TEACHER_HEADS = {"objects": 1000, "scenes": 401}
HEAD_KERNEL = 8
# Logical axis names of the feature map (`mlar_jax.sharding`).
MAP_AXES = ("batch", "time", "channels")


def output_length(num_samples: int, layers=LAYERS) -> int:
  """Steps of the conv7 map for a waveform of `num_samples` (the original's
  arithmetic)."""
  n = num_samples
  for _, kernel, pad, pool in layers:
    n = (n + 2 * pad - kernel) // 2 + 1
    if pool:
      n //= pool
  return n


class SoundNet(nn.Module):
  """SoundNet-8 on a mono waveform.

  Attributes:
    layers: (features, kernel, padding, pool) of each stride-2 conv block.
    teacher_heads: add conv8's object (1000) and scene (401) logits.
    input_scale: multiplies the waveform before conv1 (256: the released
      weights' input range from [-1, 1] audio).
    dtype: compute dtype (parameters stay float32).
    frozen_bn: batch norm always uses its running statistics.
    conv_impl: `layers.Conv1D`'s implementation ("auto", "native",
      "folded"; `config.model.conv_impl`).
  """

  layers: tuple[tuple[int, int, int, int], ...] = LAYERS
  teacher_heads: bool = False
  input_scale: float = 256.0
  dtype: Any = jnp.float32
  frozen_bn: bool = False
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, audio: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: audio: [B, N] float32 samples in [-1, 1].

    Returns:
      {"map": [B, T', 1024] conv7 features (T' = `output_length(N)`),
      "pooled": [B, 1024] float32, their mean over time}, and with
      `teacher_heads` "objects" [B, T8, 1000] and "scenes" [B, T8, 401]
      logits, T8 = (T' - 8) // 2 + 1.
    """
    x = (audio * self.input_scale)[..., None].astype(self.dtype)
    for i, (features, kernel, pad, pool) in enumerate(self.layers, 1):
      x = layers_lib.Conv1D(
        features,
        kernel,
        stride=2,
        padding=(pad, pad),
        dtype=self.dtype,
        impl=self.conv_impl,
        name=f"conv{i}",
      )(x)
      x = nn.BatchNorm(
        use_running_average=not train or self.frozen_bn,
        momentum=0.9,  # PyTorch's 0.1
        epsilon=1e-5,
        dtype=self.dtype,
        name=f"bn{i}",
      )(x)
      x = nn.relu(x)
      if pool:
        x = nn.max_pool(x, (pool,), strides=(pool,))
    fmap = nn.with_logical_constraint(x, MAP_AXES)
    out = {"map": fmap, "pooled": jnp.mean(fmap.astype(jnp.float32), axis=1)}
    if self.teacher_heads:
      for name, classes in TEACHER_HEADS.items():
        out[name] = layers_lib.Conv1D(
          classes,
          HEAD_KERNEL,
          stride=2,
          dtype=self.dtype,
          impl=self.conv_impl,
          name=f"conv8_{name}",
        )(fmap)
    return out
