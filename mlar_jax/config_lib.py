"""Config helpers: the `get_config(arg)` argument parser, shared fragments, and
validation that fails before anything is built or compiled.

Unknown keys are rejected by ml_collections itself (configs are locked, and
`--config.KEY=VALUE` on a missing KEY is an error naming it); `validate` checks
the values, naming the offending key.
"""

from __future__ import annotations

import re

import jax
import ml_collections

from mlar_jax import losses
from mlar_jax import sharding
from mlar_jax.data import pipeline
from mlar_jax.models import registry as models


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `get_config`'s argument, "runlocal,backbone=r3d_18", into a dict.

  Bare words are boolean flags set to True; `key=value` pairs are cast to the
  type of the default. Unknown names are errors.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}")
    if not eq:
      parsed[key] = True
      continue
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config argument {key}={value!r} is not a boolean")
      parsed[key] = value.lower() in ("true", "1")
    else:
      parsed[key] = kind(value)
  return parsed


def data_config() -> ml_collections.ConfigDict:
  """Input pipeline settings shared by every config (sizes for real video)."""
  return ml_collections.ConfigDict({
      "name": "synthetic",
      "num_frames": 8,              # T, frames per clip
      "rates": (4,),                # training downsampling rates to draw from
      "rate_probs": (),             # their probabilities; () = uniform
      "min_short_side": 256,        # training short-side scale jitter range
      "max_short_side": 320,
      "crop_size": 224,             # training and evaluation crop
      "eval_short_side": 256,       # evaluation resize before the crops
      "flip": True,
      "mean": (0.45, 0.45, 0.45),
      "std": (0.225, 0.225, 0.225),
      "num_threads": 2,             # grain reader threads per process
      "prefetch_buffer_size": 8,
      "num_workers": 0,             # grain worker processes (0: in-process)
      "label_mode": "video",        # training labels: video | window (actions
                                    # overlapping the sampled clip, Charades)
      "max_error_ratio": 0.01,      # stop when more samples fail to decode
      # Datasets on disk; paths are relative to `root`.
      "charades": {
          "root": "", "train_csv": "Charades_v1_train.csv",
          "test_csv": "Charades_v1_test.csv", "classes": "Charades_v1_classes.txt",
          "videos": "Charades_v1_480", "frames": False, "video_ext": ".mp4", "fps": 24.0,
      },
      "mmit": {"root": "", "train_csv": "trainingSet.csv", "val_csv": "validationSet.csv",
               "test_csv": "", "classes": "moments_categories.txt", "videos": "videos",
               "fps": 30.0},
      "csv": {"root": "", "train_csv": "train.csv", "val_csv": "val.csv",
              "test_csv": "test.csv", "classes": "classes.txt", "videos": "", "fps": 30.0},
      # Written by `python -m mlar_jax.data.prepare --dataset D --data_dir DIR`.
      "prepared": {"data_dir": "", "dataset": "charades"},
      "synthetic": {
          "seed": 0, "num_train": 2048, "num_val": 256, "num_test": 512,
          "video_frames": 32, "resolution": 64,
      },
  })


def base_config() -> ml_collections.ConfigDict:
  """Every key the training loop reads, with defaults."""
  return ml_collections.ConfigDict({
      "seed": 0,
      "batch_size": 32,                 # global, over all devices and hosts
      "num_train_steps": 1000,
      "log_every_steps": 50,
      "eval_every_steps": 0,            # 0: evaluate only at the end
      "data": data_config(),
      "model": {
          "backbone": "resnet3d_tiny", "head": "linear", "dropout_rate": 0.5,
          "dtype": "float32", "frozen_bn": False, "conv_impl": "auto",
          # MLAR head (model.head = "mlar"); paper defaults K=64, n=32, C'=128.
          "mlar": {"num_observations": 64, "groups": 32, "features": 128,
                   "use_activity_specific": True, "use_correlation": True},
      },
      "loss": {"name": "bce", "class_weights": "none"},
      "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True,
                    "weight_decay": 1e-4, "grad_clip_norm": 0.0,
                    "freeze": ""},           # regex of parameter paths not updated
      # Initialise params and model state from another run's checkpoint (a
      # workdir, its checkpoints/ folder, or one checkpoints/STEP folder) when
      # the workdir has no checkpoint yet. Leaves whose path matches
      # init_from_skip (a regex, e.g. "^head/" for a new head) keep their
      # fresh initialisation; every other leaf must match in path and shape.
      "init_from": "",
      "init_from_skip": "",
      # Speed-invariant tuning (MLAR section 3.5), run by
      # `python -m mlar_jax.tools.speed_invariant`: stage 1 is this config;
      # stage 2 starts from it, freezes the parameters matching `freeze` (the
      # backbone's 3D convolution kernels) and the batch-norm statistics, and
      # fine-tunes the rest on clips of rates drawn from `rates`.
      "stage2": {"num_train_steps": 300, "rates": (2, 4, 8), "rate_probs": (),
                 "base_lr": 0.01, "warmup_steps": 0,
                 "freeze": "^backbone/.*kernel$", "frozen_bn": True},
      "schedule": {"base_lr": 0.1, "warmup_steps": 50, "end_lr_factor": 0.0},
      "checkpoint": {"every_steps": 200, "keep": 3, "async_save": True},
      "eval": {
          "split": "test", "batch_size": 64, "step": -1, "output": "logits",
          # The view plan: (rate, temporal positions) x spatial_crops; the
          # default is the papers' 30-view test (12 at rate 4, 9 at 8, 9 at 2).
          "views": ((4, 4), (8, 3), (2, 3)), "spatial_crops": 3,
          "aggregate": "sum",           # per-video: sum | mean | max of sigmoids
      },
      # Mesh axes (sizes; one may be -1 for the rest of the devices). The
      # batch is split over data x fsdp; model splits the MLAR head's
      # activities (mlar_jax/sharding.py).
      "mesh": {"data": -1, "fsdp": 1, "model": 1},
      # params: replicated (data parallel) | fsdp. rules: (regex over a state
      # leaf's path, mesh axis per dimension), before the fsdp rule.
      "sharding": {"params": "replicated", "fsdp_min_size": 2**18,
                   "rules": sharding.DEFAULT_RULES},
  })


