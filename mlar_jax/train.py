"""Training and evaluation loop: free functions over a pytree train state."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mlar_jax import (
  checkpointing,
  config_lib,
  evaluate,
  losses,
  optimizers,
  sharding,
  validation,
)
from mlar_jax.data import base, pipeline
from mlar_jax.models import heads
from mlar_jax.models import registry as models


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes; a pytree that orbax saves as is."""

  step: jax.Array  # [] int32, number of updates applied
  params: Any
  # Non-trainable model variables by collection: "batch_stats" (updated by
  # the forward pass in training) and "constants" (fixed at init from the
  # training labels, e.g. the MLAR correlation mask; saved so that
  # evaluation uses the same values).
  model_state: Any
  opt_state: Any


def init_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  inputs: tuple[jax.ShapeDtypeStruct, ...],
  rng: jax.Array,
) -> TrainState:
  """Fresh parameters, model state and optimizer state.

  Args:
    model: the classifier or detector.
    tx: the optimizer.
    inputs: the model's positional inputs (`model_input_spec`): the video
      [B, T, S, S, 3] (and a detector's boxes [B, M, 4], valid [B, M]); B = 1
      will do.
    rng: the initialisation key.
  """
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init(
    {"params": params_rng, "dropout": dropout_rng},
    *(jnp.zeros(x.shape, x.dtype) for x in inputs),
    train=False,
  )
  params = variables.pop("params")
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=dict(variables),
    opt_state=tx.init(params),
  )


