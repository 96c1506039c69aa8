"""Volleyball (MLAR paper, section 6 and Table 6): the players' actions as a
multi-label clip task, or the group activity as a single-label one, from the
whole scene or from the players' boxes.

  python -m mlar_jax.main --config configs/volleyball.py:root=/data/volleyball --workdir runs/vb
  python -m mlar_jax.main --config configs/volleyball.py:root=/data/volleyball,task=group,boxes \\
      --workdir runs/vb_group_bb
  python -m mlar_jax.data.scenes export --format volleyball --out /tmp/scenes_vb \\
      --num_train 48 --num_test 20 --resolution 32 --min_frames 64 --max_frames 80
  python -m mlar_jax.main --config configs/volleyball.py:runlocal,root=/tmp/scenes_vb \\
      --workdir /tmp/vb_local

Arguments (comma-separated):
  root=DIR       the Volleyball folder (`config.data.volleyball`): VIDEO_ID/
                 annotations.txt and VIDEO_ID/FRAME/N.jpg; runlocal: a scenes
                 export.
  task=NAME      actions (default): the set of the players' actions, 9
                 classes, multi-label ("Volleyball Personal"); group: the
                 group activity, 8 classes, single-label (softmax loss,
                 reported as top-1 accuracy).
  boxes          the "bb" input: the clip is scored from the players' boxes
                 (ROI-Align of each box, each bin max-pooled over the
                 players; `config.model.task = "boxes"`) instead of the
                 whole scene.
  backbone=NAME  csn_r152 (default, the paper's Volleyball backbone), ...
  head=NAME      mlar (default), mlar_paper, attention_pool or linear.
  runlocal       a tiny model on a scenes export, trained in seconds.

Protocol (README "Volleyball"): train on the official train and val videos,
evaluate on the test videos, one clip per annotated frame: 16 frames every 2
around the target frame (32 of the folder's 41). The frames are 16:9; a
square crop sees the middle of the court, so evaluation scores three crops
(left, centre, right: together the whole frame) and averages them.
"""

from mlar_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
    arg, root="", task="actions", boxes=False, backbone="csn_r152", head="mlar", runlocal=False
  )
  config = config_lib.base_config()
  d = config.data
  d.name = "volleyball"
  d.volleyball.update(root=args.root, task=args.task, train_splits=("train", "val"))
  d.num_frames, d.rates = 16, (2,)
  d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 256, 320, 224, 224
  # Flips swap the court's sides: "l_" and "r_" group activities would swap.
  d.flip = args.task == "actions"
  d.max_actors = 12  # players annotated per clip (6 a team)
  config.eval.split = "test"
  config.eval.views, config.eval.spatial_crops, config.eval.aggregate = ((2, 1),), 3, "mean"
  if args.boxes:
    config.model.task = "boxes"
    d.extras = ("boxes",)
    config.model.roi.update(output_size=7, sampling_ratio=0, aligned=True)
  if args.task == "group":
    config.loss.name = "softmax"
  config.model.backbone = args.backbone
  config_lib.set_head(config, args.head)
  config.model.dtype = "bfloat16"
  config.model.mlar.update(num_observations=64, groups=32, features=128)
  config.batch_size = 32
  # About 30 epochs of the 3493 train + val clips.
  config.num_train_steps = 3300
  config.schedule.update(base_lr=0.01, warmup_steps=300)
  config.checkpoint.every_steps = 500
  config.log_every_steps = 50

  if args.runlocal:
    # A scenes export (python -m mlar_jax.data.scenes export --format
    # volleyball): its own vocabularies (files it writes), square 32-pixel
    # frames, <= 4 actors.
    d.volleyball.update(actions="actions.txt", activities="activities.txt")
    d.max_actors = 4
    d.num_frames, d.rates = 4, (4,)
    d.min_short_side, d.max_short_side, d.crop_size, d.eval_short_side = 32, 36, 32, 32
    d.flip = False  # walk_left and walk_right
    config.eval.views, config.eval.spatial_crops = ((4, 1),), 1
    config.model.backbone = "resnet3d_tiny" if args.backbone == "csn_r152" else args.backbone
    config.model.dtype = "float32"
    config.model.dropout_rate = 0.0
    config.model.roi.output_size = 4
    config.model.mlar.update(num_observations=4, groups=4, features=16)
    config.batch_size = config.eval.batch_size = 8
    config.num_train_steps = 6
    config.schedule.update(base_lr=0.01, warmup_steps=2)
    config.checkpoint.every_steps = 3
    config.log_every_steps = 2
  return config
