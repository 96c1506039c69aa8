"""Compiles the full train step for a TPU topology on this (CPU) machine.

  python -m mlar_jax.tools.aot --config configs/charades.py:backbone=slowfast_r101 \\
      --topology v5e:16x16 [--num_classes 157] [--step_time 1.0] [--json]

libtpu (the `tpu` extra) compiles for any topology it knows ("v5e:4x4",
"v4:2x2x4", "v5p:2x2x2", "v6e:4x4", ...) without the chips. The step is the one
training runs (`train.build_training`: same model, optimizer, loss, mesh
from `config.mesh`, shardings from `config.sharding`), lowered on abstract
arrays, so nothing is allocated.

Printed per device (a chip; a TensorCore where libtpu lists those, v4):
argument, output, temporary and peak memory (peak = arguments + outputs +
temporaries - donated aliases, XLA's memory analysis) against its HBM; the
compiler's FLOPs of the partitioned program (per chip), and the model's FLOPs
per step (XLA's count of the whole step before partitioning; it does not
depend on the sharding). With `--step_time`, the model FLOPs utilisation:
model FLOPs / (chips x step time x the chip's published bf16 peak). Exits
with status 1 and a message when the step does not fit in the chip's memory.

JSON keys: topology, chips, device_kind, mesh, global_batch, argument_bytes,
output_bytes, temp_bytes, alias_bytes, peak_bytes, hbm_bytes, fits,
flops_per_chip, flops_per_step (compiler's, x chips), model_flops_per_step,
peak_flops_per_chip, step_time_s, mfu, compile_s.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mlar_jax import checkpointing, cli, sharding, train
from mlar_jax.data import base, pipeline

FLAGS = flags.FLAGS

GiB = 2**30
# Per chip: HBM bytes and peak dense bf16 FLOP/s (Cloud TPU documentation).
CHIPS = {
  "TPU v4": (32 * GiB, 275e12),
  "TPU v5 lite": (16 * GiB, 197e12),  # v5e
  "TPU v5": (95 * GiB, 459e12),  # v5p
  "TPU v6 lite": (32 * GiB, 918e12),  # v6e (Trillium)
}


def define_flags() -> None:
  """The command's flags; defined only when it runs (absl flags are global)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16 or v4:2x2x4.")
  flags.DEFINE_integer("num_classes", 0, "Activities (0: from the config's dataset).")
  flags.DEFINE_float("step_time", 0.0, "Seconds per step for the MFU figure (0: none).")
  flags.DEFINE_float(
    "hbm_gib", 0.0, "Memory per chip to check against (0: the chip's HBM; less leaves headroom)."
  )
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.mark_flags_as_required(["config", "topology"])


