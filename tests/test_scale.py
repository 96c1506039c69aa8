"""Ahead-of-time compilation for TPU topologies, sharding rules, launch scripts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlar_jax import config_lib, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# libtpu takes a machine-wide lock file unless told that several processes
# may load it (they only compile here; no chip is touched).
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


@pytest.fixture(scope="module")
def libtpu():
  """Skips (with libtpu's reason) where it cannot describe a TPU topology; checked
  in a subprocess so this process never loads libtpu."""
  probe = subprocess.run(
    [sys.executable, "-c", "from mlar_jax.tools import aot; aot.topology_devices('v5e:2x2')"],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=300,
  )
  if probe.returncode:
    pytest.skip(f"libtpu cannot describe TPU topologies here: {probe.stderr[-500:]}")


def _aot(*flags):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "mlar_jax.tools.aot",
      "--config=configs/synthetic.py:runlocal,head=mlar",
      *flags,
    ],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_aot_compiles_the_train_step_for_a_tpu_topology(libtpu):
  out = _aot(
    "--topology=v5e:2x2",
    "--json",
    "--step_time=0.5",
    "--config.sharding.params=fsdp",
    "--config.sharding.fsdp_min_size=1024",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=2",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["chips"] == 4 and result["device_kind"] == "TPU v5 lite"
  assert result["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
  assert result["hbm_bytes"] == 16 * 2**30 and result["fits"]
  assert 0 < result["peak_bytes"] < result["hbm_bytes"]
  assert result["peak_bytes"] == (
    result["argument_bytes"] + result["output_bytes"] + result["temp_bytes"] - result["alias_bytes"]
  )
  assert result["flops_per_chip"] > 0
  assert result["flops_per_step"] == pytest.approx(4 * result["flops_per_chip"])
  assert result["model_flops_per_step"] > 0
  assert result["mfu"] == pytest.approx(result["model_flops_per_step"] / (4 * 0.5 * 197e12))

  # The same step against a limit it exceeds: a clear message, status 1.
  out = _aot("--topology=v5e:2x2", f"--hbm_gib={result['peak_bytes'] / 2 / 2**30}")
  assert out.returncode == 1
  assert "Does not fit" in out.stderr and "per chip" in out.stderr


def test_unknown_topology_is_a_clear_error(libtpu):
  out = _aot("--topology=v5e-sixteen")
  assert out.returncode != 0 and "--topology=v5e-sixteen" in out.stderr


def test_parameter_rules_fsdp_and_model_axis(devices):
  cfg = config_lib.base_config()
  cfg.mesh.update(data=2, fsdp=2, model=2)
  cfg.sharding.update(params="fsdp", fsdp_min_size=1000)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  state = {
    "params": {
      "head": {
        "activity_queries": jax.ShapeDtypeStruct((4096, 128), np.float32),
        "out_corr_bias": jax.ShapeDtypeStruct((157,), np.float32),
        "obs_alpha": jax.ShapeDtypeStruct((64, 32, 64, 4), np.float32),
      },
      "backbone": {
        "conv": {
          "kernel": jax.ShapeDtypeStruct((3, 3, 3, 64, 128), np.float32),
          "bias": jax.ShapeDtypeStruct((128,), np.float32),
        }
      },
    },
    "opt_state": {
      "mu": {"head": {"activity_queries": jax.ShapeDtypeStruct((4096, 128), np.float32)}}
    },
  }
  specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(state, mesh, cfg.sharding))
  P = jax.sharding.PartitionSpec
  assert specs["params"]["head"]["activity_queries"] == P("model", None)
  assert specs["opt_state"]["mu"]["head"]["activity_queries"] == P("model", None)
  assert specs["params"]["head"]["out_corr_bias"] == P(None)  # 157 does not split in 2
  assert specs["params"]["head"]["obs_alpha"] == P("fsdp", None, None, None)
  assert specs["params"]["backbone"]["conv"]["kernel"] == P(None, None, None, None, "fsdp")
  assert specs["params"]["backbone"]["conv"]["bias"] == P()  # small: replicated
  cfg.sharding.params = "replicated"
  specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(state, mesh, cfg.sharding))
  assert specs["params"]["backbone"]["conv"]["kernel"] == P()


def test_a_rule_of_the_wrong_rank_fails_naming_it(devices):
  cfg = config_lib.base_config()
  mesh = sharding.make_mesh(cfg.mesh, devices)
  kernel = {
    "params": {"head": {"classifier": {"kernel": jax.ShapeDtypeStruct((64, 10), np.float32)}}}
  }
  cfg.sharding.rules = ((r"classifier/kernel$", ("model",)),)
  with pytest.raises(
    ValueError,
    match=r"rule \('classifier/kernel\$', \('model',\)\) has 1 "
    r"axes but matches params/head/classifier/kernel of shape \(64, 10\)",
  ):
    sharding.state_shardings(kernel, mesh, cfg.sharding)
  cfg.sharding.rules = ((r"classifier/kernel$", ("tensor", None)),)
  with pytest.raises(ValueError, match=r"names \['tensor'\], not mesh axes"):
    sharding.state_shardings(kernel, mesh, cfg.sharding)


def test_logical_activation_constraints_reach_the_compiled_step(devices):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  cfg = config_lib.base_config()
  cfg.mesh.update(data=4, fsdp=1, model=2)
  mesh = sharding.make_mesh(cfg.mesh, devices)

  def f(x):
    return nn.with_logical_constraint(x * 2, ("batch", "activities", "features"))

  assert "sharding_constraint" not in jax.jit(f).lower(np.ones((8, 6, 4), np.float32)).as_text()
  text = jax.jit(sharding.with_constraints(f, mesh)).lower(np.ones((8, 6, 4), np.float32)).as_text()
  assert "sharding_constraint" in text and '{"model"}' in text


@pytest.mark.parametrize(
  "script,args",
  [
    ("launch/train_local.sh", ["configs/synthetic.py:runlocal", "runs/x"]),
    ("launch/tpu_pod.sh", ["all"]),
    ("launch/slurm_gpu.sh", ["configs/charades.py:root=/data", "/tmp/w"]),
  ],
)
def test_launch_scripts_parse_and_dry_run(script, args):
  path = os.path.join(REPO, script)
  assert subprocess.run(["bash", "-n", path]).returncode == 0
  usage = subprocess.run([path], capture_output=True, text=True)  # too few arguments
  assert usage.returncode == 2 and "--dry-run" in usage.stderr
  assert not usage.stderr.rstrip().endswith("pipefail")  # the header only
  out = subprocess.run(
    [path, *args, "--dry-run", "--config.num_train_steps=7"],
    capture_output=True,
    text=True,
    env={**os.environ, "BUCKET": "bkt"},
  )
  assert out.returncode == 0, out.stderr
  assert "mlar_jax.main" in out.stdout and "--config.num_train_steps=7" in out.stdout
  if script.endswith("train_local.sh"):
    assert (
      "mlar_jax.main --config configs/synthetic.py:runlocal --workdir runs/x "
      "--config.num_train_steps=7"
    ) in out.stdout
  if script.endswith("tpu_pod.sh"):
    assert "tpu-vm create" in out.stdout and "--worker=all" in out.stdout
    assert "'.[tpu]'" in out.stdout and "gs://bkt/runs/" in out.stdout
  if script.endswith("slurm_gpu.sh"):
    assert "#SBATCH --nodes=2" in out.stdout and "srun " in out.stdout
    assert "'.[gpu]'" in out.stdout
