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
import time
from typing import Any, Callable, TypeVar

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

T = TypeVar("T")


class CheckpointError(RuntimeError):
  """No checkpoint could be restored; the message is one line for the user."""


def error_line(e: BaseException) -> str:
  """`e` as one short line: the type and first message line of its root
  cause (orbax wraps TensorStore's "OUT_OF_RANGE: Error reading ... at local
  file ..." in errors whose own message is dozens of lines of specs)."""
  while e.__cause__ is not None:
    e = e.__cause__
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def restore_newest(
  steps: list[int], restore_fn: Callable[[int], T], directory: Any
) -> tuple[int, T, list[int]]:
  """Restores the newest of `steps` that restores, newest first.

  A checkpoint that fails (a truncated or missing file, a half-written
  step) is reported in one warning line and the previous one is tried;
  nothing is moved or deleted here.

  Args:
    steps: the checkpoint steps to try.
    restore_fn: step -> restored value; any exception counts as failure.
    directory: the checkpoints folder, for the messages.

  Returns:
    (step, restore_fn(step), the newer steps that failed).

  Raises:
    CheckpointError if none restores (naming the latest's error).
  """
  failed: list[int] = []
  first_error = None
  for step in sorted(steps, reverse=True):
    try:
      return step, restore_fn(step), failed
    # orbax and TensorStore raise ValueError, OSError, plain Exception... for
    # a damaged file: whatever it is, an older checkpoint may still be good.
    except Exception as e:  # noqa: BLE001
      logging.warning(
        "Checkpoint %d in %s cannot be restored (%s); trying the previous one",
        step,
        directory,
        error_line(e),
      )
      failed.append(step)
      first_error = first_error or e
  raise CheckpointError(
    f"No checkpoint in {directory} can be restored (steps {sorted(steps)}); the latest fails "
    f"with {error_line(first_error)}"
  ) from first_error


def move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Renames checkpoint `step` to `STEP.corrupt-TIME` (kept for inspection,
  invisible to orbax) and makes `manager` forget it.

  Needed before training past `step` again: orbax skips saving a step at or
  below its latest one, and would count the damaged folder as one of the
  `keep` checkpoints. Process 0 renames; the caller's processes then reload.

  Returns:
    The new path.
  """
  directory = epath.Path(manager.directory)
  # No "_" in the suffix: orbax reads "NAME_123" as step 123.
  target = directory / f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
  if jax.process_index() == 0:
    (directory / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"move_aside_{step}")
  manager.reload()
  return target


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