def _first(cost):
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def topology_devices(name: str) -> list:
  """The devices of TPU topology `name`, from libtpu (no chips needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as e:  # libtpu missing, or a name it does not know
    raise ValueError(
      f"--topology={name}: libtpu cannot describe it ({e}). Install the "
      "`tpu` extra; names look like v5e:4x4, v4:2x2x4, v5p:2x2x2."
    ) from e


def compile_for(
  config: ml_collections.ConfigDict,
  devices: list,
  num_classes: int,
  step_time: float = 0.0,
  hbm_bytes: int = 0,
) -> dict:
  """Compiles `config`'s train step over `devices`; memory and FLOPs per chip.

  Args:
    config: the experiment config.
    devices: the topology's devices (`topology_devices`).
    num_classes: activities A.
    step_time: seconds per step for the MFU figure (0: none).
    hbm_bytes: memory per chip to check against (0: the chip's HBM).
  """
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.validate_for_mesh(config, mesh)
  if config.model.conv_impl == "auto":
    # "auto" decides by the backend this process runs on (CPU here); the
    # target is a TPU, which takes the native 3D convolution.
    config = config.copy_and_resolve_references()
    config.model.conv_impl = "native"
  # Only shapes matter for compilation: statistics of the right sizes.
  training = train.build_training(config, mesh, base.ClassStats.placeholder(num_classes))
  state = checkpointing.abstract_with_shardings(training.abstract_state, training.state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
    for k, v in pipeline.batch_spec(config.data, config.batch_size, num_classes).items()
  }
  # The model's FLOPs: XLA's count of the whole, unpartitioned step (what MFU
  # counts), lowered for this host; it does not depend on the sharding.
  unsharded = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (training.abstract_state, batch)
  )
  model_flops = float(
    _first(jax.jit(training.step_fn).lower(*unsharded).cost_analysis()).get("flops", 0.0)
  )
  start = time.time()
  compiled = training.jit_step().lower(state, batch).compile()
  compile_s = time.time() - start
  mem = compiled.memory_analysis()
  cost = _first(compiled.cost_analysis())
  kind = devices[0].device_kind
  hbm, peak_flops = CHIPS.get(kind, (0, 0.0))
  # libtpu describes v4 with one device per TensorCore (2 per chip, no
  # megacore): each device has half the chip's HBM and FLOP/s.
  cores = 1 + max(getattr(d, "core_on_chip", 0) for d in devices)
  hbm, peak_flops = hbm // cores, peak_flops / cores
  hbm = hbm_bytes or hbm
  arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
  temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
  peak = arg + out + temp - alias
  flops = float(cost.get("flops", 0.0))
  n = len(devices)
  mfu = model_flops / (n * step_time * peak_flops) if step_time and peak_flops else None
  return {
    "topology": None,
    "chips": len(devices),
    "device_kind": kind,
    "mesh": dict(mesh.shape),
    "global_batch": config.batch_size,
    "argument_bytes": arg,
    "output_bytes": out,
    "temp_bytes": temp,
    "alias_bytes": alias,
    "peak_bytes": peak,
    "hbm_bytes": hbm,
    "fits": bool(hbm == 0 or peak <= hbm),
    "flops_per_chip": flops,
    "flops_per_step": flops * n,
    "model_flops_per_step": model_flops,
    "peak_flops_per_chip": peak_flops,
    "step_time_s": step_time or None,
    "mfu": mfu,
    "compile_s": compile_s,
  }


def main(argv):
  del argv
  config = FLAGS.config
  cli.setup(config)
  with cli.fatal_errors():
    num_classes = FLAGS.num_classes or pipeline.make_source(config.data, "train").num_classes
    result = compile_for(
      config,
      topology_devices(FLAGS.topology),
      num_classes,
      FLAGS.step_time,
      int(FLAGS.hbm_gib * GiB),
    )
  result["topology"] = FLAGS.topology
  if FLAGS.json:
    print(json.dumps(result))
  else:
    gib = lambda x: f"{x / GiB:8.2f} GiB"
    print(
      f"{FLAGS.topology}: {result['chips']} x {result['device_kind']}, mesh "
      f"{result['mesh']}, global batch {result['global_batch']}, "
      f"{config.model.backbone} + {config.model.head}, params {config.sharding.params}"
    )
    for key in ("argument", "output", "temp", "alias", "peak"):
      print(f"  {key:9s} {gib(result[key + '_bytes'])} per chip")
    if result["hbm_bytes"]:
      print(f"  HBM       {gib(result['hbm_bytes'])} per chip")
    print(
      f"  FLOPs     {result['flops_per_chip'] / 1e12:8.2f} TFLOP per chip per step "
      f"(compiled); model {result['model_flops_per_step'] / 1e12:.2f} TFLOP per step"
    )
    if result["mfu"] is not None:
      print(f"  MFU       {100 * result['mfu']:8.1f} % at {FLAGS.step_time} s per step")
    print(f"  compiled in {result['compile_s']:.1f} s")
  if not result["fits"]:
    sys.exit(
      f"Does not fit: the step needs {result['peak_bytes'] / GiB:.3f} GiB per chip, "
      f"the {result['device_kind']} limit is {result['hbm_bytes'] / GiB:.3f} GiB. Use FSDP "
      "(--config.sharding.params=fsdp), a smaller per-chip batch, bfloat16, or "
      "rematerialisation (--config.model.remat=block)."
    )


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
