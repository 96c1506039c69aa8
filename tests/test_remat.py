"""config.model.remat: checkpointed residual blocks compute the same function.

Rematerialisation may only change what the backward pass stores, never the
model: the parameter tree, the outputs, the batch-norm updates and the
gradients must be those of the plain backbone, and each policy must do
what its name says (the jaxpr of the gradient recomputes, or does not
recompute, the blocks' convolutions).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from mlar_jax import config_lib
from mlar_jax.models import registry
from mlar_jax.models import video_resnets as vr

POLICIES = [p for p in vr.REMAT_POLICIES if p != "none"]
# Every backbone family and block kind: Bottleneck (+ CSN / TSM partials),
# BasicBlock, NonLocal, SlowFast's pathways, X3DBlock.
TINY = ["i3d_tiny", "csn_tiny", "tsm_tiny", "resnet3d_tiny", "nl_tiny", "slowfast_tiny", "x3d_tiny"]


def _backbone(name: str, remat: str):
  cfg = config_lib.base_config().model
  cfg.backbone, cfg.remat = name, remat
  return registry.build_backbone(cfg)


def _clip(batch: int = 2) -> jnp.ndarray:
  """[batch, 8, 32, 32, 3]: 8 frames, a multiple of SlowFast's alpha."""
  return jax.random.normal(jax.random.key(0), (batch, 8, 32, 32, 3))


def _loss_fn(model, variables, x):
  """params -> (a scalar of every output, (outputs, new batch stats)), in
  training mode, so the batch norms use and update batch statistics."""

  def loss(params):
    out, state = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(out["pooled"] ** 2) + jnp.sum(jnp.sin(out["map"])), (out, state)

  return loss


# jax.checkpoint's primitive, by its name in this jax version ("remat2" in 0.10).
CHECKPOINT = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).jaxpr.eqns[0].primitive.name


def _count(jaxpr, name: str) -> int:
  """Equations named `name` in `jaxpr` and every jaxpr nested in it."""
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == name
    for sub in jax_core.jaxprs_in_params(eqn.params):
      n += _count(sub, name)
  return n


@pytest.mark.parametrize("name", TINY)
def test_remat_keeps_the_parameter_tree_and_recomputes_as_named(name):
  x = _clip()
  grads, checkpoints = {}, {}
  for remat in vr.REMAT_POLICIES:
    model = _backbone(name, remat)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(1), x, train=False))
    # The forward pass holds one checkpoint per residual block; the gradient's
    # jaxpr has them inlined, with the recomputation in its backward half.
    forward = jax.make_jaxpr(lambda v, m=model: m.apply(v, x, train=False))(variables).jaxpr
    checkpoints[remat] = _count(forward, CHECKPOINT)
    grads[remat] = jax.make_jaxpr(
      lambda v, m=model: jax.grad(_loss_fn(m, v, x), has_aux=True)(v["params"])
    )(variables).jaxpr
    # The same paths, shapes and dtypes: checkpoints of either setting load.
    shapes = jax.tree_util.tree_map_with_path(lambda p, a: (jax.tree_util.keystr(p), a), variables)
    if remat == "none":
      plain = shapes
    else:
      assert shapes == plain, remat
  convs = {r: _count(j, "conv_general_dilated") for r, j in grads.items()}
  assert checkpoints["none"] == 0
  for remat in POLICIES:
    assert checkpoints[remat] > 0, remat
  # "block" keeps nothing: the backward pass runs the blocks' forward
  # convolutions again. "convs" keeps their outputs: no convolution is rerun.
  assert convs["block"] > convs["none"], convs
  assert convs["convs"] == convs["none"], convs


# One family for the numerics (the slowest part of the suite); the test
# above checks every family is checkpointed per block as named.
@pytest.mark.parametrize("name", ["nl_tiny"])
def test_remat_gives_the_same_outputs_statistics_and_gradients(name):
  x = _clip()
  plain = _backbone(name, "none")
  variables = plain.init(jax.random.key(1), x, train=False)
  (_, (want_out, want_stats)), want_grad = jax.jit(
    jax.value_and_grad(_loss_fn(plain, variables, x), has_aux=True)
  )(variables["params"])
  want_eval = jax.jit(lambda v: plain.apply(v, x, train=False))(variables)
  # Float tolerance: the recomputing program is fused differently (XLA:CPU's
  # YNNPACK fusions, cli.CPU_XLA_FLAGS, reorder its reductions: up to 6e-5
  # relative on a gradient); a recomputation that differs (another dropout
  # mask, statistics of the wrong pass) is off by far more.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for remat in POLICIES:
    model = _backbone(name, remat)
    (_, (out, stats)), grad = jax.jit(
      jax.value_and_grad(_loss_fn(model, variables, x), has_aux=True)
    )(variables["params"])
    jax.tree.map(close, out, want_out)
    jax.tree.map(close, stats, want_stats)
    jax.tree.map(close, grad, want_grad)
    jax.tree.map(
      close, jax.jit(lambda v, m=model: m.apply(v, x, train=False))(variables), want_eval
    )


def test_remat_is_validated_and_may_change_on_resume():
  config = config_lib.base_config()
  config.model.remat = "dots"
  with pytest.raises(ValueError, match=r"config.model.remat='dots': unknown; choose from \["):
    registry.validate_config(config)
  with pytest.raises(ValueError, match="remat='dots'"):
    vr.remat_block(vr.Bottleneck, "dots")
  # Memory against FLOPs, not the model: a run may resume with another policy.
  saved = config_lib.base_config().to_dict()
  refused, allowed = config_lib.config_changes(saved, config.to_dict())
  assert refused == [] and allowed == ["model.remat: none -> dots"]
