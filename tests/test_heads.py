"""The MLAR head against a literal implementation of its equations."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import block_diag

from mlar_jax import config_lib
from mlar_jax.data import base
from mlar_jax.models import heads, registry


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _dense(grouped_kernel):
  """[n, C/n, C'/n] grouped weights -> the [C, C'] block-diagonal matrix."""
  return block_diag(*np.asarray(grouped_kernel, np.float64))


def literal_mlar(params, mask, features, output="shared", mask_mode="add"):
  """Eqs. 2-13 written as in the paper, one observation and activity at a time
  (with issue 19's output and mask variants)."""
  b, t, h, w, c = features.shape
  ff = np.asarray(features, np.float64).reshape(b, t * h * w, c)
  k = params["obs_alpha"].shape[0]
  d = params["activity_queries"].shape[1]
  scale = 1 / np.sqrt(d)
  out, out_act = [], []
  for i in range(b):
    obs = []
    for j in range(k):
      g_a = ff[i] @ _dense(params["obs_alpha"][j])  # g^alpha_k(F_f): [P, C']
      g_b = ff[i] @ _dense(params["obs_beta"][j])
      g_g = ff[i] @ _dense(params["obs_gamma"][j])
      attn = _softmax(g_g @ g_b[-1] * scale)  # eq. 6, last row query
      obs.append(attn @ g_a)  # eq. 2
    obs = np.stack(obs)  # [K, C']
    keys = obs @ _dense(params["activity_keys"]["kernel"])
    f_a = np.stack([_softmax(keys @ q * scale) @ obs for q in params["activity_queries"]])
    qc = f_a @ _dense(params["corr_beta"]["kernel"])
    kc = f_a @ _dense(params["corr_gamma"]["kernel"])
    prior = np.array(mask, np.float64)
    for j in range(len(prior)):
      if mask_mode == "normalised":
        prior[j] = prior[j] / prior[j].sum()
      elif mask_mode == "scaled":
        prior[j] = params["mask_scale"][j] * prior[j]
      elif mask_mode == "signed":
        prior[j] = prior[j] + params["mask_correction"][j]
    corr = _softmax(qc @ kc.T * scale) + prior  # eq. 9
    f_ac = corr @ f_a  # eq. 8
    for name, feats, logits in (("out_activity", f_a, out_act), ("out_corr", f_ac, out)):
      row = []
      for j in range(len(feats)):
        if output == "shared":
          w = params[f"{name}_kernel"]
        elif output == "per_activity":
          w = params[f"{name}_kernel"][j]
        else:  # tied: the activity's own query
          w = params["activity_queries"][j] * params[f"{name}_scale"] * scale
        row.append(feats[j] @ w + params[f"{name}_bias"][j])
      logits.append(row)
  return np.array(out), np.array(out_act)


def test_matches_the_literal_equations():
  a, c = 5, 16
  labels = np.random.default_rng(0).random((40, a)) < 0.4
  mask = heads.correlation_mask(labels.T.astype(int) @ labels.astype(int))
  head = heads.MLARHead(
    a, num_observations=3, groups=4, features=8, mask_init=nn.initializers.constant(mask)
  )
  x = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, c))
  variables = head.init(jax.random.key(1), {"map": x}, train=False)
  params = jax.tree.map(np.asarray, variables["params"])
  params["out_corr_bias"] = np.arange(a, dtype=np.float32) * 0.1
  got = head.apply({**variables, "params": params}, {"map": x}, train=False)
  want, want_act = literal_mlar(params, mask, x)
  np.testing.assert_allclose(np.asarray(got["logits"]), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["logits_activity"]), want_act, rtol=1e-4, atol=1e-5)


