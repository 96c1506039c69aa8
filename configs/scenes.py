"""The multi-actor scenes baseline: a small 3D ResNet on the embedded scenes
dataset (`mlar_jax/data/scenes.py`), video-level multi-label classification.

  python -m mlar_jax.main --config configs/scenes.py --workdir runs/scenes
  python -m mlar_jax.main --config configs/scenes.py:runlocal --workdir /tmp/x

Arguments (comma-separated):
  runlocal      seconds on a laptop CPU: tiny data, few steps.
  head=NAME     "linear" (default), "attention_pool", "mlar" or
                "mlar_paper" (config_lib.PAPER_MLAR), sized for the tiny
                backbone's 64 channels: K=16 observations, n=8 groups, C'=64.
  backbone=NAME any registered backbone (default resnet3d_tiny).
  inputs=NAME   "video" (default), "audio" (SoundNet-8 and the head) or
                "video+audio" (both, fused: models.registry.FusedClassifier).
  speed_invariant
                stage-2 settings for `python -m mlar_jax.tools.speed_invariant`
                (MLAR section 3.5): the head on rates {2, 4, 8}, tested on 10
                views at rates 4, 8 and 2 (the papers' 30-view plan without
                the 3 crops, which are one square frame here).

A training clip (8 frames at rate 4, 32 frames) sees a quarter to a third of
a 96-160-frame video, so it is trained on the labels of the activities it
overlaps (`label_mode="window"`); a test video is scored by the maximum over
four such windows spread over it (a video has an activity if any part of it
does).
"""

from mlar_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
    arg,
    runlocal=False,
    head="linear",
    backbone="resnet3d_tiny",
    inputs="video",
    speed_invariant=False,
  )
  config = config_lib.base_config()

  d = config.data
  d.name = "scenes"
  d.scenes.update(seed=0, num_train=4096, num_val=256, num_test=512, resolution=32)
  d.num_frames, d.rates = 8, (4,)
  d.label_mode = "window"
  d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 32, 36, 32, 32
  d.flip = False  # Flips would swap walk_left and walk_right.
  # Four windows of 32 frames cover 128 of the 96-160 frames; the frames are
  # square at the crop size, so one crop sees everything.
  config.eval.views, config.eval.spatial_crops = ((4, 4),), 1
  config.eval.aggregate = "max"

  config.model.backbone = args.backbone
  config_lib.set_head(config, args.head)
  config.model.inputs = args.inputs
  if "audio" in args.inputs:
    d.extras = (*d.extras, "audio")
    # The clip's own time span: 32 frames at 24 fps, 1.33 s at 22050 Hz (one
    # SoundNet conv7 step); the scenes' 16 kHz track is resampled to it.
    d.audio.num_samples = 29400
  # Chosen on the val split (seed 0; README "Multi-actor scenes"): at 900
  # steps the baseline reached 1.75x the constant predictor, at 1800 2.08x,
  # and 2.27x without dropout at base_lr 0.2 (AdamW 2e-3: 1.87x).
  config.model.dropout_rate = 0.0
  config.model.mlar.update(num_observations=16, groups=8, features=64)
  config.batch_size = 32
  config.num_train_steps = 1800
  config.schedule.update(base_lr=0.2, warmup_steps=50)
  if args.head == "mlar":
    # `tools.ablate --study heads_lr` on the val split (seed 0; README "The
    # MLAR head's variants"): the default MLAR head reached 0.5185 macro mAP
    # at 0.05, 0.5804 at 0.1 and 0.4582 at 0.2; the linear head 0.4085 /
    # 0.4491 / 0.4430 at 0.1 / 0.2 / 0.4 and attention pooling 0.5079 /
    # 0.5663 / 0.4952, so both keep the 0.2 above.
    config.schedule.base_lr = 0.1
  elif args.head == "mlar_paper":
    # The paper-literal MLAR head diverged here (NaN loss by step 100) at 0.2
    # and at 0.1; it trains at 0.05 (val 0.3006 macro mAP, 1.52x, against
    # the linear head's 0.4475, 2.27x; seed 0).
    config.schedule.base_lr = 0.05
  config.optimizer.weight_decay = 1e-4
  config.checkpoint.every_steps = 200
  config.log_every_steps = 100
  config.eval.batch_size = 64

  if args.speed_invariant:
    # The long videos and short-to-long activities section 3.5 is for: a
    # rate-8 clip spans 64 of the 96-160 frames, a rate-2 clip 16. Stage 2 as
    # the synthetic study's (not tuned here); the 10 views cover each video
    # at every rate.
    config.eval.views = ((4, 4), (8, 3), (2, 3))
    config.stage2.update(num_train_steps=300, rates=(2, 4, 8), base_lr=0.01)

  if args.runlocal:
    d.scenes.update(
      num_train=64, num_val=16, num_test=24, resolution=16, min_frames=64, max_frames=72
    )
    d.num_frames = 4
    d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 16, 16, 16, 16
    config.eval.views = ((8, 2),)
    config.batch_size = 8
    config.eval.batch_size = 8
    config.num_train_steps = 6
    config.schedule.warmup_steps = 2
    config.log_every_steps = 2
    config.checkpoint.every_steps = 3
    config.model.mlar.update(num_observations=4, groups=4, features=16)
    if args.speed_invariant:
      config.eval.views = ((4, 1), (8, 1), (2, 1))
      config.stage2.num_train_steps = 4
  return config
