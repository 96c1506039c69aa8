"""Hockey (MLAR paper, section 6; Sozykin et al. 2018): multi-label action
recognition on ice-hockey clips, read through the generic CSV source.

  python -m mlar_jax.main --config configs/hockey.py:root=/data/hockey --workdir runs/hockey
  python -m mlar_jax.data.scenes export --format csv --out /tmp/scenes_csv \\
      --num_train 32 --num_test 16 --resolution 32 --min_frames 64 --max_frames 80
  python -m mlar_jax.main --config configs/hockey.py:runlocal,root=/tmp/scenes_csv \\
      --workdir /tmp/hockey_local

Arguments (comma-separated):
  root=DIR       the folder (`config.data.csv`): classes.txt (the dataset's
                 class names, one a line), train.csv / val.csv / test.csv
                 with a header `id,path,labels` (labels: class names joined
                 by ";"), and the clips under videos/ (README "Hockey").
  backbone=NAME  csn_r152 (default), ...
  head=NAME      mlar (default), mlar_paper, attention_pool or linear.
  runlocal       a tiny model on a scenes CSV export, trained in seconds.

The hockey clips are short and multi-label (several events at once): a
clip is 16 frames every 2, trained on its clip-level labels; evaluation is
the centre time window in three crops (left, centre, right) averaged, and
the macro mAP over classes. Settings are chosen on val.csv
(`config.eval.split = "val"`); report test.csv once.
"""

from mlar_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, root="", backbone="csn_r152", head="mlar", runlocal=False)
  config = config_lib.base_config()
  d = config.data
  d.name = "csv"
  d.csv.update(
    root=args.root,
    train_csv="train.csv",
    val_csv="val.csv",
    test_csv="test.csv",
    classes="classes.txt",
    videos="videos",
  )
  d.num_frames, d.rates = 16, (2,)
  d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 256, 320, 224, 224
  d.flip = True
  config.eval.split = "val"
  config.eval.views, config.eval.spatial_crops, config.eval.aggregate = ((2, 1),), 3, "mean"
  config.model.backbone = args.backbone
  config_lib.set_head(config, args.head)
  config.model.dtype = "bfloat16"
  config.model.mlar.update(num_observations=64, groups=32, features=128)
  config.batch_size = 32
  config.num_train_steps = 5000
  config.schedule.update(base_lr=0.01, warmup_steps=300)
  config.checkpoint.every_steps = 500
  config.log_every_steps = 50

  if args.runlocal:
    # A scenes CSV export (python -m mlar_jax.data.scenes export --format
    # csv): train and test lists, 24 fps mp4s of square 32-pixel frames.
    d.csv.update(val_csv="", fps=24.0)
    d.num_frames, d.rates = 4, (4,)
    d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 32, 36, 32, 32
    d.flip = False  # walk_left and walk_right
    config.eval.split = "test"
    config.eval.views, config.eval.spatial_crops = ((4, 2),), 1
    config.model.backbone = "resnet3d_tiny" if args.backbone == "csn_r152" else args.backbone
    config.model.dtype = "float32"
    config.model.dropout_rate = 0.0
    config.model.mlar.update(num_observations=4, groups=4, features=16)
    config.batch_size = config.eval.batch_size = 8
    config.num_train_steps = 6
    config.schedule.update(base_lr=0.01, warmup_steps=2)
    config.checkpoint.every_steps = 3
    config.log_every_steps = 2
  return config
