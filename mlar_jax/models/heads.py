"""Classification heads over a backbone feature map [B, T, H, W, C].

A head returns a dict of named logits, each [B, num_classes] float32. Every
entry is trained; `config.eval.output` picks the one evaluation ranks by.
Outputs are logits: the multi-label path applies sigmoid, never softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LinearHead(nn.Module):
  """Global average pool, dropout, one linear layer (the baseline head).

  Attributes:
    num_classes: number of activities A.
    dropout_rate: dropout on the pooled features while training.
  """
  num_classes: int
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, features: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: features: [B, T, H, W, C]. Returns {"logits": [B, A] float32}."""
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2, 3))
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                      name="classifier")(pooled)
    return {"logits": logits}
