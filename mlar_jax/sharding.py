"""Device mesh, data and state shardings from config.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism whose devices also split the large parameters). The global batch
is split over both. Parameters are replicated, or with
`config.sharding.params = "fsdp"` each leaf of at least
`config.sharding.fsdp_min_size` elements is split along its largest
dimension that `fsdp` divides (the big_vision rule); XLA inserts the
all-gathers.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes; one of them may be -1 for 'the rest of the devices'."""
  shape = [cfg.data, cfg.fsdp]
  if shape.count(-1) > 1:
    raise ValueError("config.mesh: at most one of data, fsdp may be -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices do not divide by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh: data={shape[0]} x fsdp={shape[1]} != "
                     f"{num_devices} devices")
  return tuple(shape)


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The (data, fsdp) mesh over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh,
                    cfg: ml_collections.ConfigDict) -> Any:
  """NamedShardings for every leaf of a train state (from `jax.eval_shape`).

  Args:
    abstract_state: pytree of ShapeDtypeStruct.
    mesh: the (data, fsdp) mesh.
    cfg: `config.sharding` (params: "replicated" | "fsdp", fsdp_min_size).
  """
  if cfg.params not in ("replicated", "fsdp"):
    raise ValueError(f"config.sharding.params must be replicated|fsdp, got {cfg.params!r}")
  fsdp = mesh.shape["fsdp"] if cfg.params == "fsdp" else 1
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _leaf_spec(x.shape, fsdp, cfg.fsdp_min_size)),
      abstract_state)


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays split along the batch axis."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
