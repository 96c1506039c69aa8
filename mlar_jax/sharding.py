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
per dimension) place the named leaves; every other leaf is replicated, or
with `config.sharding.params = "fsdp"` split over `fsdp` along its largest
dimension that `fsdp` divides when it has at least `fsdp_min_size` elements
(the big_vision rule). One switch moves between data parallel and FSDP.

Activations: modules name their axes (`nn.with_logical_constraint`, e.g.
("batch", "time", "height", "width", "channels") for a feature map);
`LOGICAL_RULES` maps those names to mesh axes inside `constraints(mesh)`.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterator, Sequence

import flax.linen as nn
from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical activation axis -> mesh axes.
LOGICAL_RULES = (
    ("batch", BATCH_AXES), ("time", None), ("height", None), ("width", None),
    ("channels", None), ("activities", "model"), ("features", None),
)

# Default parameter rules: the MLAR head's per-activity leaves (and the
# linear head's classifier) split their activity dimension over `model`.
DEFAULT_RULES = (
    (r"head/activity_queries$", ("model", None)),
    (r"head/out_\w+_bias$", ("model",)),
    (r"head/correlation_mask$", ("model", None)),
    (r"head/classifier/kernel$", (None, "model")),
    (r"head/classifier/bias$", ("model",)),
)


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
    raise ValueError(f"config.mesh: data={shape[0]} x fsdp={shape[1]} x model={shape[2]} "
                     f"!= {num_devices} devices")
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
  function being traced (wrap the body of a jitted step; the abstract mesh
  is what may be set inside `jax.jit`)."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(LOGICAL_RULES):
    yield


def _path(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in key_path)


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def _rule_spec(shape: tuple[int, ...], axes: Sequence[str | None], mesh: Mesh) -> P:
  """A rule's axes for `shape`, dropping an axis its dimension cannot split
  into (e.g. 157 activities over model=2 stay whole)."""
  if len(axes) != len(shape):
    return P()
  return P(*[a if a is not None and shape[d] % mesh.shape[a] == 0 else None
             for d, a in enumerate(axes)])


def leaf_spec(path: str, shape: tuple[int, ...], mesh: Mesh,
              cfg: ml_collections.ConfigDict) -> P:
  """The PartitionSpec of one state leaf (params, model_state or optimizer
  state: their paths end alike, so a parameter and its moments match)."""
  for pattern, axes in cfg.get("rules", DEFAULT_RULES):
    if re.search(pattern, path):
      return _rule_spec(shape, axes, mesh)
  fsdp = mesh.shape["fsdp"] if cfg.params == "fsdp" else 1
  return _fsdp_spec(shape, fsdp, cfg.fsdp_min_size)


def state_shardings(abstract_state: Any, mesh: Mesh,
                    cfg: ml_collections.ConfigDict) -> Any:
  """NamedShardings for every leaf of a train state (from `jax.eval_shape`).

  Args:
    abstract_state: pytree of ShapeDtypeStruct.
    mesh: the (data, fsdp, model) mesh.
    cfg: `config.sharding` (params: "replicated" | "fsdp", fsdp_min_size, rules).
  """
  if cfg.params not in ("replicated", "fsdp"):
    raise ValueError(f"config.sharding.params must be replicated|fsdp, got {cfg.params!r}")
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, leaf_spec(_path(p), tuple(x.shape), mesh, cfg)),
      abstract_state)


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays split along the batch axis.

  Each process passes its rows of the global batch (`pipeline.train_dataset`
  gives process p the p-th contiguous block); its devices hold that block.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
