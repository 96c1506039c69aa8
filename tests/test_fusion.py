"""Models with several inputs (config.model.inputs): audio-only and fused
video + audio classifiers, their training under 8 devices, checkpoints and
init_from combining a video run and an audio run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import checkpoint_state, load_config

from mlar_jax import checkpointing, train, validation
from mlar_jax.models import registry


def _config(inputs: str, **overrides):
  config = load_config("scenes", f"runlocal,inputs={inputs}")
  config.update(overrides)
  return config


def test_linear_fusion_is_one_linear_layer_on_the_concatenated_features():
  config = _config("video+audio")
  model = registry.build_model(config.model, 5)
  video = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  audio = jax.random.uniform(jax.random.key(1), (2, 29400), minval=-1, maxval=1)
  variables = model.init(jax.random.key(2), video, audio, train=False)
  out = model.apply(variables, video, audio, train=False)
  v = model.apply(
    variables, video, train=False, method=lambda m, x, train: m.backbone(x, train=train)
  )
  a = model.apply(
    variables, audio, train=False, method=lambda m, x, train: m.audio_backbone(x, train=train)
  )
  p = variables["params"]
  # The paper's fusion: concatenate the pooled features, one linear layer.
  w = np.concatenate([p["head"]["classifier"]["kernel"], p["audio_classifier"]["kernel"]])
  b = p["head"]["classifier"]["bias"] + p["audio_classifier"]["bias"]
  features = np.concatenate([v["pooled"], a["pooled"]], axis=-1)
  np.testing.assert_allclose(out["logits"], features @ w + b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inputs", ["audio", "video+audio"])
def test_every_head_sits_on_audio_and_fused_models(inputs):
  for head in ("linear", "attention_pool", "mlar"):
    config = _config(inputs)
    config.model.head = head
    config.eval.output = "logits"
    validation.validate(config)
    model = registry.build_model(config.model, 5)
    xs = []
    if "video" in inputs:
      xs.append(jnp.zeros((2, 4, 16, 16, 3)))
    xs.append(jnp.zeros((2, 29400)))
    out = jax.eval_shape(
      lambda m=model, xs=xs: m.init_with_output(jax.random.key(0), *xs, train=False)
    )
    logits = out[0]
    assert set(logits) == set(registry.head_outputs(config.model)), head
    assert all(x.shape == (2, 5) for x in logits.values()), head


def test_audio_needs_the_audio_extra_and_detection_reads_video():
  config = _config("audio")
  config.data.extras = ()
  with pytest.raises(ValueError, match=r"config.data.extras=\(\): model.inputs='audio' needs"):
    validation.validate(config)
  config = load_config("ava", "runlocal")
  config.model.inputs = "video+audio"
  config.data.extras = (*config.data.extras, "audio")
  with pytest.raises(ValueError, match=r"config.model.inputs='video\+audio': model.task='detect"):
    validation.validate(config)


def test_fused_training_on_8_devices_and_init_from_a_video_and_an_audio_run(tmp_path, devices):
  del devices  # 8 fake devices (conftest): the mesh below spans them.
  video_dir, audio_dir, fused_dir = tmp_path / "video", tmp_path / "audio", tmp_path / "fused"
  train.train_and_evaluate(_config("video", num_train_steps=2), str(video_dir), final_eval=False)
  train.train_and_evaluate(_config("audio", num_train_steps=2), str(audio_dir), final_eval=False)
  # Late fusion of the two runs (the paper's): backbones loaded and frozen
  # (batch norm included), a new head and audio layer trained, on a mesh of
  # 4 data x 2 fsdp devices.
  config = _config("video+audio", num_train_steps=4)
  config.mesh.update(data=4, fsdp=2)
  config.checkpoint.every_steps = 2
  config.sharding.fsdp_min_size = 64
  config.init_from = f"{video_dir},{audio_dir}"
  config.init_from_skip = "^head/|^audio_classifier/"
  config.optimizer.freeze = "^(backbone|audio_backbone)/"
  config.model.frozen_bn = True
  results = train.train_and_evaluate(config, str(fused_dir))
  assert np.isfinite(results["macro_map"])
  video, audio, fused = (
    checkpoint_state(video_dir, 2),
    checkpoint_state(audio_dir, 2),
    checkpoint_state(fused_dir, 4),
  )
  for part, source in (("backbone", video), ("audio_backbone", audio)):
    for got, want in (
      (fused["params"][part], source["params"][part]),
      (fused["model_state"]["batch_stats"][part], source["model_state"]["batch_stats"][part]),
    ):
      jax.tree.map(np.testing.assert_array_equal, got, want)
  # The new audio layer trained.
  assert not np.allclose(
    fused["params"]["audio_classifier"]["kernel"],
    checkpoint_state(fused_dir, 2)["params"]["audio_classifier"]["kernel"],
  )
  # Both runs hold head/: combining them without skipping it names the clash.
  with pytest.raises(ValueError, match=r"params/head/classifier/\w+ is in both"):
    checkpointing.load_variables(f"{video_dir},{audio_dir}")


def test_model_info_counts_every_module_of_a_fused_model():
  from mlar_jax.tools import model_info

  config = _config("video+audio")
  info = model_info.model_info(config)
  model = registry.build_model(config.model, 26)
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1, 29400)), train=False
    )
  )
  for name, tree in shapes["params"].items():
    assert info[f"{name}_params"] == sum(x.size for x in jax.tree.leaves(tree)), name
  assert set(shapes["params"]) == {"backbone", "audio_backbone", "head", "audio_classifier"}
  assert info["feature_map"][-1] == 64  # the head reads the video branch
  assert 0 < info["head_gflops"] < info["gflops_per_view"]
