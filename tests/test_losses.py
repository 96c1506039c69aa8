"""Losses against plain-loop implementations of the M-MiT equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlar_jax import losses


def _neg_log_sigmoid(x):
  """-log(1 / (1 + e^-x)), written to be exact for any |x|."""
  return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def loop_bce(x, y, w):
  total = 0.0
  for i in range(len(x)):
    # -[y log p + (1 - y) log(1 - p)], p = sigmoid(x), 1 - p = sigmoid(-x).
    total += w[i] * (y[i] * _neg_log_sigmoid(x[i]) + (1 - y[i]) * _neg_log_sigmoid(-x[i]))
  return total / max(sum(y), 1)


def loop_warp(x, y, w):
  pos = [i for i in range(len(x)) if y[i]]
  neg = [j for j in range(len(x)) if not y[j]]
  total = 0.0
  for i in pos:
    rank = sum(1 for j in neg if 1 + x[j] - x[i] > 0)
    weight = sum(1.0 / k for k in range(1, rank + 1))
    total += w[i] * weight * sum(max(0.0, 1 + x[j] - x[i]) for j in neg)
  return total / max(len(pos), 1)


def loop_lsep(x, y, w):
  pos = [i for i in range(len(x)) if y[i]]
  neg = [j for j in range(len(x)) if not y[j]]
  s = sum(w[i] * math.exp(x[j] - x[i]) for i in pos for j in neg)
  return math.log1p(s) / max(len(pos), 1)


def loop_wlsep(x, y, w):
  pos = [i for i in range(len(x)) if y[i]]
  neg = [j for j in range(len(x)) if not y[j]]
  total = sum(w[i] * math.log1p(sum(math.exp(x[j] - x[i]) for j in neg)) for i in pos)
  return total / max(len(pos), 1)


LOOPS = {"bce": loop_bce, "warp": loop_warp, "lsep": loop_lsep, "wlsep": loop_wlsep}
FAST = {"bce": losses.bce, "warp": losses.warp, "lsep": losses.lsep, "wlsep": losses.wlsep}
DENSE = {"warp": losses.warp_dense, "lsep": losses.lsep_dense, "wlsep": losses.wlsep_dense}


def _cases(seed=0):
  rng = np.random.default_rng(seed)
  b, c = 12, 9
  x = rng.normal(0, 2, (b, c))
  y = (rng.random((b, c)) < 0.3).astype(np.float32)
  y[0] = 1  # all positive
  y[1] = 0  # no positive
  y[2] = 0
  y[2, 3] = 1  # one positive
  w = rng.uniform(0.2, 1.5, c)
  return x.astype(np.float32), y, w.astype(np.float32)


def _loop(name, x, y, w):
  return np.array(
    [
      LOOPS[name](list(map(float, xi)), list(map(int, yi)), list(map(float, w)))
      for xi, yi in zip(x, y)
    ]
  )


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_loop_reference(name, weighted):
  x, y, w = _cases()
  got = np.asarray(jax.jit(FAST[name])(x, y, w if weighted else None))
  want = _loop(name, x, y, w if weighted else np.ones_like(w))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if name in DENSE:
    dense = np.asarray(DENSE[name](x, y, w if weighted else None))
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)


def test_one_class():
  for name, fn in FAST.items():
    x = np.array([[1.5], [-0.3]], np.float32)
    y = np.array([[1.0], [0.0]], np.float32)
    np.testing.assert_allclose(
      np.asarray(fn(x, y)), _loop(name, x, y, np.ones(1)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", ["warp", "lsep", "wlsep"])
def test_degenerate_examples_give_zero_and_zero_gradient(name):
  x = jnp.array([[0.3, -2.0, 5.0], [1.0, 2.0, -1.0]])
  y = jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # no positive; no negative
  value, grad = jax.value_and_grad(lambda x: FAST[name](x, y).sum())(x)
  np.testing.assert_array_equal(np.asarray(value), 0.0)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_bce_without_positives_still_trains_the_negatives():
  x = jnp.array([[0.3, -2.0, 5.0]])
  y = jnp.zeros((1, 3))
  grad = jax.grad(lambda x: losses.bce(x, y).sum())(x)
  assert np.all(np.asarray(grad) > 0) and np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("name", sorted(FAST))
def test_gradients_match_finite_differences(name):
  x, y, w = _cases(1)
  x64 = x.astype(np.float64)
  grad = np.asarray(jax.grad(lambda x: FAST[name](x, y, w).sum())(jnp.asarray(x)))
  eps = 1e-3
  for b in range(4):
    for c in range(x.shape[1]):
      xp, xm = x64.copy(), x64.copy()
      xp[b, c] += eps
      xm[b, c] -= eps
      fd = (
        _loop(name, xp[b : b + 1], y[b : b + 1], w)[0]
        - _loop(name, xm[b : b + 1], y[b : b + 1], w)[0]
      ) / (2 * eps)
      # WARP's rank weight is piecewise constant; skip points next to a kink.
      if name == "warp" and np.any(np.abs(np.abs(x64[b] - x64[b, c]) - 1) < 2 * eps):
        continue
      np.testing.assert_allclose(grad[b, c], fd, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", sorted(FAST))
def test_stable_for_extreme_and_bf16_logits(name):
  x, y, w = _cases(2)
  big = np.sign(x) * 1e4 + x
  value, grad = jax.value_and_grad(lambda x: FAST[name](x, y, w).sum())(jnp.asarray(big))
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  # Exactness at 1e4 against the loop (which uses exact log-sum forms).
  if name in ("wlsep", "warp", "bce"):
    np.testing.assert_allclose(
      np.asarray(FAST[name](big, y, w)), _loop_stable(name, big, y, w), rtol=1e-5
    )
  bf16 = jnp.asarray(x, jnp.bfloat16)
  value, grad = jax.value_and_grad(lambda x: FAST[name](x, y, w).sum())(bf16)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad, np.float32)).all()
  np.testing.assert_allclose(
    float(value), _loop(name, np.asarray(bf16, np.float32), y, w).sum(), rtol=1e-4
  )


def _loop_stable(name, x, y, w):
  if name != "wlsep":
    return _loop(name, x, y, w)
  out = []
  for xi, yi in zip(x.astype(np.float64), y):
    pos, neg = xi[yi > 0], xi[yi <= 0]
    total = 0.0
    for i in np.flatnonzero(yi > 0):
      d = neg - xi[i]
      m = max(d.max(initial=-np.inf), 0.0)
      total += w[i] * (m + math.log(math.exp(-m) + np.exp(d - m).sum())) if neg.size else 0.0
    out.append(total / max(len(pos), 1))
  return np.array(out)


def test_lsep_extreme_value_is_exact():
  # One positive at -1e4, one negative at +1e4: log(1 + e^{2e4}) = 2e4.
  x = jnp.array([[-1e4, 1e4]])
  y = jnp.array([[1.0, 0.0]])
  np.testing.assert_allclose(np.asarray(losses.lsep(x, y)), [2e4], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.lsep_dense(x, y)), [2e4], rtol=1e-6)


def test_class_weights_from_counts():
  counts = np.array([100, 10, 0, 50])
  np.testing.assert_allclose(losses.class_weights_from_counts(counts), [0.1, 1.0, 1.0, 0.2])
  np.testing.assert_allclose(
    losses.class_weights_from_counts(counts, "inverse_sqrt"),
    np.sqrt([0.1, 1.0, 1.0, 0.2]),
    rtol=1e-6,
  )
  np.testing.assert_array_equal(losses.class_weights_from_counts(counts, "none"), 1.0)
  eff = losses.class_weights_from_counts(counts, "effective_number", beta=0.99)
  assert eff[1] > eff[3] > eff[0] and np.isclose(eff[[0, 1, 3]].mean(), 1.0)
  with pytest.raises(ValueError, match="class weight mode"):
    losses.class_weights_from_counts(counts, "bogus")


def test_harmonic():
  np.testing.assert_allclose(
    np.asarray(losses.harmonic(jnp.arange(6))), [0, 1, 1.5, 11 / 6, 25 / 12, 137 / 60], rtol=1e-6
  )


# The M-MiT authors' released loss code, as plain loops over the batch
# (`config.loss.official_code`): what each of their functions computes,
# written from their PyTorch code's operations one by one.


def _official_bce_loop(x, y, w):
  total = 0.0
  for b in range(x.shape[0]):
    for c in range(x.shape[1]):
      p = 1.0 / (1.0 + math.exp(-x[b, c]))
      elem = -(y[b, c] * math.log(p) + (1 - y[b, c]) * math.log(1 - p))
      if w is not None:  # ((1 - w) * labels + w * (1 - labels)) * bce
        elem *= (1 - w[c]) * y[b, c] + w[c] * (1 - y[b, c])
      total += elem  # .sum(1)
  return total / x.shape[0]  # .mean()


def _official_lsep_loop(x, y, w):
  del w  # their lsep ignores its weights
  total = 0.0  # diffs.exp().mul(mask).sum() over the whole batch
  for b in range(x.shape[0]):
    for i in range(x.shape[1]):  # mask[b, i, j]: labels[b, j] > labels[b, i]
      for j in range(x.shape[1]):
        if y[b, j] > y[b, i]:
          total += math.exp(x[b, i] - x[b, j])
  return math.log(total + 1)


def _official_wlsep_loop(x, y, w):
  values = []  # .masked_select(labels).mean(): one value per positive
  for b in range(x.shape[0]):
    for j in range(x.shape[1]):
      if y[b, j]:
        s = sum(math.exp(x[b, i] - x[b, j]) for i in range(x.shape[1]) if not y[b, i])
        values.append(math.log(1 + s) * (1 if w is None else w[j]))
  return sum(values) / len(values)


def _official_warp_loop(x, y, w):
  c = x.shape[1]
  rank_w, acc = [], 0.0
  for i in range(c):  # their precomputed rank weights
    acc += 1.0 / (i + 1)
    rank_w.append(acc)
  values = []
  for b in range(x.shape[0]):
    order = sorted(range(c), key=lambda k, b=b: -x[b, k])  # scores.sort(descending)[1]
    negatives = [i for i in range(c) if not y[b, i]]
    for j in range(c):
      if y[b, j]:
        hinge = sum(max(0.0, x[b, i] - x[b, j] + 1) for i in negatives) / len(negatives)
        if w is not None:
          hinge *= w[j]
        values.append(hinge * rank_w[order[j]])  # indexed at j's position
  return sum(values) / len(values)


OFFICIAL_LOOPS = {
  "bce": _official_bce_loop,
  "warp": _official_warp_loop,
  "lsep": _official_lsep_loop,
  "wlsep": _official_wlsep_loop,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_LOOPS))
@pytest.mark.parametrize("weighted", [False, True])
def test_official_code_losses_match_loops_of_their_code(name, weighted):
  rng = np.random.default_rng(3)
  x = rng.normal(0, 2, (5, 7))
  y = (rng.random((5, 7)) < 0.35).astype(np.int32)
  y[:, 0], y[:, 1] = 1, 0  # every example has a positive and a negative
  w = rng.uniform(0.1, 1.0, 7) if weighted else None
  got = jnp.mean(losses.OFFICIAL_LOSSES.get(name)(jnp.asarray(x), jnp.asarray(y), w))
  np.testing.assert_allclose(float(got), OFFICIAL_LOOPS[name](x, y, w), rtol=2e-5)
  # And they differ from the paper's equations (what the switch is for).
  paper = float(jnp.mean(losses.LOSSES.get(name)(jnp.asarray(x), jnp.asarray(y), w)))
  assert abs(paper - float(got)) > 1e-3 * abs(float(got))


def test_official_code_switch_and_its_validation():
  from conftest import load_config

  from mlar_jax import validation

  config = load_config("synthetic", "runlocal")
  config.loss.update(name="wlsep", official_code=True)
  assert losses.loss_fn(config.loss) is losses.wlsep_official
  config.loss.official_code = False
  assert losses.loss_fn(config.loss) is losses.wlsep
  config = load_config("ava", "runlocal")
  config.loss.official_code = True
  with pytest.raises(ValueError, match="loss.official_code"):
    validation.validate(config)


def loop_softmax(x, y, w):
  """-sum_{i in Y} w_i log(e^{x_i} / sum_j e^{x_j}) / |Y|, the log-sum-exp
  taken about the maximum."""
  m = max(x)
  log_z = m + math.log(sum(math.exp(v - m) for v in x))
  pos = [i for i in range(len(x)) if y[i]]
  return sum(w[i] * (log_z - x[i]) for i in pos) / max(len(pos), 1)


@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_matches_loop_reference(weighted):
  x, y, w = _cases()
  w = w if weighted else np.ones_like(w)
  got = np.asarray(jax.jit(losses.softmax)(x, y, w if weighted else None))
  want = np.array(
    [loop_softmax(list(map(float, a)), list(b), list(map(float, w))) for a, b in zip(x, y)]
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert got[1] == 0.0  # no positive
  # One-hot labels: optax's softmax cross-entropy.
  import optax

  onehot = np.eye(x.shape[1], dtype=np.float32)[np.arange(len(x)) % x.shape[1]]
  np.testing.assert_allclose(
    np.asarray(losses.softmax(x, onehot)),
    np.asarray(optax.softmax_cross_entropy(x, onehot)),
    rtol=1e-5,
  )
  # Finite for extreme logits.
  big = np.array([[1e4, -1e4, 0.0]], np.float32)
  assert np.isfinite(np.asarray(losses.softmax(big, np.array([[0.0, 1.0, 0.0]])))).all()
