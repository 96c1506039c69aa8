"""Weights from PyTorch checkpoints into a checkpoint `config.init_from` loads.

  python -m mlar_jax.tools.convert --arch slowfast_r101 --checkpoint SLOWFAST_8x8_R101.pyth \\
      --out /ckpt/slowfast_r101_k400
  python -m mlar_jax.tools.convert --arch i3d_r50 --checkpoint resnet50-0676ba61.pth \\
      --out /ckpt/i3d_r50_imagenet          # torchvision 2D ResNet-50, inflated

then train with a new head of any class count:

  python -m mlar_jax.main --config configs/charades.py:backbone=slowfast_r101 \\
      --config.init_from=/ckpt/slowfast_r101_k400 --config.init_from_skip=head/ ...

Sources (`--source`, default: recognised from the key names):
  * "pytorchvideo": PyTorchVideo model-zoo / `create_resnet`, `create_slowfast`,
    `create_csn`, `create_x3d` state dicts (`blocks.N....`), for the
    backbones PyTorchVideo has: i3d_r50, slow_r50, slowfast_r50/r101,
    csn_r152, x3d_*.
  * "pyslowfast": PySlowFast checkpoints (`s1.pathway0_stem.conv...`) of the
    ResNet, non-local and SlowFast models: i3d_r50, slow_r50, nl_r50/r101,
    slowfast_r50/r101.
  * "torchvision": a 2D ResNet-50 (`conv1`, `layer1.0.conv1`, ...) inflated to
    i3d_r50, slow_r50, nl_r50 or tsm_r50: each 2D kernel is repeated over the
    3D kernel's kt frames and divided by kt (PySlowFast's `inflate_weight`),
    so a static clip gives the 2D network's features. Layers the 2D network
    lacks (non-local blocks) keep their initialisation; the ImageNet
    classifier is dropped.
  * "soundnet": the PyTorch port of SoundNet-8 (smallflyingpig/SoundNet_Pytorch,
    `sound8.pth`: `conv1.0` the convolution as a [O, I, k, 1] Conv2d,
    `conv1.1` its batch norm, ..., `conv7`; `conv8` / `conv8_2` the object
    and scene teacher heads) into the audio backbone soundnet8. The teacher
    heads are dropped, or kept in the backbone (`conv8_objects`,
    `conv8_scenes`) with `--keep_head`. The output holds it where the audio
    and fused models do ("audio_backbone/conv1", ...).

Files: `.pyth` / `.pt` / `.pth` written by `torch.save` (a bare state dict,
or a dict holding it under "model_state" or "state_dict"; a "module." prefix
from DataParallel is removed). They are read without PyTorch (the zip
format's pickle and raw storages); only the pre-1.6 legacy format needs
torch installed.

AVA detection checkpoints (`--task detection`, recognised for PyTorchVideo):
PySlowFast's SlowFast R50/R101 AVA models (`head.projection` after its ROI
head) and PyTorchVideo's `create_slowfast_with_roi_head` /
`slowfast_r50_detection` (`model.blocks...`, `detection_head.proj`). Their
ROI heads have no other parameters: a temporal mean per pathway,
concatenated (ours: the SlowFast map's temporal mean), ROI-Align, a spatial
max and the linear layer, which is our detector's `heads.ROIHead` with the
linear head. Set the detector's `config.model.roi` to the checkpoint's:
PySlowFast's AVA configs use `aligned=True` (DETECTION.ALIGNED), PyTorchVideo's
head torchvision's default `aligned=False`; both 7 x 7 bins and
`res5_spatial_stride=1`. Their classifiers score AVA's 80 classes: evaluate
them with the 80-class label map, or train on the 60 with
`--config.init_from_skip=head/`.

The output `OUT/state` holds {"params", "model_state"} as a training
checkpoint does: the backbone, plus the source's classifier as
"head/classifier" (a detector's "head/inner/classifier") with `--keep_head`
(for evaluating the source model itself). Every source tensor must land on
a model parameter of the same shape and every backbone parameter must be
covered; otherwise the command fails listing the unmatched keys and shapes.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from mlar_jax import cli

FLAGS = flags.FLAGS

# ----------------------------------------------------------------------------
# Reading torch.save files without torch.
# ----------------------------------------------------------------------------

_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class _Opaque:
  """Stands in for any class a checkpoint pickles besides tensors (optimizer
  objects, configs): built, never used."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state


