"""The demo: a small 3D ResNet with a linear sigmoid head on the embedded
synthetic dataset (`mlar_jax/data/synthetic.py`), BCE loss.

  python -m mlar_jax.main --config configs/synthetic.py --workdir runs/demo
  python -m mlar_jax.main --config configs/synthetic.py:runlocal --workdir /tmp/x

Arguments (comma-separated):
  runlocal      seconds on a laptop CPU: tiny data, few steps.
  head=NAME     "linear" (default), "attention_pool", "mlar" or
                "mlar_paper" (config_lib.PAPER_MLAR), sized for the tiny
                backbone's 64 channels: K=16 observations, n=8 groups, C'=64.
  backbone=NAME any registered backbone (default resnet3d_tiny).
  speed_invariant
                64-frame videos, so that one clip at rate 4 (29 frames) sees
                about half a video, and the 30-view multi-rate test; for
                `python -m mlar_jax.tools.speed_invariant` (stage 2 settings
                in config.stage2).
"""

from mlar_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
    arg, runlocal=False, head="linear", backbone="resnet3d_tiny", speed_invariant=False
  )
  config = config_lib.base_config()

  d = config.data
  d.name = "synthetic"
  d.synthetic.update(
    seed=0, num_train=4096, num_val=256, num_test=512, video_frames=32, resolution=32
  )
  # 8 frames at rate 4 span the whole 32-frame video: short events are seen
  # in one frame or missed, which keeps the task from saturating.
  d.num_frames, d.rates = 8, (4,)
  d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 32, 36, 32, 32
  d.flip = False  # Flips would swap move_left and move_right.
  # One clip at rate 4 spans the whole 32-frame video, and frames are
  # square at the crop size: a single view sees everything.
  config.eval.views, config.eval.spatial_crops = ((4, 1),), 1

  config.model.backbone = args.backbone
  config_lib.set_head(config, args.head)
  config.model.dropout_rate = 0.2
  config.model.mlar.update(num_observations=16, groups=8, features=64)
  config.batch_size = 32
  config.num_train_steps = 900
  config.schedule.update(base_lr=0.1, warmup_steps=50)
  config.optimizer.weight_decay = 1e-4
  config.checkpoint.every_steps = 100
  config.log_every_steps = 50
  config.eval.batch_size = 64

  if args.speed_invariant:
    d.synthetic.video_frames = 64
    # The base config's 30-view plan: ((4, 4), (8, 3), (2, 3)) x 3 crops of a
    # 36-pixel short side.
    config.eval.views, config.eval.spatial_crops = ((4, 4), (8, 3), (2, 3)), 3
    d.eval_short_side = 36
    config.stage2.update(num_train_steps=300, rates=(2, 4, 8), base_lr=0.01)

  if args.runlocal:
    d.synthetic.update(num_train=64, num_val=16, num_test=24, resolution=16)
    d.num_frames, d.rates = 4, (8,)
    config.eval.views = ((8, 1),)
    d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 16, 16, 16, 16
    config.batch_size = 8
    config.eval.batch_size = 8
    config.num_train_steps = 6
    config.schedule.warmup_steps = 2
    config.log_every_steps = 2
    config.checkpoint.every_steps = 3
    config.model.mlar.update(num_observations=4, groups=4, features=16)
    if args.speed_invariant:
      d.synthetic.video_frames = 32
      config.eval.views, config.eval.spatial_crops = ((4, 2), (8, 1), (2, 1)), 2
      d.eval_short_side = 18
      config.stage2.num_train_steps = 4
  return config