def _fail(key: str, value, why: str):
  raise ValueError(f"config.{key}={value!r}: {why}")


def _positive(config, *keys):
  for key in keys:
    value = config[key] if "." not in key else _get(config, key)
    if not isinstance(value, int) or value <= 0:
      _fail(key, value, "must be a positive integer")


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value the loop uses; raises ValueError naming the key."""
  _positive(config, "batch_size", "num_train_steps", "log_every_steps",
            "data.num_frames", "data.crop_size", "eval.spatial_crops",
            "data.min_short_side", "data.max_short_side", "data.eval_short_side",
            "checkpoint.every_steps", "checkpoint.keep", "eval.batch_size")
  if config.eval_every_steps < 0:
    _fail("eval_every_steps", config.eval_every_steps, "must be >= 0")
  for key, reg in (("data.name", pipeline.SOURCES), ("model.backbone", models.BACKBONES),
                   ("model.head", models.HEADS), ("loss.name", losses.LOSSES)):
    if _get(config, key) not in reg:
      _fail(key, _get(config, key), f"unknown; choose from {reg.names()}")
  choices = {"model.dtype": tuple(models.DTYPES),
             "model.conv_impl": ("auto", "native", "folded"),
             "loss.class_weights": losses.CLASS_WEIGHT_MODES,
             "optimizer.name": ("sgd", "adamw"),
             "sharding.params": ("replicated", "fsdp"),
             "eval.split": ("train", "val", "test"),
             "eval.aggregate": ("sum", "mean", "max"),
             "data.label_mode": ("video", "window")}
  for key, allowed in choices.items():
    if _get(config, key) not in allowed:
      _fail(key, _get(config, key), f"must be one of {list(allowed)}")
  d = config.data
  if not d.rates or any(not isinstance(r, int) or r <= 0 for r in d.rates):
    _fail("data.rates", d.rates, "must be a non-empty tuple of positive integers")
  if d.rate_probs:
    if len(d.rate_probs) != len(d.rates):
      _fail("data.rate_probs", d.rate_probs, f"needs one probability per rate {d.rates}")
    if any(p < 0 for p in d.rate_probs) or abs(sum(d.rate_probs) - 1) > 1e-6:
      _fail("data.rate_probs", d.rate_probs, "must be non-negative and sum to 1")
  if d.min_short_side > d.max_short_side:
    _fail("data.min_short_side", d.min_short_side,
          f"exceeds data.max_short_side={d.max_short_side}")
  if d.crop_size > d.min_short_side:
    _fail("data.crop_size", d.crop_size, f"exceeds data.min_short_side={d.min_short_side}")
  views = config.eval.views
  if (not views or any(len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v)
                       for v in views)
      or len({v[0] for v in views}) != len(views)):
    _fail("eval.views", views, "must be ((rate, positions), ...) with positive "
          "integers and each rate once")
  if d.crop_size > d.eval_short_side:
    _fail("data.crop_size", d.crop_size, f"exceeds data.eval_short_side={d.eval_short_side}")
  if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
    _fail("data.std", d.std, "mean and std need 3 channels, std > 0")
  if d.num_workers < 0 or d.num_threads <= 0:
    _fail("data.num_workers", d.num_workers, "workers >= 0 and threads > 0")
  for key in ("optimizer.freeze", "init_from_skip"):
    try:
      re.compile(_get(config, key))
    except re.error as e:
      _fail(key, _get(config, key), f"is not a valid regex: {e}")
  m = config.model.mlar
  _positive(config, "model.mlar.num_observations", "model.mlar.groups",
            "model.mlar.features")
  if m.features % m.groups:
    _fail("model.mlar.features", m.features, f"must be divisible by model.mlar.groups={m.groups}")
  if not 0.0 <= config.model.dropout_rate < 1.0:
    _fail("model.dropout_rate", config.model.dropout_rate, "must be in [0, 1)")
  s = config.schedule
  if s.base_lr <= 0:
    _fail("schedule.base_lr", s.base_lr, "must be > 0")
  if not 0 <= s.warmup_steps <= config.num_train_steps:
    _fail("schedule.warmup_steps", s.warmup_steps, "must be in [0, num_train_steps]")


def validate_for_mesh(config: ml_collections.ConfigDict, mesh) -> None:
  """Checks the batch sizes against the mesh and the process count."""
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % batch_devices:
    _fail("batch_size", config.batch_size, f"must be a multiple of the {batch_devices} "
          "devices of the mesh's data and fsdp axes")
  # Evaluation batches are padded up to a multiple of the devices instead.
  for key in ("batch_size", "eval.batch_size"):
    value = _get(config, key)
    if value % jax.process_count():
      _fail(key, value, f"must be a multiple of the {jax.process_count()} processes")
