"""Every config builds; the CLI rejects bad keys and values before compiling."""

import os
import re
import subprocess
import sys

import pytest
from conftest import CONFIGS, ROOT, load_config, run_main

from mlar_jax import config_lib, validation


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_builds_and_validates(path, arg):
  config = load_config(path.stem, arg)
  validation.validate(config)


def test_loading_a_config_imports_no_jax():
  # A fresh interpreter (this one has jax already): every config, every
  # get_config argument of the tests, without jax, flax, grain or PyAV.
  code = (
    "import importlib.util, sys\n"
    f"for path in {[str(p) for p in CONFIGS]!r}:\n"
    "  spec = importlib.util.spec_from_file_location('c', path)\n"
    "  module = importlib.util.module_from_spec(spec)\n"
    "  spec.loader.exec_module(module)\n"
    "  for arg in (None, 'runlocal'):\n"
    "    module.get_config(arg)\n"
    "heavy = sorted(m for m in ('jax', 'flax', 'grain', 'av', 'tensorflow', 'numpy')\n"
    "               if m in sys.modules)\n"
    "print(heavy)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"


def test_parse_arg():
  args = config_lib.parse_arg("runlocal,steps=7", runlocal=False, steps=1, name="a")
  assert args.runlocal is True and args.steps == 7 and args.name == "a"
  with pytest.raises(ValueError, match="Unknown config argument 'bogus'"):
    config_lib.parse_arg("bogus", runlocal=False)


def test_tied_outputs_need_the_activity_queries():
  config = load_config("synthetic", "runlocal")
  config.model.mlar.output, config.model.mlar.use_activity_specific = "tied", False
  with pytest.raises(ValueError, match=r"model.mlar.output='tied': needs model.mlar.use_activity"):
    validation.validate(config)


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.backbone", "resnet9000", "config.model.backbone='resnet9000': unknown"),
    ("data.crop_size", 64, "config.data.crop_size=64: exceeds data.min_short_side"),
    ("loss.name", "sigmoid_focal", "config.loss.name='sigmoid_focal': unknown"),
    ("batch_size", 0, "config.batch_size=0: must be a positive integer"),
    ("data.rate_probs", (0.5,), "config.data.rate_probs"),
    # Every owner's names, with its list of allowed values.
    (
      "optimizer.name",
      "lamb",
      "config.optimizer.name='lamb': unknown; choose from ['adamw', 'sgd']",
    ),
    (
      "sharding.params",
      "zero3",
      "config.sharding.params='zero3': unknown; choose from ['fsdp', 'replicated']",
    ),
    (
      "model.conv_impl",
      "fast",
      "config.model.conv_impl='fast': unknown; choose from ['auto', 'folded', 'native']",
    ),
    (
      "eval.aggregate",
      "median",
      "config.eval.aggregate='median': unknown; choose from ['max', 'mean', 'sum']",
    ),
    ("data.name", "kinetics", "config.data.name='kinetics': unknown; choose from ["),
    ("loss.class_weights", "log", "config.loss.class_weights='log': unknown"),
    ("model.mlar.features", 30, "config.model.mlar.features=30: must be divisible"),
    (
      "model.mlar.output",
      "dense",
      "config.model.mlar.output='dense': unknown; choose from ['per_activity', 'shared', 'tied']",
    ),
    ("model.mlar.mask_mode", "mul", "config.model.mlar.mask_mode='mul': unknown; choose from"),
    ("model.mlar.query_init", 0.0, "config.model.mlar.query_init=0.0: must be > 0"),
    (
      "model.res5_spatial_stride",
      4,
      "config.model.res5_spatial_stride=4: the last stage's spatial stride must be one of [2, 1]",
    ),
    (
      "sharding.rules",
      (("head/x", ("tensor",)),),
      "config.sharding.rules=('head/x', ('tensor',)): must be (regex, (axis or None, ...))",
    ),
    ("sharding.rules", ("head/x",), "config.sharding.rules='head/x': must be (regex, "),
  ],
)
def test_validate_names_the_bad_key(key, value, message):
  config = load_config("synthetic", "runlocal")
  node, leaf = config, key.split(".")
  for part in leaf[:-1]:
    node = node[part]
  node[leaf[-1]] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.validate(config)


def _cli(tmp_path, *overrides):
  return run_main(tmp_path / "w", *overrides)


def test_cli_rejects_unknown_key_and_bad_value_before_training(tmp_path):
  proc = _cli(tmp_path, "--config.model.backbon=resnet3d_tiny")
  assert proc.returncode != 0
  assert "model.backbon" in proc.stderr
  proc = _cli(tmp_path, "--config.model.backbone=nope")
  assert proc.returncode != 0
  assert "config.model.backbone='nope'" in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_cli_eval_without_a_checkpoint_is_one_line_and_creates_nothing(tmp_path):
  proc = _cli(tmp_path, "--mode=eval")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("Error: No checkpoint (latest) in ")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_saved_config_of_an_earlier_version_reads_with_the_new_keys_at_their_defaults(tmp_path):
  import json

  saved = config_lib.base_config().to_dict()
  saved["schedule"]["base_lr"] = 0.05
  del saved["data"]["audio"]  # keys an earlier version did not have
  del saved["model"]["mlar"]["mask_mode"]
  saved["data"]["extra_section"] = {"x": [1, 2]}  # a config file's own key
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = config_lib.saved_config(str(tmp_path))
  base = config_lib.base_config()
  assert config.schedule.base_lr == 0.05
  assert config.data.audio.to_dict() == base.data.audio.to_dict()
  assert config.model.mlar.mask_mode == base.model.mlar.mask_mode
  assert config.data.extra_section.x == (1, 2)
  # No change is reported against the current config with the same values.
  current = json.loads(config.to_json_best_effort())
  assert config_lib.config_changes(config.to_dict(), current) == ([], [])


@pytest.mark.parametrize("path", ["synthetic", "scenes", "charades", "ava"])
def test_head_mlar_paper_is_the_mlar_head_as_the_paper_writes_it(path):
  paper = load_config(path, "runlocal,head=mlar_paper")
  default = load_config(path, "runlocal,head=mlar")
  assert paper.model.head == default.model.head == "mlar"
  for key, value in config_lib.PAPER_MLAR.items():
    assert paper.model.mlar[key] == value
  # The default departs from it in the output layer and q_a's init only.
  differ = {k for k in config_lib.PAPER_MLAR if default.model.mlar[k] != paper.model.mlar[k]}
  assert differ == {"output", "query_init"}
  validation.validate(paper)
