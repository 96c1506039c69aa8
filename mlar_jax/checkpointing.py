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

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from typing import Any, Callable, Iterator, TypeVar

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


class StateMismatchError(CheckpointError):
  """A checkpoint is intact but holds another model's state (the message
  names the paths and both shapes); older checkpoints of the workdir would
  not fit either, so nothing falls back past it."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds `WORKDIR/run.lock` while a run writes the workdir.

  The lock is an advisory `flock` (released by the kernel when its process
  dies, however it dies) on a file that names its owner (host, PID, start
  time). A file naming an owner whose lock is gone is a stale lock: taken
  over with a warning. Only process 0 locks (the others write only their
  shards of the checkpoint, in step with it); a workdir on an object store
  (gs://) has no flock and is not locked.

  Raises:
    WorkdirLockedError naming the owner when it is held.
  """
  path = epath.Path(workdir) / "run.lock"
  if jax.process_index() != 0 or "://" in os.fspath(workdir):
    yield
    return
  with open(os.fspath(path), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "another process"
      raise WorkdirLockedError(
        f"{workdir} is in use by {owner}: wait for that run to finish (or stop it), "
        "or choose another --workdir"
      ) from None
    f.seek(0)
    previous = f.read().strip()
    if previous:
      logging.warning("Taking over the stale lock of %s (no longer running) on %s", previous, path)
    f.seek(0)
    f.truncate()
    f.write(
      json.dumps(
        {
          "host": socket.gethostname(),
          "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
      )
    )
    f.flush()
    try:
      yield
    finally:
      # Empty again: the next run finds no stale owner to report.
      f.seek(0)
      f.truncate()
      f.flush()
      fcntl.flock(f, fcntl.LOCK_UN)


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
    except StateMismatchError:
      raise
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


def saved_steps(
  workdir: str, cfg: ml_collections.ConfigDict, step: int = -1
) -> tuple[epath.Path, list[int]]:
  """The `checkpoints/` folder of `workdir` and its steps, for reading a
  saved model (`--mode eval`, explain). Creates nothing.

  Raises:
    FileNotFoundError: `step` (-1: any) is not among them.
  """
  directory = epath.Path(os.path.abspath(os.fspath(workdir))) / "checkpoints"
  steps = []
  if directory.exists():
    with make_manager(workdir, cfg) as manager:
      steps = manager.all_steps()
  if (step < 0 and not steps) or (step >= 0 and step not in steps):
    raise FileNotFoundError(
      f"No checkpoint {'(latest)' if step < 0 else step} in {directory}; steps there: "
      f"{sorted(steps)}"
    )
  return directory, list(steps)


def load_saved(directory: epath.Path, steps: list[int], step: int = -1) -> tuple[int, Any]:
  """The model variables of checkpoint `step` of `saved_steps`, as host
  arrays: -1 the newest that restores (as training resumes: a damaged one is
  reported in one line and the previous tried), else that one.

  Raises:
    CheckpointError: it (or, for -1, every one) cannot be restored.
  """
  load = lambda s: load_variables(os.fspath(directory / str(s)))
  if step < 0:
    step, variables, _ = restore_newest(steps, load, directory)
    return step, variables
  try:
    return step, load(step)
  except Exception as e:  # noqa: BLE001  (orbax and TensorStore raise many kinds)
    raise CheckpointError(
      f"Checkpoint {step} in {directory} cannot be restored ({error_line(e)})"
    ) from e


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


def load_variables(paths: str, skip: str = "") -> dict[str, Any]:
  """{"params", "model_state"} as host arrays from other runs' checkpoints.

  Args:
    paths: comma-separated; each a workdir, its `checkpoints` folder (the
      latest step is used), or a `checkpoints/STEP` folder. Several
      checkpoints are combined leaf by leaf (a video and an audio run into a
      fused model: `backbone/...` from one, `audio_backbone/...` from the
      other).
    skip: regex of paths (`config.init_from_skip`) left out when combining
      several checkpoints (both runs' `head/`).

  Raises:
    ValueError naming a path held by two of the checkpoints (and not skipped).
  """
  parts = [p.strip() for p in paths.split(",") if p.strip()]
  loaded = [_load_variables(p) for p in parts]
  if len(loaded) == 1:
    return loaded[0]
  combined: dict[str, Any] = {}
  regex = re.compile(skip) if skip else None
  for collection in ("params", "model_state"):
    flat, owner = {}, {}
    for path, tree in zip(parts, loaded):
      for key, value in traverse_util.flatten_dict(dict(tree[collection] or {}), sep="/").items():
        if regex is not None and regex.search(key):
          continue
        if key in flat:
          raise ValueError(
            f"init_from: {collection}/{key} is in both {owner[key]} and {path}; "
            "skip it in one of them with init_from_skip"
          )
        flat[key], owner[key] = value, path
    combined[collection] = traverse_util.unflatten_dict(flat, sep="/")
  return combined


def _load_variables(path: str) -> dict[str, Any]:
  """`load_variables` of one checkpoint."""
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
  tree = _state_metadata(root)
  with ocp.PyTreeCheckpointer() as checkpointer:
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(root / "state", args=ocp.args.PyTreeRestore(restore_args=args))
  return {"params": restored["params"], "model_state": restored.get("model_state", {})}


def _state_metadata(root: epath.Path) -> Any:
  """The tree of array metadata (shape, dtype) of `root/state`."""
  # The handler, not a Checkpointer: that one also looks for a step-level
  # metadata file inside `state/` and warns that it is missing.
  meta = ocp.PyTreeCheckpointHandler().metadata(root / "state")
  return getattr(meta, "tree", meta)


def state_mismatches(root: epath.Path, abstract_state: Any) -> list[str]:
  """Where checkpoint folder `root` and `abstract_state` disagree in the
  params and model state: "PATH: checkpoint SHAPE, model SHAPE" per leaf
  (missing on either side included), sorted."""
  saved = _state_metadata(root)
  problems = []
  for part in ("params", "model_state"):
    old = traverse_util.flatten_dict(dict(saved.get(part) or {}), sep="/")
    new = traverse_util.flatten_dict(dict(getattr(abstract_state, part) or {}), sep="/")
    for key in sorted(old.keys() | new.keys()):
      a = tuple(old[key].shape) if key in old else "absent"
      b = tuple(new[key].shape) if key in new else "absent"
      if a != b:
        problems.append(f"{part}/{key}: checkpoint {a}, model {b}")
  return problems


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

  Raises:
    StateMismatchError: the checkpoint holds other shapes or parameters than
      `abstract_state` (checked before orbax reads an array).
  """
  root = epath.Path(manager.directory) / str(step)
  problems = state_mismatches(root, abstract_state)
  if problems:
    shown = "; ".join(problems[:4]) + (
      f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
    )
    raise StateMismatchError(
      f"Checkpoint {step} in {manager.directory} holds another model's state ({len(problems)} "
      f"differences: {shown})"
    )
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]