def _rebuild_tensor(storage, offset, size, stride, *args):
  del args  # requires_grad, backward hooks, metadata
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
    storage[offset:], shape=tuple(size), strides=[s * itemsize for s in stride]
  ).copy()


def _rebuild_parameter(data, *args):
  del args
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module in ("builtins", "copyreg", "_codecs"):
      return super().find_class(module, name)
    return _Opaque

  def persistent_load(self, pid):
    kind, storage_type, key, _, _ = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    if storage_type is _Opaque:  # an untyped or unknown storage class
      raise pickle.UnpicklingError(f"unsupported storage type in {pid!r}")
    dtype = np.dtype(storage_type)
    raw = self._archive.read(f"{self._prefix}/data/{key}")
    return np.frombuffer(raw, dtype=dtype)


def read_torch_file(path: str) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if not zipfile.is_zipfile(path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(
        f"{path}: not a torch.save zip archive (the pre-1.6 legacy format "
        "needs PyTorch installed to read)"
      ) from None
    try:
      obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (pickle raises anything on a foreign file)
      raise ValueError(
        f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy "
        f"pickle: {type(e).__name__}: {e})"
      ) from e
    return jax.tree.map(lambda t: t.numpy() if hasattr(t, "numpy") else t, obj)
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
      raise ValueError(f"{path}: a zip file without data.pkl, not written by torch.save")
    prefix = pickles[0].rpartition("/")[0]
    with archive.open(pickles[0]) as f:
      return _Unpickler(f, archive, prefix).load()


def state_dict_of(obj: Any, path: str = "checkpoint") -> dict[str, np.ndarray]:
  """The model state dict inside a loaded checkpoint object."""
  if isinstance(obj, dict):
    for key in ("model_state", "state_dict", "model"):
      if key in obj and isinstance(obj[key], dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj:
    raise ValueError(
      f"{path}: no state dict (expected a dict of tensors, or one under "
      "'model_state' / 'state_dict')"
    )
  out = {}
  for key, value in obj.items():
    if isinstance(value, np.ndarray):
      out[key[len("module.") :] if key.startswith("module.") else key] = value
  if not out:
    raise ValueError(f"{path}: the state dict holds no tensors")
  return out


# ----------------------------------------------------------------------------
# Key maps: source module path -> our module path.
# ----------------------------------------------------------------------------

_BLOCK_PARTS = [  # PyTorchVideo bottleneck internals
  (r"branch1_conv", "shortcut_conv"),
  (r"branch1_norm", "shortcut_bn"),
  (r"branch2\.norm_b\.0", "bn_b"),  # X3D: Sequential(BN, SE)
  (r"branch2\.norm_b\.1\.block\.0", "se_reduce"),
  (r"branch2\.norm_b\.1\.block\.2", "se_expand"),
  (r"branch2\.conv_([abc])", r"conv_\1"),
  (r"branch2\.norm_([abc])", r"bn_\1"),
]


def _sub_block(rest: str) -> str | None:
  for pattern, repl in _BLOCK_PARTS:
    if re.fullmatch(pattern, rest):
      return re.sub(pattern, repl, rest)
  return None


def _ptv_map(family: str, keys: list[str]) -> Callable[[str], str | None]:
  """PyTorchVideo module paths ("blocks.1.res_blocks.0.branch2.conv_a")."""
  # Residual stages are numbered by their position among the `blocks` that
  # hold res_blocks (I3D has a pooling block between res2 and res3).
  stage_blocks = sorted(
    {
      int(m.group(1))
      for k in keys
      if (
        m := re.match(
          r"blocks\.(\d+)\.(?:multipathway_blocks\.\d\.)?"
          r"res_blocks\.",
          k,
        )
      )
    }
  )
  stage = {b: i + 2 for i, b in enumerate(stage_blocks)}
  paths = ("slow", "fast")

  def rename(module: str) -> str | None:
    if m := re.fullmatch(r"blocks\.(\d+)\.proj", module):
      return "head/classifier"
    if family == "x3d":
      fixed = {
        "blocks.0.conv.conv_t": "stem_conv_xy",
        "blocks.0.conv.conv_xy": "stem_conv_t",
        "blocks.0.norm": "stem_bn",
      }
      if module in fixed:
        return "backbone/" + fixed[module]
      if m := re.fullmatch(r"blocks\.\d+\.pool\.(pre_conv|pre_norm|post_conv)", module):
        return (
          "backbone/"
          + {"pre_conv": "conv5", "pre_norm": "conv5_bn", "post_conv": "lin5"}[m.group(1)]
        )
    if family == "slowfast":
      if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)", module):
        return f"backbone/{paths[int(m.group(1))]}_stem/{'conv' if m.group(2) == 'conv' else 'bn'}"
      if m := re.fullmatch(r"blocks\.(\d+)\.multipathway_fusion\.(conv_fast_to_slow|norm)", module):
        where = "stem" if m.group(1) == "0" else f"res{int(m.group(1)) + 1}"
        return f"backbone/fuse_{where}_{'conv' if m.group(2) != 'norm' else 'bn'}"
      if m := re.fullmatch(
        r"blocks\.(\d+)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(.+)", module
      ):
        part = _sub_block(m.group(4))
        return part and (
          f"backbone/{paths[int(m.group(2))]}_res{stage[int(m.group(1))]}_block{m.group(3)}/{part}"
        )
      return None
    if m := re.fullmatch(r"blocks\.0\.(conv|norm)", module):
      return f"backbone/stem/{'conv' if m.group(1) == 'conv' else 'bn'}"
    if m := re.fullmatch(r"blocks\.(\d+)\.res_blocks\.(\d+)\.(.+)", module):
      part = _sub_block(m.group(3))
      return part and f"backbone/res{stage[int(m.group(1))]}_block{m.group(2)}/{part}"
    return None

  return rename


def _pyslowfast_map(family: str, keys: list[str]) -> Callable[[str], str | None]:
  """PySlowFast module paths ("s2.pathway0_res0.branch2.a", "s1_fuse.conv_f2s")."""
  del keys
  paths = ("slow", "fast")
  parts = {
    "branch1": "shortcut_conv",
    "branch1_bn": "shortcut_bn",
    "branch2.a": "conv_a",
    "branch2.a_bn": "bn_a",
    "branch2.b": "conv_b",
    "branch2.b_bn": "bn_b",
    "branch2.c": "conv_c",
    "branch2.c_bn": "bn_c",
  }
  nonlocal_parts = {
    "conv_theta": "theta",
    "conv_phi": "phi",
    "conv_g": "g",
    "conv_out": "out",
    "bn": "bn",
  }

  def rename(module: str) -> str | None:
    prefix = lambda p: f"{paths[p]}_" if family == "slowfast" else ""
    if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)", module):
      stem = f"{prefix(int(m.group(1)))}stem" if family == "slowfast" else "stem"
      return f"backbone/{stem}/{m.group(2)}"
    if m := re.fullmatch(r"s(\d)_fuse\.(conv_f2s|bn)", module):
      where = "stem" if m.group(1) == "1" else f"res{m.group(1)}"
      return f"backbone/fuse_{where}_{'conv' if m.group(2) == 'conv_f2s' else 'bn'}"
    if m := re.fullmatch(r"s(\d)\.pathway(\d)_res(\d+)\.(.+)", module):
      part = parts.get(m.group(4))
      return part and (
        f"backbone/{prefix(int(m.group(2)))}res{m.group(1)}_block{m.group(3)}/{part}"
      )
    if m := re.fullmatch(r"s(\d)\.pathway0_nonlocal(\d+)\.(.+)", module):
      part = nonlocal_parts.get(m.group(3))
      return part and f"backbone/res{m.group(1)}_nonlocal{m.group(2)}/{part}"
    return None

  return rename


