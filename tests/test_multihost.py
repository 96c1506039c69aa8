"""Multi-process training on JAX's distributed runtime (gloo, CPU).

2 processes x 2 fake devices each train the runlocal config and must give the
parameters of 1 process x 4 devices on the same global batches; both stop
and restart from their checkpoint; and a checkpoint written by the 2
processes restores in 1 process and continues to the same parameters.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mlar_jax import checkpointing

# Constant learning rate after warmup, so stopping at step 3 (num_train_steps=3)
# and continuing to 6 follows the same schedule as one run to 6.
COMMON = [
  "--config=configs/synthetic.py:runlocal",
  "--config.schedule.end_lr_factor=1.0",
  # A small step: float rounding (gloo sums in another order) stays small.
  "--config.schedule.base_lr=0.01",
  "--config.checkpoint.every_steps=3",
  "--config.data.num_workers=0",
]
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(
  workdir, steps: int, mode: str, processes: int, devices_per_process: int, *extra, logs=None
) -> list[subprocess.Popen]:
  """Starts `python -m mlar_jax.main` as `processes` processes (output to
  pipes, or to the files `logs`)."""
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
  }
  args = [
    sys.executable,
    "-m",
    "mlar_jax.main",
    *COMMON,
    f"--workdir={workdir}",
    f"--mode={mode}",
    f"--config.num_train_steps={steps}",
    *extra,
  ]
  port = _free_port()
  procs = []
  for i in range(processes):
    flags = (
      [
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={processes}",
        f"--process_id={i}",
      ]
      if processes > 1
      else []
    )
    out = open(logs[i], "w") if logs else subprocess.PIPE  # noqa: SIM115  (the child owns it)
    procs.append(
      subprocess.Popen(args + flags, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    )
  return procs


def _run(workdir, steps: int, mode: str, processes: int, devices_per_process: int):
  """Runs `python -m mlar_jax.main` as `processes` processes; waits for all."""
  procs = _start(workdir, steps, mode, processes, devices_per_process)
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


def _params(workdir, step):
  return checkpointing.load_variables(os.path.join(workdir, "checkpoints", str(step)))["params"]


def _assert_trees_close(a, b):
  flat_a = {"/".join(map(str, k)): v for k, v in _flatten(a)}
  flat_b = {"/".join(map(str, k)): v for k, v in _flatten(b)}
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    # gloo's cross-process reductions add in another order than one process.
    np.testing.assert_allclose(flat_a[key], flat_b[key], rtol=1e-4, atol=1e-6, err_msg=key)


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """1 process x 4 devices, straight to step 6, then evaluated."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  _run(workdir, 6, "train_and_eval", processes=1, devices_per_process=4)
  with open(os.path.join(workdir, "eval_results.json")) as f:
    return workdir, json.load(f)


def test_two_processes_equal_one_and_resume_after_a_restart(reference, tmp_path):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "two_processes")
  outputs = _run(workdir, 3, "train", processes=2, devices_per_process=2)
  assert "Process 1 of 2" in outputs[1]
  _assert_trees_close(_params(workdir, 3), _params(ref_dir, 3))
  shutil.copytree(workdir, tmp_path / "written_by_two")

  # Both processes restart and continue from their checkpoint.
  outputs = _run(workdir, 6, "train_and_eval", processes=2, devices_per_process=2)
  assert "Resumed from checkpoint at step 3" in outputs[0]
  _assert_trees_close(_params(workdir, 6), _params(ref_dir, 6))
  # Results are written once (process 0), and equal one process's.
  with open(os.path.join(workdir, "eval_results.json")) as f:
    results = json.load(f)
  assert results["num_videos"] == ref_results["num_videos"]
  np.testing.assert_allclose(results["macro_map"], ref_results["macro_map"], atol=1e-4)
  assert "| ratio" in outputs[0] and "| ratio" not in outputs[1]  # the summary line

  # --mode eval on 2 processes of the 1-process run's checkpoint: its
  # variables restore onto the other topology and score the same.
  eval_dir = tmp_path / "evaluated_on_two"
  shutil.copytree(ref_dir, eval_dir)
  _run(str(eval_dir), 6, "eval", processes=2, devices_per_process=2)
  (written,) = eval_dir.glob("eval_test_step6_*.json")  # beside the run's eval_results.json
  results = json.loads(written.read_text())
  assert results["step"] == 6
  np.testing.assert_allclose(results["macro_map"], ref_results["macro_map"], atol=1e-4)


def test_checkpoint_written_by_two_processes_continues_in_one(reference, tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / "two_then_one")
  _run(workdir, 3, "train", processes=2, devices_per_process=2)
  outputs = _run(workdir, 6, "train", processes=1, devices_per_process=4)
  assert "written by 2 processes, resuming on 1" in outputs[0]
  _assert_trees_close(_params(workdir, 6), _params(ref_dir, 6))


def test_sigterm_to_one_process_saves_the_same_step_on_both_and_stops(tmp_path):
  """A preemption notice reaches one host: JAX's preemption sync point makes
  every process save the same step and exit (143, as killed by SIGTERM)."""
  workdir = tmp_path / "preempted"
  logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
  procs = _start(workdir, 100000, "train", 2, 2, "--config.log_every_steps=1", logs=logs)
  deadline = time.monotonic() + TIMEOUT
  while "step 2/100000" not in logs[0].read_text():
    assert all(p.poll() is None for p in procs), logs[0].read_text()[-4000:]
    assert time.monotonic() < deadline
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  try:
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      p.kill()
  texts = [log.read_text() for log in logs]
  assert codes == [128 + signal.SIGTERM] * 2, texts[0][-4000:] + texts[1][-4000:]
  stopped = [re.findall(r"Stopped by SIGTERM at step (\d+) of 100000", t) for t in texts]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1
  step = int(stopped[0][0])
  assert (workdir / "checkpoints" / str(step) / "state").is_dir()
  _params(str(workdir), step)  # restores