def test_mask_matches_a_hand_count_and_survives_absent_classes():
  labels = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]])
  n = labels.T @ labels
  mask = heads.correlation_mask(n)
  for j, k in itertools.product(range(4), range(4)):
    nj = sum(labels[:, j])
    njk = sum(1 for row in labels if row[j] and row[k])
    assert mask[j, k] == pytest.approx(njk / nj if nj else 0.0)
  assert np.isfinite(mask).all() and (mask[3] == 0).all()  # class 3 never occurs
  head = heads.MLARHead(
    4, num_observations=2, groups=2, features=4, mask_init=nn.initializers.constant(mask)
  )
  x = jax.random.normal(jax.random.key(0), (2, 1, 2, 2, 4))
  variables = head.init(jax.random.key(1), {"map": x}, train=False)
  np.testing.assert_array_equal(variables["constants"]["correlation_mask"], mask)
  out = head.apply(variables, {"map": x}, train=False)
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_registry_head_holds_no_mask_array_and_inits_the_mask_from_the_labels():
  cfg = config_lib.base_config().model
  cfg.head = "mlar"
  cfg.mlar.update(num_observations=2, groups=2, features=4)
  cooc = np.array([[4, 1, 0], [1, 2, 0], [0, 0, 0]])
  stats = base.ClassStats(counts=np.diag(cooc), cooccurrence=cooc, num_videos=5)
  head = registry.HEADS.get("mlar")(cfg, 3, stats)
  # The module holds an initializer, not the [A, A] array (which its repr printed).
  hash(head)
  assert "0.25" not in repr(head) and "array" not in repr(head)
  x = jax.random.normal(jax.random.key(0), (1, 1, 2, 2, 4))
  variables = head.init(jax.random.key(1), {"map": x}, train=False)
  np.testing.assert_array_equal(
    variables["constants"]["correlation_mask"], heads.correlation_mask(cooc)
  )


@pytest.mark.parametrize("specific,corr", itertools.product([True, False], repeat=2))
def test_shapes_attention_and_gradients_for_every_switch(specific, corr):
  a, k = 6, 4
  head = heads.MLARHead(
    a,
    num_observations=k,
    groups=2,
    features=8,
    use_activity_specific=specific,
    use_correlation=corr,
    dropout_rate=0.5,
    mask_init=nn.initializers.constant(np.eye(a)),
  )
  x = jax.random.normal(jax.random.key(0), (3, 2, 3, 3, 8))
  variables = head.init(
    {"params": jax.random.key(1), "dropout": jax.random.key(2)}, {"map": x}, train=False
  )
  out, inter = head.apply(variables, {"map": x}, train=False, mutable=["intermediates"])
  assert set(out) == ({"logits", "logits_activity"} if corr else {"logits"})
  assert all(v.shape == (3, a) for v in out.values())
  maps = {name: v[0] for name, v in inter["intermediates"].items()}
  assert maps["attn_obs"].shape == (3, k, 2, 3, 3)
  np.testing.assert_allclose(maps["attn_obs"].sum(axis=(2, 3, 4)), 1.0, rtol=1e-5)
  assert ("attn_activity" in maps) == specific and ("attn_corr" in maps) == corr
  if specific:
    assert maps["attn_activity"].shape == (3, a, k)
    np.testing.assert_allclose(maps["attn_activity"].sum(-1), 1.0, rtol=1e-5)
  if corr:
    assert maps["attn_corr"].shape == (3, a, a)
    np.testing.assert_allclose(maps["attn_corr"].sum(-1), 1.0, rtol=1e-5)

  def loss(params):
    o = head.apply(
      {**variables, "params": params}, {"map": x}, train=True, rngs={"dropout": jax.random.key(3)}
    )
    return sum(jnp.sum(jnp.sin(v)) for v in o.values())

  grads = jax.grad(loss)(variables["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).sum() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


PAPER_PARAMS = {  # Table 3a/3b and Table 4: (A, K, n) -> parameters
  (157, 64, 1): 50.4e6,
  (157, 64, 8): 6.3e6,
  (157, 64, 32): 1.6e6,
  (157, 64, 64): 0.8e6,
  (157, 16, 32): 0.4e6,
  (157, 32, 32): 0.8e6,
  (157, 128, 32): 3.2e6,
  (1024, 64, 32): 1.7e6,
}


@pytest.mark.parametrize("a,k,n", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(a, k, n):
  head = heads.MLARHead(a, num_observations=k, groups=n, features=128)
  x = jnp.zeros((1, 4, 7, 7, 2048))
  shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), {"map": x}, train=False))
  count = sum(p.size for p in jax.tree.leaves(shapes["params"]))
  assert abs(count - PAPER_PARAMS[(a, k, n)]) / PAPER_PARAMS[(a, k, n)] < 0.10