def _torchvision_map(family: str, keys: list[str]) -> Callable[[str], str | None]:
  """torchvision ResNet module paths ("layer1.0.conv1", "layer1.0.downsample.0")."""
  del family, keys

  def rename(module: str) -> str | None:
    if module in ("conv1", "bn1"):
      return f"backbone/stem/{'conv' if module == 'conv1' else 'bn'}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)([123])", module):
      kind = "conv" if m.group(3) == "conv" else "bn"
      return (
        f"backbone/res{int(m.group(1)) + 1}_block{m.group(2)}/{kind}_{'abc'[int(m.group(4)) - 1]}"
      )
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])", module):
      kind = "shortcut_conv" if m.group(3) == "0" else "shortcut_bn"
      return f"backbone/res{int(m.group(1)) + 1}_block{m.group(2)}/{kind}"
    return None

  return rename


def _soundnet_map(family: str, keys: list[str]) -> Callable[[str], str | None]:
  """SoundNet port module paths ("conv3.0" conv, "conv3.1" batch norm, "conv8_2.0")."""
  del family, keys
  heads = {"conv8.0": "conv8_objects", "conv8_2.0": "conv8_scenes"}

  def rename(module: str) -> str | None:
    if module in heads:
      return f"backbone/{heads[module]}"
    if m := re.fullmatch(r"conv([1-7])\.([01])", module):
      return f"backbone/{'conv' if m.group(2) == '0' else 'bn'}{m.group(1)}"
    return None

  return rename


