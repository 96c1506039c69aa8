"""SoundNet-8's forward and forward+backward time per `conv_impl` on this machine.

  .venv/bin/python benchmarks/soundnet_cpu.py [--batch 32] [--samples 29400]

29400 samples is the scenes study's clip (1.33 s at 22050 Hz). Prints the
minimum of 5 timed calls after one compiling call, per implementation, and
each layer's output length (what `layers.FOLD_BELOW` decides on).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax.models import soundnet


def best_ms(fn, *args, repeats=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--samples", type=int, default=29400)
  parser.add_argument("--impls", default="native,folded,auto")
  args = parser.parse_args()
  audio = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.samples)).astype(np.float32)
  audio = jnp.asarray(audio)
  n = args.samples
  lengths = []
  for _, kernel, pad, pool in soundnet.LAYERS:
    n = (n + 2 * pad - kernel) // 2 + 1
    lengths.append(n)
    n = n // pool if pool else n
  print(
    f"{jax.default_backend()}, batch {args.batch} x {args.samples} samples; "
    f"conv1-7 output lengths {lengths}"
  )
  for impl in args.impls.split(","):
    model = soundnet.SoundNet(conv_impl=impl)
    variables = model.init(jax.random.key(0), audio[:2], train=False)

    def loss(params, batch_stats, x, model=model):
      out, _ = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(out["pooled"] ** 2)

    forward = jax.jit(
      lambda p, s, x, model=model: model.apply({"params": p, "batch_stats": s}, x, train=False)[
        "pooled"
      ]
    )
    backward = jax.jit(jax.grad(loss))
    p, s = variables["params"], variables["batch_stats"]
    print(
      f"{impl:7s} forward {best_ms(forward, p, s, audio):8.1f} ms   "
      f"forward+backward {best_ms(backward, p, s, audio):8.1f} ms"
    )


if __name__ == "__main__":
  main()
