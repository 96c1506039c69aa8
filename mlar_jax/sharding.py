"""Device mesh, data, parameter and activation shardings from config.

The mesh has three axes:
  * `data`: pure data parallelism;
  * `fsdp`: data parallelism whose devices also split the large parameters
    (and their optimizer state); XLA inserts the all-gathers and
    reduce-scatters;
  * `model`: splits the MLAR head's activity dimension (per-activity queries,
    output biases, the correlation mask, and the [B, A, C'] activity
    features), for class counts in the thousands; 1 by default.
The global batch is split over `data` x `fsdp`.

Parameters: `config.sharding.rules` (regex over the leaf's path -> mesh axis
per dimension; default `config_lib.SHARDING_RULES`) place the named leaves;
every other leaf is replicated, or with `config.sharding.params = "fsdp"`
split over `fsdp` along its largest dimension that `fsdp` divides when it has
at least `fsdp_min_size` elements (the big_vision rule). One switch moves
between data parallel and FSDP.

Activations: modules name their axes (`nn.with_logical_constraint`, e.g.
("batch", "time", "height", "width", "channels") for a feature map);
`LOGICAL_RULES` maps those names to mesh axes inside `constraints(mesh)`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlar_jax import config_lib

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical activation axis -> mesh axes.
LOGICAL_RULES = (
  ("batch", BATCH_AXES),
  ("time", None),
  ("height", None),
  ("width", None),
  ("channels", None),
  ("activities", "model"),
  ("features", None),
)

# How parameters are laid out: `config.sharding.params`.
PARAM_MODES = ("replicated", "fsdp")


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, model) sizes; one of them may be -1 for 'the rest'."""
  shape = [cfg.data, cfg.fsdp, cfg.get("model", 1)]
  if shape.count(-1) > 1:
    raise ValueError("config.mesh: at most one of data, fsdp, model may be -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices do not divide by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"config.mesh: data={shape[0]} x fsdp={shape[1]} x model={shape[2]} != {num_devices} devices"
    )
  return tuple(shape)


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, model) mesh over `devices` (default: all devices).

  On TPU the device order follows the physical torus (`mesh_utils`), so the
  `model` and `fsdp` collectives run over neighbouring chips; elsewhere the
  order is `jax.devices()`'s: process by process, so each process's devices
  hold a contiguous block of the global batch.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(cfg, len(devices))
  grid = np.asarray(devices).reshape(shape)
  if devices[0].platform == "tpu":
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

    try:
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (AssertionError, ValueError, NotImplementedError) as e:
      # e.g. a v4 topology described with one device per TensorCore (no
      # megacore): no physical-torus order; keep the devices' own order.
      logging.warning("Device mesh in plain device order (%s)", e)
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def constraints(mesh: Mesh) -> Iterator[None]:
  """Activates `LOGICAL_RULES` and `mesh` for the logical constraints of a
  function being traced (the abstract mesh is what may be set inside
  `jax.jit`). Steps take it through `with_constraints`."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def with_constraints(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """`fn` traced with the modules' logical activation constraints mapped onto
  `mesh`: the one way a pure step function becomes the step for a mesh.

  The pure function stays usable without a mesh (e.g. to count a model's
  FLOPs unpartitioned); the constraints are what make XLA keep activations
  split as `LOGICAL_RULES` says inside `jax.jit` over `mesh`.
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with constraints(mesh):
      return fn(*args, **kwargs)

  return wrapped


