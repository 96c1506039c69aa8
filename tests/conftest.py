"""Test setup: 8 fake CPU devices, set before jax is first imported."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Subprocesses that load libtpu (the AOT tests) may run at once under xdist.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402  (must come after XLA_FLAGS)
import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402

from mlar_jax import cli  # noqa: E402, F401  (the XLA:CPU options every command runs with)

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, "conftest must set 8 fake devices before jax starts"
  return devs


ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def load_config(name: str, arg: str | None = None):
  """`configs/NAME.py`'s get_config(arg), loaded by path as config_flags does."""
  path = ROOT / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_main(workdir, *overrides: str, config: str = "synthetic.py:runlocal"):
  """`python -m mlar_jax.main --config configs/CONFIG --workdir WORKDIR
  OVERRIDES...` in a fresh CPU-only interpreter; the CompletedProcess."""
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "mlar_jax.main",
      "--config",
      str(ROOT / "configs" / config),
      "--workdir",
      str(workdir),
      *overrides,
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def checkpoint_state(workdir, step: int):
  """The "state" item of checkpoint `step` in `workdir/checkpoints`, as saved
  (orbax's own restore, independent of the project's restore path)."""
  with ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints") as m:
    restored = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]
