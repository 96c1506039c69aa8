"""Issue 18 through the command line: one line per fatal error, a workdir
lock, the workdir's config.json and what a resume may change, evaluation-only
runs beside the training run's results, and SIGTERM / SIGINT.

Every run is `python -m mlar_jax.main` in a fresh interpreter on the tiny
synthetic config, as a user runs it.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, run_main
from flax import traverse_util

from mlar_jax import checkpointing

CONFIG = str(ROOT / "configs" / "synthetic.py:runlocal")
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def _last_line(proc) -> str:
  return proc.stderr.strip().splitlines()[-1]


def _assert_one_line_error(proc, *fragments: str) -> str:
  """The run failed with exit code 1, its last line names the cause, and no
  traceback was printed."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _last_line(proc)
  assert line.startswith("Error: "), proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in line, line
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished runlocal workdir (checkpoints 3 and 6, eval_results.json)."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  proc = run_main(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _copy(trained, tmp_path):
  return shutil.copytree(trained, tmp_path / "run")


def _params(workdir, step):
  return traverse_util.flatten_dict(
    checkpointing.load_variables(str(workdir / "checkpoints" / str(step)))["params"], sep="/"
  )


# ----------------------------------------------------------------------------
# One line per fatal error.
# ----------------------------------------------------------------------------


def test_an_error_found_after_validation_is_one_line_with_its_traceback_in_the_workdir(tmp_path):
  # The mesh is checked against the devices, after the config's own checks.
  proc = run_main(tmp_path / "run", "--config.mesh.data=3")
  _assert_one_line_error(proc, "config.mesh", "!= 1 devices")
  assert "Traceback" in (tmp_path / "run" / "error.log").read_text()
  verbose = run_main(tmp_path / "run", "--config.mesh.data=3", "--verbose")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_a_coordinator_that_cannot_be_reached_is_one_line(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  proc = run_main(
    tmp_path / "run",
    f"--coordinator_address=127.0.0.1:{port}",
    "--num_processes=2",
    "--process_id=1",
    "--distributed_timeout=2",
  )
  _assert_one_line_error(proc, "Process 1 could not reach the coordinator", f":{port}")
  assert time.monotonic() - start < 60  # not JAX's 5-minute default


def test_the_decode_error_limit_is_one_line(tmp_path):
  from test_sources import CLASSES, HEADER

  root = tmp_path / "charades"
  (root / "videos").mkdir(parents=True)
  (root / "Charades_v1_classes.txt").write_text("\n".join(CLASSES) + "\n")
  rows = [HEADER]
  for i in range(4):
    (root / "videos" / f"V{i}.mp4").write_bytes(b"not a video" * 100)
    rows.append(f'V{i},S1,Kitchen,6,7,Yes,"s",cup,"d",c000 0.00 2.00,4.0')
  for split in ("train", "test"):
    (root / f"Charades_v1_{split}.csv").write_text("\n".join(rows) + "\n")
  proc = run_main(
    tmp_path / "run",
    "--config.data.name=charades",
    f"--config.data.charades.root={root}",
    "--config.data.charades.videos=videos",
    "--config.num_train_steps=50",
  )
  _assert_one_line_error(proc, "failed to decode", "config.data.max_error_ratio")


def _convert(*args):
  return subprocess.run(
    [sys.executable, "-m", "mlar_jax.tools.convert", *args],
    capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300,
  )  # fmt: skip


def test_convert_fails_in_one_line_on_an_unknown_arch_and_on_a_foreign_file(tmp_path):
  # The arch is checked before the file is read (this one does not exist).
  proc = _convert("--arch=nope", f"--checkpoint={tmp_path}/missing.pyth", f"--out={tmp_path}/o")
  _assert_one_line_error(proc, "--arch='nope'", "i3d_r50")
  foreign = tmp_path / "notes.pyth"
  foreign.write_text("garbage\n")
  proc = _convert("--arch=i3d_r50", f"--checkpoint={foreign}", f"--out={tmp_path}/o")
  _assert_one_line_error(proc, f"{foreign}: not a PyTorch checkpoint")


def _limit_file_size():
  # A file-size limit stands in for a full disk: writes past it fail with
  # EFBIG (SIGXFSZ ignored), as they fail with ENOSPC on a full one.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_full_disk_mid_save_is_one_line_and_the_next_run_completes(tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "mlar_jax.main", "--config", CONFIG, "--workdir", str(workdir)]
  proc = subprocess.run(
    args, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300,
    preexec_fn=_limit_file_size,
  )  # fmt: skip
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert _last_line(proc).startswith("Error: ") and "File too large" in _last_line(proc)
  # TensorStore's threads may print "Event loop is closed" tracebacks of their
  # own before the line (README, when things go wrong); nothing after it.
  # The half-written step is no checkpoint: the next run starts over cleanly.
  with checkpointing.make_manager(str(workdir), checkpointing_config()) as manager:
    assert manager.all_steps() == []
  again = run_main(workdir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
    3,
    6,
  ]


def checkpointing_config():
  from conftest import load_config

  return load_config("synthetic", "runlocal").checkpoint


class _Run:
  """`python -m mlar_jax.main` in the background; stderr collected line by line."""

  def __init__(self, workdir, *overrides: str):
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "mlar_jax.main", "--config", CONFIG, "--workdir", str(workdir)]
      + list(overrides),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
    )  # fmt: skip
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in self.lines):
      assert self.proc.poll() is None, "".join(self.lines[-50:])
      assert time.monotonic() < deadline, f"no {text!r} in {timeout} s"
      time.sleep(0.2)

  def finish(self, timeout: float = 300) -> tuple[int, str]:
    rc = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return rc, "".join(self.lines)


