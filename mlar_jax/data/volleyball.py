"""The Volleyball dataset (Ibrahim et al., CVPR 2016) in its public layout.

  volleyball/VIDEO_ID/annotations.txt
  volleyball/VIDEO_ID/FRAME/N.jpg     N = FRAME - 20 .. FRAME + 20

55 videos (ids 0..54), 4830 annotated clips: each clip is the folder of 41
frames around its annotated (target) frame FRAME. A line of
`annotations.txt` annotates one clip's target frame:

  FRAME.jpg GROUP_ACTIVITY x y w h ACTION x y w h ACTION ...

one `x y w h ACTION` group per player (box in pixels of the frame, top-left
corner and size; one action of `ACTIONS` each). The group activity is one
of `ACTIVITIES`; the public files spell some with a hyphen ("r-pass",
"l-spike"), others with an underscore, so names are compared with "-" and
"_" treated alike. The official split is by video (`OFFICIAL_SPLITS`: 24
train, 15 validation, 16 test videos); papers train on train + val and
report on test.

`VolleyballClips` is the dataset (`config.data.name = "volleyball"`), one
record per annotated clip, for two tasks (`config.data.volleyball.task`):
  actions: multi-label, the set of the players' actions in the clip (the
    MLAR paper's "Volleyball Personal (multi-label)").
  group: single-label, the clip's group activity (8 classes; trained with
    the softmax loss, reported as accuracy).
Its clip is T frames every `rate` centred on the target frame (the frames
of the folder; past its ends the first or last repeats), with the target
frame's player boxes as the "boxes" extra (the only annotated boxes; the
same at every frame) and each player's action as "actor_labels", so
`config.model.task = "boxes"` (ROI features pooled over the players, the
paper's "bb") reads them through the pipeline's crops.

The reader is strict: a malformed line raises ValueError naming the file
and line.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from mlar_jax.data import base, transforms, video
from mlar_jax.data.sources import _read_text

ACTIONS = (
  "blocking",
  "digging",
  "falling",
  "jumping",
  "moving",
  "setting",
  "spiking",
  "standing",
  "waiting",
)
ACTIVITIES = (
  "r_set",
  "r_spike",
  "r_pass",
  "r_winpoint",
  "l_set",
  "l_spike",
  "l_pass",
  "l_winpoint",
)
# The video ids of each official split (Ibrahim et al.'s release).
OFFICIAL_SPLITS = {
  "train": (
    1,
    3,
    6,
    7,
    10,
    13,
    15,
    16,
    18,
    22,
    23,
    31,
    32,
    36,
    38,
    39,
    40,
    41,
    42,
    48,
    50,
    52,
    53,
    54,
  ),
  "val": (0, 2, 8, 12, 17, 19, 24, 26, 27, 28, 30, 33, 46, 49, 51),
  "test": (4, 5, 9, 11, 14, 20, 21, 25, 29, 34, 35, 37, 43, 44, 45, 47),
}
# Frames each side of the target frame in a clip folder.
HALF_WINDOW = 20
TASKS = ("actions", "group")
ANNOTATIONS = "annotations.txt"


def _key(name: str) -> str:
  return name.strip().lower().replace("-", "_")


def read_annotations(
  path: str, actions: Sequence[str] = ACTIONS, activities: Sequence[str] = ACTIVITIES
) -> list[dict]:
  """The clips of one video's `annotations.txt`.

  Args:
    path: the file.
    actions, activities: the vocabularies (names compared with "-" = "_",
      case-insensitive).

  Returns:
    One dict per line, in file order: frame (int, the target frame),
    group (int, index into `activities`), boxes float64 [P, 4] (x, y, w, h)
    in pixels, actions int64 [P] (indices into `actions`).

  Raises:
    ValueError: a malformed line, an unknown name or a repeated frame, naming
      the file and line.
  """
  action_of = {_key(a): i for i, a in enumerate(actions)}
  group_of = {_key(a): i for i, a in enumerate(activities)}
  clips, seen = [], {}
  for number, line in enumerate(_read_text(path).splitlines(), 1):
    tokens = line.split()
    if not tokens:
      continue
    where = f"{path}:{number}"
    if len(tokens) < 2 or (len(tokens) - 2) % 5:
      raise ValueError(
        f"{where}: expected 'FRAME.jpg GROUP_ACTIVITY' and then 'x y w h ACTION' per player, "
        f"got {len(tokens)} fields"
      )
    stem, ext = os.path.splitext(tokens[0])
    if ext.lower() not in video.JPEG_SUFFIXES or not stem.isdigit():
      raise ValueError(f"{where}: {tokens[0]!r} is not a frame name such as 29885.jpg")
    frame = int(stem)
    if frame in seen:
      raise ValueError(f"{where}: frame {frame} already annotated on line {seen[frame]}")
    seen[frame] = number
    if _key(tokens[1]) not in group_of:
      raise ValueError(f"{where}: unknown group activity {tokens[1]!r}; known: {list(activities)}")
    boxes, acts = [], []
    for p in range(2, len(tokens), 5):
      try:
        x, y, w, h = (float(t) for t in tokens[p : p + 4])
      except ValueError:
        raise ValueError(
          f"{where}: player {len(boxes) + 1}: box {tokens[p : p + 4]} is not numbers"
        ) from None
      if w <= 0 or h <= 0:
        raise ValueError(f"{where}: player {len(boxes) + 1}: box width and height must be > 0")
      if _key(tokens[p + 4]) not in action_of:
        raise ValueError(f"{where}: unknown action {tokens[p + 4]!r}; known: {list(actions)}")
      boxes.append((x, y, w, h))
      acts.append(action_of[_key(tokens[p + 4])])
    clips.append(
      {
        "frame": frame,
        "group": group_of[_key(tokens[1])],
        "boxes": np.array(boxes, np.float64).reshape(-1, 4),
        "actions": np.array(acts, np.int64),
      }
    )
  return clips


def read_names(path: str) -> tuple[str, ...]:
  """A vocabulary file: one class name a line (blank lines skipped)."""
  names = tuple(line.strip() for line in _read_text(path).splitlines() if line.strip())
  if not names:
    raise ValueError(f"{path}: no class names")
  keys = [_key(n) for n in names]
  if len(set(keys)) != len(keys):
    raise ValueError(f"{path}: repeated class names")
  return names


def frame_path(folder: str, frame: int) -> str:
  """The file of frame `frame` in a clip folder: `folder/frame.jpg`."""
  return os.path.join(folder, f"{int(frame)}.jpg")


class VolleyballClips(base.KeyframeClips):
  """One split of the Volleyball dataset: a record per annotated clip.

  Records: id ("VIDEO/FRAME"), index, path (the clip folder), frame (the
  target frame), labels [A] (task "actions": the players' actions, multi-hot
  over `actions`; task "group": the one-hot group activity over
  `activities`), segments (empty), num_frames (the clip's span T * rate),
  fps, start (the span's first frame relative to the target), boxes [P, 4]
  (y1, x1, y2, x2) in [0, 1] of the frame and box_labels [P, len(actions)]:
  the target frame's, at every frame of the clip (`base.KeyframeClips`).
  """

  def __init__(
    self,
    split: str,
    *,
    root: str,
    videos: Sequence[int],
    task: str,
    num_frames: int,
    rate: int,
    fps: float = 25.0,
    actions: Sequence[str] | None = None,
    activities: Sequence[str] | None = None,
  ):
    """Args: split; root: the folder of VIDEO_ID folders; videos: the ids
    this split reads; task: "actions" or "group"; num_frames, rate: T and
    the clip's downsampling rate; fps: of the frames; actions, activities:
    the vocabularies (None: the official ones)."""
    if task not in TASKS:
      raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    actions, activities = actions or ACTIONS, activities or ACTIVITIES
    span = transforms.clip_span(num_frames, rate)
    names = tuple(actions) if task == "actions" else tuple(activities)
    records = []
    for vid in videos:
      folder = os.path.join(root, str(vid))
      clips = read_annotations(os.path.join(folder, ANNOTATIONS), actions, activities)
      height = width = None
      for clip in clips:
        path = os.path.join(folder, str(clip["frame"]))
        if height is None:  # one size per video: read from its first clip
          height, width = _frame_size(frame_path(path, clip["frame"]))
        x, y, w, h = clip["boxes"].T
        yxyx = np.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=-1)
        box_labels = np.zeros((len(clip["actions"]), len(actions)), np.int32)
        box_labels[np.arange(len(clip["actions"])), clip["actions"]] = 1
        labels = np.zeros(len(names), np.int32)
        if task == "actions":
          labels[clip["actions"]] = 1
        else:
          labels[clip["group"]] = 1
        records.append(
          {
            "id": f"{vid}/{clip['frame']}",
            "path": path,
            "frame": clip["frame"],
            "labels": labels,
            "segments": np.zeros((0, 3), np.float32),
            "num_frames": span,
            "fps": fps,
            "start": -(num_frames * rate // 2),
            "boxes": np.clip(yxyx, 0.0, 1.0).astype(np.float32),
            "box_labels": box_labels,
          }
        )
    super().__init__(split, names, records)
    self.task = task

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    """Span frames `indices` -> frames target + start + index of the clip
    folder, clamped to its HALF_WINDOW frames each side."""
    offsets = np.clip(record["start"] + np.asarray(indices), -HALF_WINDOW, HALF_WINDOW)
    return np.stack(
      [
        video.decode_image(frame_path(record["path"], record["frame"] + o), short_side)
        for o in offsets
      ]
    )


def _frame_size(path: str) -> tuple[int, int]:
  """(height, width) of an image from its header."""
  try:
    with Image.open(path) as im:
      return im.height, im.width
  except OSError as e:
    raise video.VideoDecodeError(path, f"cannot read image ({e})") from e
