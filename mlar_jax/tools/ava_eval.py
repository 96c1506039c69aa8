"""AVA frame-level mAP of a detections CSV, the official evaluator's semantics.

  python -m mlar_jax.tools.ava_eval --labelmap ava_action_list_v2.2_for_activitynet_2019.pbtxt \\
      --groundtruth ava_val_v2.2.csv --detections detections.csv \\
      [--exclusions ava_val_excluded_timestamps_v2.2.csv]

Reads the official files (`mlar_jax.data.ava`): the label map chooses the
classes evaluated (pass the 60-class list for the published protocol: with
the 80-class one the mean covers 20 more, rarer classes and is not
comparable), ground truth and detections as `video_id,timestamp,x1,y1,x2,y2,
action_id[,person_id | score]`. Prints one line per label-map class,
`AP@0.5IOU <id> <name>: <AP>` ("nan" for a class without ground truth, left
out of the mean), and the frame mAP on the last line. Semantics:
`mlar_jax.metrics.ava_frame_map`. A malformed file exits with its name and
line.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mlar_jax import metrics
from mlar_jax.data import ava

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs (absl flags are global)."""
  flags.DEFINE_string("labelmap", None, "Label map .pbtxt: the classes evaluated.")
  flags.DEFINE_string("groundtruth", None, "Ground-truth CSV.")
  flags.DEFINE_string("detections", None, "Detections CSV (score in the last column).")
  flags.DEFINE_string("exclusions", None, "Excluded timestamps CSV (video_id,timestamp).")
  flags.DEFINE_float("iou", 0.5, "Matching IoU threshold.")
  flags.mark_flags_as_required(["labelmap", "groundtruth", "detections"])


def evaluate_files(
  labelmap: str,
  groundtruth: str,
  detections: str,
  exclusions: str | None = None,
  iou_threshold: float = 0.5,
) -> tuple[float, dict[int, float], dict[int, str]]:
  """Frame mAP of the official files.

  Returns:
    (mAP, {action id: AP} for the label map's classes, {action id: name}).
  """
  labels = ava.read_labelmap(labelmap)
  gt = ava.read_boxes(groundtruth, last="person_id")
  det = ava.read_boxes(detections, last="score", require_last=True, ordered_boxes=False)
  excluded = ava.read_exclusions(exclusions) if exclusions else set()
  mean, ap = metrics.ava_frame_map(
    gt.frames,
    gt.boxes,
    gt.actions,
    det.frames,
    det.boxes,
    det.actions,
    det.extra,
    list(labels),
    excluded=excluded,
    iou_threshold=iou_threshold,
  )
  return mean, ap, labels


def main(argv):
  del argv
  try:
    mean, ap, labels = evaluate_files(
      FLAGS.labelmap, FLAGS.groundtruth, FLAGS.detections, FLAGS.exclusions, FLAGS.iou
    )
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"ava_eval: {e}")
  for idx, name in labels.items():
    print(f"AP@{FLAGS.iou}IOU {idx} {name}: {ap[idx]:.4f}")
  counted = sum(1 for v in ap.values() if v == v)
  print(f"frame mAP@{FLAGS.iou}IOU over {counted} classes: {mean:.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
