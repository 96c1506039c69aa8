"""MLAR head size against the paper's Tables 3a, 3b and 4.

  .venv/bin/python benchmarks/mlar_head_size.py [--markdown]

The head alone on a backbone feature map of C=2048 channels and 4x7x7
positions (the paper's CSN-152 setting), C'=128. Parameters from
`jax.eval_shape`; GMACs (multiply-adds, the papers' "GFLOPs") from XLA's cost
analysis of the compiled head (XLA FLOPs / 2), and, for comparison, the
multiply-adds of the literal form of eqs. 2-7 (every g map applied at every
position), which is what the paper counts.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from mlar_jax.models import heads

C, C_PRIME, FMAP = 2048, 128, (4, 7, 7)
# (table, A, K, n, paper params (M), paper GFLOPs)
ROWS = [
  ("3a", 157, 64, 1, 50.4, 9.87),
  ("3a", 157, 64, 8, 6.3, 1.24),
  ("3a", 157, 64, 32, 1.6, 0.32),
  ("3a", 157, 64, 64, 0.8, 0.16),
  ("3b", 157, 16, 32, 0.4, 0.08),
  ("3b", 157, 32, 32, 0.8, 0.16),
  ("3b", 157, 128, 32, 3.2, 0.62),
  ("4", 157, 64, 32, 1.6, 0.32),
  ("4", 1024, 64, 32, 1.7, 0.33),
]


def literal_gmacs(a: int, k: int, n: int) -> float:
  """Multiply-adds of eqs. 2-13 computed literally, in G."""
  p = FMAP[0] * FMAP[1] * FMAP[2]
  obs = 3 * k * p * C * C_PRIME // n + 2 * k * p * C_PRIME  # g maps; logits + pooling
  act = k * C_PRIME * C_PRIME // n + 2 * a * k * C_PRIME  # keys; logits + pooling
  corr = 2 * a * C_PRIME * C_PRIME // n + 2 * a * a * C_PRIME  # maps; logits + F_AC
  out = 2 * a * C_PRIME
  return (obs + act + corr + out) / 1e9


def measure(a: int, k: int, n: int) -> tuple[int, float]:
  head = heads.MLARHead(a, num_observations=k, groups=n, features=C_PRIME)
  fmap = {"map": jax.ShapeDtypeStruct((1, *FMAP, C), jnp.float32)}
  variables = jax.eval_shape(lambda f: head.init(jax.random.key(0), f, train=False), fmap)
  params = int(sum(x.size for x in jax.tree.leaves(variables["params"])))
  cost = jax.jit(lambda v, f: head.apply(v, f, train=False)).lower(variables, fmap).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return params, float(cost["flops"]) / 2e9


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.parse_args()
  print(
    "| table | A | K | n | params (ours) | params (paper) | diff | GMACs (ours, XLA) "
    "| GMACs (literal form) | GFLOPs (paper) |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for table, a, k, n, paper_params, paper_gflops in ROWS:
    params, gmacs = measure(a, k, n)
    diff = 100 * (params / 1e6 - paper_params) / paper_params
    print(
      f"| {table} | {a} | {k} | {n} | {params / 1e6:.3f}M | {paper_params}M | {diff:+.1f}% "
      f"| {gmacs:.3f} | {literal_gmacs(a, k, n):.3f} | {paper_gflops} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
