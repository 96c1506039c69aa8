"""Checkpoints survive divergence and damage (issue 18, items 1 and 2).

A diverging run stops at the step its state turns non-finite and saves
nothing from then on; a workdir whose latest checkpoint is non-finite is
refused with the way back; a damaged latest checkpoint is skipped for the
newest one that restores, and the resumed run is bit-identical.
"""

import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, checkpoint_state, load_config

from mlar_jax import checkpointing, evaluate, sharding, train
from mlar_jax.data import pipeline


def _config(**overrides):
  config = load_config("synthetic", "runlocal")  # 6 steps, a checkpoint every 3
  config.update(overrides)
  return config


def _steps(workdir):
  with ocp.CheckpointManager(workdir / "checkpoints") as m:
    return sorted(m.all_steps())


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
  """A finished runlocal workdir with checkpoints 3 and 6 (copy before use)."""
  workdir = tmp_path_factory.mktemp("healthy") / "run"
  train.train_and_evaluate(_config(), str(workdir), final_eval=False)
  assert _steps(workdir) == [3, 6]
  return workdir


def _copy(healthy, tmp_path):
  return shutil.copytree(healthy, tmp_path / "run")


def _nonfinite(tree):
  """Reference: the collections of a host state with a non-finite float."""
  collections = {"params": tree.params, **tree.model_state, "opt_state": tree.opt_state}
  return [
    name
    for name, value in collections.items()
    if not all(np.isfinite(x).all() for x in jax.tree.leaves(value) if x.dtype.kind == "f")
  ]


def test_divergence_stops_at_its_step_and_keeps_the_good_checkpoints(
  healthy, tmp_path, monkeypatch
):
  workdir = _copy(healthy, tmp_path)
  good = checkpoint_state(workdir, 6)
  # Every step's output checked on the host with numpy, independently of the
  # trainer's in-step flags.
  first_bad = []
  jit_step = train.Training.jit_step

  def recording_jit_step(self):
    step_fn = jit_step(self)

    def step(state, batch):
      state, metrics = step_fn(state, batch)
      bad = _nonfinite(jax.device_get(state))
      if bad and not first_bad:
        first_bad.append((int(state.step), bad))
      return state, metrics

    return step

  monkeypatch.setattr(train.Training, "jit_step", recording_jit_step)
  # keep=2: before the check, non-finite checkpoints 10 and 12 rotated out 3
  # and 6. The flags are read at save steps only here (log every 100), and
  # the state turns non-finite at step 9 (params, batch_stats, opt_state;
  # the loss still finite): named at its own step, not at 10.
  config = _config(num_train_steps=12, log_every_steps=100)
  config.schedule.base_lr = 1e6
  config.checkpoint.update(keep=2, every_steps=5)
  with pytest.raises(train.NonFiniteError) as error:
    train.train_and_evaluate(config, str(workdir), final_eval=False)
  (step, bad), message = first_bad[0], str(error.value)
  assert 6 < step < 10, message
  assert message.startswith(f"Non-finite {bad[0]} at step {step} "), (message, bad)
  assert "The last checkpoint is step 6" in message and "\n" not in message
  assert _steps(workdir) == [3, 6]
  jax.tree.map(np.testing.assert_array_equal, good, checkpoint_state(workdir, 6))


def test_divergence_ends_the_command_with_one_line(healthy, tmp_path):
  workdir = _copy(healthy, tmp_path)
  result = subprocess.run(
    [sys.executable, "-m", "mlar_jax.main", "--config", "configs/synthetic.py:runlocal"]
    + ["--workdir", str(workdir), "--mode", "train", "--config.num_train_steps=12"]
    + ["--config.schedule.base_lr=1e6"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"Error: Non-finite \w+ at step \d+ .*resume from it\.", last), result.stderr[
    -3000:
  ]
  assert "Traceback" not in result.stderr
  assert _steps(workdir) == [3, 6]


def _save_with_nan(workdir, config, step):
  """Checkpoint `step` of `workdir` = checkpoint 6 with one NaN in its batch
  statistics, written by the project's own checkpointing (as an older
  version that saved diverged states did)."""
  mesh = sharding.make_mesh(config.mesh)
  source = pipeline.make_source(config.data, "train")
  training = train.build_training(config, mesh, source.class_stats())
  target = checkpointing.abstract_with_shardings(training.abstract_state, training.state_shardings)
  data_iter = iter(
    pipeline.train_dataset(source, config.data, global_batch_size=config.batch_size, seed=0)
  )
  manager = checkpointing.make_manager(str(workdir), config.checkpoint)
  state = checkpointing.restore(manager, 6, target, data_iter)
  stats = jax.tree.map(lambda x: x.at[...].set(np.nan), state.model_state["batch_stats"])
  state = state.replace(model_state={**state.model_state, "batch_stats": stats})
  checkpointing.save(manager, step, state, data_iter)
  manager.wait_until_finished()
  manager.close()


def test_resume_refuses_a_nonfinite_latest_checkpoint_and_says_how_to_continue(healthy, tmp_path):
  workdir = _copy(healthy, tmp_path)
  config = _config(num_train_steps=12)
  _save_with_nan(workdir, config, 9)
  with pytest.raises(train.NonFiniteError) as error:
    train.train_and_evaluate(config, str(workdir), final_eval=False)
  message = str(error.value)
  assert message.startswith("Checkpoint 9 holds non-finite batch_stats"), message
  assert "The newest finite checkpoint is step 6" in message
  assert _steps(workdir) == [3, 6, 9]  # nothing moved or deleted
  # The advice works as written.
  command = re.search(r"`(mkdir .*)`", message).group(1)
  subprocess.run(command, shell=True, check=True)
  assert _steps(workdir) == [3, 6]
  train.train_and_evaluate(config, str(workdir), final_eval=False)
  assert _steps(workdir)[-1] == 12


def _corrupt(workdir, step, how):
  state = workdir / "checkpoints" / str(step) / "state"
  if how == "truncate":
    data = max((state / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
      f.truncate(1000)
  else:
    (state / "manifest.ocdbt").unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(healthy, tmp_path, caplog, how):
  workdir = _copy(healthy, tmp_path)
  _corrupt(workdir, 6, how)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(), str(workdir), final_eval=False)
  warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("Checkpoint 6 "), warnings
  assert "\n" not in warnings[0]
  # Resumed from 3, saved 6 again; the damaged folder is kept, renamed.
  assert _steps(workdir) == [3, 6]
  assert len(list((workdir / "checkpoints").glob("6.corrupt-*"))) == 1
  jax.tree.map(
    np.testing.assert_array_equal, checkpoint_state(healthy, 6), checkpoint_state(workdir, 6)
  )


def test_eval_mode_falls_back_from_a_corrupt_latest_checkpoint(healthy, tmp_path):
  workdir = _copy(healthy, tmp_path)
  _corrupt(workdir, 6, "truncate")
  config = _config()
  assert evaluate.evaluate(config, str(workdir))["step"] == 3
  config.eval.step = 6  # asked for by number: one clear error instead
  with pytest.raises(
    checkpointing.CheckpointError, match=r"^Checkpoint 6 in .* cannot be restored"
  ):
    evaluate.evaluate(config, str(workdir))
  assert _steps(workdir) == [3, 6]  # evaluation moves nothing


def test_no_restorable_checkpoint_is_one_error(tmp_path):
  def fail(step):
    raise ValueError(f"bad {step}\nmany lines of specs")

  with pytest.raises(checkpointing.CheckpointError, match=r"latest fails with ValueError: bad 6$"):
    checkpointing.restore_newest([3, 6], fail, tmp_path)