# One backbone of each family (the full-size ones share the families' code
# and are built in test_models.py).
FAMILIES = [n for n in registry.BACKBONES.names() if n.endswith("_tiny") or n == "r3d_18"]


@pytest.mark.parametrize("backbone", FAMILIES)
def test_mlar_head_plugs_onto_every_backbone_family(backbone):
  cfg = config_lib.base_config().model
  cfg.backbone, cfg.head = backbone, "mlar"
  cfg.mlar.update(num_observations=8, groups=8, features=32)
  stats = base.ClassStats.from_labels(np.eye(5, dtype=np.int64).repeat(3, axis=0))
  model = registry.build_model(cfg, 5, stats)
  x = jnp.zeros((2, 8, 32, 32, 3))
  variables = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
  )
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out["logits"].shape == (2, 5) and out["logits_activity"].shape == (2, 5)


def _entropy_loop(p):
  return -sum(x * np.log(x) for x in p if x > 0)


def test_attention_diagnostics_against_plain_loops():
  a, k = 5, 4
  head = heads.MLARHead(a, num_observations=k, groups=2, features=8, dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (3, 2, 3, 3, 8))
  variables = head.init(jax.random.key(1), {"map": x}, train=False)
  _, inter = head.apply(variables, {"map": x}, train=False, mutable=["intermediates"])
  # Nested as a whole model nests it (the head under "head").
  got = {
    k: float(v) for k, v in heads.attention_diagnostics({"head": inter["intermediates"]}).items()
  }
  obs = np.asarray(inter["intermediates"]["attn_obs"][0], np.float64).reshape(3, k, -1)
  act = np.asarray(inter["intermediates"]["attn_activity"][0], np.float64)
  h_obs = [_entropy_loop(obs[b, i]) for b in range(3) for i in range(k)]
  h_act = [_entropy_loop(act[b, j]) for b in range(3) for j in range(a)]
  used = act.mean(axis=(0, 1))
  want = {
    "attn_obs_entropy": np.mean(h_obs) / np.log(18),
    "attn_obs_positions": np.mean(np.exp(h_obs)),
    "attn_activity_entropy": np.mean(h_act) / np.log(k),
    "attn_activity_observations": np.mean(np.exp(h_act)),
    "observations_used": np.exp(_entropy_loop(used)),
  }
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  # The ends of the scale: uniform attention over 18 positions, one-hot.
  uniform = {"attn_obs": (jnp.full((2, k, 2, 3, 3), 1 / 18),)}
  d = heads.attention_diagnostics(uniform)
  np.testing.assert_allclose([d["attn_obs_entropy"], d["attn_obs_positions"]], [1, 18], rtol=1e-5)
  onehot = {"attn_activity": (jax.nn.one_hot(jnp.zeros((2, a), int), k),)}
  d = heads.attention_diagnostics(onehot)
  np.testing.assert_allclose(
    [d["attn_activity_entropy"], d["attn_activity_observations"], d["observations_used"]],
    [0, 1, 1],
    atol=1e-6,
  )
  assert heads.attention_diagnostics({}) == {}


def _small_head(a, **kwargs):
  """An A-class MLAR head (K=3, n=4, C'=8) whose Mask comes from random
  labels; returns (head, mask)."""
  labels = np.random.default_rng(1).random((40, a)) < 0.4
  mask = heads.correlation_mask(labels.T.astype(int) @ labels.astype(int))
  head = heads.MLARHead(
    a,
    num_observations=3,
    groups=4,
    features=8,
    mask_init=nn.initializers.constant(mask),
    **kwargs,
  )
  return head, mask


