"""orbax checkpoints of the train state and the grain iterator.

A checkpoint `WORKDIR/checkpoints/STEP/` holds two items: `state` (params,
batch statistics, optimizer state, step; saved asynchronously, each process
writing its shards) and `data` (the grain iterator position, one JSON file per
process). Restoring both gives exactly the batches and updates of an
uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


def make_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A manager over `workdir/checkpoints` keeping the latest `cfg.keep` steps.

  Args:
    workdir: run directory.
    cfg: `config.checkpoint` (keep, async_save).
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep, create=True,
      enable_async_checkpointing=cfg.async_save)
  # orbax needs an absolute path; a relative --workdir is relative to the cwd.
  directory = epath.Path(os.path.abspath(os.fspath(workdir))) / "checkpoints"
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: grain.DatasetIterator | None) -> None:
  """Starts saving `state` (and the iterator position) as checkpoint `step`."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items))


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings to restore into."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: grain.DatasetIterator | None = None) -> Any:
  """Restores checkpoint `step` into the layout of `abstract_state`.

  Args:
    manager: the run's manager.
    step: checkpoint step (see `manager.all_steps()`).
    abstract_state: ShapeDtypeStructs with shardings
      (`abstract_with_shardings`).
    data_iter: if given, its position is restored in place too.

  Returns:
    The restored state.
  """
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]
