"""Every config builds; the CLI rejects bad keys and values before compiling."""

import os
import subprocess
import sys

import pytest

from conftest import CONFIGS, ROOT, load_config
from mlar_jax import config_lib


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_builds_and_validates(path, arg):
  config = load_config(path.stem, arg)
  config_lib.validate(config)


def test_parse_arg():
  args = config_lib.parse_arg("runlocal,steps=7", runlocal=False, steps=1, name="a")
  assert args.runlocal is True and args.steps == 7 and args.name == "a"
  with pytest.raises(ValueError, match="Unknown config argument 'bogus'"):
    config_lib.parse_arg("bogus", runlocal=False)


@pytest.mark.parametrize("key,value,message", [
    ("model.backbone", "resnet9000", "config.model.backbone='resnet9000': unknown"),
    ("data.crop_size", 64, "config.data.crop_size=64: exceeds data.min_short_side"),
    ("loss.name", "softmax", "config.loss.name='softmax': unknown"),
    ("batch_size", 0, "config.batch_size=0: must be a positive integer"),
    ("data.rate_probs", (0.5,), "config.data.rate_probs"),
])
def test_validate_names_the_bad_key(key, value, message):
  config = load_config("synthetic", "runlocal")
  node, leaf = config, key.split(".")
  for part in leaf[:-1]:
    node = node[part]
  node[leaf[-1]] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(config)


def _cli(tmp_path, *overrides):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "mlar_jax.main", "--config",
       str(ROOT / "configs" / "synthetic.py") + ":runlocal",
       "--workdir", str(tmp_path / "w"), *overrides],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_rejects_unknown_key_and_bad_value_before_training(tmp_path):
  proc = _cli(tmp_path, "--config.model.backbon=resnet3d_tiny")
  assert proc.returncode != 0
  assert "model.backbon" in proc.stderr
  proc = _cli(tmp_path, "--config.model.backbone=nope")
  assert proc.returncode != 0
  assert "config.model.backbone='nope'" in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()
