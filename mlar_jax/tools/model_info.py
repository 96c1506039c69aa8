"""Parameters and compute of the model a config builds, without training it.

  python -m mlar_jax.tools.model_info --config configs/synthetic.py:head=mlar [--json]

Parameter counts come from `jax.eval_shape` (nothing is allocated); GFLOPs
from XLA's cost analysis of the compiled forward pass of one view (batch 1,
`config.data.num_frames` x `crop_size`^2), so full-size models can be checked
on a CPU. XLA counts a multiply-add as 2 FLOPs; `*_gmacs` halves that, the
convention of the papers' "GFLOPs" columns (fvcore counts MACs).

JSON keys: backbone, head, inputs, MODULE_params per top-level module
(backbone_params, head_params; audio_backbone_params, audio_classifier_params
with audio inputs), gflops_per_view, head_gflops, gmacs_per_view,
head_gmacs, feature_map (the head's input shape). A view is the model's
inputs for one clip (`config.model.inputs`).
"""

from __future__ import annotations

import json

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mlar_jax import cli, sharding, train
from mlar_jax.data import base, pipeline
from mlar_jax.models import registry as models

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so the module imports
  anywhere (absl flags are global)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.mark_flags_as_required(["config"])


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _gflops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) / 1e9


def model_info(config: ml_collections.ConfigDict) -> dict:
  """Parameter counts and per-view GFLOPs of `config`'s model."""
  num_classes = pipeline.make_source(config.data, "train").num_classes
  # The trainer's own model and state on one device. The head's shapes do
  # not depend on the label statistics (only its mask values do), so
  # placeholder statistics keep this independent of the data.
  mesh = sharding.make_mesh(
    ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1}), jax.devices()[:1]
  )
  training = train.build_training(config, mesh, base.ClassStats.placeholder(num_classes))
  model, state = training.model, training.abstract_state
  variables = {"params": state.params, **state.model_state}
  # The model's inputs for one view (video, audio or both: config.model.inputs).
  inputs = train.model_input_spec(config, num_classes)
  fmap = jax.eval_shape(
    lambda v, xs: model.apply(
      v, *xs, train=False, method=lambda m, *x, train: m.features(*x, train=train)
    ),
    variables,
    inputs,
  )
  head_vars = {col: tree["head"] for col, tree in variables.items() if "head" in tree}
  total = _gflops(lambda v, xs: model.apply(v, *xs, train=False), variables, inputs)
  head = _gflops(lambda v, f: model.head.apply(v, f, train=False), head_vars, fmap)
  return {
    "backbone": models.backbone_names(config.model),
    "head": config.model.head,
    "inputs": config.model.inputs,
    # One count per top-level module: backbone (video), audio_backbone,
    # head, audio_classifier (the fused model's audio layer).
    **{f"{name}_params": _count(tree) for name, tree in state.params.items()},
    "gflops_per_view": total,
    "head_gflops": head,
    "gmacs_per_view": total / 2,
    "head_gmacs": head / 2,
    "feature_map": list(fmap["map"].shape),
  }


def main(argv):
  del argv
  cli.setup(FLAGS.config)
  with cli.fatal_errors():
    info = model_info(FLAGS.config)
  if FLAGS.json:
    print(json.dumps(info))
    return
  for key, value in info.items():
    print(f"{key:16s} {value:,.4f}" if isinstance(value, float) else f"{key:16s} {value}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