SOURCES = {
  "pytorchvideo": _ptv_map,
  "pyslowfast": _pyslowfast_map,
  "torchvision": _torchvision_map,
  "soundnet": _soundnet_map,
}
# Which sources each backbone family accepts.
SUPPORTED = {
  "pytorchvideo": (
    "i3d_r50",
    "slow_r50",
    "slowfast_r50",
    "slowfast_r101",
    "csn_r152",
    "x3d_xs",
    "x3d_s",
    "x3d_m",
    "x3d_l",
  ),
  "pyslowfast": ("i3d_r50", "slow_r50", "nl_r50", "nl_r101", "slowfast_r50", "slowfast_r101"),
  "torchvision": ("i3d_r50", "slow_r50", "nl_r50", "tsm_r50"),
  "soundnet": ("soundnet8",),
}
# Converted model paths that are a source's classifiers: dropped unless
# `keep_head` (the video heads go to "head/", SoundNet's stay in its backbone).
_HEAD_PATHS = re.compile(r"head/|(audio_)?backbone/conv8_")
# Waveform samples the audio backbones are initialised on: 20 s at 22050 Hz,
# the original's input, long enough for SoundNet's conv8 (about 10 s).
_AUDIO_INIT_SAMPLES = 20 * 22050
# Model parameters a source may leave at their initialisation.
_FRESH_OK = {"torchvision": re.compile(r"_nonlocal\d+/")}


def detect_source(keys: list[str]) -> str:
  """The checkpoint convention, from its key names."""
  if any(k.startswith("conv7.0.") for k in keys):
    return "soundnet"
  if any(k.startswith(("blocks.", "model.blocks.")) for k in keys):
    return "pytorchvideo"
  if any(k.startswith("s1.") for k in keys):
    return "pyslowfast"
  if any(k.startswith("layer1.") for k in keys):
    return "torchvision"
  raise ValueError(
    "cannot tell the checkpoint's convention from its keys (first: "
    f"{keys[:5]}); pass --source {'|'.join(SOURCES)}"
  )


def _family(arch: str) -> str:
  return (
    "slowfast" if arch.startswith("slowfast") else "x3d" if arch.startswith("x3d") else "resnet"
  )


_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def _to_ours(value: np.ndarray, target_shape: tuple[int, ...], inflate: bool) -> np.ndarray:
  """A PyTorch tensor in our layout: conv [O, I, (kt,) kh, kw] -> [kt, kh, kw, I, O]
  (a 2D kernel inflated over kt), 1D conv [O, I, k] or [O, I, k, 1] (a
  Conv2d over (time, 1)) -> [k, I, O], linear or 1x1x1 conv [O, I, ...] -> [I, O]."""
  value = np.asarray(value, np.float32)
  if len(target_shape) == 3:
    if value.ndim == 4 and value.shape[3] == 1:
      value = value[..., 0]
    return np.transpose(value, (2, 1, 0)) if value.ndim == 3 else value
  if len(target_shape) == 5:
    if value.ndim == 4 and inflate:
      kt = target_shape[0]
      value = np.repeat(value[:, :, None], kt, axis=2) / kt
    if value.ndim != 5:
      return value  # reported as a shape mismatch
    return np.transpose(value, (2, 3, 4, 1, 0))
  if len(target_shape) == 2 and value.ndim >= 2:
    return value.reshape(value.shape[0], value.shape[1]).T
  return value


