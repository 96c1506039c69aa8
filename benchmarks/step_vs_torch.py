"""The demo network's training step on the CPU: this project (jax) against
the same network and step in PyTorch eager mode.

  .venv/bin/python benchmarks/step_vs_torch.py [--sizes 32x8x32,16x16x64]
      [--steps 10] [--conv_impls auto] [--json OUT.json]

The network is the demo's (`configs/synthetic.py`: `resnet3d_tiny` with the
linear head, dropout 0.2, the synthetic dataset's classes): a 3x5x5 stem of
16 channels at spatial stride 2, then one basic block (two 3x3x3
convolutions) per stage of 16, 32 and 64 channels, the last two at spatial
stride 2 with a 1x1x1 projection shortcut, batch norm after every
convolution, global average pooling. The step is the whole update on a
uint8 batch: normalisation, forward in training mode (batch statistics,
dropout), mean binary cross-entropy, backward, L2 weight decay on kernels
and SGD with Nesterov momentum 0.9. The project's step is
`train.build_training(config).jit_step()` itself, as `main` runs it; the
PyTorch one is `torch.nn` modules in channels-first layout with
`torch.optim.SGD`. Both use every core (XLA's CPU runtime and torch's
intra-op threads). The project's XLA:CPU options are those every command
sets (`cli.CPU_XLA_FLAGS`); run with
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=` to time the step without
them.

Each size (`BATCHxFRAMESxPIXELS`) compiles the jax step first, then times the
two steps alternately, one step each per round, `--steps` rounds after
`--warmup`, and reports the median of each and their ratio. With several
`--conv_impls` (`config.model.conv_impl`: folded, native, auto), each is
timed against the same PyTorch step. `--layers` times the network's six 3D
convolutions one by one instead (forward, and forward with the gradients a
step takes), each `--conv_impls` against `torch.nn.Conv3d`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import synthetic  # noqa: E402

# cli sets the XLA:CPU options every command runs with (before any computation).
from mlar_jax import cli, sharding, train, validation  # noqa: E402, F401
from mlar_jax.data import base  # noqa: E402
from mlar_jax.data import synthetic as synthetic_data  # noqa: E402


def jax_step(config, num_classes: int, batch: dict[str, np.ndarray]):
  """A () -> None that runs one project training step and waits for it."""
  mesh = sharding.make_mesh(config.mesh)
  training = train.build_training(config, mesh, base.ClassStats.placeholder(num_classes))
  state = training.jit_init()(jax.random.key(0))
  step = training.jit_step()
  device_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], device_batch)
    jax.block_until_ready(metrics["loss"])

  params = sum(x.size for x in jax.tree.leaves(state.params))
  return run, params


def torch_step(config, num_classes: int, batch: dict[str, np.ndarray]):
  """The same network and step in PyTorch eager mode."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def conv_bn(cin, cout, kernel, stride, zero_scale=False):
    bn = nn.BatchNorm3d(cout, momentum=0.1, eps=1e-5)
    if zero_scale:
      nn.init.zeros_(bn.weight)
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, pad, bias=False), bn)

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      s = (1, stride, stride)
      self.a = conv_bn(cin, cout, (3, 3, 3), s)
      self.b = conv_bn(cout, cout, (3, 3, 3), (1, 1, 1), zero_scale=True)
      self.short = None if cin == cout and stride == 1 else conv_bn(cin, cout, (1, 1, 1), s)

    def forward(self, x):
      y = self.b(torch.relu(self.a(x)))
      return torch.relu(y + (x if self.short is None else self.short(x)))

  net = nn.Sequential(
    conv_bn(3, 16, (3, 5, 5), (1, 2, 2)),
    nn.ReLU(),
    Block(16, 16, 1),
    Block(16, 32, 2),
    Block(32, 64, 2),
    nn.AdaptiveAvgPool3d(1),
    nn.Flatten(),
    nn.Dropout(config.model.dropout_rate),
    nn.Linear(64, num_classes),
  )
  o = config.optimizer
  decay = [p for p in net.parameters() if p.ndim > 1]
  no_decay = [p for p in net.parameters() if p.ndim <= 1]
  opt = torch.optim.SGD(
    [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0}],
    lr=config.schedule.base_lr,
    momentum=o.momentum,
    nesterov=o.nesterov,
  )
  mean = torch.tensor(config.data.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
  std = torch.tensor(config.data.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
  video = torch.from_numpy(batch["video"])
  labels = torch.from_numpy(batch["labels"]).float()
  loss_fn = nn.BCEWithLogitsLoss()
  net.train()

  def run():
    x = video.permute(0, 4, 1, 2, 3).float().div_(255.0).sub_(mean).div_(std)
    loss = loss_fn(net(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()

  return run, sum(p.numel() for p in net.parameters())


# The demo network's convolutions at batch 32 x 8 frames of 32x32: name,
# input [B, T, H, W, C], output channels, kernel, strides.
DEMO_CONVS = (
  ("stem", (32, 8, 32, 32, 3), 16, (3, 5, 5), (1, 2, 2)),
  ("res2 conv", (32, 8, 16, 16, 16), 16, (3, 3, 3), (1, 1, 1)),
  ("res3 conv_a", (32, 8, 16, 16, 16), 32, (3, 3, 3), (1, 2, 2)),
  ("res3 conv_b", (32, 8, 8, 8, 32), 32, (3, 3, 3), (1, 1, 1)),
  ("res4 conv_a", (32, 8, 8, 8, 32), 64, (3, 3, 3), (1, 2, 2)),
  ("res4 conv_b", (32, 8, 4, 4, 64), 64, (3, 3, 3), (1, 1, 1)),
)


def time_layers(impls: list[str], steps: int, warmup: int) -> list[dict]:
  """Each demo convolution alone: forward, and forward + the gradients a
  training step takes (kernel, and input except for the stem), per
  `Conv3D` implementation and in PyTorch; median ms."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from mlar_jax.models import layers  # pylint: disable=g-import-not-at-top

  rows = []
  for name, shape, cout, kernel, strides in DEMO_CONVS:
    x = np.random.default_rng(0).random(shape, np.float32)
    xj = jnp.asarray(x)
    wrt = (0,) if name == "stem" else (0, 1)
    runs = {}
    for impl in impls:
      conv = layers.Conv3D(cout, kernel, strides, impl=impl)
      variables = conv.init(jax.random.key(0), xj)
      fwd = jax.jit(conv.apply)
      grad = jax.jit(jax.grad(lambda v, x, conv=conv: jnp.sum(conv.apply(v, x) ** 2), argnums=wrt))
      runs[f"{impl} fwd"] = lambda f=fwd, v=variables, x=xj: jax.block_until_ready(f(v, x))
      runs[f"{impl} fwd+bwd"] = lambda g=grad, v=variables, x=xj: jax.block_until_ready(g(v, x))
    tconv = torch.nn.Conv3d(shape[-1], cout, kernel, strides, [k // 2 for k in kernel], bias=False)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    tx.requires_grad_(name != "stem")

    def torch_fwd(tconv=tconv, tx=tx):
      with torch.no_grad():
        tconv(tx)

    def torch_bwd(tconv=tconv, tx=tx):
      (tconv(tx) ** 2).sum().backward()

    runs["torch fwd"], runs["torch fwd+bwd"] = torch_fwd, torch_bwd
    med = time_alternately(runs, steps, warmup)
    rows.append({"layer": name, **{k: round(v * 1e3, 2) for k, v in med.items()}})
    print(f"  {name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items()), flush=True)
  return rows


def time_alternately(runs: dict, steps: int, warmup: int) -> dict[str, float]:
  """Median seconds per step of each run, the runs interleaved per round."""
  for run in runs.values():
    for _ in range(warmup):
      run()
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      t = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--sizes", default="32x8x32,16x16x64", help="BATCHxFRAMESxPIXELS, comma-separated")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--conv_impls", default="auto", help="config.model.conv_impl values to time")
  p.add_argument(
    "--layers",
    action="store_true",
    help="time the demo network's convolutions one by one instead of the step",
  )
  p.add_argument("--json", default="", help="also write the rows to this file")
  args = p.parse_args()
  import torch  # pylint: disable=g-import-not-at-top

  rows = []
  print(
    f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    flush=True,
  )
  if args.layers:
    rows = time_layers(args.conv_impls.split(","), args.steps, args.warmup)
  for size in [] if args.layers else args.sizes.split(","):
    b, t, s = map(int, size.split("x"))
    config = synthetic.get_config()
    config.batch_size, config.data.num_frames = b, t
    config.data.update(crop_size=s, min_short_side=s, max_short_side=s, eval_short_side=s)
    num_classes = len(synthetic_data.CLASS_NAMES)
    rng = np.random.default_rng(0)
    batch = {
      "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
      "labels": (rng.random((b, num_classes)) < 0.3).astype(np.int32),
    }
    torch_run, torch_params = torch_step(config, num_classes, batch)
    for impl in args.conv_impls.split(","):
      config.model.conv_impl = impl
      validation.validate(config)
      t0 = time.perf_counter()
      jax_run, jax_params = jax_step(config, num_classes, batch)
      jax_run()  # compiles
      compile_s = time.perf_counter() - t0
      if jax_params != torch_params:
        raise AssertionError(f"parameters: jax {jax_params}, torch {torch_params}")
      med = time_alternately({"jax": jax_run, "torch": torch_run}, args.steps, args.warmup)
      row = {
        "size": size,
        "conv_impl": impl,
        "params": jax_params,
        "jax_ms": round(med["jax"] * 1e3, 1),
        "torch_ms": round(med["torch"] * 1e3, 1),
        "ratio": round(med["jax"] / med["torch"], 2),
        "compile_s": round(compile_s, 1),
      }
      rows.append(row)
      print(
        f"  batch {b}, {t}x{s}x{s}, conv_impl={impl}: jax {row['jax_ms']} ms, torch "
        f"{row['torch_ms']} ms per step (median of {args.steps}): {row['ratio']}x "
        f"({jax_params} parameters; jax compile {row['compile_s']} s)",
        flush=True,
      )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