# ----------------------------------------------------------------------------
# config.json, and what a resume may change.
# ----------------------------------------------------------------------------


def test_a_resume_that_changes_the_model_or_batch_is_refused_naming_the_difference(
  trained, tmp_path
):
  workdir = _copy(trained, tmp_path)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["batch_size"] == 8 and saved["model"]["head"] == "linear"
  proc = run_main(workdir, "--config.batch_size=4", "--config.model.head=mlar")
  _assert_one_line_error(proc, "batch_size: 8 -> 4", "model.head: linear -> mlar", "init_from")
  # A schedule change is allowed, and said.
  proc = run_main(workdir, "--config.schedule.base_lr=0.05", "--config.num_train_steps=7")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (changed,) = [
    line for line in proc.stderr.splitlines() if "Resuming with changed settings" in line
  ]
  assert "num_train_steps: 6 -> 7; schedule.base_lr: 0.1 -> 0.05" in changed
  assert json.loads((workdir / "config.json").read_text())["schedule"]["base_lr"] == 0.05


def test_a_checkpoint_of_another_model_names_the_parameters_and_both_shapes(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  (workdir / "config.json").unlink()  # a workdir of an older version: no config saved
  proc = run_main(workdir, "--config.model.mlar.features=16", "--config.model.head=mlar")
  line = _assert_one_line_error(proc, "Checkpoint 6", "holds another model's state")
  assert "params/head/" in line and "checkpoint absent, model (" in line
  assert "params/head/classifier/kernel: checkpoint (" in line and "model absent" in line
  # Not taken for damage: nothing was moved aside.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]


# ----------------------------------------------------------------------------
# Evaluation-only runs.
# ----------------------------------------------------------------------------


def test_an_evaluation_only_run_keeps_the_training_results_and_tags(trained, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator

  workdir = _copy(trained, tmp_path)
  before = (workdir / "eval_results.json").read_text(), (workdir / "predictions.txt").read_text()
  proc = run_main(workdir, "--mode=eval", "--config.eval.aggregate=max")
  assert proc.returncode == 0, proc.stderr[-3000:]
  name = "eval_test_step6_r8x1_c1_max"
  assert proc.stdout.strip().endswith(f"{workdir}/{name}.json")
  after = (workdir / "eval_results.json").read_text(), (workdir / "predictions.txt").read_text()
  assert after == before
  results = json.loads((workdir / f"{name}.json").read_text())
  assert results["step"] == 6 and results["results_file"] == str(workdir / f"{name}.json")
  assert len((workdir / f"predictions_{name}.txt").read_text().splitlines()) == 24
  tags = set()
  for events in workdir.glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(str(events))
    acc.Reload()
    tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  assert "test/macro_map" in tags and f"{name}/macro_map" in tags


# ----------------------------------------------------------------------------
# Workdir lock, SIGTERM and SIGINT.
# ----------------------------------------------------------------------------

# A constant learning rate: the steps do not depend on num_train_steps, so a
# run of N steps is the reference for an interrupted run's checkpoint N.
CONSTANT_LR = [
  "--config.schedule.warmup_steps=0",
  "--config.schedule.end_lr_factor=1.0",
  "--config.checkpoint.every_steps=1000",  # only the stop saves
  "--config.log_every_steps=1",
  "--config.data.num_workers=0",
]


def _checkpoints(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_workdir_in_use_is_refused_and_sigterm_sigint_save_and_resume_exactly(tmp_path):
  workdir = tmp_path / "run"
  run = _Run(workdir, "--config.num_train_steps=100000", *CONSTANT_LR)
  run.wait_for("step 2/100000")
  # A second run on the workdir stops at once, naming the first.
  second = run_main(workdir)
  line = _assert_one_line_error(second, f"{workdir} is in use by", f'"pid": {run.proc.pid}')
  assert "another --workdir" in line

  # SIGTERM (a preemption): the first saves its next step and exits 143.
  run.proc.send_signal(signal.SIGTERM)
  rc, log = run.finish()
  assert rc == 128 + signal.SIGTERM, log[-3000:]
  (first,) = _checkpoints(workdir)
  assert log.strip().splitlines()[-1] == (
    f"Stopped by SIGTERM at step {first} of 100000; checkpoint {first} saved in "
    f"{workdir}/checkpoints. Run the same command to resume."
  )
  assert "Traceback" not in log
  assert (workdir / "run.lock").read_text() == ""  # released

  # A run that died without releasing the lock (kill -9) left its owner in
  # the file: taken over. Ctrl-C (SIGINT) saves and stops the same way.
  (workdir / "run.lock").write_text(json.dumps({"host": "gone", "pid": 999999}))
  run = _Run(workdir, "--config.num_train_steps=100000", *CONSTANT_LR)
  run.wait_for(f"step {first + 2}/100000")
  run.proc.send_signal(signal.SIGINT)
  rc, log = run.finish()
  assert rc == 128 + signal.SIGINT, log[-3000:]
  assert "Taking over the stale lock" in log and '"pid": 999999' in log
  assert f"Resumed from checkpoint at step {first}" in log
  last = _checkpoints(workdir)[-1]
  assert last > first and f"Stopped by SIGINT at step {last}" in log

  # Nothing was lost: the same steps without interruption give the same state.
  reference = tmp_path / "reference"
  proc = run_main(reference, f"--config.num_train_steps={last}", "--mode=train", *CONSTANT_LR)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got, want = _params(workdir, last), _params(reference, last)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
