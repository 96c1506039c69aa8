"""Multi-label losses of the M-MiT paper (section 4, eqs. 1-4), exact and stable.

Every loss maps `(logits [B, C], labels [B, C] in {0, 1}, class_weights [C] |
None) -> [B]` per-example values. Logits are upcast to float32, so bf16 inputs
are fine, and nothing overflows for |logits| up to 1e4 and beyond.

Notation: for one example, x = logits, Y = its positive classes, |Y| their
number, w = class weights (1 when None).

  bce   (eq. 1)  (1/max(|Y|,1)) sum_i w_i BCE(sigmoid(x_i), y_i)
  warp  (eq. 2)  (1/|Y|) sum_{i in Y} w_i W(R_i) sum_{j not in Y} max(0, 1 + x_j - x_i)
                 with R_i = #{j not in Y : 1 + x_j > x_i}, the negatives that
                 violate the margin (Weston et al.'s rank estimate; treated as a
                 constant in the gradient) and W(r) = sum_{k<=r} 1/k.
  lsep  (eq. 3)  (1/|Y|) log(1 + sum_{i in Y} w_i sum_{j not in Y} exp(x_j - x_i))
                 (w = 1 is the paper's equation; weights inside the sum are our
                 documented extension, since the paper's LSEP has none).
  wlsep (eq. 4)  (1/|Y|) sum_{i in Y} w_i log(1 + sum_{j not in Y} exp(x_j - x_i))
  softmax        (1/|Y|) sum_{i in Y} -w_i log softmax(x)_i: cross-entropy for
                 single-label tasks (Volleyball's group activity, |Y| = 1); not
                 one of the paper's multi-label losses.

Normalisation is by |Y| as section 4 prescribes. Degenerate examples:
  * The ranking losses (warp, lsep, wlsep) have no pair when an example has no
    positive or no negative label; they return exactly 0 with zero gradient.
  * bce is defined per label, so an example without positives still teaches
    its negatives; it is normalised by max(|Y|, 1).

LSEP and wLSEP use the exact factorisation
  sum_{i in Y} sum_{j not in Y} w_i e^{x_j - x_i}
      = (sum_{i in Y} w_i e^{-x_i}) (sum_{j not in Y} e^{x_j}),
so they cost O(B*C) through two masked logsumexps; WARP sorts the negatives
once per example (O(B*C log C)). The `*_dense` functions build the [B, C, C]
pairwise matrix as the public implementations do; they are the reference for
tests and the benchmark, not for training.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlar_jax import config_lib, registry

Array = jax.Array
LossFn = Callable[[Array, Array, Array | None], Array]

LOSSES: registry.Registry = registry.Registry("loss")


def _prepare(logits, labels, class_weights):
  x = jnp.asarray(logits).astype(jnp.float32)
  y = jnp.asarray(labels).astype(jnp.float32)
  w = (
    jnp.ones(x.shape[-1], jnp.float32)
    if class_weights is None
    else jnp.asarray(class_weights, jnp.float32)
  )
  num_pos = jnp.sum(y, axis=-1)
  return x, y, w, num_pos


def _masked_lse_parts(a: Array, mask: Array) -> tuple[Array, Array]:
  """(m, log s) with logsumexp(a[mask]) = m + log s over the last axis.

  m is the masked max (0 for an empty row, where log s = -inf). Keeping the
  two parts apart lets callers subtract m from nearby values first, which is
  exact in float32 for close values (Sterbenz), so |logits| ~ 1e4 lose
  nothing. Masked entries never reach exp (no inf * 0 in the backward pass),
  and an empty row has zero gradient.
  """
  any_ = jnp.any(mask, axis=-1)
  m = jax.lax.stop_gradient(jnp.max(jnp.where(mask, a, -jnp.inf), axis=-1))
  m = jnp.where(any_, m, 0.0)
  s = jnp.sum(jnp.exp(jnp.where(mask, a - m[..., None], -jnp.inf)), axis=-1)
  return m, jnp.where(any_, jnp.log(jnp.where(any_, s, 1.0)), -jnp.inf)


def _masked_logsumexp(a: Array, mask: Array) -> Array:
  """logsumexp of `a` over the last axis where `mask`; -inf where none."""
  m, log_s = _masked_lse_parts(a, mask)
  return m + log_s


@LOSSES.register("bce")
def bce(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Class-weighted binary cross-entropy on logits (eq. 1). Returns [B]."""
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  # -[y log s(x) + (1-y) log(1-s(x))] with log-sigmoid: exact for any |x|.
  per_label = -(y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
  return jnp.sum(w * per_label, axis=-1) / jnp.maximum(num_pos, 1.0)


@LOSSES.register("softmax")
def softmax(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Class-weighted softmax cross-entropy against the labels spread evenly
  over the positives (one-hot for a single-label task). Returns [B]; 0 for
  an example without a positive."""
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  return optax.softmax_cross_entropy(x, w * y / jnp.maximum(num_pos, 1.0)[..., None])


def box_losses(
  loss_fn: LossFn,
  logits: Array,
  labels: Array,
  valid: Array,
  class_weights: Array | None = None,
) -> tuple[Array, Array]:
  """A per-example loss applied to every person box (detection, AVA).

  Args:
    loss_fn: a loss of `LOSSES` ([B', A] -> [B']).
    logits: [B, N, A] per-box logits (`heads.ROIHead`).
    labels: [B, N, A] per-box multi-hot labels.
    valid: [B, N] bool; padding boxes contribute nothing, value or gradient.
    class_weights: [A] or None.

  Returns:
    ([B] the sum of the loss over each example's valid boxes, [B] float32
    their number). The batch loss is sum(sums) / max(sum(counts), 1), the
    mean over the batch's boxes as PySlowFast's AVA training takes it (a clip
    with many people weighs more than one with few); summed before dividing,
    it is the same on any number of devices.
  """
  b, n, a = logits.shape
  keep = jnp.asarray(valid, bool)
  # Padding boxes' logits are replaced before the loss, not only masked
  # after it: whatever they hold (inf, NaN), their loss and its gradient are
  # then finite, and the mask gives them exactly zero.
  x = jnp.where(keep[..., None], logits, 0.0).reshape(b * n, a)
  per_box = loss_fn(x, labels.reshape(b * n, a), class_weights).reshape(b, n)
  sums = jnp.sum(jnp.where(keep, per_box, 0.0), axis=-1)
  return sums, jnp.sum(keep.astype(jnp.float32), axis=-1)


def harmonic(r: Array) -> Array:
  """W(r) = sum_{k=1}^{r} 1/k for integer-valued r >= 0 (W(0) = 0)."""
  r = jnp.asarray(r, jnp.float32)
  # digamma(r + 1) + euler_gamma == H_r exactly in real arithmetic; float32
  # error is below 1e-6 relative, far below what the loss can resolve.
  return jnp.where(r > 0, jax.scipy.special.digamma(r + 1.0) + np.euler_gamma, 0.0)


@LOSSES.register("warp")
def warp(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """WARP (eq. 2) in O(C log C) per example through sorted negatives. Returns [B]."""
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pos, neg = y > 0, y <= 0
  # Negatives sorted ascending, positives first as -inf; C = number of classes.
  asc = jnp.sort(jnp.where(neg, x, -jnp.inf), axis=-1)
  c = x.shape[-1]
  # R_i = #{j neg: x_j > x_i - 1} by binary search: O(C log C), no [C, C].
  thresh = jax.lax.stop_gradient(x - 1.0)
  search = jnp.vectorize(
    lambda a, t: jnp.searchsorted(a, t, side="right"), signature="(c),(c)->(c)"
  )
  rank = c - search(jax.lax.stop_gradient(asc), thresh)
  # csum[k] = sum of (x_j - m) over the k largest negatives, m the largest
  # (a constant): offsets from m keep float32 exact for huge close logits.
  desc = jnp.flip(asc, axis=-1)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(desc[..., :1]), desc[..., :1], 0.0))
  csum = jnp.cumsum(jnp.where(jnp.isfinite(desc), desc - m, 0.0), axis=-1)
  csum = jnp.concatenate([jnp.zeros_like(csum[..., :1]), csum], axis=-1)
  # sum_{j in top R_i} (1 + x_j - x_i) = R_i (1 + m - x_i) + csum[R_i].
  hinge = rank * (1.0 + (m - x)) + jnp.take_along_axis(csum, rank, axis=-1)
  per_pos = w * jax.lax.stop_gradient(harmonic(rank)) * hinge
  total = jnp.sum(jnp.where(pos, per_pos, 0.0), axis=-1)
  return total / jnp.maximum(num_pos, 1.0)


@LOSSES.register("lsep")
def lsep(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """LSEP (eq. 3), normalised by |Y|, in O(C) per example. Returns [B]."""
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pos, neg = y > 0, y <= 0
  # log sum_{i in Y} w_i e^{-x_i} + log sum_{j not in Y} e^{x_j}, with the
  # two maxima combined first: (max_neg x) - (min_pos x) is exact in float32.
  m_pos, log_pos = _masked_lse_parts(jnp.log(w) - x, pos & (w > 0))
  m_neg, log_neg = _masked_lse_parts(x, neg)
  log_pairs = (m_neg + m_pos) + (log_pos + log_neg)
  return jax.nn.softplus(log_pairs) / jnp.maximum(num_pos, 1.0)


@LOSSES.register("wlsep")
def wlsep(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Weighted LSEP (eq. 4) in O(C) per example. Returns [B]."""
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pos, neg = y > 0, y <= 0
  m, log_s = _masked_lse_parts(x, neg)  # [B], [B]
  # (m - x_i) first: exact for close values, so huge logits lose nothing.
  per_pos = w * jax.nn.softplus((m[..., None] - x) + log_s[..., None])  # [B, C]
  total = jnp.sum(jnp.where(pos, per_pos, 0.0), axis=-1)
  return total / jnp.maximum(num_pos, 1.0)


# ---------------------------------------------------------------------------
# Dense pairwise references ([B, C, C] memory), as in the public implementations.
# ---------------------------------------------------------------------------


def _pair_mask(y):
  return (y[..., :, None] > 0) & (y[..., None, :] <= 0)  # [B, i pos, j neg]


def warp_dense(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pairs = _pair_mask(y)
  margin = 1.0 + x[..., None, :] - x[..., :, None]  # [B, i, j]
  hinge = jnp.where(pairs, jnp.maximum(margin, 0.0), 0.0)
  rank = jax.lax.stop_gradient(jnp.sum(pairs & (margin > 0), axis=-1))
  per_pos = w * harmonic(rank) * jnp.sum(hinge, axis=-1)
  return jnp.sum(jnp.where(y > 0, per_pos, 0.0), axis=-1) / jnp.maximum(num_pos, 1.0)


def lsep_dense(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pairs = _pair_mask(y) & (w[:, None] > 0)
  d = jnp.log(w)[:, None] + x[..., None, :] - x[..., :, None]
  flat = d.reshape(d.shape[:-2] + (-1,))
  lse = _masked_logsumexp(flat, pairs.reshape(flat.shape))
  return jax.nn.softplus(lse) / jnp.maximum(num_pos, 1.0)


def wlsep_dense(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  x, y, w, num_pos = _prepare(logits, labels, class_weights)
  pairs = _pair_mask(y)
  d = x[..., None, :] - x[..., :, None]
  per_pos = w * jax.nn.softplus(_masked_logsumexp(d, pairs))
  return jnp.sum(jnp.where(y > 0, per_pos, 0.0), axis=-1) / jnp.maximum(num_pos, 1.0)


# ---------------------------------------------------------------------------
# The M-MiT authors' released loss code (`config.loss.official_code`).
# ---------------------------------------------------------------------------

# Their code computes one value per batch where the paper's equations (and
# `LOSSES`) give one per example. Each function here returns [B] values whose
# mean over the batch is that batch value (the train step takes the mean), so
# the switch changes nothing else in the step. Where their code divides by
# zero (a batch without a positive label; WARP for an example without
# negatives) it gives NaN; these give 0 there.
OFFICIAL_LOSSES: registry.Registry = registry.Registry("official loss")


def _per_positive_mean(per_pos: Array, pos: Array) -> Array:
  """[B] values whose batch mean is the mean of `per_pos` [B, C] over every
  positive of the batch (their `.masked_select(labels).mean()`)."""
  total = jnp.sum(jnp.where(pos, per_pos, 0.0), axis=-1)
  return total * (pos.shape[0] / jnp.maximum(jnp.sum(pos), 1.0))


@OFFICIAL_LOSSES.register("bce")
def bce_official(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Their BCE: per-label BCE summed over classes, the batch mean; with class
  weights w, positives weighted by 1 - w_i and negatives by w_i; no 1/|Y|.
  Returns [B]."""
  x, y, _, _ = _prepare(logits, labels, None)
  per_label = -(y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
  if class_weights is not None:
    w = jnp.asarray(class_weights, jnp.float32)
    per_label = ((1.0 - w) * y + w * (1.0 - y)) * per_label
  return jnp.sum(per_label, axis=-1)


@OFFICIAL_LOSSES.register("warp")
def warp_official(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Their WARP: for each positive i of the batch, the hinge sum over the
  example's negatives divided by their number, times w_i, times the rank
  weight W(k + 1) indexed by k = the id of the class ranked at position i of
  the example's descending order (not i's rank), averaged over the batch's
  positives. Returns [B]."""
  x, y, _, _ = _prepare(logits, labels, None)
  pos, neg = y > 0, y <= 0
  hinge = jnp.where(neg[:, None, :], jnp.maximum(1.0 + x[:, None, :] - x[:, :, None], 0.0), 0.0)
  per_pos = jnp.sum(hinge, axis=-1) / jnp.maximum(jnp.sum(neg, axis=-1, keepdims=True), 1.0)
  if class_weights is not None:
    per_pos = per_pos * jnp.asarray(class_weights, jnp.float32)
  ranked_ids = jnp.argsort(-jax.lax.stop_gradient(x), axis=-1, stable=True)
  per_pos = per_pos * harmonic(ranked_ids + 1)
  return _per_positive_mean(per_pos, pos)


@OFFICIAL_LOSSES.register("lsep")
def lsep_official(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Their LSEP: log(1 + the sum of exp(x_j - x_i) over every (positive i,
  negative j) pair of the whole batch), one log per batch; no class weights,
  no 1/|Y|. Returns [B], each the batch value."""
  del class_weights  # their lsep takes weights and ignores them
  x, y, _, _ = _prepare(logits, labels, None)
  m_pos, log_pos = _masked_lse_parts(-x, y > 0)
  m_neg, log_neg = _masked_lse_parts(x, y <= 0)
  log_pairs = (m_neg + m_pos) + (log_pos + log_neg)  # [B], -inf without pairs
  return jnp.broadcast_to(jax.nn.softplus(jax.nn.logsumexp(log_pairs)), log_pairs.shape)


@OFFICIAL_LOSSES.register("wlsep")
def wlsep_official(logits: Array, labels: Array, class_weights: Array | None = None) -> Array:
  """Their wLSEP: w_i log(1 + sum_{j not in Y} exp(x_j - x_i)) averaged over
  every positive of the batch (not per example by 1/|Y|). Returns [B]."""
  x, y, _, _ = _prepare(logits, labels, None)
  pos, neg = y > 0, y <= 0
  m, log_s = _masked_lse_parts(x, neg)
  per_pos = jax.nn.softplus((m[..., None] - x) + log_s[..., None])
  if class_weights is not None:
    per_pos = per_pos * jnp.asarray(class_weights, jnp.float32)
  return _per_positive_mean(per_pos, pos)


def loss_fn(cfg: ml_collections.ConfigDict) -> LossFn:
  """The loss `config.loss` names: the paper's equations (`LOSSES`), or with
  `official_code` the authors' code's version of it (`OFFICIAL_LOSSES`)."""
  return (OFFICIAL_LOSSES if cfg.official_code else LOSSES).get(cfg.name)


# ---------------------------------------------------------------------------
# Class weights.
# ---------------------------------------------------------------------------

CLASS_WEIGHT_MODES = ("none", "min_over_count", "inverse_sqrt", "effective_number")


def class_weights_from_counts(
  counts, mode: str = "min_over_count", beta: float = 0.999
) -> np.ndarray:
  """Per-class weights w [C] float32 from training label counts [C].

  Modes:
    none: all ones.
    min_over_count: min(count) / count_i, the official M-MiT weighting (the
      rarest class gets 1, frequent classes less).
    inverse_sqrt: sqrt(min(count) / count_i), a milder version.
    effective_number: (1 - beta) / (1 - beta^count_i) (Cui et al., 2019),
      rescaled so the weights average to 1 over the classes that occur.
  The minimum is over classes that occur; a class with no training example
  gets weight 1 (it is never positive, so this only affects BCE's negatives).
  """
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  if mode == "none" or not present.any():
    return np.ones(counts.shape, np.float32)
  safe = np.where(present, counts, 1.0)
  if mode == "min_over_count":
    w = counts[present].min() / safe
  elif mode == "inverse_sqrt":
    w = np.sqrt(counts[present].min() / safe)
  elif mode == "effective_number":
    w = (1.0 - beta) / (1.0 - beta**safe)
    w = w / w[present].mean()
  else:
    raise ValueError(f"class weight mode must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
  return np.where(present, w, 1.0).astype(np.float32)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.loss`: a registered loss and a class-weight mode."""
  config_lib.check_choice(config, "loss.name", LOSSES.names())
  config_lib.check_choice(config, "loss.class_weights", CLASS_WEIGHT_MODES)
  if config.loss.official_code:
    config_lib.check_choice(config, "loss.name", OFFICIAL_LOSSES.names())
    if config.model.task == "detection":
      config_lib.fail(
        "loss.official_code",
        True,
        "the authors' code is for video classification; detection losses are per box",
      )
