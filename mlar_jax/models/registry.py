"""Builds a model from `config.model` through name registries."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mlar_jax import config_lib, registry
from mlar_jax.models import heads, layers, soundnet
from mlar_jax.models import video_resnets as vr

# name -> backbone constructor (a `flax.linen.Module` class with its
# architecture fixed); `build_backbone` adds the compute settings of config.model.
BACKBONES: registry.Registry = registry.Registry("backbone")
# name -> audio backbone constructor (`config.model.audio_backbone`): maps a
# waveform [B, N] to {"map": [B, T', C], "pooled": [B, D]}.
AUDIO_BACKBONES: registry.Registry = registry.Registry("audio backbone")
# name -> fn(model_config, num_classes, class_stats) -> head module
HEADS: registry.Registry = registry.Registry("head")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The last stage's spatial stride: 2 as published, 1 for detection (AVA).
RES5_SPATIAL_STRIDES = (2, 1)

R50, R101, R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
TINY = (1, 1, 1, 1)
# I3D's temporal kernels (PySlowFast / PyTorchVideo I3D 8x8 R50): 3x1x1 on
# conv_a of every res2 block, every other block of res3/res4, one of res5.
I3D_CONV_A = ((3,), (3, 1), (3, 1), (1, 3))
SLOW_CONV_A = ((1,), (1,), (3,), (3,))
# Non-local blocks after every other block of res3 and res4 (the 5-block
# models of Wang et al. 2018, PySlowFast's I3D_NLN configs).
NL_BLOCKS = ((), (1, 3), (1, 3, 5), ())
NL_TINY = ((), (0,), (0,), ())
# ir-CSN: depthwise 3x3x3 conv_b, temporal stride 2 in res3-res5 on conv_b.
CSN_BLOCK = partial(vr.Bottleneck, conv_b_t=3, stride_on_b=True, depthwise=True)
# TSM: 2D bottlenecks shifting 1/8 of the channels each way in time.
TSM_BLOCK = partial(vr.Bottleneck, shift_div=8)
# The demo's ResNets: XLA's SAME padding and LeCun-normal init. With the
# ported backbones' PyTorch conventions the demo's test macro mAP was 0.6639
# / 0.6481 (seeds 0 / 1) against 0.6818 / 0.6803 (README, demo section).
XLA_CONV = dict(padding="SAME", kernel_init=nn.initializers.lecun_normal())

# PyTorchVideo hub names where they exist; `*_tiny` keep each family's
# structure at widths/depths a CPU test or the demo can afford.
ARCHS = {
  "i3d_r50": partial(vr.ResNet, depths=R50, stem_kernel=(5, 7, 7), pool1=True, conv_a_t=I3D_CONV_A),
  "slow_r50": partial(vr.ResNet, depths=R50, stem_kernel=(1, 7, 7), conv_a_t=SLOW_CONV_A),
  "nl_r50": partial(
    vr.ResNet,
    depths=R50,
    stem_kernel=(5, 7, 7),
    pool1=True,
    conv_a_t=I3D_CONV_A,
    nonlocal_blocks=NL_BLOCKS,
  ),
  "nl_r101": partial(
    vr.ResNet,
    depths=R101,
    stem_kernel=(5, 7, 7),
    pool1=True,
    conv_a_t=I3D_CONV_A,
    nonlocal_blocks=NL_BLOCKS,
  ),
  "slowfast_r50": partial(vr.SlowFast, depths=R50, fusion_kernel=7),
  "slowfast_r101": partial(vr.SlowFast, depths=R101, fusion_kernel=5),
  "csn_r152": partial(
    vr.ResNet,
    depths=R152,
    block=CSN_BLOCK,
    stem_kernel=(3, 7, 7),
    conv_a_t=((1,),) * 4,
    temporal_strides=(1, 2, 2, 2),
  ),
  # X3D-XS/S/M share the network; they differ in input (4x160, 13x160,
  # 16x224 frames x crop: config.data).
  "x3d_xs": partial(vr.X3D, width_factor=2.0, depth_factor=2.2),
  "x3d_s": partial(vr.X3D, width_factor=2.0, depth_factor=2.2),
  "x3d_m": partial(vr.X3D, width_factor=2.0, depth_factor=2.2),
  "x3d_l": partial(vr.X3D, width_factor=2.0, depth_factor=5.0),
  # 8 segments = 8 input frames.
  "tsm_r50": partial(
    vr.ResNet, depths=R50, block=TSM_BLOCK, stem_kernel=(1, 7, 7), conv_a_t=((1,),) * 4
  ),
  # R3D-18 (Tran et al. 2018; torchvision's r3d_18): 3x3x3 everywhere.
  "r3d_18": partial(
    vr.ResNet,
    depths=(2, 2, 2, 2),
    block=vr.BasicBlock,
    stem_kernel=(3, 7, 7),
    stem_pool=False,
    conv_a_t=((3,),) * 4,
    temporal_strides=(1, 2, 2, 2),
  ),
  # Plain 3D ResNets of one basic block per stage: the CPU demo and tests
  # (16-64 channels), and a 32-256 channel one.
  "resnet3d_tiny": partial(
    vr.ResNet,
    depths=(1, 1, 1),
    block=vr.BasicBlock,
    stem_width=16,
    stem_kernel=(3, 5, 5),
    stem_pool=False,
    conv_a_t=((3,),) * 3,
    **XLA_CONV,
  ),
  "resnet3d_small": partial(
    vr.ResNet,
    depths=TINY,
    block=vr.BasicBlock,
    stem_width=32,
    stem_kernel=(3, 5, 5),
    stem_pool=False,
    conv_a_t=SLOW_CONV_A,
    **XLA_CONV,
  ),
  "i3d_tiny": partial(
    vr.ResNet, depths=TINY, stem_width=8, stem_kernel=(5, 7, 7), pool1=True, conv_a_t=I3D_CONV_A
  ),
  "nl_tiny": partial(
    vr.ResNet,
    depths=TINY,
    stem_width=8,
    stem_kernel=(5, 7, 7),
    conv_a_t=I3D_CONV_A,
    nonlocal_blocks=NL_TINY,
  ),
  "slowfast_tiny": partial(vr.SlowFast, depths=TINY, stem_width=16, beta_inv=4),
  "csn_tiny": partial(
    vr.ResNet,
    depths=TINY,
    block=CSN_BLOCK,
    stem_width=8,
    stem_kernel=(3, 7, 7),
    conv_a_t=((1,),) * 4,
    temporal_strides=(1, 2, 2, 2),
  ),
  "x3d_tiny": partial(vr.X3D, width_factor=1.0, depth_factor=1.0, stem_width=8, head_width=256),
  "tsm_tiny": partial(vr.ResNet, depths=TINY, block=TSM_BLOCK, stem_width=8, conv_a_t=((1,),) * 4),
}
for _name, _arch in ARCHS.items():
  BACKBONES.register(_name)(_arch)


AUDIO_BACKBONES.register("soundnet8")(soundnet.SoundNet)


def build_backbone(cfg: ml_collections.ConfigDict) -> nn.Module:
  """The backbone named by `cfg.backbone` with the settings of `cfg`
  (`config.model`): dtype, frozen_bn, conv_impl, res5_spatial_stride, remat.
  Maps [B, T, H, W, 3] to {"map": [B, T', H', W', C], "pooled": [B, D]}."""
  # A workdir saved before the key existed trained without remat. Passed only
  # when set, so a registered backbone without residual blocks to checkpoint
  # (no `remat` attribute) builds as before with the default.
  remat = cfg.get("remat", "none")
  return BACKBONES.get(cfg.backbone)(
    dtype=DTYPES[cfg.dtype],
    frozen_bn=cfg.frozen_bn,
    conv_impl=cfg.conv_impl,
    res5_spatial_stride=cfg.res5_spatial_stride,
    **({} if remat == "none" else {"remat": remat}),
  )


def build_audio_backbone(cfg: ml_collections.ConfigDict, teacher_heads: bool = False) -> nn.Module:
  """The audio backbone named by `cfg.audio_backbone` with the dtype,
  frozen_bn and conv_impl of `cfg` (`config.model`). Maps [B, N] to {"map": [B, T', C],
  "pooled": [B, D]} (plus SoundNet's teacher logits with `teacher_heads`,
  for importing and checking its released weights)."""
  extra = {"teacher_heads": True} if teacher_heads else {}
  return AUDIO_BACKBONES.get(cfg.audio_backbone)(
    dtype=DTYPES[cfg.dtype], frozen_bn=cfg.frozen_bn, conv_impl=cfg.conv_impl, **extra
  )


@HEADS.register("linear")
def _linear(cfg, num_classes, class_stats):
  del class_stats
  return heads.LinearHead(num_classes, dropout_rate=cfg.dropout_rate)


@HEADS.register("attention_pool")
def _attention_pool(cfg, num_classes, class_stats):
  del class_stats
  return heads.AttentionPoolHead(
    num_classes, features=cfg.mlar.features, dropout_rate=cfg.dropout_rate
  )


@HEADS.register("mlar")
def _mlar(cfg, num_classes, class_stats):
  """The MLAR head; its correlation mask comes from the training labels."""
  m = cfg.mlar
  mask_init = nn.initializers.zeros
  if class_stats is not None:
    mask_init = nn.initializers.constant(heads.correlation_mask(class_stats.cooccurrence))
  return heads.MLARHead(
    num_classes,
    num_observations=m.num_observations,
    groups=m.groups,
    features=m.features,
    use_activity_specific=m.use_activity_specific,
    use_correlation=m.use_correlation,
    dropout_rate=cfg.dropout_rate,
    mask_init=mask_init,
    output=m.output,
    query_init=m.query_init,
    mask_mode=m.mask_mode,
  )


# head name -> fn(model_config) -> the keys of the head's output dict. Known
# without building the model, so `config.eval.output` fails before training
# rather than after it; tests check each against the built model's outputs.
HEAD_OUTPUTS = {
  "linear": lambda cfg: ("logits",),
  "attention_pool": lambda cfg: ("logits",),
  # Without the correlation map the head has one output (heads.MLARHead).
  "mlar": lambda cfg: ("logits", "logits_activity") if cfg.mlar.use_correlation else ("logits",),
}


def head_outputs(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The output names of the model `cfg` (`config.model`) builds, e.g.
  ("logits", "logits_activity") for the MLAR head with correlations."""
  if cfg.head not in HEAD_OUTPUTS:
    raise KeyError(f"head {cfg.head!r} is registered without an entry in HEAD_OUTPUTS")
  return HEAD_OUTPUTS[cfg.head](cfg)


class VideoClassifier(nn.Module):
  """Backbone then head: [B, T, H, W, 3] -> dict of [B, A] logits."""

  backbone: nn.Module
  head: nn.Module

  def __call__(self, video: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    return self.head(self.features(video, train=train), train=train)

  def features(self, video: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """The head's input: the backbone's {"map", "pooled"}."""
    return self.backbone(video, train=train)


class AudioClassifier(nn.Module):
  """Audio backbone then head: [B, N] waveform -> dict of [B, A] logits. The
  backbone's map [B, T', C] reaches the head as [B, T', 1, 1, C], so every
  head (the MLAR head's positions are then the T' audio steps) reads it."""

  audio_backbone: nn.Module
  head: nn.Module

  def __call__(self, audio: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    return self.head(self.features(audio, train=train), train=train)

  def features(self, audio: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """The head's input: the audio backbone's map as [B, T', 1, 1, C]."""
    features = self.audio_backbone(audio, train=train)
    return {**features, "map": features["map"][:, :, None, None, :]}


class FusedClassifier(nn.Module):
  """Video and audio (M-MiT section 6.1): both backbones, the head on the
  video branch, and one linear layer on the audio branch's pooled feature
  added to every output of the head.

  With the linear head this is the paper's fusion exactly: one linear layer
  on the concatenation [pooled video; pooled audio] is W_v v + W_a a + b,
  the head's layer plus this one. With the MLAR head on the video branch,
  the audio evidence is added to both of its outputs. Parameter paths
  (`backbone/`, `audio_backbone/`, `head/`) are those of the video-only and
  audio-only models, so `config.init_from` can load one checkpoint of each.
  Freezing the backbones (late fusion of fine-tuned models, as the paper)
  is `config.optimizer.freeze="^(backbone|audio_backbone)/"` with
  `config.model.frozen_bn=True`.
  """

  backbone: nn.Module
  audio_backbone: nn.Module
  head: nn.Module
  num_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(
    self, video: jnp.ndarray, audio: jnp.ndarray, *, train: bool
  ) -> dict[str, jnp.ndarray]:
    outputs = self.head(self.features(video, audio, train=train), train=train)
    pooled = self.audio_backbone(audio, train=train)["pooled"].astype(jnp.float32)
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    audio_logits = nn.Dense(
      self.num_classes, kernel_init=nn.initializers.normal(0.01), name="audio_classifier"
    )(pooled)
    return {name: logits + audio_logits for name, logits in outputs.items()}

  def features(self, video: jnp.ndarray, audio: jnp.ndarray, *, train: bool):
    """The head's input: the video backbone's {"map", "pooled"}."""
    del audio
    return self.backbone(video, train=train)


class VideoDetector(nn.Module):
  """Backbone then a head over person boxes: [B, T, H, W, 3] and person boxes
  [B, N, 4] (with valid [B, N]) -> dict of [B, N, A] logits per box, or of
  [B, A] per clip when the head pools the boxes (`heads.ROIHead.pool_boxes`)."""

  backbone: nn.Module
  head: heads.ROIHead

  def __call__(
    self, video: jnp.ndarray, boxes: jnp.ndarray, valid: jnp.ndarray, *, train: bool
  ) -> dict[str, jnp.ndarray]:
    return self.head(self.backbone(video, train=train), boxes, valid, train=train)


def build_detector(
  cfg: ml_collections.ConfigDict, num_classes: int, class_stats: Any = None
) -> VideoDetector:
  """The detection model of `cfg` (`config.model`): its backbone, and its
  head (`cfg.head`, linear or MLAR) run per person box over ROI-Aligned
  features (`cfg.roi`). Arguments as `build_model`; the MLAR head's
  correlation mask then comes from per-box label statistics."""
  return _box_model(cfg, num_classes, class_stats, pool_boxes=False)


def build_box_classifier(
  cfg: ml_collections.ConfigDict, num_classes: int, class_stats: Any = None
) -> VideoDetector:
  """The clip classifier of `cfg` over its person boxes (task "boxes",
  Volleyball's "bb"): the detector's ROI-Align, each bin max-pooled over the
  clip's boxes, then the head once per clip. Arguments as `build_model`."""
  return _box_model(cfg, num_classes, class_stats, pool_boxes=True)


def _box_model(cfg, num_classes, class_stats, pool_boxes: bool) -> VideoDetector:
  r = cfg.roi
  head = heads.ROIHead(
    inner=HEADS.get(cfg.head)(cfg, num_classes, class_stats),
    output_size=r.output_size,
    sampling_ratio=r.sampling_ratio,
    aligned=r.aligned,
    pool_boxes=pool_boxes,
  )
  return VideoDetector(backbone=build_backbone(cfg), head=head)


def build_model(
  cfg: ml_collections.ConfigDict, num_classes: int, class_stats: Any = None
) -> nn.Module:
  """The classifier of `cfg.inputs` (`CLASSIFIERS`): a `VideoClassifier` of
  `cfg.backbone` and `cfg.head`, an `AudioClassifier` of `cfg.audio_backbone`
  and the head, or a `FusedClassifier` of both backbones.

  Args:
    cfg: `config.model`.
    num_classes: activities A.
    class_stats: training-label statistics (a `data.base.ClassStats`: `counts`
      [A], `cooccurrence` [A, A]) for heads that are built from them; None
      gives those heads placeholder values (shapes, parameter counts).
  """
  head = HEADS.get(cfg.head)(cfg, num_classes, class_stats)
  return CLASSIFIERS.get(cfg.inputs)(cfg, head, num_classes)


# config.model.inputs -> fn(model_config, head, num_classes) -> the classifier
# reading those inputs (build_model).
CLASSIFIERS: registry.Registry = registry.Registry("model.inputs")
CLASSIFIERS.register("video")(
  lambda cfg, head, num_classes: VideoClassifier(backbone=build_backbone(cfg), head=head)
)
CLASSIFIERS.register("audio")(
  lambda cfg, head, num_classes: AudioClassifier(
    audio_backbone=build_audio_backbone(cfg), head=head
  )
)
CLASSIFIERS.register("video+audio")(
  lambda cfg, head, num_classes: FusedClassifier(
    backbone=build_backbone(cfg),
    audio_backbone=build_audio_backbone(cfg),
    head=head,
    num_classes=num_classes,
    dropout_rate=cfg.dropout_rate,
  )
)


def backbone_names(cfg: ml_collections.ConfigDict) -> str:
  """The backbones a model of `cfg` (`config.model`) has, as logs name them:
  "slowfast_r50", "soundnet8" (audio only), "resnet3d_tiny+soundnet8"."""
  names = {"video": cfg.backbone, "audio": cfg.audio_backbone}
  inputs = cfg.inputs.split("+") if cfg.task == "classification" else ["video"]
  return "+".join(names[i] for i in inputs)


# config.model.task -> fn(model_config, num_classes, class_stats) -> model.
TASKS: registry.Registry = registry.Registry("model.task")
TASKS.register("classification")(build_model)
TASKS.register("detection")(build_detector)
TASKS.register("boxes")(build_box_classifier)
# What a batch of each task must carry beyond video and labels: a detector
# the keyframe's person boxes and their labels, a box classifier the boxes.
TASK_EXTRAS = {"detection": ("boxes", "actor_labels"), "boxes": ("boxes",)}


def build(cfg: ml_collections.ConfigDict, num_classes: int, class_stats: Any = None) -> nn.Module:
  """The model of `cfg.task` (`config.model`): a `VideoClassifier`
  (`build_model`) or a `VideoDetector` (`build_detector`). Arguments as
  `build_model`."""
  return TASKS.get(cfg.task)(cfg, num_classes, class_stats)


def _validate_task(config: ml_collections.ConfigDict) -> None:
  """A detector reads the keyframe's boxes and per-box labels from the batch,
  and scores each keyframe once (one view: a keyframe's boxes are scored,
  not aggregated over crops)."""
  config_lib.check_choice(config, "model.task", TASKS.names())
  config_lib.check_choice(config, "model.inputs", CLASSIFIERS.names())
  if "audio" in config.model.inputs and "audio" not in config.data.extras:
    config_lib.fail(
      "data.extras",
      tuple(config.data.extras),
      f"model.inputs={config.model.inputs!r} needs the 'audio' extra",
    )
  task = config.model.task
  if task not in TASK_EXTRAS:
    return
  if config.model.inputs != "video":
    config_lib.fail("model.inputs", config.model.inputs, f"model.task={task!r} reads video")
  missing = [name for name in TASK_EXTRAS[task] if name not in config.data.extras]
  if missing:
    config_lib.fail(
      "data.extras",
      tuple(config.data.extras),
      f"model.task={task!r} needs {list(TASK_EXTRAS[task])} (missing {missing})",
    )
  if task == "detection" and config.eval.spatial_crops != 1:
    config_lib.fail(
      "eval.spatial_crops",
      config.eval.spatial_crops,
      "model.task='detection' scores each keyframe in one view (1 crop)",
    )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config.model`: task, registered backbone and head, dtype, conv path,
  remat policy, head sizes; and `config.eval.output`, one of the head's
  outputs."""
  _validate_task(config)
  config_lib.check_choice(config, "model.backbone", BACKBONES.names())
  config_lib.check_choice(config, "model.audio_backbone", AUDIO_BACKBONES.names())
  config_lib.check_choice(config, "model.head", HEADS.names())
  config_lib.check_choice(config, "model.dtype", DTYPES)
  config_lib.check_choice(config, "model.conv_impl", layers.CONV_IMPLS)
  config_lib.check_choice(config, "model.remat", vr.REMAT_POLICIES)
  if config.model.res5_spatial_stride not in RES5_SPATIAL_STRIDES:
    config_lib.fail(
      "model.res5_spatial_stride",
      config.model.res5_spatial_stride,
      f"the last stage's spatial stride must be one of {list(RES5_SPATIAL_STRIDES)}",
    )
  config_lib.check_positive(
    config,
    "model.mlar.num_observations",
    "model.mlar.groups",
    "model.mlar.features",
    "model.roi.output_size",
  )
  if not isinstance(config.model.roi.sampling_ratio, int):
    config_lib.fail(
      "model.roi.sampling_ratio",
      config.model.roi.sampling_ratio,
      "must be an integer (<= 0: adaptive, as torchvision)",
    )
  m = config.model.mlar
  config_lib.check_choice(config, "model.mlar.output", heads.OUTPUTS)
  config_lib.check_choice(config, "model.mlar.mask_mode", heads.MASK_MODES)
  if m.output == "tied" and not m.use_activity_specific:
    config_lib.fail(
      "model.mlar.output", m.output, "needs model.mlar.use_activity_specific (the queries q_a)"
    )
  if not m.query_init > 0:
    config_lib.fail("model.mlar.query_init", m.query_init, "must be > 0 (a standard deviation)")
  if m.features % m.groups:
    config_lib.fail(
      "model.mlar.features", m.features, f"must be divisible by model.mlar.groups={m.groups}"
    )
  if not 0.0 <= config.model.dropout_rate < 1.0:
    config_lib.fail("model.dropout_rate", config.model.dropout_rate, "must be in [0, 1)")
  outputs = head_outputs(config.model)
  if config.eval.output not in outputs:
    head = f"model.head={config.model.head!r}"
    if config.model.head == "mlar" and not config.model.mlar.use_correlation:
      head += " with model.mlar.use_correlation=False"
    config_lib.fail("eval.output", config.eval.output, f"{head} outputs only {list(outputs)}")
