"""optax optimizers and learning-rate schedules from config."""

from __future__ import annotations

import math
import re

import jax
import ml_collections
import optax
from flax import traverse_util

from mlar_jax import config_lib

OPTIMIZERS = ("sgd", "adamw")


def make_schedule(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.base_lr`, then cosine decay to
  `cfg.base_lr * cfg.end_lr_factor` at `num_train_steps`.

  Args:
    cfg: `config.schedule` (base_lr, warmup_steps, end_lr_factor).
    num_train_steps: total steps; the cosine ends there.
  """
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.base_lr,
    warmup_steps=cfg.warmup_steps,
    decay_steps=max(num_train_steps, cfg.warmup_steps + 1),
    end_value=cfg.base_lr * cfg.end_lr_factor,
  )


def _decay_mask(params):
  # No weight decay on biases and batch-norm scales/offsets (1-D leaves).
  return jax.tree.map(lambda p: p.ndim > 1, params)


def frozen_labels(params, pattern: str):
  """ "freeze" for every leaf whose path ("backbone/stem_conv/kernel") matches
  `pattern` (re.search), "train" otherwise; a tree like `params`."""
  regex = re.compile(pattern)
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict(
    {k: ("freeze" if pattern and regex.search(k) else "train") for k in flat}, sep="/"
  )


def make_optimizer(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum (or AdamW) with decoupled-from-BN weight decay.

  Args:
    cfg: `config.optimizer` (name, momentum, nesterov, weight_decay,
      grad_clip_norm (0 disables clipping), freeze: a regex of parameter
      paths that get no update at all, e.g. "^backbone/.*kernel$" for the
      convolutions of the speed-invariant fine-tuning).
    schedule: learning rate per step.
  """
  tx = _base_optimizer(cfg, schedule)
  if not cfg.freeze:
    return tx
  return optax.multi_transform(
    {"train": tx, "freeze": optax.set_to_zero()}, lambda params: frozen_labels(params, cfg.freeze)
  )


def _base_optimizer(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "sgd":
    if cfg.weight_decay > 0:
      # L2 added to the gradient, as torch.optim.SGD and PySlowFast do.
      parts.append(optax.add_decayed_weights(cfg.weight_decay, _decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
  elif cfg.name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask))
  else:
    config_lib.fail("optimizer.name", cfg.name, f"unknown; choose from {sorted(OPTIMIZERS)}")
  return optax.chain(*parts)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.optimizer` and `config.schedule`."""
  config_lib.check_choice(config, "optimizer.name", OPTIMIZERS)
  config_lib.check_regex(config, "optimizer.freeze")
  o = config.optimizer
  # Momentum >= 1 never forgets a gradient (the update grows without bound);
  # negative values and negative decay or clipping norms are sign typos.
  if not 0.0 <= o.momentum < 1.0:
    config_lib.fail("optimizer.momentum", o.momentum, "must be in [0, 1)")
  if not o.weight_decay >= 0:
    config_lib.fail("optimizer.weight_decay", o.weight_decay, "must be >= 0")
  if not o.grad_clip_norm >= 0:
    config_lib.fail("optimizer.grad_clip_norm", o.grad_clip_norm, "must be >= 0 (0: no clipping)")
  s = config.schedule
  if not (s.base_lr > 0 and math.isfinite(s.base_lr)):
    config_lib.fail("schedule.base_lr", s.base_lr, "must be finite and > 0")
  if not 0 <= s.warmup_steps <= config.num_train_steps:
    config_lib.fail("schedule.warmup_steps", s.warmup_steps, "must be in [0, num_train_steps]")
  if not 0.0 <= s.end_lr_factor <= 1.0:
    config_lib.fail("schedule.end_lr_factor", s.end_lr_factor, "must be in [0, 1]")
