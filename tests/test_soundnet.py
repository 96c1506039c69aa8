"""SoundNet-8 (`models/soundnet.py`): the original's layer arithmetic, and the
same outputs as a plain PyTorch implementation of the released port's layers
after converting its state dict (`tools.convert`, source "soundnet")."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from mlar_jax import checkpointing, config_lib
from mlar_jax.models import registry, soundnet
from mlar_jax.tools import convert

RATE = 22050


class TorchSoundNet8(nn.Module):
  """The layers of smallflyingpig/SoundNet_Pytorch's `SoundNet8_pytorch`
  (the port of the released weights): Conv2d over (time, 1), BatchNorm2d,
  ReLU, MaxPool2d((k, 1), (k, 1)); conv8 / conv8_2 the teacher heads. Input
  [B, 1, N, 1]."""

  def __init__(self):
    super().__init__()

    def block(cin, cout, k, p, pool):
      layers = [nn.Conv2d(cin, cout, (k, 1), (2, 1), (p, 0)), nn.BatchNorm2d(cout), nn.ReLU()]
      return nn.Sequential(*layers, *([nn.MaxPool2d((pool, 1), (pool, 1))] if pool else []))

    self.conv1 = block(1, 16, 64, 32, 8)
    self.conv2 = block(16, 32, 32, 16, 8)
    self.conv3 = block(32, 64, 16, 8, 0)
    self.conv4 = block(64, 128, 8, 4, 0)
    self.conv5 = block(128, 256, 4, 2, 4)
    self.conv6 = block(256, 512, 4, 2, 0)
    self.conv7 = block(512, 1024, 4, 2, 0)
    self.conv8 = nn.Sequential(nn.Conv2d(1024, 1000, (8, 1), (2, 1), (0, 0)))
    self.conv8_2 = nn.Sequential(nn.Conv2d(1024, 401, (8, 1), (2, 1), (0, 0)))

  def forward(self, x):
    for i in range(1, 8):
      x = getattr(self, f"conv{i}")(x)
    return x, self.conv8(x), self.conv8_2(x)


def _torch_model(seed=0):
  torch.manual_seed(seed)
  model = TorchSoundNet8()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):  # statistics and affine away from the defaults
        m.running_mean.normal_(0, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
  return model.eval()


def _waveform(n, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(n) / RATE
  wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000, (batch, 1)) * t)
  return (wave + rng.normal(0, 0.05, (batch, n))).astype(np.float32)


def test_shapes_follow_the_originals_arithmetic():
  # 5 s at 22050 Hz: conv1 (110250 + 64 - 64) / 2 + 1 = 55126, pool 8 ->
  # 6890; conv2 3446 -> 430; conv3 216; conv4 109; conv5 55 -> 13; conv6 7;
  # conv7 4.
  n = RATE * 5
  assert soundnet.output_length(n) == 4
  cfg = config_lib.base_config().model
  assert cfg.audio_backbone == "soundnet8"
  net = registry.build_audio_backbone(cfg)
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, n)), train=False))
  out = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((2, n)), train=False), variables)
  assert out["map"].shape == (2, 4, 1024) and out["pooled"].shape == (2, 1024)
  assert "conv8_objects" not in variables["params"]
  with torch.no_grad():  # PyTorch's layers agree
    x, reference = torch.zeros(1, 1, n, 1), TorchSoundNet8().eval()
    for i in range(1, 8):
      x = getattr(reference, f"conv{i}")(x)
  assert tuple(x.shape) == (1, 1024, 4, 1)
  # conv8 of the teacher heads needs 8 conv7 steps: 20 s (the original's
  # input) gives 15 and 4 conv8 steps.
  assert soundnet.output_length(RATE * 20) == 15
  conv_params = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
  assert conv_params == sum(
    k * cin * cout + 3 * cout
    for cin, (cout, k, _, _) in zip((1, 16, 32, 64, 128, 256, 512), soundnet.LAYERS)
  )


def test_converted_port_weights_give_the_torch_outputs(tmp_path):
  # 14 s: 11 conv7 steps, 2 conv8 steps (the heads' stride is checked).
  n = RATE * 14
  model = _torch_model()
  path = str(tmp_path / "sound8.pth")
  torch.save(model.state_dict(), path)
  state = convert.state_dict_of(convert.read_torch_file(path), path)
  assert convert.detect_source(sorted(state)) == "soundnet"
  variables = convert.convert_state_dict(state, "soundnet8", keep_head=True)
  wave = _waveform(n)
  with torch.no_grad():
    # The released weights take [-256, 256]: the model scales [-1, 1] audio.
    feats, objects, scenes = model(torch.from_numpy(wave * 256.0)[:, None, :, None])
  cfg = config_lib.base_config().model
  net = registry.build_audio_backbone(cfg, teacher_heads=True)
  out = jax.jit(lambda v, x: net.apply(v, x, train=False))(
    {
      "params": variables["params"]["audio_backbone"],
      "batch_stats": variables["model_state"]["batch_stats"]["audio_backbone"],
    },
    jnp.asarray(wave),
  )
  for ours, theirs in (
    (out["map"], feats),
    (out["objects"], objects),
    (out["scenes"], scenes),
  ):
    theirs = theirs[..., 0].permute(0, 2, 1).numpy()  # [B, C, T, 1] -> [B, T, C]
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert (theirs > 0).mean() > 0.1 and scale > 0.1  # not dead after 7 layers
    np.testing.assert_allclose(np.asarray(ours) / scale, theirs / scale, atol=1e-4)
  assert out["map"].shape == (2, soundnet.output_length(n), 1024)
  np.testing.assert_allclose(
    out["pooled"],
    feats[..., 0].mean(-1).numpy(),
    rtol=1e-4,
    atol=1e-4 * np.abs(feats.numpy()).max(),
  )


def test_the_converter_reports_unmatched_keys_and_drops_the_teacher_heads():
  state = {k: v.numpy() for k, v in _torch_model().state_dict().items()}
  plain = convert.convert_state_dict(state, "soundnet8")  # without the teacher heads
  assert sorted(plain["params"]["audio_backbone"]) == sorted(
    [f"conv{i}" for i in range(1, 8)] + [f"bn{i}" for i in range(1, 8)]
  )
  broken = dict(state)
  broken["conv9.0.weight"] = np.zeros((4, 1024, 4, 1), np.float32)
  del broken["conv3.1.running_var"]
  broken["conv5.0.weight"] = np.zeros((256, 128, 5, 1), np.float32)
  with pytest.raises(ValueError) as e:
    convert.convert_state_dict(broken, "soundnet8")
  message = str(e.value)
  assert "source keys with no place in the model (1):\n  conv9.0.weight: (4, 1024, 4, 1)" in message
  assert (
    "conv5.0.weight: (256, 128, 5, 1) -> params/audio_backbone/conv5/kernel needs (4, 128, 256)"
    in message
  )
  assert "batch_stats/audio_backbone/bn3/var: (64,)" in message
  with pytest.raises(ValueError, match="not to 'i3d_r50'"):
    convert.convert_state_dict(state, "i3d_r50")


def test_convert_command_writes_a_checkpoint_of_the_soundnet_backbone(tmp_path):
  model = _torch_model(seed=1)
  path = tmp_path / "sound8.pth"
  torch.save(model.state_dict(), path)
  out = tmp_path / "soundnet8"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "mlar_jax.tools.convert",
      "--arch=soundnet8",
      f"--checkpoint={path}",
      f"--out={out}",
    ],
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  loaded = checkpointing.load_variables(str(out))
  backbone = loaded["params"]["audio_backbone"]
  assert "conv8_objects" not in backbone  # the teacher heads without --keep_head
  np.testing.assert_array_equal(
    backbone["conv2"]["kernel"], model.conv2[0].weight.detach().numpy()[..., 0].transpose(2, 1, 0)
  )
  np.testing.assert_array_equal(
    loaded["model_state"]["batch_stats"]["audio_backbone"]["bn7"]["var"],
    model.conv7[1].running_var.numpy(),
  )