def _path(key_path) -> str:
  return "/".join(
    str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path
  )


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def _rule_spec(
  pattern: str, path: str, shape: tuple[int, ...], axes: Sequence[str | None], mesh: Mesh
) -> P:
  """A rule's axes for `shape`, dropping an axis its dimension cannot split
  into (e.g. 157 activities over model=2 stay whole).

  Raises:
    ValueError naming the rule when its rank is not the leaf's: a rule that
    matches the wrong leaves would otherwise leave them silently replicated.
  """
  if len(axes) != len(shape):
    raise ValueError(
      f"config.sharding.rules: rule ({pattern!r}, {tuple(axes)}) has {len(axes)} axes but "
      f"matches {path} of shape {tuple(shape)}; give one mesh axis (or None) per dimension"
    )
  unknown = [a for a in axes if a is not None and a not in mesh.shape]
  if unknown:
    raise ValueError(
      f"config.sharding.rules: rule ({pattern!r}, {tuple(axes)}) names "
      f"{unknown}, not mesh axes {list(mesh.shape)}"
    )
  return P(
    *[a if a is not None and shape[d] % mesh.shape[a] == 0 else None for d, a in enumerate(axes)]
  )


def leaf_spec(path: str, shape: tuple[int, ...], mesh: Mesh, cfg: ml_collections.ConfigDict) -> P:
  """The PartitionSpec of one state leaf (params, model_state or optimizer
  state: their paths end alike, so a parameter and its moments match)."""
  for pattern, axes in cfg.rules:
    if re.search(pattern, path):
      return _rule_spec(pattern, path, shape, axes, mesh)
  fsdp = mesh.shape["fsdp"] if cfg.params == "fsdp" else 1
  return _fsdp_spec(shape, fsdp, cfg.fsdp_min_size)


def state_shardings(abstract_state: Any, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
  """NamedShardings for every leaf of a train state (from `jax.eval_shape`).

  Args:
    abstract_state: pytree of ShapeDtypeStruct.
    mesh: the (data, fsdp, model) mesh.
    cfg: `config.sharding` (params: "replicated" | "fsdp", fsdp_min_size, rules).
  """
  return jax.tree_util.tree_map_with_path(
    lambda p, x: NamedSharding(mesh, leaf_spec(_path(p), tuple(x.shape), mesh, cfg)), abstract_state
  )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.mesh` and `config.sharding` (the mesh's size is checked against
  the devices by `mesh_shape`, the batch against the mesh by
  `validate_for_mesh`)."""
  config_lib.check_choice(config, "sharding.params", PARAM_MODES)
  shape = [config.mesh.data, config.mesh.fsdp, config.mesh.model]
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    config_lib.fail("mesh", dict(config.mesh), "sizes must be positive, one of them may be -1")
  config_lib.check_positive(config, "sharding.fsdp_min_size")
  rules = config.sharding.rules
  if not isinstance(rules, (tuple, list)):
    config_lib.fail("sharding.rules", rules, "must be a tuple of (regex, (axis or None, ...))")
  for rule in rules:
    if (
      not isinstance(rule, (tuple, list))
      or len(rule) != 2
      or not isinstance(rule[0], str)
      or not isinstance(rule[1], (tuple, list))
      or any(a is not None and a not in AXES for a in rule[1])
    ):
      config_lib.fail(
        "sharding.rules", rule, f"must be (regex, (axis or None, ...)) with axes from {list(AXES)}"
      )
    try:
      re.compile(rule[0])
    except re.error as e:
      config_lib.fail("sharding.rules", rule, f"is not a valid regex: {e}")


def validate_for_mesh(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Checks the batch sizes against the mesh and the process count."""
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % batch_devices:
    config_lib.fail(
      "batch_size",
      config.batch_size,
      f"must be a multiple of the {batch_devices} devices of the mesh's data and fsdp axes",
    )
  # Evaluation batches are padded up to a multiple of the devices instead.
  for key in ("batch_size", "eval.batch_size"):
    value = config_lib.get(config, key)
    if value % jax.process_count():
      config_lib.fail(key, value, f"must be a multiple of the {jax.process_count()} processes")


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays split along the batch axis.

  Each process passes its rows of the global batch (`pipeline.train_dataset`
  gives process p the p-th contiguous block); its devices hold that block.
  """
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )
