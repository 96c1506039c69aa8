"""Configs as plain data: the `get_config(arg)` argument parser, the shared
fragments every config starts from, and the checks of values that need no
other module.

Imports only ml_collections and the standard library, so a config file loads
in milliseconds without jax (tested). Unknown keys are rejected by
ml_collections itself (configs are locked, and `--config.KEY=VALUE` on a
missing KEY is an error naming it). Values are checked by their owners, each
against its one list of allowed values (`models.registry.validate_config`,
`losses.validate_config`, ...), all called by `validation.validate`; the
helpers here (`fail`, `check_choice`, `check_positive`) give every message
the same form: `config.KEY=VALUE: why`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import ml_collections

# Default parameter rules (`mlar_jax.sharding`): the MLAR head's per-activity
# leaves (and the linear head's classifier) split their activity dimension
# over the `model` mesh axis. (regex over a state leaf's path, mesh axis per
# dimension).
SHARDING_RULES = (
  (r"head/activity_queries$", ("model", None)),
  (r"head/out_\w+_bias$", ("model",)),
  (r"head/correlation_mask$", ("model", None)),
  (r"head/classifier/kernel$", (None, "model")),
  (r"head/classifier/bias$", ("model",)),
)


# The MLAR head as the paper's text specifies it: one output vector shared by
# all activities (Table 4's parameter counts), q_a drawn from normal(1.0) (the
# paper gives no init; this was the project's first reading), and
# Corr = Attn_C + Mask (eq. 9). `config.model.mlar` defaults depart from it.
PAPER_MLAR = {"output": "shared", "query_init": 1.0, "mask_mode": "add"}


def set_head(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets `config.model.head` from a config file's `head=NAME` argument: a
  registered head ("linear", "attention_pool", "mlar"), or "mlar_paper",
  the MLAR head with `PAPER_MLAR`."""
  if name == "mlar_paper":
    config.model.head = "mlar"
    config.model.mlar.update(PAPER_MLAR)
  else:
    config.model.head = name


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
  return ml_collections.ConfigDict(
    {
      "name": "synthetic",
      "num_frames": 8,  # T, frames per clip
      "rates": (4,),  # training downsampling rates to draw from
      "rate_probs": (),  # their probabilities; () = uniform
      "min_short_side": 256,  # training short-side scale jitter range
      "max_short_side": 320,
      "crop_size": 224,  # training and evaluation crop
      "eval_short_side": 256,  # evaluation resize before the crops
      "flip": True,
      "mean": (0.45, 0.45, 0.45),
      "std": (0.225, 0.225, 0.225),
      "num_threads": 2,  # grain reader threads per process
      "prefetch_buffer_size": 8,
      "num_workers": 0,  # grain worker processes (0: in-process)
      "label_mode": "video",  # training labels: video | window (actions
      # overlapping the sampled clip, Charades)
      "max_error_ratio": 0.01,  # stop when more samples fail to decode
      # Per-frame ground truth each clip carries beside its frames, from
      # pipeline.EXTRAS (boxes, actor_labels, masks, audio), when the dataset
      # provides it (scenes: all; Charades, M-MiT and CSV video files: audio);
      # shapes in pipeline.batch_spec.
      "extras": (),
      "max_actors": 4,  # actor slots per frame of the extras (the scenes' 4)
      # The "audio" extra: mono sound at `sample_rate` (22050 Hz, SoundNet's;
      # files are resampled to it, the scenes rendered at it), `num_samples`
      # per clip centred on its frames (pipeline.clip_audio): 2 s, the whole
      # of an 8-frame clip at rate 4 or 2 of 24 fps video (1.2 s, 0.6 s) and
      # most of one at rate 8 (2.4 s). With `require`, a split keeps only its
      # videos with a sound track (the M-MiT paper's audio-only training and
      # evaluation; pipeline.make_source logs how many).
      "audio": {"sample_rate": 22050, "num_samples": 44100, "require": False},
      # Datasets on disk; paths are relative to `root`.
      "charades": {
        "root": "",
        "train_csv": "Charades_v1_train.csv",
        "test_csv": "Charades_v1_test.csv",
        "classes": "Charades_v1_classes.txt",
        "videos": "Charades_v1_480",
        "frames": False,
        "video_ext": ".mp4",
        "fps": 24.0,
      },
      "mmit": {
        "root": "",
        "train_csv": "trainingSet.csv",
        "val_csv": "validationSet.csv",
        "test_csv": "",
        "classes": "moments_categories.txt",
        "videos": "videos",
        "fps": 30.0,
      },
      "csv": {
        "root": "",
        "train_csv": "train.csv",
        "val_csv": "val.csv",
        "test_csv": "test.csv",
        "classes": "classes.txt",
        "videos": "",
        "fps": 30.0,
      },
      # AVA keyframes (mlar_jax/data/ava.py): PySlowFast's frame layout
      # `frames/VIDEO/VIDEO_000001.jpg` at 30 fps, the official v2.2 files.
      # "val" and "test" both read the val files (test labels are withheld).
      # Person boxes (detector CSVs, "" for none) scoring >= box_threshold
      # are added to the ground-truth boxes in training (train_boxes) and
      # replace them in evaluation (val_boxes). One rate (data.rates) and
      # one view per keyframe (eval.views = ((rate, 1),)).
      "ava": {
        "root": "",
        "frames": "frames",
        "train_csv": "ava_train_v2.2.csv",
        "val_csv": "ava_val_v2.2.csv",
        "labelmap": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
        "train_exclusions": "ava_train_excluded_timestamps_v2.2.csv",
        "val_exclusions": "ava_val_excluded_timestamps_v2.2.csv",
        "train_boxes": "",
        "val_boxes": "",
        "box_threshold": 0.8,
        "fps": 30.0,
      },
      # Volleyball (mlar_jax/data/volleyball.py): VIDEO_ID/annotations.txt and
      # VIDEO_ID/FRAME/N.jpg clip folders. task: "actions" (multi-label, the
      # players' actions) or "group" (single-label group activity: softmax
      # loss). Split "train" reads the videos of the official splits named
      # in train_splits, "val" and "test" their own. actions / activities:
      # files of the vocabularies, one name a line ("": the official ones; a
      # scenes export writes its own).
      "volleyball": {
        "root": "",
        "task": "actions",
        "train_splits": ("train", "val"),
        "fps": 25.0,
        "actions": "",
        "activities": "",
      },
      # Written by `python -m mlar_jax.data.prepare --dataset D --data_dir DIR`.
      "prepared": {"data_dir": "", "dataset": "charades"},
      "synthetic": {
        "seed": 0,
        "num_train": 2048,
        "num_val": 256,
        "num_test": 512,
        "video_frames": 32,
        "resolution": 64,
      },
      # Multi-actor scenes with boxes and masks (mlar_jax/data/scenes.py).
      "scenes": {
        "seed": 0,
        "num_train": 2048,
        "num_val": 256,
        "num_test": 512,
        "resolution": 48,
        "min_frames": 96,
        "max_frames": 160,
        # One label per video, its dominant activity (MiT's annotation of
        # what M-MiT labels fully; the transfer study's single-label source).
        "single_label": False,
      },
    }
  )


def base_config() -> ml_collections.ConfigDict:
  """Every key the training loop reads, with defaults."""
  return ml_collections.ConfigDict(
    {
      "seed": 0,
      "batch_size": 32,  # global, over all devices and hosts
      "num_train_steps": 1000,
      "log_every_steps": 50,
      "eval_every_steps": 0,  # 0: evaluate only at the end
      "data": data_config(),
      "model": {
        # What the model predicts (models.registry.TASKS): "classification",
        # [B, A] per clip; "detection", [B, N, A] per person box at the
        # clip's keyframe (a dataset with per-box labels, AVA); or "boxes",
        # [B, A] per clip from its person boxes' ROI features pooled over
        # the people (Volleyball's "bb"; a classification dataset with the
        # "boxes" extra). The dataset must be of the kind (pipeline.check_task).
        "task": "classification",
        # What a classifier reads (models.registry.CLASSIFIERS): "video",
        # "audio" (the audio backbone and the head) or "video+audio" (both
        # backbones; the fusion of M-MiT section 6.1). Audio needs the
        # "audio" extra in data.extras.
        "inputs": "video",
        "backbone": "resnet3d_tiny",
        # Of the "audio" input (models.registry.AUDIO_BACKBONES), sharing
        # dtype and frozen_bn.
        "audio_backbone": "soundnet8",
        "head": "linear",
        "dropout_rate": 0.5,
        "dtype": "float32",
        "frozen_bn": False,
        "conv_impl": "auto",
        # Recompute each residual block's activations in the backward pass
        # instead of storing them: none | block | convs (what a block keeps,
        # models.video_resnets.REMAT_POLICIES). Less memory per clip, more
        # FLOPs; the function and parameters are the same.
        "remat": "none",
        # The backbone's last-stage spatial stride: 2 as published; 1 doubles
        # the map's height and width with the same parameters (detection:
        # the MLAR paper's AVA setting, 14 x 14 at 224).
        "res5_spatial_stride": 2,
        # Detection (models.registry.build_detector): ROI-Align of each
        # person box before the head, PySlowFast's AVA settings.
        "roi": {"output_size": 7, "sampling_ratio": 0, "aligned": True},
        # MLAR head (model.head = "mlar"); paper defaults K=64, n=32, C'=128.
        "mlar": {
          "num_observations": 64,
          "groups": 32,
          "features": 128,
          "use_activity_specific": True,
          "use_correlation": True,
          # Variants (heads.MLARHead): output layer shared | per_activity |
          # tied; q_a's init std; how Mask enters Corr: add | normalised |
          # scaled | signed. The defaults are the best activity-specific head
          # of issue 19's study; the mean-observation head
          # (use_activity_specific=False) scored slightly higher there, but
          # its correlation output reduces to a fixed per-class scale and it
          # has no activity maps (README "The MLAR head's variants"). PAPER_MLAR,
          # selected by the config files' head=mlar_paper, is the paper's text.
          "output": "per_activity",
          "query_init": 0.02,
          "mask_mode": "add",
        },
      },
      # official_code: the M-MiT authors' released loss code instead of the
      # paper's equations (losses.OFFICIAL_LOSSES; README, "Losses").
      "loss": {"name": "bce", "class_weights": "none", "official_code": False},
      "optimizer": {
        "name": "sgd",
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "grad_clip_norm": 0.0,
        "freeze": "",
      },  # regex of parameter paths not updated
      # Initialise params and model state from another run's checkpoint (a
      # workdir, its checkpoints/ folder, or one checkpoints/STEP folder;
      # comma-separated, several runs' leaves combined: a video and an audio
      # run into a fused model) when the workdir has no checkpoint yet.
      # Leaves whose path matches init_from_skip (a regex, e.g. "^head/" for
      # a new head) keep their fresh initialisation; every other leaf must
      # match in path and shape.
      "init_from": "",
      "init_from_skip": "",
      # Speed-invariant tuning (MLAR section 3.5), run by
      # `python -m mlar_jax.tools.speed_invariant`: stage 1 is this config;
      # stage 2 starts from it, freezes the parameters matching `freeze` (the
      # whole backbone: its 3D convolutions with their batch norms' scales
      # and biases, "the weights for all the 3D convolution layers") and the
      # batch-norm statistics, and fine-tunes the module after the backbone
      # (the head) on clips of rates drawn from `rates`.
      "stage2": {
        "num_train_steps": 300,
        "rates": (2, 4, 8),
        "rate_probs": (),
        "base_lr": 0.01,
        "warmup_steps": 0,
        "freeze": "^backbone/",
        "frozen_bn": True,
      },
      "schedule": {"base_lr": 0.1, "warmup_steps": 50, "end_lr_factor": 0.0},
      "checkpoint": {"every_steps": 200, "keep": 3, "async_save": True},
      "eval": {
        "split": "test",
        "batch_size": 64,
        "step": -1,
        "output": "logits",
        # The view plan: (rate, temporal positions) x spatial_crops; the
        # default is the papers' 30-view test (12 at rate 4, 9 at 8, 9 at 2).
        "views": ((4, 4), (8, 3), (2, 3)),
        "spatial_crops": 3,
        "aggregate": "sum",  # per-video: sum | mean | max of sigmoids
      },
      # Mesh axes (sizes; one may be -1 for the rest of the devices). The
      # batch is split over data x fsdp; model splits the MLAR head's
      # activities (mlar_jax/sharding.py).
      "mesh": {"data": -1, "fsdp": 1, "model": 1},
      # params: replicated (data parallel) | fsdp. rules: (regex over a state
      # leaf's path, mesh axis per dimension), before the fsdp rule.
      "sharding": {"params": "replicated", "fsdp_min_size": 2**18, "rules": SHARDING_RULES},
    }
  )


# Settings that a checkpoint's shapes or its place in the data stream depend
# on: resuming a workdir with another value is refused (config_changes). The
# model's numerics settings (dtype, convolution implementation, dropout,
# rematerialisation) may change; its architecture may not.
RESUME_FIXED = (
  r"^(model\.(?!(dtype|conv_impl|dropout_rate|remat)$)|batch_size$"
  r"|data\.(name|num_frames|crop_size)$)"
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; sequences become lists (as in JSON)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = _as_json(value)
  return out


def _as_json(value: Any) -> Any:
  return [_as_json(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
  """What differs between a workdir's saved config and the current one.

  Args:
    saved: the workdir's `config.json` contents.
    current: `config.to_dict()` of the run about to resume.

  Returns:
    (refused, allowed): "KEY: OLD -> NEW" for every differing key, split by
    whether it matches RESUME_FIXED.
  """
  old, new = flatten(saved), flatten(current)
  refused, allowed = [], []
  for key in sorted(old.keys() | new.keys()):
    if old.get(key, "(unset)") != new.get(key, "(unset)"):
      line = f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
      (refused if re.search(RESUME_FIXED, key) else allowed).append(line)
  return refused, allowed


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `WORKDIR/config.json`, locked, with
  JSON lists back as tuples (as the config files write sequences), over
  `base_config()` so that a workdir of an earlier version still reads."""
  import json  # pylint: disable=g-import-not-at-top

  from etils import epath  # pylint: disable=g-import-not-at-top

  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
      f"{path}: no saved config (a workdir of an older version): pass --config"
    )

  def tuples(value: Any) -> Any:
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value

  def merged(defaults: dict, saved: dict) -> dict:
    out = dict(defaults)
    for key, value in saved.items():
      both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
      out[key] = merged(defaults[key], value) if both else value
    return out

  saved = tuples(json.loads(path.read_text()))
  # A key added to the project after the run was saved takes its default,
  # which is the behaviour the run had (new keys default to the old
  # behaviour); every saved value wins.
  config = ml_collections.ConfigDict(merged(base_config().to_dict(), saved))
  config.lock()
  return config


def fail(key: str, value: Any, why: str):
  """Raises the ValueError of a bad config value: `config.KEY=VALUE: why`."""
  raise ValueError(f"config.{key}={value!r}: {why}")


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """`config["a"]["b"]` for "a.b"."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_positive(config: ml_collections.ConfigDict, *keys: str) -> None:
  """Each dotted key of `config` holds a positive integer."""
  for key in keys:
    value = get(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      fail(key, value, "must be a positive integer")


def check_choice(config: ml_collections.ConfigDict, key: str, allowed: Iterable[str]) -> None:
  """`config.KEY` is one of `allowed` (the owner's one list of them)."""
  allowed = sorted(allowed)
  if get(config, key) not in allowed:
    fail(key, get(config, key), f"unknown; choose from {allowed}")


def check_regex(config: ml_collections.ConfigDict, *keys: str) -> None:
  """Each dotted key holds a valid regular expression."""
  for key in keys:
    try:
      re.compile(get(config, key))
    except re.error as e:
      fail(key, get(config, key), f"is not a valid regex: {e}")


def check_seed(config: ml_collections.ConfigDict, *keys: str) -> None:
  """Each dotted key holds a seed every consumer accepts: an integer in
  [0, 2**32) (grain's limit; numpy rejects negative seeds too)."""
  for key in keys:
    value = get(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
      fail(key, value, "must be an integer in [0, 2**32)")


def validate(config: ml_collections.ConfigDict) -> None:
  """The training loop's own keys (steps, batch sizes, checkpoints, init_from);
  every other part is checked by its owner (`validation.validate`)."""
  check_positive(
    config,
    "batch_size",
    "num_train_steps",
    "log_every_steps",
    "checkpoint.every_steps",
    "checkpoint.keep",
  )
  if config.eval_every_steps < 0:
    fail("eval_every_steps", config.eval_every_steps, "must be >= 0")
  check_regex(config, "init_from_skip")
  # The seed reaches grain's shuffle only when the input pipeline starts,
  # after the model is built: without this a bad one is a late traceback.
  check_seed(config, "seed")
