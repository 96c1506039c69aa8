"""Charades (157 activities) with a paper backbone and the MLAR head.

  python -m mlar_jax.main --config configs/charades.py:backbone=slowfast_r101,root=/data/charades \
      --workdir gs://bucket/runs/sf101

Arguments (comma-separated):
  root=DIR       the Charades folder: Charades_v1_{train,test}.csv,
                 Charades_v1_classes.txt and Charades_v1_480/ videos.
  prepared=DIR   read the TFDS data dir written by `python -m
                 mlar_jax.data.prepare --dataset charades` instead (prepare
                 with --fps 0 to keep 24 fps, so that rates mean the same).
  backbone=NAME  slowfast_r101 (default), nl_r101, csn_r152, i3d_r50, ...
  head=NAME      mlar (default), mlar_paper (config_lib.PAPER_MLAR),
                 attention_pool or linear.
  runlocal       tiny sizes and a few steps, for a small local copy.

Training follows the MLAR paper's setup (section 4.1): 32-frame clips at rate
4 (SlowFast: 8 Slow + 32 Fast frames), labels of the actions overlapping the
clip, SGD with cosine decay, batch 64, bfloat16 compute; evaluation uses the
30-view plan (12 at rate 4, 9 at 8, 9 at 2). The class count and the MLAR
correlation mask come from the training CSV.
"""

from mlar_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
    arg, root="", prepared="", backbone="slowfast_r101", head="mlar", runlocal=False
  )
  config = config_lib.base_config()
  d = config.data
  d.name = "prepared" if args.prepared else "charades"
  d.charades.root = args.root
  d.prepared.update(data_dir=args.prepared, dataset="charades")
  d.num_frames, d.rates = 32, (4,)
  d.label_mode = "window"
  config.model.backbone = args.backbone
  config_lib.set_head(config, args.head)
  config.model.dtype = "bfloat16"
  config.model.mlar.update(num_observations=64, groups=32, features=128)
  config.batch_size = 64
  config.num_train_steps = 7500  # ~60 epochs of 7,985 videos
  config.schedule.update(base_lr=0.1, warmup_steps=500)
  config.optimizer.weight_decay = 1e-4
  config.checkpoint.every_steps = 500
  config.log_every_steps = 50
  config.eval.batch_size = 64
  # Speed-invariant tuning (python -m mlar_jax.tools.speed_invariant): the
  # head alone on rates {2, 4, 8}, ~12 epochs.
  config.stage2.update(num_train_steps=1500, rates=(2, 4, 8), base_lr=0.01)

  if args.runlocal:
    d.num_frames, d.rates = 8, (2,)
    d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 32, 40, 32, 32
    config.eval.views, config.eval.spatial_crops = ((2, 2),), 1
    config.model.dtype = "float32"
    config.model.mlar.update(num_observations=4, groups=4, features=16)
    config.batch_size = config.eval.batch_size = 8
    config.num_train_steps = 4
    config.schedule.warmup_steps = 1
    config.checkpoint.every_steps = 2
    config.log_every_steps = 2
    config.stage2.num_train_steps = 2
  return config
