"""Classification heads over a backbone's features.

A head reads the backbone's `{"map": [B, T, H, W, C], "pooled": [B, D]}`
(`layers.Features`): the linear head the pooled clip feature, the MLAR head
the feature map. A head returns a dict of named logits, each [B, num_classes] float32. Every
entry is trained; `config.eval.output` picks the one evaluation ranks by.
Outputs are logits: the multi-label path applies sigmoid, never softmax.

`ROIHead` makes either head a per-person detection head (AVA): it reads the
same map with person boxes and returns logits [B, N, num_classes] per box.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax.models import layers, roi


class LinearHead(nn.Module):
  """Dropout and one linear layer on the pooled features (the baseline head;
  PyTorchVideo's ResNetBasicHead with global pooling).

  Attributes:
    num_classes: number of activities A.
    dropout_rate: dropout on the pooled features while training.
  """

  num_classes: int
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, features: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: features: {"pooled": [B, D], ...}. Returns {"logits": [B, A] float32}."""
    pooled = features["pooled"].astype(jnp.float32)
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = nn.Dense(
      self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier"
    )(pooled)
    return {"logits": logits}


class AttentionPoolHead(nn.Module):
  """Plain attention pooling: one learned attention map over the feature
  map's positions replaces global average pooling, then dropout and one
  linear layer (the baseline between the linear head and the MLAR head in
  issue 19's study; attention pooling as in CLIP's and scenic's
  attention-pool heads, with a single learned query):

    Attn[p] = softmax_p(q . (W_k F_f[p]) / sqrt(C')),  F = sum_p Attn[p] F_f[p],
    logits = W F + b.

  Attributes:
    num_classes: number of activities A.
    features: the key width C'.
    dropout_rate: dropout on the pooled feature while training.
  """

  num_classes: int
  features: int = 64
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, features: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: features: {"map": [B, T, H, W, C], ...}. Returns {"logits": [B, A]}."""
    f = features["map"].astype(jnp.float32)
    f = f.reshape(f.shape[0], -1, f.shape[-1])  # [B, P, C]
    keys = nn.Dense(self.features, use_bias=False, name="key")(f)  # [B, P, C']
    # Near zero, so the head starts as global average pooling.
    query = self.param("query", nn.initializers.normal(0.02), (self.features,))
    attn = jax.nn.softmax(keys @ query / np.sqrt(self.features), axis=-1)  # [B, P]
    self.sow("intermediates", "attn_pool", attn)
    pooled = jnp.einsum("bp,bpc->bc", attn, f)
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = nn.Dense(
      self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier"
    )(pooled)
    return {"logits": logits}


def correlation_mask(cooccurrence: np.ndarray) -> np.ndarray:
  """`Mask[j, k] = N_jk / N_j` (MLAR eq. 10) from co-occurrence counts [A, A].

  `N_j = N_jj`, the videos with activity j. A class that never occurs in
  training (N_j = 0) gets a zero row rather than NaN.
  """
  n = np.asarray(cooccurrence, np.float64)
  nj = np.diag(n)[:, None]
  return np.where(nj > 0, n / np.where(nj > 0, nj, 1.0), 0.0).astype(np.float32)


class GroupedLinear(nn.Module):
  """n independent linear maps over channel groups (MLAR eq. 7), no bias.

  [..., C] -> [..., C']: channels split into n groups of C/n, each mapped to
  C'/n by its own [C/n, C'/n] matrix; n times fewer weights than dense.
  """

  features: int
  groups: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c, n = x.shape[-1], self.groups
    w = self.param(
      "kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (n, c // n, self.features // n)
    )
    y = jnp.einsum("...gc,gcd->...gd", x.reshape(*x.shape[:-1], n, c // n), w)
    return y.reshape(*x.shape[:-1], self.features)


def _check_groups(name: str, channels: int, groups: int) -> None:
  if channels % groups:
    raise ValueError(f"MLARHead: {name}={channels} is not divisible by groups={groups}")


# MLARHead's variants (its docstring).
OUTPUTS = ("shared", "per_activity", "tied")
MASK_MODES = ("add", "normalised", "scaled", "signed")


class MLARHead(nn.Module):
  """Activity-specific features and activity correlations (MLAR, section 3).

  From a backbone feature map F_f [B, T, H, W, C] (P = T*H*W positions):
    1. K observations (eqs. 2-4, 6, 7). For each k, grouped linear maps
       g^alpha_k, g^beta_k, g^gamma_k: C -> C' with n channel groups; the
       query is g^beta_k of the *last* position (eq. 6, "last row"), the keys
       g^gamma_k of every position:
         Attn_O[k] = softmax_p(g^beta_k(F_f)_{-1} . g^gamma_k(F_f)_p / sqrt(C'))
         Obs_k     = sum_p Attn_O[k, p] g^alpha_k(F_f)_p                 [K, C']
    2. Activity-specific features (eqs. 1, 5): per activity a, attention over
       the K observations with a learned per-activity query q_a and grouped
       keys g^gamma_A(Obs):
         Attn_A[a] = softmax_k(q_a . g^gamma_A(Obs_k) / sqrt(C')),  F_A = Attn_A Obs.
    3. Correlation map (eqs. 8-10): Attn_C = softmax over activities of
       g^beta_C(F_A) g^gamma_C(F_A)^T / sqrt(C'); Corr = Attn_C + Mask with the
       training-label mask `Mask[j, k] = N_jk / N_j`, a "constants" variable
       fixed at init and saved in checkpoints; F_AC = Corr F_A.
    4. Two outputs (eqs. 11-13), both trained, sigmoid applied by the loss /
       evaluation: "logits_activity" = w_phi . F_A[a] + b_phi[a] and
       "logits" = w_theta . F_AC[a] + b_theta[a]; "logits" is the head's
       prediction (config.eval.output), and both are reported. Without the
       correlation map there is one output, "logits" = w_phi . F_A[a] + b_phi[a].

  The linear maps and attentions are computed re-associated, without
  materialising g(F_f) at every position: the query is computed at the last
  position only, keys as (W^gamma_k^T q_k) . F_f, and values as
  W^alpha_k (Attn_O[k] F_f). This is the same function with far fewer FLOPs
  (tested against the literal form); the paper's Table 3 GFLOPs count the
  literal form.

  Per-activity parameters are only q_a [C'] and the two output biases: the
  output weights w_phi, w_theta [C'] are shared by all activities, which is
  what Table 4's 1.6M (157 activities) -> 1.7M (1024) implies.

  Variants (issue 19's study; defaults are the paper-literal head above):
    output: "shared" (w [C'] shared by the activities, as above),
      "per_activity" (w_a [A, C'], one output vector per activity), or
      "tied" (q_a, activity a's query, is also its output vector:
      w_phi . F_A[a] becomes q_a . F_A[a] * output_scale, one vector per
      activity and no output kernel; needs use_activity_specific).
    query_init: the standard deviation of q_a's normal initialisation (the
      paper gives none; 1.0 starts Attn_A peaked on a few observations, a
      value near zero starts it near their mean).
    mask_mode: how the fixed Mask enters Corr: "add" (Attn_C + Mask, eq. 9),
      "normalised" (Attn_C + Mask / its row sums: rows of Mask sum to ~3 on
      multi-label data against 1 for the softmax, so the fixed prior would
      otherwise dominate), "scaled" (Attn_C + s_j Mask[j], a learned
      per-row scale s initialised at 1), or "signed" (Attn_C + Mask + D,
      D [A, A] learned from zero: a correction that can lower a score, for
      exclusive activities).

  Ablations (Table 3c): use_activity_specific=False replaces F_A by the mean
  observation broadcast to every activity, with per-activity output weights
  (a shared layer could not tell the activities apart); the correlation map
  then relates identical rows, which is the paper's point. use_correlation=False
  drops step 3 and the "logits" output comes from F_A. The linear baseline is
  the `linear` head.

  Attributes:
    num_classes: A.
    num_observations: K.
    groups: n, channel groups of every grouped linear map.
    features: C'.
    use_activity_specific, use_correlation: the ablation switches.
    dropout_rate: dropout on F_A and F_AC before the output layers.
    output, query_init, mask_mode: the variants above (OUTPUTS, MASK_MODES).
    mask_init: initializer (key, shape, dtype) of the [A, A] mask variable;
      `nn.initializers.constant(correlation_mask(...))` of the training
      labels, zeros when no statistics are given. It runs once, at init (the
      key it gets is unused); the mask is then read from the variables, so
      the module itself holds no [A, A] array.
  """

  num_classes: int
  num_observations: int = 64
  groups: int = 32
  features: int = 128
  use_activity_specific: bool = True
  use_correlation: bool = True
  dropout_rate: float = 0.5
  mask_init: Callable[..., jnp.ndarray] = nn.initializers.zeros
  output: str = "shared"
  query_init: float = 1.0
  mask_mode: str = "add"

  @nn.compact
  def __call__(self, features: dict[str, jnp.ndarray], *, train: bool) -> dict[str, jnp.ndarray]:
    """Args: features: {"map": [B, T, H, W, C], ...}. Returns {"logits", "logits_activity"}: [B, A]
    ("logits" only when use_correlation=False).

    The attention maps are sown into the "intermediates" collection:
    apply(..., mutable=["intermediates"]) returns attn_obs [B, K, T, H, W],
    attn_activity [B, A, K] and attn_corr [B, A, A] from the same pass.
    """
    features = features["map"]
    b, t, h, w, c = features.shape
    k, n, d, a = self.num_observations, self.groups, self.features, self.num_classes
    _check_groups("backbone channels", c, n)
    _check_groups("features", d, n)
    f = features.astype(jnp.float32).reshape(b, t * h * w, n, c // n)  # [B, P, n, C/n]
    scale = 1.0 / np.sqrt(d)
    init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
    shape = (k, n, c // n, d // n)
    w_alpha = self.param("obs_alpha", init, shape)
    w_beta = self.param("obs_beta", init, shape)
    w_gamma = self.param("obs_gamma", init, shape)

    # 1. Observations. q_k = g^beta_k(F_f at the last position).
    q = jnp.einsum("bgc,kgcd->bkgd", f[:, -1], w_beta)  # [B, K, n, C'/n]
    # q_k . g^gamma_k(F_f)_p = (W^gamma_k^T q_k) . F_f,p
    u = jnp.einsum("bkgd,kgcd->bkgc", q, w_gamma)  # [B, K, n, C/n]
    attn_obs = jax.nn.softmax(jnp.einsum("bpgc,bkgc->bkp", f, u) * scale, axis=-1)
    pooled = jnp.einsum("bkp,bpgc->bkgc", attn_obs, f)  # [B, K, n, C/n]
    obs = jnp.einsum("bkgc,kgcd->bkgd", pooled, w_alpha).reshape(b, k, d)
    self.sow("intermediates", "attn_obs", attn_obs.reshape(b, k, t, h, w))

    # 2. Activity-specific features.
    if self.use_activity_specific:
      queries = self.param("activity_queries", nn.initializers.normal(self.query_init), (a, d))
      keys = GroupedLinear(d, n, name="activity_keys")(obs)  # [B, K, C']
      attn_act = jax.nn.softmax(jnp.einsum("ad,bkd->bak", queries, keys) * scale, axis=-1)
      f_a = jnp.einsum("bak,bkd->bad", attn_act, obs)  # [B, A, C']
      # Activities may be split over the mesh's `model` axis (many classes).
      f_a = nn.with_logical_constraint(f_a, ("batch", "activities", "features"))
      self.sow("intermediates", "attn_activity", attn_act)
    else:
      f_a = jnp.broadcast_to(obs.mean(axis=1, keepdims=True), (b, a, d))
      queries = None

    if not self.use_correlation:
      # One output: F_A's prediction is the head's prediction (returning it
      # under two names would train it twice).
      return {"logits": self._output(f_a, "out_activity", train, queries)}
    outputs = {"logits_activity": self._output(f_a, "out_activity", train, queries)}

    # 3. Correlation map.
    # No key: the mask is data (the training labels'), not a random draw.
    mask = self.variable(
      "constants", "correlation_mask", self.mask_init, None, (a, a), jnp.float32
    ).value
    qc = GroupedLinear(d, n, name="corr_beta")(f_a)
    kc = GroupedLinear(d, n, name="corr_gamma")(f_a)
    attn_corr = jax.nn.softmax(jnp.einsum("bjd,bkd->bjk", qc, kc) * scale, axis=-1)
    self.sow("intermediates", "attn_corr", attn_corr)
    if self.mask_mode == "normalised":
      mask = mask / jnp.maximum(mask.sum(axis=-1, keepdims=True), 1e-12)
    elif self.mask_mode == "scaled":
      mask = self.param("mask_scale", nn.initializers.ones, (a,))[:, None] * mask
    elif self.mask_mode == "signed":
      mask = mask + self.param("mask_correction", nn.initializers.zeros, (a, a))
    elif self.mask_mode != "add":
      raise ValueError(f"mask_mode={self.mask_mode!r}: one of {MASK_MODES}")
    f_ac = jnp.einsum("bjk,bkd->bjd", attn_corr + mask, f_a)  # [B, A, C']
    outputs["logits"] = self._output(f_ac, "out_corr", train, queries)
    return outputs

  def _output(
    self, x: jnp.ndarray, name: str, train: bool, queries: jnp.ndarray | None
  ) -> jnp.ndarray:
    """Eqs. 11/12 without the sigmoid: [B, A, C'] -> [B, A] logits."""
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    a, d = self.num_classes, self.features
    # Without F_A every activity sees the same features: only per-activity
    # weights can tell them apart.
    output = self.output if self.use_activity_specific else "per_activity"
    if output == "shared":
      wt = self.param(f"{name}_kernel", nn.initializers.normal(0.01), (d,))
      logits = jnp.einsum("bad,d->ba", x, wt)
    elif output == "per_activity":
      wt = self.param(f"{name}_kernel", nn.initializers.normal(0.01), (a, d))
      logits = jnp.einsum("bad,ad->ba", x, wt)
    elif output == "tied" and queries is not None:
      # q_a . F[a], scaled like the attention logits, times a learned scalar
      # (from 1) that sets the logits' range independently of q_a's norm.
      scale = self.param(f"{name}_scale", nn.initializers.ones, ())
      logits = jnp.einsum("bad,ad->ba", x, queries) * scale / np.sqrt(d)
    else:
      raise ValueError(f"output={self.output!r}: one of {OUTPUTS} (tied needs activity queries)")
    return logits + self.param(f"{name}_bias", nn.initializers.zeros, (a,))


def _entropy(p: jnp.ndarray) -> jnp.ndarray:
  """Shannon entropy (nats) over the last axis of probabilities `p`."""
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def attention_diagnostics(intermediates: dict[str, Any]) -> dict[str, jnp.ndarray]:
  """How spread the MLAR head's attentions are, from its sown maps: what
  makes a collapsed (or never focused) head visible during training.

  Args:
    intermediates: the "intermediates" collection of an apply (any nesting;
      the MLAR head's `attn_obs` [B, K, T, H, W] and `attn_activity` [B, A, K],
      the attention-pooling head's `attn_pool` [B, P], are found by name).

  Returns:
    Scalars (means over examples and observations / activities), empty
    without an attention head:
      attn_obs_entropy: entropy of Attn_O over positions / log(positions):
        1 = uniform (the mean pooling), 0 = one position.
      attn_obs_positions: exp(entropy): the positions effectively attended.
      attn_activity_entropy: entropy of Attn_A over observations / log(K).
      attn_activity_observations: exp(entropy): the observations each
        activity effectively combines.
      observations_used: exp(entropy of the mean of Attn_A over examples and
        activities): how many of the K observations the head uses at all.
      attn_pool_entropy, attn_pool_positions: the same as attn_obs_* for
        the attention-pooling head's one map.
  """
  found: dict[str, jnp.ndarray] = {}

  def visit(tree):
    for key, value in tree.items():
      if key in ("attn_obs", "attn_activity", "attn_pool") and isinstance(value, tuple):
        found[key] = value[0]
      elif isinstance(value, dict) or hasattr(value, "items"):
        visit(value)

  visit(intermediates)
  out = {}
  if "attn_obs" in found:
    x = found["attn_obs"]
    p = x.reshape(x.shape[0], x.shape[1], -1).astype(jnp.float32)  # [B, K, P]
    h = _entropy(p)
    out["attn_obs_entropy"] = jnp.mean(h) / np.log(max(p.shape[-1], 2))
    out["attn_obs_positions"] = jnp.mean(jnp.exp(h))
  if "attn_pool" in found:
    p = found["attn_pool"].astype(jnp.float32)  # [B, P]
    h = _entropy(p)
    out["attn_pool_entropy"] = jnp.mean(h) / np.log(max(p.shape[-1], 2))
    out["attn_pool_positions"] = jnp.mean(jnp.exp(h))
  if "attn_activity" in found:
    p = found["attn_activity"].astype(jnp.float32)  # [B, A, K]
    h = _entropy(p)
    out["attn_activity_entropy"] = jnp.mean(h) / np.log(max(p.shape[-1], 2))
    out["attn_activity_observations"] = jnp.mean(jnp.exp(h))
    out["observations_used"] = jnp.exp(_entropy(jnp.mean(p, axis=(0, 1))))
  return out


class ROIHead(nn.Module):
  """A clip head run on every person box's ROI-Aligned features (AVA).

  The map is averaged over time, each box's [out, out] ROI-Align taken
  (`roi.roi_align`: bilinear, `sampling_ratio`, `aligned`), and the inner
  head run on every box as its own example: the linear head on the box's
  feature max-pooled over its bins (PySlowFast's ResNetRoIHead: temporal
  average, ROIAlign, spatial max pool, dropout, linear), the MLAR head over
  the box's ROI feature map [1, out, out, C] (its P = out^2 positions).

  With `pool_boxes` the clip is scored once from its people instead (the
  Volleyball papers' "bb" input): each ROI bin is max-pooled over the clip's
  valid boxes, and the inner head runs on that [1, out, out, C] map.

  Attributes:
    inner: the clip head applied per box (`LinearHead`, `MLARHead`).
    output_size: ROI-Align bins per side (7 in PySlowFast's AVA configs).
    sampling_ratio: samples per bin and axis; <= 0 adapts to each box.
    aligned: ROI-Align's half-pixel convention.
    pool_boxes: one output per clip from the boxes' pooled features.
  """

  inner: nn.Module
  output_size: int = 7
  sampling_ratio: int = 0
  aligned: bool = True
  pool_boxes: bool = False

  def __call__(
    self,
    features: dict[str, jnp.ndarray],
    boxes: jnp.ndarray,
    valid: jnp.ndarray,
    *,
    train: bool,
  ) -> dict[str, jnp.ndarray]:
    """Per-box logits.

    Args:
      features: {"map": [B, T, H, W, C], ...}, the backbone's output.
      boxes: [B, N, 4] person boxes, [y1, x1, y2, x2] in [0, 1] of the clip's
        frames (the pipeline's box convention).
      valid: [B, N] bool; False marks padding boxes.

    Returns:
      The inner head's outputs, each [B, N, A] float32; zeros at padding boxes
      (whose loss and metrics must be masked with `valid` all the same). With
      `pool_boxes`, each [B, A] (a clip without a valid box is scored from
      zero features).
    """
    fmap = features["map"]
    b, _, h, w, c = fmap.shape
    n, s = boxes.shape[1], self.output_size
    # Normalised [y1, x1, y2, x2] -> (x1, y1, x2, y2) in feature cells.
    cells = boxes[..., jnp.array([1, 0, 3, 2])].astype(jnp.float32) * jnp.array(
      [w, h, w, h], jnp.float32
    )
    rois = roi.roi_align(
      fmap,
      cells,
      valid,
      s,
      sampling_ratio=self.sampling_ratio,
      aligned=self.aligned,
    )  # [B, N, s, s, C]
    if self.pool_boxes:
      keep = valid[:, :, None, None, None]
      people = jnp.max(jnp.where(keep, rois.astype(jnp.float32), -jnp.inf), axis=1)
      people = jnp.where(jnp.any(valid, axis=1)[:, None, None, None], people, 0.0)
      people = people.astype(rois.dtype)[:, None]  # [B, 1, s, s, C]
      pooled = jnp.max(people.astype(jnp.float32), axis=(1, 2, 3))
      return self.inner(layers.features(people, pooled), train=train)
    per_box = rois.reshape(b * n, 1, s, s, c)
    pooled = jnp.max(per_box.astype(jnp.float32), axis=(1, 2, 3))
    outputs = self.inner(layers.features(per_box, pooled), train=train)
    return {
      name: jnp.where(valid[..., None], x.reshape(b, n, -1), 0.0) for name, x in outputs.items()
    }
