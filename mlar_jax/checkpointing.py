"""orbax checkpoints of the train state and the grain iterator.

A checkpoint `WORKDIR/checkpoints/STEP/` holds three items: `state` (params,
batch statistics, optimizer state, step; saved asynchronously, each process
writing its shards), `data` (the grain iterator position, one JSON file per
process) and `meta` (the number of processes that wrote it). Restoring state
and data gives exactly the batches and updates of an uninterrupted run. On a
different number of processes the iterator files do not apply; the trainer
then restarts the data at the checkpoint's global batch (the data order is
global, `pipeline.HostRows`), and the sharded state restores onto any mesh.
"""

from __future__ import annotations

import os
import re
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util


def make_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A manager over `workdir/checkpoints` keeping the latest `cfg.keep` steps.

  Args:
    workdir: run directory.
    cfg: `config.checkpoint` (keep, async_save).
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=cfg.keep, create=True, enable_async_checkpointing=cfg.async_save
  )
  # orbax needs an absolute path; a relative --workdir is relative to the cwd.
  directory = epath.Path(os.path.abspath(os.fspath(workdir))) / "checkpoints"
  return ocp.CheckpointManager(directory, options=options)


def save(
  manager: ocp.CheckpointManager, step: int, state: Any, data_iter: grain.DatasetIterator | None
) -> None:
  """Starts saving `state` (and the iterator position) as checkpoint `step`."""
  items = {
    "state": ocp.args.StandardSave(state),
    "meta": ocp.args.JsonSave({"process_count": jax.process_count()}),
  }
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items))


def saved_process_count(manager: ocp.CheckpointManager, step: int) -> int | None:
  """How many processes wrote checkpoint `step` (None: not recorded)."""
  if not (epath.Path(manager.directory) / str(step) / "meta").exists():
    return None
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return int(meta["meta"]["process_count"])


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings to restore into."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
  )


def load_variables(path: str) -> dict[str, Any]:
  """{"params", "model_state"} as host arrays from another run's checkpoint.

  Args:
    path: a workdir, its `checkpoints` folder (the latest step is used), or a
      `checkpoints/STEP` folder.
  """
  root = epath.Path(os.path.abspath(os.fspath(path)))
  if not (root / "state").exists():
    directory = root / "checkpoints" if (root / "checkpoints").exists() else root
    with ocp.CheckpointManager(directory) as manager:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"init_from={path}: no checkpoint in {directory}")
    root = directory / str(step)
  # As host numpy arrays: the checkpoint may come from another topology (a
  # pod run, 2 processes) than this one.
  with ocp.PyTreeCheckpointer() as checkpointer:
    meta = checkpointer.metadata(root / "state")
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(root / "state", args=ocp.args.PyTreeRestore(restore_args=args))
  return {"params": restored["params"], "model_state": restored.get("model_state", {})}


def merge_variables(fresh: Any, loaded: Any, skip: str = "") -> tuple[Any, list[str]]:
  """`fresh` with every leaf replaced by `loaded`'s at the same path.

  Args:
    fresh: the new model's tree (arrays or ShapeDtypeStructs).
    loaded: the checkpoint's tree.
    skip: regex of paths ("head/out_corr_bias") kept from `fresh`.

  Returns:
    (merged tree, the skipped paths).

  Raises:
    ValueError listing every path that is missing on either side or differs in
    shape, with the shapes, unless `skip` matches it.
  """
  regex = re.compile(skip) if skip else None
  new = traverse_util.flatten_dict(fresh, sep="/")
  old = traverse_util.flatten_dict(loaded, sep="/")
  merged, skipped, problems = {}, [], []
  for key, value in new.items():
    if regex is not None and regex.search(key):
      merged[key] = value
      skipped.append(key)
    elif key not in old:
      problems.append(f"  {key}: {tuple(value.shape)} not in the checkpoint")
    elif tuple(old[key].shape) != tuple(value.shape):
      problems.append(f"  {key}: model {tuple(value.shape)} != checkpoint {tuple(old[key].shape)}")
    else:
      merged[key] = old[key]
  for key in old:
    if key not in new and not (regex is not None and regex.search(key)):
      problems.append(f"  {key}: {tuple(old[key].shape)} in the checkpoint, not in the model")
  if problems:
    raise ValueError(
      "Checkpoint does not match the model (set init_from_skip to keep "
      "fresh values for some paths):\n" + "\n".join(sorted(problems))
    )
  return traverse_util.unflatten_dict(merged, sep="/"), skipped


def restore(
  manager: ocp.CheckpointManager,
  step: int,
  abstract_state: Any,
  data_iter: grain.DatasetIterator | None = None,
) -> Any:
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