def convert_state_dict(
  state: dict[str, np.ndarray],
  arch: str,
  source: str = "auto",
  keep_head: bool = False,
  seed: int = 0,
  task: str = "auto",
) -> dict[str, Any]:
  """Our variables {"params", "model_state"} from a PyTorch state dict.

  Args:
    state: source key -> array.
    arch: our backbone name (`models.registry.BACKBONES`).
    source: "pytorchvideo" | "pyslowfast" | "torchvision" | "soundnet" | "auto".
    keep_head: also convert the source classifier to "head/classifier"
      (SoundNet: its teacher heads, in the backbone).
    seed: initialisation of parameters the source does not have (allowed
      only where `_FRESH_OK` says so).
    task: "classification", "detection" (an AVA checkpoint: PySlowFast's
      `head.projection` or PyTorchVideo's `DetectionBBoxNetwork`, whose
      `model.` backbone and `detection_head.proj` it reads; the classifier
      goes to our detector's "head/inner/classifier") or "auto" (detection
      when the keys are a `DetectionBBoxNetwork`'s).

  Raises:
    ValueError listing unmatched source keys, uncovered model parameters and
    shape mismatches.
  """
  from mlar_jax import config_lib  # pylint: disable=g-import-not-at-top
  from mlar_jax.models import registry  # pylint: disable=g-import-not-at-top

  if task == "auto":
    task = "detection" if any(k.startswith("detection_head.") for k in state) else "classification"
  if task not in ("classification", "detection"):
    raise ValueError(f"task must be classification, detection or auto, got {task!r}")
  # PyTorchVideo's detection network: the backbone under "model.", the ROI
  # head's linear layer (after its temporal pool, ROI-Align and spatial max,
  # which have no parameters) "detection_head.proj".
  state = {
    (
      "head.projection." + k.rpartition(".")[2]
      if k.startswith("detection_head.proj.")
      else k.removeprefix("model.")
    ): v
    for k, v in state.items()
  }
  keys = sorted(state)
  source = detect_source(keys) if source == "auto" else source
  if source not in SOURCES:
    raise ValueError(f"--source must be one of {sorted(SOURCES)} or auto, got {source!r}")
  if arch not in SUPPORTED[source]:
    raise ValueError(
      f"{source} checkpoints convert to {', '.join(SUPPORTED[source])}; not to {arch!r}"
    )
  cfg = config_lib.base_config().model
  if arch in registry.AUDIO_BACKBONES:
    cfg.audio_backbone = arch
    backbone = registry.build_audio_backbone(cfg, teacher_heads=keep_head)
    example = jnp.zeros((1, _AUDIO_INIT_SAMPLES))
  else:
    cfg.backbone = arch
    backbone = registry.build_backbone(cfg)
    example = jnp.zeros((1, 8 if _family(arch) == "slowfast" else 4, 32, 32, 3))
  init = lambda: backbone.init(jax.random.key(seed), example, train=False)
  fresh_ok = _FRESH_OK.get(source)
  # Shapes only, unless some leaves may keep their initial values.
  fresh = jax.jit(init)() if fresh_ok else jax.eval_shape(init)
  # Where the models hold the backbone (models.registry): an audio one under
  # "audio_backbone/" (the audio and fused classifiers), so init_from loads it.
  top = "audio_backbone" if arch in registry.AUDIO_BACKBONES else "backbone"
  fresh = {col: traverse_util.flatten_dict({top: tree}, sep="/") for col, tree in fresh.items()}
  source_rename = SOURCES[source](_family(arch), keys)

  def rename(module: str) -> str | None:
    if module == "head.projection":  # PySlowFast's name; PyTorchVideo's detection head
      return "head/classifier"
    ours = source_rename(module)
    return f"{top}/{ours.removeprefix('backbone/')}" if ours and top != "backbone" else ours

  out = {"params": {}, "batch_stats": {}}
  unmatched, mismatched = [], []
  for key in keys:
    module, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    ours = rename(module)
    if ours is None or (_HEAD_PATHS.match(ours) and not keep_head):
      if not _HEAD_PATHS.match(ours or "") and not (source == "torchvision" and module == "fc"):
        unmatched.append(f"  {key}: {tuple(state[key].shape)}")
      continue
    if ours == "head/classifier":
      value = np.asarray(state[key], np.float32)
      # The detector runs the classifier inside heads.ROIHead ("inner").
      head = "head/inner/classifier" if task == "detection" else ours
      out["params"][f"{head}/{'kernel' if leaf == 'weight' else 'bias'}"] = (
        value.T if leaf == "weight" else value
      )
      continue
    is_bn = f"{ours}/scale" in fresh["params"] or f"{ours}/mean" in fresh.get("batch_stats", {})
    col, name = (
      _BN_LEAVES[leaf]
      if is_bn and leaf in _BN_LEAVES
      else ("params", "kernel" if leaf == "weight" else leaf)
    )
    path = f"{ours}/{name}"
    if path not in fresh.get(col, {}):
      unmatched.append(f"  {key}: {tuple(state[key].shape)} (-> {col}/{path}, not in {arch})")
      continue
    target = fresh[col][path].shape
    value = _to_ours(state[key], target, inflate=source == "torchvision")
    if value.shape != target:
      out[col][path] = None  # reported here, not again as uncovered
      mismatched.append(f"  {key}: {tuple(state[key].shape)} -> {col}/{path} needs {tuple(target)}")
      continue
    out[col][path] = value
  missing, kept_fresh = [], []
  for col, leaves in fresh.items():
    for path, value in leaves.items():
      if path in out.get(col, {}):
        continue
      if fresh_ok is not None and fresh_ok.search(path):
        out.setdefault(col, {})[path] = np.asarray(value)
        kept_fresh.append(path)
      else:
        missing.append(f"  {col}/{path}: {tuple(value.shape)}")
  problems = []
  for title, lines in (
    ("source keys with no place in the model", unmatched),
    ("shape mismatches", mismatched),
    ("model parameters the checkpoint does not cover", missing),
  ):
    if lines:
      problems.append(f"{title} ({len(lines)}):\n" + "\n".join(lines))
  if problems:
    raise ValueError(f"The {source} checkpoint does not match {arch}:\n" + "\n".join(problems))
  if kept_fresh:
    logging.info(
      "Kept at initialisation (not in a %s checkpoint): %d leaves, e.g. %s",
      source,
      len(kept_fresh),
      kept_fresh[0],
    )
  variables = {
    "params": traverse_util.unflatten_dict(out["params"], sep="/"),
    "model_state": {"batch_stats": traverse_util.unflatten_dict(out["batch_stats"], sep="/")},
  }
  return variables


