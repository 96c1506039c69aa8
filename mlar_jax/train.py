"""Training and evaluation loop: free functions over a pytree train state."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath

from mlar_jax import checkpointing
from mlar_jax import config_lib
from mlar_jax import evaluate
from mlar_jax import losses
from mlar_jax import optimizers
from mlar_jax import sharding
from mlar_jax.data import pipeline
from mlar_jax.data import transforms
from mlar_jax.models import registry as models


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes; a pytree that orbax saves as is."""
  step: jax.Array        # [] int32, number of updates applied
  params: Any
  # Non-trainable model variables by collection: "batch_stats" (updated by
  # the forward pass in training) and "constants" (fixed at init from the
  # training labels, e.g. the MLAR correlation mask; saved so that
  # evaluation uses the same values).
  model_state: Any
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               input_shape: tuple[int, ...], rng: jax.Array) -> TrainState:
  """Fresh parameters, batch statistics and optimizer state."""
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({"params": params_rng, "dropout": dropout_rng},
                         jnp.zeros(input_shape, jnp.float32), train=False)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=dict(variables), opt_state=tx.init(params))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_fn: losses.LossFn,
                    class_weights: np.ndarray | None,
                    config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Callable:
  """(state, batch) -> (state, metrics); every model output is trained.

  The dropout key is a function of (seed, step) so a resumed run draws the
  same masks as an uninterrupted one. With a `mesh`, the modules' logical
  activation constraints apply (`sharding.constraints`).
  """
  compute_dtype = models.DTYPES[config.model.dtype]
  weights = None if class_weights is None else jnp.asarray(class_weights)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    if mesh is None:
      return _train_step(state, batch)
    with sharding.constraints(mesh):
      return _train_step(state, batch)

  def _train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    video = transforms.normalize(batch["video"], config.data.mean, config.data.std,
                                 compute_dtype)
    labels = batch["labels"]

    def loss_of(params):
      outputs, updates = model.apply(
          {"params": params, **state.model_state}, video, train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      per_output = {k: jnp.mean(loss_fn(v, labels, weights)) for k, v in outputs.items()}
      total = sum(per_output.values())
      return total, (per_output, {**state.model_state, **updates})

    (loss, (per_output, model_state)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=model_state, opt_state=opt_state)
    metrics = {"loss": loss, "learning_rate": schedule(state.step),
               "grad_norm": optax.global_norm(grads),
               **{f"loss_{k}": v for k, v in per_output.items()}}
    return new_state, metrics

  return train_step


def _class_statistics(source) -> dict[str, np.ndarray]:
  counts = source.class_counts()
  return {"counts": counts, "cooccurrence": source.cooccurrence(),
          "frequency": counts / max(len(source), 1)}


def _log_line(step: int, total: int, metrics: dict[str, float], steps_per_sec: float,
              batch_size: int) -> str:
  eta = (total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
  per_output = {k: v for k, v in metrics.items() if k.startswith("loss_")}
  extra = " ".join(f"{k}={v:.4f}" for k, v in sorted(per_output.items())
                   ) if len(per_output) > 1 else ""
  return (f"step {step}/{total} | loss {metrics['loss']:.4f} | "
          f"lr {metrics['learning_rate']:.5f} | {steps_per_sec:.2f} steps/s "
          f"({steps_per_sec * batch_size:.0f} clips/s, "
          f"{100 * metrics['input_wait_fraction']:.0f}% waiting for input) | "
          f"ETA {int(eta // 60)}m{int(eta % 60):02d}s" + (f" | {extra}" if extra else "")
          + (f" | skipped {int(metrics['skipped_samples'])} undecodable"
             if metrics.get("skipped_samples") else ""))


class Training(NamedTuple):
  """What `build_training` assembles."""
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  init_fn: Callable[[jax.Array], TrainState]
  abstract_state: TrainState         # ShapeDtypeStructs
  state_shardings: TrainState        # NamedShardings
  train_step: Callable               # jitted (state, batch) -> (state, metrics)
  step_fn: Callable                  # the same, unjitted and without sharding constraints


def build_training(config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int,
                   stats: dict[str, np.ndarray]) -> Training:
  """Model, optimizer, state shardings and the jitted update step for `mesh`.

  Nothing is allocated: the state is abstract (`jax.eval_shape`), so the
  same call serves training and ahead-of-time compilation for a topology
  (`mlar_jax.tools.aot`).

  Args:
    config: the experiment config.
    mesh: the device mesh (real devices, or a TPU topology's).
    num_classes: activities A.
    stats: training-label statistics ("counts", "cooccurrence").
  """
  model = models.build_model(config.model, num_classes, stats)
  schedule = optimizers.make_schedule(config.schedule, config.num_train_steps)
  tx = optimizers.make_optimizer(config.optimizer, schedule)
  loss_fn = losses.LOSSES.get(config.loss.name)
  class_weights = None
  if config.loss.class_weights != "none":
    class_weights = losses.class_weights_from_counts(stats["counts"], config.loss.class_weights)
  s = config.data.crop_size
  input_shape = (1, config.data.num_frames, s, s, 3)
  init_fn = functools.partial(init_state, model, tx, input_shape)
  abstract_state = jax.eval_shape(init_fn, jax.random.key(config.seed))
  state_shardings = sharding.state_shardings(abstract_state, mesh, config.sharding)
  step_fn = make_train_step(model, tx, schedule, loss_fn, class_weights, config)
  train_step = jax.jit(
      make_train_step(model, tx, schedule, loss_fn, class_weights, config, mesh),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Training(model=model, tx=tx, schedule=schedule, init_fn=init_fn,
                  abstract_state=abstract_state, state_shardings=state_shardings,
                  train_step=train_step, step_fn=step_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mode: str = "train_and_eval") -> dict[str, Any] | None:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  Args:
    config: a validated experiment config.
    workdir: where checkpoints, TensorBoard events and results go.
    mode: "train", "eval" (latest or `config.eval.step` checkpoint, no
      training) or "train_and_eval".

  Returns:
    The evaluation results (also written to `workdir/eval_results.json`), or
    None in "train" mode.
  """
  config_lib.validate(config)
  if mode not in ("train", "eval", "train_and_eval"):
    raise ValueError(f"mode must be train|eval|train_and_eval, got {mode!r}")
  workdir_path = epath.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  # --------------------------------------------------------------------------
  # Mesh.
  # --------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  config_lib.validate_for_mesh(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  logging.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape),
               mesh.size, jax.process_count())

  # --------------------------------------------------------------------------
  # Input pipeline.
  # --------------------------------------------------------------------------
  train_source = pipeline.make_source(config.data, "train")
  stats = _class_statistics(train_source)
  class_names = list(train_source.class_names)
  num_classes = len(class_names)
  train_errors = pipeline.DecodeErrors(config.data.max_error_ratio)
  # Evaluation splits are opened (annotations parsed) now, so that a missing
  # or malformed one fails before training rather than after it.
  eval_splits = {config.eval.split} if mode != "train" else set()
  if config.eval_every_steps and mode != "eval":
    eval_splits.add("val")
  eval_sources = {split: pipeline.make_source(config.data, split) for split in eval_splits}

  def train_iterator(start_batch: int = 0):
    return iter(pipeline.train_dataset(
        train_source, config.data, global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_batch=start_batch, errors=train_errors))

  # --------------------------------------------------------------------------
  # Model, optimizer, loss, shardings, update step.
  # --------------------------------------------------------------------------
  setup = build_training(config, mesh, num_classes, stats)
  model, tx, init_fn, state_shardings, train_step = (
      setup.model, setup.tx, setup.init_fn, setup.state_shardings, setup.train_step)
  rng = jax.random.key(config.seed)
  restore_target = checkpointing.abstract_with_shardings(setup.abstract_state, state_shardings)
  num_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
  logging.info("Model %s + %s head: %d parameters", config.model.backbone,
               config.model.head, num_params)
  eval_step = evaluate.make_eval_step(model, config, mesh, state_shardings)

  def run_eval(state, split: str, write: bool = False) -> dict[str, Any]:
    source = eval_sources[split]
    plan = evaluate.plan_from_config(config)
    collectors, errors = evaluate.run(eval_step, state, source, config, mesh)
    results = evaluate.report(
        collectors, labels=source.label_matrix(), class_names=class_names,
        train_frequency=stats["frequency"], output=config.eval.output,
        step=int(state.step), split=split, plan=plan, how=config.eval.aggregate)
    results["skipped_clips"] = errors.failed
    results["skipped_files"] = sorted(errors.files)
    results["train_skipped_samples"] = train_errors.failed
    if write:
      scores = evaluate.video_scores(collectors[config.eval.output], len(source),
                                     config.eval.aggregate)
      evaluate.write_predictions(workdir, [source[i]["id"] for i in range(len(source))],
                                 scores)
      _finish_eval(writer, workdir, results)
    return results

  # --------------------------------------------------------------------------
  # Checkpoint: restore the latest (or the requested one for evaluation).
  # --------------------------------------------------------------------------
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  latest = manager.latest_step()
  if mode == "eval":
    step = latest if config.eval.step < 0 else config.eval.step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(
          f"No checkpoint {'(latest)' if config.eval.step < 0 else config.eval.step} "
          f"in {workdir_path / 'checkpoints'}; steps there: {manager.all_steps()}")
    state = checkpointing.restore(manager, step, restore_target)
    return run_eval(state, config.eval.split, write=True)

  if latest is not None:
    written_by = checkpointing.saved_process_count(manager, latest)
    if written_by in (None, jax.process_count()):
      train_iter = train_iterator()
      state = checkpointing.restore(manager, latest, restore_target, train_iter)
    else:
      # Another process count: the per-process iterator files do not apply;
      # the data order is global, so it resumes at global batch `latest`.
      state = checkpointing.restore(manager, latest, restore_target)
      train_iter = train_iterator(start_batch=latest)
      logging.info("Checkpoint written by %d processes, resuming on %d: data restarts "
                   "at global batch %d", written_by, jax.process_count(), latest)
    logging.info("Resumed from checkpoint at step %d", latest)
  else:
    train_iter = train_iterator()
    state = jax.jit(init_fn, out_shardings=state_shardings)(rng)
    if config.init_from:
      state = _init_from(state, config, tx, state_shardings)
  start_step = int(state.step)

  # --------------------------------------------------------------------------
  # Training loop.
  # --------------------------------------------------------------------------
  total = config.num_train_steps
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total, writer=writer, every_steps=config.log_every_steps)
  pending: list[dict[str, jax.Array]] = []
  last_time, last_step = time.time(), start_step
  # Host time blocked on the input pipeline: steps are dispatched
  # asynchronously, so while the accelerator is the limit this stays near 0;
  # a large fraction means the data loader is (add workers or cheaper clips).
  input_wait = 0.0
  if start_step < total:
    logging.info("Training from step %d to %d", start_step, total)
  for step in range(start_step + 1, total + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      wait_start = time.perf_counter()
      host_batch = next(train_iter)
      input_wait += time.perf_counter() - wait_start
      batch = sharding.to_global(host_batch, batch_sharding)
      state, step_metrics = train_step(state, batch)
    pending.append(step_metrics)
    report_progress(step)
    if step % config.log_every_steps == 0 or step == total:
      means = {k: float(np.mean(v)) for k, v in
               jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending)).items()}
      pending = []
      if not np.isfinite(means["loss"]):
        raise FloatingPointError(f"Loss is {means['loss']} at step {step}.")
      now = time.time()
      steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
      means["input_wait_fraction"] = min(input_wait / max(now - last_time, 1e-9), 1.0)
      last_time, last_step, input_wait = now, step, 0.0
      means["skipped_samples"] = train_errors.failed
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
      logging.info(_log_line(step, total, means, steps_per_sec, config.batch_size))
    if step % config.checkpoint.every_steps == 0 or step == total:
      checkpointing.save(manager, step, state, train_iter)
    if config.eval_every_steps and step % config.eval_every_steps == 0 and step < total:
      results = run_eval(state, "val")
      writer.write_scalars(step, {f"val/{k}": results[k] for k in
                                  ("macro_map", "micro_map", "top1", "top5")})
      logging.info("step %d: val macro mAP %.4f", step, results["macro_map"])
  manager.wait_until_finished()

  if mode == "train":
    writer.flush()
    return None
  results = run_eval(state, config.eval.split, write=True)
  manager.close()
  return results


def _init_from(state: TrainState, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """Params and model state from `config.init_from`, a fresh optimizer."""
  loaded = checkpointing.load_variables(config.init_from)
  params, skipped = checkpointing.merge_variables(
      state.params, loaded["params"], config.init_from_skip)
  model_state, skipped_state = checkpointing.merge_variables(
      state.model_state, loaded["model_state"], config.init_from_skip)
  params = jax.device_put(params, shardings.params)
  model_state = jax.device_put(model_state, shardings.model_state)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  logging.info("Initialised from %s; kept fresh: %s", config.init_from,
               skipped + skipped_state or "nothing")
  return state.replace(params=params, model_state=model_state, opt_state=opt_state)


def _finish_eval(writer, workdir: str, results: dict[str, Any]) -> None:
  writer.write_scalars(results["step"], {
      f"{results['split']}/{k}": results[k]
      for k in ("macro_map", "micro_map", "top1", "top5", "chance_macro_map")})
  writer.flush()
  evaluate.write_results(workdir, results)
  logging.info(
      "%s split, step %d, %d videos x %d views: macro mAP %.4f (chance %.4f, %.2fx), "
      "micro mAP %.4f, top-1 %.4f, top-5 %.4f", results["split"], results["step"],
      results["num_videos"], results["views"], results["macro_map"],
      results["chance_macro_map"], results["map_over_chance"], results["micro_map"],
      results["top1"], results["top5"])
  if len(results["per_rate"]) > 1:
    logging.info("macro mAP by rates: %s", ", ".join(
        f"{k} ({v['views']} views): {v['macro_map']:.4f}" for k, v in results["per_rate"].items()))
