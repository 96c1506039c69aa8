"""Loss + gradient time and peak memory, factorised vs dense pairwise forms.

  .venv/bin/python benchmarks/losses.py [--batch 256] [--classes 157,292,1024,4096]
      [--max_run_gib 4] [--json out.json]

Memory is XLA's own figure for the compiled `value_and_grad` (arguments +
outputs + temporaries, from `compiled.memory_analysis()`), so it is exact and
does not depend on the allocator. Time is the median of 5 runs after one
warm-up; configurations whose compiled memory exceeds --max_run_gib are
compiled (for the memory figure) but not run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax import losses

PAIRS = {
  "bce": (losses.bce, None),
  "warp": (losses.warp, losses.warp_dense),
  "lsep": (losses.lsep, losses.lsep_dense),
  "wlsep": (losses.wlsep, losses.wlsep_dense),
}


def measure(fn, b: int, c: int, max_run_bytes: float) -> dict:
  step = jax.jit(jax.value_and_grad(lambda x, y: fn(x, y).mean()))
  spec = jax.ShapeDtypeStruct((b, c), jnp.float32)
  compiled = step.lower(spec, spec).compile()
  mem = compiled.memory_analysis()
  peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  row = {"peak_mib": peak / 2**20, "ms": None}
  if peak <= max_run_bytes:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, c)), jnp.float32)
    y = jnp.asarray(rng.random((b, c)) < 3.0 / c, jnp.float32)
    jax.block_until_ready(compiled(x, y))
    times = []
    for _ in range(5):
      t = time.perf_counter()
      jax.block_until_ready(compiled(x, y))
      times.append(time.perf_counter() - t)
    row["ms"] = 1e3 * statistics.median(times)
  return row


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--classes", default="157,292,1024,4096")
  p.add_argument("--max_run_gib", type=float, default=4.0)
  p.add_argument("--json", default="")
  args = p.parse_args()
  rows = []
  print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}")
  print(
    f"{'loss':6s} {'C':>5s} | {'factorised ms':>13s} {'MiB':>9s} | {'dense ms':>9s} {'MiB':>9s}"
  )
  for c in map(int, args.classes.split(",")):
    for name, (fast, dense) in PAIRS.items():
      f = measure(fast, args.batch, c, args.max_run_gib * 2**30)
      d = measure(dense, args.batch, c, args.max_run_gib * 2**30) if dense else None
      rows.append({"loss": name, "classes": c, "batch": args.batch, "factorised": f, "dense": d})
      fmt = lambda r: "-" if r is None or r["ms"] is None else f"{r['ms']:.2f}"
      mib = lambda r: "-" if r is None else f"{r['peak_mib']:.1f}"
      print(
        f"{name:6s} {c:5d} | {fmt(f):>13s} {mib(f):>9s} | {fmt(d):>9s} {mib(d):>9s}", flush=True
      )
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(rows, fh, indent=2)


if __name__ == "__main__":
  main()