@pytest.mark.parametrize(
  "output,mask_mode",
  [("per_activity", "add"), ("tied", "add"), ("shared", "normalised"), ("shared", "scaled"),
   ("per_activity", "signed")],
)  # fmt: skip
def test_variants_match_the_literal_equations(output, mask_mode):
  a, c = 5, 16
  head, mask = _small_head(a, output=output, mask_mode=mask_mode, query_init=0.02)
  x = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, c))
  variables = head.init(jax.random.key(1), {"map": x}, train=False)
  params = jax.tree.map(np.asarray, variables["params"])
  assert np.std(params["activity_queries"]) < 0.05  # query_init
  rng = np.random.default_rng(2)
  # Away from their initial values, so that each parameter matters.
  for name in ("mask_scale", "mask_correction", "out_corr_scale", "out_activity_scale"):
    if name in params:
      params[name] = params[name] + rng.normal(size=params[name].shape).astype(np.float32)
  got = head.apply({**variables, "params": params}, {"map": x}, train=False)
  want, want_act = literal_mlar(params, mask, x, output, mask_mode)
  np.testing.assert_allclose(np.asarray(got["logits"]), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["logits_activity"]), want_act, rtol=1e-4, atol=1e-5)
  if output == "tied":
    assert not any(k.endswith("_kernel") and k.startswith("out_") for k in params)


def test_without_activity_specific_features_the_correlation_map_is_a_per_class_scale():
  """Every row of F_A is the mean observation, and Attn_C's rows sum to 1, so
  (Attn_C + Mask) F_A = (1 + Mask's row sum) x the mean observation: the
  correlation output is the activity output's classifier form scaled per
  class, and Attn_C gets no gradient (README "The MLAR head's variants")."""
  a = 5
  head, mask = _small_head(a, use_activity_specific=False, dropout_rate=0.0)
  x = {"map": jax.random.normal(jax.random.key(0), (2, 2, 3, 3, 16))}
  variables = head.init(jax.random.key(1), x, train=False)
  params = variables["params"]
  # The activity output with the correlation output's weights and no bias:
  # w_corr[j] . mean observation.
  swapped = {
    **params,
    "out_activity_kernel": params["out_corr_kernel"],
    "out_activity_bias": jnp.zeros(a),
  }
  plain = head.apply({**variables, "params": swapped}, x, train=False)["logits_activity"]
  got = head.apply(variables, x, train=False)["logits"]
  want = (1 + mask.sum(axis=1)) * plain + params["out_corr_bias"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
  grads = jax.grad(
    lambda p: head.apply({**variables, "params": p}, x, train=False)["logits"].sum()
  )(params)
  assert all(float(jnp.abs(g).max()) < 1e-6 for g in jax.tree.leaves(grads["corr_beta"]))


def test_attention_pool_head_matches_a_plain_loop_and_starts_as_mean_pooling():
  b, t, h, w, c, a = 2, 2, 3, 3, 8, 5
  feats = jax.random.normal(jax.random.PRNGKey(0), (b, t, h, w, c))
  head = heads.AttentionPoolHead(a, features=4)
  variables = head.init(jax.random.PRNGKey(1), {"map": feats}, train=False)
  params = jax.tree.map(np.asarray, variables["params"])
  # Move the query off its near-zero init so the attention is not uniform.
  params["query"] = np.linspace(-2.0, 2.0, 4).astype(np.float32)
  out, inter = head.apply(
    {"params": params}, {"map": feats}, train=False, mutable=["intermediates"]
  )
  f = np.asarray(feats, np.float64).reshape(b, -1, c)
  for i in range(b):
    scores = [f[i, p] @ params["key"]["kernel"] @ params["query"] / 2.0 for p in range(len(f[i]))]
    attn = _softmax(np.array(scores))
    pooled = sum(attn[p] * f[i, p] for p in range(len(f[i])))
    want = pooled @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(out["logits"][i], want, rtol=1e-4, atol=1e-5)
  diag = heads.attention_diagnostics(inter["intermediates"])
  assert 0.0 < float(diag["attn_pool_entropy"]) < 1.0
  # At init the query is near zero: the head is global average pooling.
  init_out, init_inter = head.apply(
    variables, {"map": feats}, train=False, mutable=["intermediates"]
  )
  attn0 = np.asarray(init_inter["intermediates"]["attn_pool"][0])
  np.testing.assert_allclose(attn0, 1.0 / (t * h * w), rtol=0.05)


def test_attention_pool_is_a_registered_head():
  config = config_lib.base_config()
  config.model.head = "attention_pool"
  config.model.mlar.features = 16
  head = registry.HEADS.get("attention_pool")(config.model, 4, None)
  assert isinstance(head, heads.AttentionPoolHead) and head.features == 16
  assert registry.head_outputs(config.model) == ("logits",)
