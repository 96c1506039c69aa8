"""Per-chip memory and FLOPs of the train step on TPU pod slices, compiled
ahead of time on this CPU machine (`mlar_jax.tools.aot`, libtpu).

  .venv/bin/python benchmarks/aot_pods.py [--models i3d_r50,slowfast_r101]
      [--topologies v5e:4x4,v4:2x2x4] [--batch 64] [--step_time 1.0] [--out FILE]

Config: configs/charades.py (157 activities, MLAR head K=64 n=32 C'=128,
32 frames at 224x224, bfloat16 compute, SGD) for each model; data parallel
(`sharding.params=replicated`) and FSDP (`sharding.params=fsdp`, the whole
slice on the fsdp axis). Prints a markdown table row per run as it finishes
(each compile takes minutes) and, with --out, appends it to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(model: str, topology: str, mode: str, batch: int, step_time: float) -> dict:
  flags = [
    f"--config=configs/charades.py:backbone={model}",
    f"--topology={topology}",
    "--num_classes=157",
    f"--config.batch_size={batch}",
    f"--step_time={step_time}",
    "--json",
  ]
  if mode == "fsdp":
    flags += ["--config.sharding.params=fsdp", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
  out = subprocess.run(
    [sys.executable, "-m", "mlar_jax.tools.aot", *flags],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
  )
  lines = out.stdout.strip().splitlines()
  if not lines:
    raise RuntimeError(out.stderr[-2000:])
  return json.loads(lines[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="i3d_r50,slowfast_r101")
  parser.add_argument("--topologies", default="v5e:4x4,v4:2x2x4")
  parser.add_argument("--modes", default="dp,fsdp")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--step_time", type=float, default=1.0)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  header = (
    "| model | topology | chips | sharding | args GiB | temp GiB | peak GiB / HBM | "
    "TFLOP per chip (compiled) | model TFLOP per step | "
    f"MFU at {args.step_time:g} s/step | compile s |"
  )
  print(header + "\n|" + "---|" * 11, flush=True)
  for model in args.models.split(","):
    for topology in args.topologies.split(","):
      for mode in args.modes.split(","):
        r = run(model, topology, mode, args.batch, args.step_time)
        g = lambda b: b / 2**30
        row = (
          f"| {model} | {topology} | {r['chips']} {r['device_kind']} | {mode} | "
          f"{g(r['argument_bytes']):.2f} | {g(r['temp_bytes']):.2f} | "
          f"{g(r['peak_bytes']):.2f} / {g(r['hbm_bytes']):.0f} | "
          f"{r['flops_per_chip'] / 1e12:.2f} | {r['model_flops_per_step'] / 1e12:.1f} | "
          f"{100 * r['mfu']:.1f}% | {r['compile_s']:.0f} |"
        )
        print(row, flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(json.dumps({"model": model, "topology": topology, "mode": mode, **r}) + "\n")


if __name__ == "__main__":
  main()