def save_variables(variables: dict[str, Any], out: str) -> str:
  """Writes `variables` as `out/state`, the layout `checkpointing.load_variables` reads."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.join(os.path.abspath(out), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=True)
  return path


def define_flags() -> None:
  """The command's flags; defined only when it runs (absl flags are global)."""
  flags.DEFINE_string("arch", None, "Our backbone name, e.g. slowfast_r101 or soundnet8.")
  flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint file (.pyth/.pt/.pth).")
  flags.DEFINE_string("out", None, "Output directory (for --config.init_from).")
  flags.DEFINE_enum("source", "auto", ["auto", *SOURCES], "Checkpoint convention.")
  flags.DEFINE_bool("keep_head", False, "Also convert the source classifier.")
  flags.DEFINE_enum(
    "task",
    "auto",
    ["auto", "classification", "detection"],
    "detection: an AVA checkpoint (its classifier goes to the detector's ROI head); "
    "auto: detection for PyTorchVideo's DetectionBBoxNetwork keys.",
  )
  flags.mark_flags_as_required(["arch", "checkpoint", "out"])


def main(argv):
  del argv
  with cli.fatal_errors():
    # Before reading a file of gigabytes.
    known = sorted({arch for archs in SUPPORTED.values() for arch in archs})
    if FLAGS.arch not in known:
      raise ValueError(f"--arch={FLAGS.arch!r}: PyTorch checkpoints convert to {known}")
    state = state_dict_of(read_torch_file(FLAGS.checkpoint), FLAGS.checkpoint)
    variables = convert_state_dict(
      state, FLAGS.arch, FLAGS.source, FLAGS.keep_head, task=FLAGS.task
    )
    path = save_variables(variables, FLAGS.out)
  n = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  print(f"Wrote {path}: {FLAGS.arch}, {n:,} parameters from {FLAGS.checkpoint}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