# The train step's metrics entry {collection: [] bool}, popped by the loop.
FINITE = "finite"


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value, or a checkpoint holds one.

  Its message is one line meant for the user (naming the step, the
  collection and how to continue); `main` prints it without a traceback.
  """


def finite_flags(state: TrainState, loss: jax.Array | None = None) -> dict[str, jax.Array]:
  """Whether each collection of `state` (and `loss`) is all finite.

  One reduction per collection, cheap beside a step; traceable, so the train
  step returns it with its metrics and nothing large leaves the device.

  Args:
    state: a train state.
    loss: the step's loss, if any.

  Returns:
    {"params", one entry per model state collection ("batch_stats",
    "constants"), "opt_state"[, "loss"]: [] bool}.
  """

  def all_finite(tree) -> jax.Array:
    # Integer leaves (step counts) are finite by construction.
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return (
      jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.array(True)
    )

  tree = {"params": state.params, **dict(state.model_state), "opt_state": state.opt_state}
  if loss is not None:
    tree["loss"] = loss
  return {name: all_finite(value) for name, value in tree.items()}


def nonfinite_names(flags: dict[str, Any]) -> list[str]:
  """The collections whose `finite_flags` entry is False: the state's first
  (params, model state collections, opt_state), then loss, a fixed order
  restored here because jit returns dicts sorted by key."""
  rank = {"params": 0, "opt_state": 2, "loss": 3}
  names = sorted(flags, key=lambda name: (rank.get(name, 1), name))
  return [name for name in names if not bool(flags[name])]


@dataclasses.dataclass(frozen=True)
class Stopped:
  """What `train_and_evaluate` returns when a signal stopped it after saving."""

  signum: int  # the signal (SIGTERM, SIGINT)
  step: int  # the checkpoint it saved
  message: str  # one line for the user


class StopRequest:
  """SIGTERM (preemption, a job's time limit) and SIGINT (Ctrl-C) ask the loop
  to save at the next step boundary and stop.

  One process: a Python handler sets a flag that the loop reads after each
  step. Several processes: all must save the same step, so the decision is
  JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`):
  its runtime catches SIGTERM in C++ on whichever process gets it (even one
  blocked in a collective), tells the others, and every process reaches the
  same step; SIGINT is forwarded to it as SIGTERM. A second SIGINT on one
  process interrupts at once.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._multi = jax.process_count() > 1

  def __enter__(self) -> StopRequest:
    # Signal handlers can only be set from the main thread (a test or a
    # notebook calling train_and_evaluate elsewhere gets no handling).
    if threading.current_thread() is threading.main_thread():
      signums = [signal.SIGINT] if self._multi else [signal.SIGINT, signal.SIGTERM]
      for signum in signums:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning(
      "Received %s: saving a checkpoint at the next step, then stopping (Ctrl-C again: "
      "stop at once)",
      signal.Signals(signum).name,
    )
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process: the same step)."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None


def model_input_spec(
  config: ml_collections.ConfigDict, num_classes: int
) -> tuple[jax.ShapeDtypeStruct, ...]:
  """`pipeline.model_inputs`' shapes for a batch of one (`pipeline.batch_spec`), in
  float32: what `init_state` initialises the model with."""
  spec = pipeline.batch_spec(config.data, 1, num_classes)
  return jax.eval_shape(lambda batch: pipeline.model_inputs(config, batch), spec)


def output_loss(
  config: ml_collections.ConfigDict,
  loss_fn: losses.LossFn,
  weights: jax.Array | None,
  batch: dict[str, jax.Array],
) -> Callable[[jax.Array], jax.Array]:
  """logits -> the batch's scalar loss for one model output.

  Classification: the mean over clips of `loss_fn` on [B, A] logits and the
  clip labels. Detection: `losses.box_losses` on [B, M, A] logits and the
  keyframe's per-box labels, summed over the batch and divided by its valid
  boxes (at least 1): the mean over boxes, as PySlowFast; padding boxes add
  nothing. The sums are global (the step is jitted over the mesh), so the
  loss is the same on any number of devices.
  """
  if config.model.task == "detection":
    kf = pipeline.keyframe(batch)

    def box_loss(logits: jax.Array) -> jax.Array:
      sums, counts = losses.box_losses(
        loss_fn, logits, kf["actor_labels"], kf["box_valid"], weights
      )
      return jnp.sum(sums) / jnp.maximum(jnp.sum(counts), 1.0)

    return box_loss
  labels = batch["labels"]
  return lambda logits: jnp.mean(loss_fn(logits, labels, weights))


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  loss_fn: losses.LossFn,
  class_weights: np.ndarray | None,
  config: ml_collections.ConfigDict,
) -> Callable:
  """The pure update step (state, batch) -> (state, metrics); every model
  output is trained.

  Pure: no mesh, no sharding. `Training.jit_step` makes it the step of a
  mesh (`sharding.with_constraints`, shardings, donation); unjitted or
  jitted alone it is the unpartitioned step (the AOT tool counts its FLOPs).
  The dropout key is a function of (seed, step) so a resumed run draws the
  same masks as an uninterrupted one. A classifier's step reads the batch's
  "video" and "labels"; a detector's (`config.model.task = "detection"`)
  reads "video" and the keyframe's "boxes", "box_valid" and "actor_labels"
  (`pipeline.model_inputs`, `output_loss`); a classifier with audio
  (`config.model.inputs`) also "audio"; other keys are not read.
  """
  compute_dtype = models.DTYPES[config.model.dtype]
  weights = None if class_weights is None else jnp.asarray(class_weights)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    inputs = pipeline.model_inputs(config, batch, compute_dtype)
    loss_of_output = output_loss(config, loss_fn, weights, batch)

    def loss_of(params):
      outputs, updates = model.apply(
        {"params": params, **state.model_state},
        *inputs,
        train=True,
        # The attention maps a head sows (MLAR) come out for its diagnostics.
        mutable=["batch_stats", "intermediates"],
        rngs={"dropout": rng},
      )
      diagnostics = heads.attention_diagnostics(updates.pop("intermediates", {}))
      per_output = {k: loss_of_output(v) for k, v in outputs.items()}
      total = sum(per_output.values())
      return total, (per_output, diagnostics, {**state.model_state, **updates})

    (loss, (per_output, diagnostics, model_state)), grads = jax.value_and_grad(
      loss_of, has_aux=True
    )(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
    )
    metrics = {
      "loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": optax.global_norm(grads),
      **{f"loss_{k}": v for k, v in per_output.items()},
      # MLAR attention entropies (models.heads.attention_diagnostics): a
      # collapsed, or never focused, head shows in TensorBoard.
      **{f"attn/{k}": v for k, v in diagnostics.items()},
      FINITE: finite_flags(new_state, loss),
    }
    return new_state, metrics

  return train_step


def _log_line(
  step: int, total: int, metrics: dict[str, float], steps_per_sec: float, batch_size: int
) -> str:
  eta = (total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
  per_output = {k: v for k, v in metrics.items() if k.startswith("loss_")}
  extra = (
    " ".join(f"{k}={v:.4f}" for k, v in sorted(per_output.items())) if len(per_output) > 1 else ""
  )
  return (
    f"step {step}/{total} | loss {metrics['loss']:.4f} | "
    f"lr {metrics['learning_rate']:.5f} | {steps_per_sec:.2f} steps/s "
    f"({steps_per_sec * batch_size:.0f} clips/s, "
    f"{100 * metrics['input_wait_fraction']:.0f}% waiting for input) | "
    f"ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    + (f" | {extra}" if extra else "")
    + (
      f" | skipped {int(metrics['skipped_samples'])} undecodable"
      if metrics.get("skipped_samples")
      else ""
    )
  )


@dataclasses.dataclass(frozen=True)
class Training:
  """What `build_training` assembles: the model, the optimizer, and the one
  pure update step, with the parameter layout that makes it the step of
  `mesh`.

  Everything else is derived, once: `abstract_state` from `init_fn`,
  `state_shardings` from it and `sharding_config`, the jitted step and
  initialiser from those.
  """

  model: nn.Module
  tx: optax.GradientTransformation
  mesh: Mesh
  init_fn: Callable[[jax.Array], TrainState]  # rng -> fresh state
  step_fn: Callable  # pure (state, batch) -> (state, metrics)
  sharding_config: ml_collections.ConfigDict  # config.sharding

  @functools.cached_property
  def abstract_state(self) -> TrainState:
    """The state's ShapeDtypeStructs (`jax.eval_shape`: nothing allocated)."""
    return jax.eval_shape(self.init_fn, jax.random.key(0))

  @functools.cached_property
  def state_shardings(self) -> TrainState:
    """NamedShardings over `mesh` for every leaf of the state."""
    return sharding.state_shardings(self.abstract_state, self.mesh, self.sharding_config)

  def jit_init(self) -> Callable[[jax.Array], TrainState]:
    """jit(rng -> state), the state laid out by `state_shardings`."""
    return jax.jit(self.init_fn, out_shardings=self.state_shardings)

  def jit_step(self) -> Callable:
    """jit(state, batch) -> (state, metrics) over `mesh`: the modules' logical
    activation constraints, the batch split over (data, fsdp), metrics
    replicated, the input state donated."""
    return jax.jit(
      sharding.with_constraints(self.step_fn, self.mesh),
      in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=(0,),
    )


def build_training(
  config: ml_collections.ConfigDict, mesh: Mesh, stats: base.ClassStats
) -> Training:
  """Model, optimizer, update step and state shardings for `mesh`.

  Nothing is allocated: the state is abstract (`jax.eval_shape`), so the
  same call serves training, the tests and ahead-of-time compilation for a
  topology (`mlar_jax.tools.aot`).

  Args:
    config: the experiment config.
    mesh: the device mesh (real devices, or a TPU topology's).
    stats: training-label statistics (`VideoSource.class_stats()`, or
      `ClassStats.placeholder(A)` where only shapes matter); A is its size.
  """
  model = models.build(config.model, stats.num_classes, stats)
  schedule = optimizers.make_schedule(config.schedule, config.num_train_steps)
  tx = optimizers.make_optimizer(config.optimizer, schedule)
  class_weights = None
  if config.loss.class_weights != "none":
    class_weights = losses.class_weights_from_counts(stats.counts, config.loss.class_weights)
  step_fn = make_train_step(model, tx, schedule, losses.loss_fn(config.loss), class_weights, config)
  init_fn = functools.partial(init_state, model, tx, model_input_spec(config, stats.num_classes))
  return Training(
    model=model,
    tx=tx,
    mesh=mesh,
    init_fn=init_fn,
    step_fn=step_fn,
    sharding_config=config.sharding,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, final_eval: bool = True
) -> dict[str, Any] | Stopped | None:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  The workdir is locked for the run (`checkpointing.workdir_lock`); its
  `config.json` is the config of the last run that started in it, and a
  resume whose architecture or data shapes differ from it is refused.

  Args:
    config: a validated experiment config.
    workdir: where checkpoints, TensorBoard events and results go.
    final_eval: evaluate `config.eval.split` after the last step (results
      in `workdir/eval_results.json`, `predictions.txt`; a detector's
      `detections.csv`).

  Returns:
    The final evaluation results; None without `final_eval`; `Stopped` when
    SIGTERM or SIGINT stopped the run (after saving its step).
  """
  validation.validate(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  with checkpointing.workdir_lock(workdir):
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    try:
      return _train_and_evaluate(config, workdir, writer, final_eval)
    finally:
      writer.close()


def _check_config(config: ml_collections.ConfigDict, workdir: str, resuming: bool) -> None:
  """Compares `config` with the workdir's `config.json` when resuming, then
  writes it there (process 0).

  Raises:
    ValueError naming every refused difference (`config_lib.RESUME_FIXED`);
    other differences are logged in one line.
  """
  path = epath.Path(workdir) / "config.json"
  current = json.loads(config.to_json_best_effort())
  if resuming and path.exists():
    # Over the defaults: a key added since the run was saved is not a change.
    saved = config_lib.saved_config(workdir).to_dict()
    refused, allowed = config_lib.config_changes(saved, current)
    if refused:
      raise ValueError(
        f"{workdir} holds a run of another model or data shape ({'; '.join(refused)}; saved "
        f"config: {path}): use another --workdir, starting from this run's weights with "
        f"--config.init_from={workdir} if you want them"
      )
    if allowed:
      logging.warning("Resuming with changed settings: %s", "; ".join(allowed))
  if jax.process_index() == 0:
    path.write_text(json.dumps(current, indent=2) + "\n")
    logging.info("Config written to %s", path)


def _train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  writer: metric_writers.MetricWriter,
  final_eval: bool,
) -> dict[str, Any] | Stopped | None:
  """`train_and_evaluate` inside the workdir lock, with its writer."""
  # --------------------------------------------------------------------------
  # Mesh.
  # --------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  sharding.validate_for_mesh(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  logging.info(
    "Mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count()
  )

  # --------------------------------------------------------------------------
  # Input pipeline.
  # --------------------------------------------------------------------------
  train_source = pipeline.make_source(config.data, "train")
  pipeline.check_task(train_source, config)
  stats = train_source.class_stats()
  train_errors = pipeline.DecodeErrors(config.data.max_error_ratio)

  def train_iterator(start_batch: int = 0):
    return iter(
      pipeline.train_dataset(
        train_source,
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_batch=start_batch,
        errors=train_errors,
      )
    )

  # --------------------------------------------------------------------------
  # Model, optimizer, loss, shardings, update step.
  # --------------------------------------------------------------------------
  training = build_training(config, mesh, stats)
  train_step = training.jit_step()
  num_params = sum(x.size for x in jax.tree.leaves(training.abstract_state.params))
  logging.info(
    "Model %s + %s head: %d parameters",
    models.backbone_names(config.model),
    config.model.head,
    num_params,
  )

  # --------------------------------------------------------------------------
  # Evaluation: its splits are opened (annotations parsed) now, so that a
  # missing or malformed one fails before training rather than after it.
  # --------------------------------------------------------------------------
  eval_splits = ["val"] if config.eval_every_steps else []
  if final_eval and config.eval.split not in eval_splits:
    eval_splits.append(config.eval.split)
  evaluator = evaluate.make_evaluator(
    config,
    mesh,
    training.model,
    evaluate.variable_shardings(training.state_shardings),
    splits=eval_splits,
    class_names=train_source.class_names,
    train_stats=stats,
    workdir=workdir,
    writer=writer,
    train_errors=train_errors,
  )

  # --------------------------------------------------------------------------
  # Checkpoint: restore the latest, or initialise.
  # --------------------------------------------------------------------------
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  try:
    _check_config(config, workdir, resuming=bool(manager.all_steps()))
    resumed = _resume(manager, training, train_iterator, workdir)
  except BaseException:
    manager.close()  # its threads would otherwise die at exit, with tracebacks
    raise
  if resumed is not None:
    state, train_iter = resumed
  else:
    train_iter = train_iterator()
    state = training.jit_init()(jax.random.key(config.seed))
    if config.init_from:
      state = _init_from(state, config, training.tx, training.state_shardings)
  start_step = int(state.step)

  # --------------------------------------------------------------------------
  # Training loop.
  # --------------------------------------------------------------------------
  total = config.num_train_steps
  report_progress = periodic_actions.ReportProgress(
    num_train_steps=total, writer=writer, every_steps=config.log_every_steps
  )
  pending: list[dict[str, jax.Array]] = []
  # (step, finite_flags) of the steps not yet checked: device scalars, read
  # together at the next log, save or eval step, which still names the exact
  # step a non-finite value appeared at without a host sync every step.
  unchecked: list[tuple[int, dict[str, jax.Array]]] = []
  last_time, last_step = time.time(), start_step
  # Host time blocked on the input pipeline: steps are dispatched
  # asynchronously, so while the accelerator is the limit this stays near 0;
  # a large fraction means the data loader is (add workers or cheaper clips).
  input_wait = 0.0
  if start_step < total:
    logging.info("Training from step %d to %d", start_step, total)
  stopping = False
  with StopRequest() as stop:
    try:
      for step in range(start_step + 1, total + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          wait_start = time.perf_counter()
          host_batch = next(train_iter)
          input_wait += time.perf_counter() - wait_start
          batch = sharding.to_global(host_batch, batch_sharding)
          state, step_metrics = train_step(state, batch)
        unchecked.append((step, step_metrics.pop(FINITE)))
        pending.append(step_metrics)
        report_progress(step)
        stopping = stop.reached(step)
        log_now = step % config.log_every_steps == 0 or step == total or stopping
        save_now = step % config.checkpoint.every_steps == 0 or step == total or stopping
        eval_now = bool(config.eval_every_steps) and step % config.eval_every_steps == 0
        # Before anything reads the state (a save above all): a non-finite
        # state is never written, so no good checkpoint is ever rotated out
        # in favour of a diverged one.
        if log_now or save_now or eval_now:
          _check_finite(unchecked, manager)
          unchecked = []
        if log_now:
          means = {
            k: float(np.mean(v))
            for k, v in jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending)).items()
          }
          pending = []
          now = time.time()
          steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
          means["input_wait_fraction"] = min(input_wait / max(now - last_time, 1e-9), 1.0)
          last_time, last_step, input_wait = now, step, 0.0
          means["skipped_samples"] = train_errors.failed
          writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
          logging.info(_log_line(step, total, means, steps_per_sec, config.batch_size))
        if save_now:
          checkpointing.save(manager, step, state, train_iter)
        if stopping:
          break
        if eval_now and step < total:
          evaluator.run(state, "val")
    finally:
      # Also on an error: the good checkpoints already started finish writing,
      # and orbax's threads stop before the interpreter does (otherwise they
      # die at exit with pages of asyncio tracebacks).
      manager.wait_until_finished()
      manager.close()
  if stopping:
    name = signal.Signals(stop.signum).name
    return Stopped(
      stop.signum,
      step,
      f"Stopped by {name} at step {step} of {total}; checkpoint {step} saved in "
      f"{workdir}/checkpoints. Run the same command to resume.",
    )
  if not final_eval:
    return None
  return evaluator.run(state, config.eval.split)


def _check_finite(unchecked: list[tuple[int, dict[str, jax.Array]]], manager) -> None:
  """Raises NonFiniteError naming the first of `unchecked`'s steps (and its
  first collection) that is not all finite."""
  for step, flags in jax.device_get(unchecked):
    bad = nonfinite_names(flags)
    if bad:
      last = manager.latest_step()
      raise NonFiniteError(
        f"Non-finite {bad[0]} at step {step} (non-finite: {', '.join(bad)}); nothing from "
        f"step {step} on was saved. "
        + (
          f"The last checkpoint is step {last}: rerun with a lower learning rate "
          "(config.schedule.base_lr) to resume from it."
          if last is not None
          else "There is no checkpoint: rerun with a lower learning rate (config.schedule.base_lr)."
        )
      )


def _resume(
  manager, training: Training, train_iterator: Callable[..., Any], workdir: str
) -> tuple[TrainState, Any] | None:
  """The newest checkpoint that restores, as (state, positioned iterator);
  None when there is no checkpoint.

  A checkpoint that fails to restore is reported in one line and the
  previous one is used; the failed ones are then moved aside
  (`checkpointing.move_aside`), never deleted, so that training can save
  those steps again.

  Raises:
    checkpointing.CheckpointError: none restores.
    NonFiniteError: the newest one that restores is not all finite (written
      before this check existed); the message names the newest finite step
      and the command that continues from it.
  """
  steps = list(manager.all_steps())
  if not steps:
    return None
  target = checkpointing.abstract_with_shardings(training.abstract_state, training.state_shardings)

  def restore(step: int) -> tuple[TrainState, Any]:
    # A fresh iterator every try: a failed restore may have moved it.
    written_by = checkpointing.saved_process_count(manager, step)
    if written_by in (None, jax.process_count()):
      train_iter = train_iterator()
      return checkpointing.restore(manager, step, target, train_iter), train_iter
    # Another process count: the per-process iterator files do not apply;
    # the data order is global, so it resumes at global batch `step`.
    logging.info(
      "Checkpoint written by %d processes, resuming on %d: data restarts at global batch %d",
      written_by,
      jax.process_count(),
      step,
    )
    return checkpointing.restore(manager, step, target), train_iterator(start_batch=step)

  directory = manager.directory
  step, (state, train_iter), failed = checkpointing.restore_newest(steps, restore, directory)
  finite = jax.jit(finite_flags, out_shardings=sharding.replicated(training.mesh))
  bad = nonfinite_names(jax.device_get(finite(state)))
  if bad:
    good = None
    for older in sorted((s for s in steps if s < step), reverse=True):
      try:
        candidate = checkpointing.restore(manager, older, target)
      except Exception:  # noqa: BLE001  (damaged too: look further back)
        continue
      if not nonfinite_names(jax.device_get(finite(candidate))):
        good = older
        break
    later = " ".join(f"{directory}/{s}" for s in sorted(steps) if good is None or s > good)
    aside = f"mkdir -p {workdir}/nonfinite && mv {later} {workdir}/nonfinite/"
    raise NonFiniteError(
      f"Checkpoint {step} holds non-finite {bad[0]} (non-finite: {', '.join(bad)}; written by a "
      "run that diverged). "
      + (
        f"The newest finite checkpoint is step {good}; to continue from it, move the later ones "
        f"aside (`{aside}`) and rerun with a lower learning rate."
        if good is not None
        else f"No checkpoint is finite; to start over, move them aside (`{aside}`)."
      )
    )
  for s in failed:
    logging.warning(
      "Moved unrestorable checkpoint %d to %s", s, checkpointing.move_aside(manager, s)
    )
  logging.info("Resumed from checkpoint at step %d", step)
  return state, train_iter


def _init_from(
  state: TrainState,
  config: ml_collections.ConfigDict,
  tx: optax.GradientTransformation,
  shardings: TrainState,
) -> TrainState:
  """Params and model state from `config.init_from`, a fresh optimizer."""
  loaded = checkpointing.load_variables(config.init_from, config.init_from_skip)
  params, skipped = checkpointing.merge_variables(
    state.params, loaded["params"], config.init_from_skip
  )
  model_state, skipped_state = checkpointing.merge_variables(
    state.model_state, loaded["model_state"], config.init_from_skip
  )
  params = jax.device_put(params, shardings.params)
  model_state = jax.device_put(model_state, shardings.model_state)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  logging.info(
    "Initialised from %s; kept fresh: %s", config.init_from, skipped + skipped_state or "nothing"
  )
  return state.replace(params=params, model_state=model_state, opt_state=opt_state)
