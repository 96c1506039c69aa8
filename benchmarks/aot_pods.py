"""Per-chip memory and FLOPs of the train step on TPU pod slices, compiled
ahead of time on this CPU machine (`mlar_jax.tools.aot`, libtpu).

  .venv/bin/python benchmarks/aot_pods.py [--models i3d_r50,slowfast_r101]
      [--topologies v5e:4x4,v4:2x2x4] [--batch 64] [--remats none,block]
      [--head mlar] [--step_time 1.0] [--out FILE]

Config: configs/charades.py (157 activities, MLAR head K=64 n=32 C'=128,
32 frames at 224x224, bfloat16 compute, SGD) for each model; data parallel
(`sharding.params=replicated`) and FSDP (`sharding.params=fsdp`, the whole
slice on the fsdp axis); each rematerialisation policy of `--remats`
(`config.model.remat`: none, block, convs). `--batch` is global; a list
(`--batch 64,128`) compiles each size. Prints a markdown table row per run as
it finishes (each compile takes minutes) and, with --out, appends it to FILE.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(
  model: str, topology: str, mode: str, batch: int, step_time: float, remat: str, head: str
) -> dict:
  flags = [
    f"--config=configs/charades.py:backbone={model},head={head}",
    f"--topology={topology}",
    "--num_classes=157",
    f"--config.batch_size={batch}",
    f"--config.model.remat={remat}",
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
  # The tool prints its JSON, then exits 1 when the step does not fit: a
  # result all the same (fits: false).
  lines = out.stdout.strip().splitlines()
  if not lines:
    raise RuntimeError(out.stderr[-2000:])
  return json.loads(lines[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="i3d_r50,slowfast_r101")
  parser.add_argument("--topologies", default="v5e:4x4,v4:2x2x4")
  parser.add_argument("--modes", default="dp,fsdp")
  parser.add_argument("--batch", default="64", help="Global batch sizes, comma-separated.")
  parser.add_argument("--remats", default="none", help="config.model.remat policies.")
  parser.add_argument("--head", default="mlar")
  parser.add_argument("--step_time", type=float, default=1.0)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  header = (
    "| model | topology | chips | sharding | remat | global batch | args GiB | temp GiB | "
    "peak GiB / HBM | TFLOP per chip (compiled) | model TFLOP per step | "
    f"MFU at {args.step_time:g} s/step | compile s |"
  )
  print(header + "\n|" + "---|" * 13, flush=True)
  grid = itertools.product(
    args.models.split(","),
    args.topologies.split(","),
    args.modes.split(","),
    args.remats.split(","),
    [int(b) for b in args.batch.split(",")],
  )
  for model, topology, mode, remat, batch in grid:
    r = run(model, topology, mode, batch, args.step_time, remat, args.head)
    g = lambda b: b / 2**30
    row = (
      f"| {model} | {topology} | {r['chips']} {r['device_kind']} | {mode} | {remat} | "
      f"{batch} | {g(r['argument_bytes']):.2f} | {g(r['temp_bytes']):.2f} | "
      f"{g(r['peak_bytes']):.2f} / {g(r['hbm_bytes']):.0f} | "
      f"{r['flops_per_chip'] / 1e12:.2f} | {r['model_flops_per_step'] / 1e12:.1f} | "
      f"{100 * r['mfu']:.1f}% | {r['compile_s']:.0f} |"
    )
    print(row, flush=True)
    if args.out:
      record = {"model": model, "topology": topology, "mode": mode, "remat": remat, **r}
      with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
