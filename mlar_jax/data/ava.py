"""AVA's official files (Gu et al. 2018; research.google.com/ava/download).

  * Annotations CSV, one row per (person box, action) at a keyframe:
    `video_id,timestamp,x1,y1,x2,y2,action_id,person_id` (boxes normalised
    to [0, 1], timestamps in whole seconds, 0902 to 1798). Detections use
    the same layout with a score in place of person_id; the official
    evaluator also accepts 7 columns (no person or score).
  * The label map, a `.pbtxt` of `item { name: "..." id: N }` (or `label {
    name: ... label_id: N label_type: ... }`) blocks: the 80 actions of the
    full list or the 60 evaluated ones.
  * Excluded timestamps CSV: `video_id,timestamp` frames left out of the
    evaluation on both sides.
  * Person detections CSV (PySlowFast's `ava_{train,val}_predicted_boxes.csv`):
    the annotation layout with an empty or -1 action and a detector score in
    the last column; boxes scoring below `config.data.ava.box_threshold`
    (0.8, the MLAR paper's and SlowFast's setting) are dropped.

Every reader is strict: a malformed row raises ValueError naming the file
and line, never a silently skipped row.

`AvaKeyframes` is the dataset (`config.data.name = "ava"`): one record per
keyframe, its clip PySlowFast's (T frames every `rate`, centred on the
keyframe, from `VIDEO/VIDEO_000001.jpg` frame folders at 30 fps), with the
keyframe's person boxes and per-box labels as the pipeline's "boxes" and
"actor_labels" extras (so crops and flips move the boxes with the pixels).
`detection_rows` turns per-box scores back into the official CSV rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Iterable

import numpy as np

from mlar_jax.data import base, transforms, video

# Reused so AVA files get the same checks (UTF-8 errors by line, strict CSV
# quoting) as every other annotation file.
from mlar_jax.data.sources import _csv_rows, _read_text


def frame_key(video_id: str, timestamp: int) -> str:
  """The official evaluator's frame key: "video_id,0902"."""
  return f"{video_id},{int(timestamp):04d}"


@dataclasses.dataclass(frozen=True)
class BoxRows:
  """Rows of an annotation or detection CSV, as arrays.

  Attributes:
    video_ids: [R] str.
    timestamps: [R] int64 keyframe seconds.
    boxes: [R, 4] float64 (x1, y1, x2, y2), normalised.
    actions: [R] int64 action ids (-1: none, a person detection).
    extra: [R] float64, the last column: person id (annotations) or score
      (detections); NaN where the file has 7 columns.
  """

  video_ids: np.ndarray
  timestamps: np.ndarray
  boxes: np.ndarray
  actions: np.ndarray
  extra: np.ndarray

  def __len__(self) -> int:
    return len(self.video_ids)

  @property
  def frames(self) -> list[str]:
    """[R] frame keys (`frame_key`)."""
    return [frame_key(v, t) for v, t in zip(self.video_ids, self.timestamps)]

  def select(self, keep: np.ndarray) -> BoxRows:
    """The rows where `keep` [R] bool is True."""
    return BoxRows(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))


def _int(path: str, line: int, what: str, text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"{path}:{line}: {what} {text!r} is not an integer") from None


def _float(path: str, line: int, what: str, text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{path}:{line}: {what} {text!r} is not a number") from None
  if not math.isfinite(value):
    raise ValueError(f"{path}:{line}: {what} {text!r} is not finite")
  return value


def read_boxes(
  path: str,
  *,
  last: str = "person_id",
  require_last: bool = False,
  allow_no_action: bool = False,
  ordered_boxes: bool = True,
) -> BoxRows:
  """Reads an annotation, detection or person-box CSV.

  Args:
    path: the CSV (no header).
    last: what the 8th column holds, "person_id" (an integer) or "score".
    require_last: rows must have the 8th column (7 fields is an error).
    allow_no_action: accept an empty action column (person boxes), read as -1.
    ordered_boxes: reject a box with x2 < x1 or y2 < y1. Detections to be
      evaluated pass False: the official evaluator drops them, as
      `metrics.ava_frame_map` does.

  Returns:
    The rows, in file order.

  Raises:
    ValueError naming the file and line: a row without 7 or 8 fields, an
    empty video id, a timestamp or action that is not an integer, a
    coordinate or score that is not a finite number, or (with
    `ordered_boxes`) a box with x2 < x1 or y2 < y1.
  """
  if last not in ("person_id", "score"):
    raise ValueError(f"last={last!r}: expected 'person_id' or 'score'")
  vids, times, boxes, actions, extra = [], [], [], [], []
  for line, row in _csv_rows(path):
    if len(row) not in ((8,) if require_last else (7, 8)):
      raise ValueError(
        f"{path}:{line}: {len(row)} fields; expected video_id,timestamp,x1,y1,x2,y2,"
        f"action_id{f',{last}' if require_last else f'[,{last}]'}"
      )
    row = [f.strip() for f in row]
    if not row[0]:
      raise ValueError(f"{path}:{line}: empty video id")
    box = [_float(path, line, name, v) for name, v in zip(("x1", "y1", "x2", "y2"), row[2:6])]
    if ordered_boxes and (box[2] < box[0] or box[3] < box[1]):
      raise ValueError(f"{path}:{line}: box {row[2:6]} has x2 < x1 or y2 < y1")
    if allow_no_action and row[6] == "":
      action = -1
    else:
      action = _int(path, line, "action_id", row[6])
    value = float("nan")
    if len(row) == 8:
      value = (
        _int(path, line, "person_id", row[7])
        if last == "person_id"
        else _float(path, line, "score", row[7])
      )
    vids.append(row[0])
    times.append(_int(path, line, "timestamp", row[1]))
    boxes.append(box)
    actions.append(action)
    extra.append(value)
  return BoxRows(
    np.array(vids, dtype=object),
    np.array(times, np.int64),
    np.array(boxes, np.float64).reshape(-1, 4),
    np.array(actions, np.int64),
    np.array(extra, np.float64),
  )


def read_person_boxes(path: str, threshold: float) -> BoxRows:
  """Person detections scoring at least `threshold`.

  The boundary is PySlowFast's (`score < threshold` is dropped), the
  detector boxes SlowFast and the MLAR paper (section 5, "> 0.8") use.
  Rows must have 8 columns (the score is required).
  """
  rows = read_boxes(path, last="score", require_last=True, allow_no_action=True)
  return rows.select(rows.extra >= threshold)


def read_exclusions(path: str) -> set[str]:
  """Frame keys (`frame_key`) of an excluded-timestamps CSV `video_id,timestamp`."""
  keys = set()
  for line, row in _csv_rows(path):
    if len(row) != 2:
      raise ValueError(f"{path}:{line}: {len(row)} fields; expected video_id,timestamp")
    vid, ts = (f.strip() for f in row)
    if not vid:
      raise ValueError(f"{path}:{line}: empty video id")
    keys.add(frame_key(vid, _int(path, line, "timestamp", ts)))
  return keys


_FIELD = re.compile(r'^(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))$')


def read_labelmap(path: str) -> dict[int, str]:
  """{action id: name} of a label map `.pbtxt`, in file order.

  Each `item { ... }` or `label { ... }` block needs a quoted `name` and an
  integer `id` or `label_id`; other fields (label_type) are read and
  ignored. Raises ValueError naming the file and line on anything else: a
  line outside this grammar, a block without a name or id, an id below 1
  or seen twice, or an unclosed block.
  """
  labels: dict[int, str] = {}
  block: dict[str, tuple[str, int]] | None = None
  start = 0
  for line, text in enumerate(_read_text(path).splitlines(), 1):
    # A comment, unless the '#' may sit inside a quoted name.
    text = (text if '"' in text else text.split("#", 1)[0]).strip()
    if not text:
      continue
    if block is None:
      if re.fullmatch(r"\w+\s*\{", text):
        block, start = {}, line
        continue
      raise ValueError(f"{path}:{line}: expected 'item {{', got {text!r}")
    if text == "}":
      if "name" not in block or "id" not in block:
        missing = [k for k in ("name", "id") if k not in block]
        raise ValueError(f"{path}:{start}: block has no {' or '.join(missing)}")
      (idx_text, idx_line), name = block["id"], block["name"][0]
      idx = _int(path, idx_line, "id", idx_text)
      if idx < 1:
        raise ValueError(f"{path}:{idx_line}: id {idx} (ids start at 1)")
      if idx in labels:
        raise ValueError(f"{path}:{idx_line}: duplicate id {idx}")
      labels[idx] = name
      block = None
      continue
    m = _FIELD.match(text)
    if not m:
      raise ValueError(f"{path}:{line}: expected 'key: value', got {text!r}")
    key, quoted, bare = m.groups()
    key = "id" if key == "label_id" else key
    if key == "name" and quoted is None:
      raise ValueError(f"{path}:{line}: name must be quoted, got {bare!r}")
    if key in block:
      raise ValueError(f"{path}:{line}: {key} given twice in the block of line {start}")
    block[key] = (quoted if quoted is not None else bare, line)
  if block is not None:
    raise ValueError(f"{path}:{start}: block not closed")
  if not labels:
    raise ValueError(f"{path}: no labels")
  return labels


def write_detections(
  path: str, rows: Iterable[tuple[str, int, Iterable[float], int, float]]
) -> None:
  """Writes detections in the official CSV format, one row per (box, action):
  `video_id,timestamp,x1,y1,x2,y2,action_id,score` (PySlowFast's precision:
  3 decimals for coordinates, 4 for scores; timestamps as 4 digits)."""
  with open(path, "w") as f:
    for vid, ts, box, action, score in rows:
      x1, y1, x2, y2 = box
      f.write(
        f"{frame_key(vid, ts)},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{int(action)},{score:.4f}\n"
      )


def as_written(
  rows: Iterable[tuple[str, int, Iterable[float], int, float]],
) -> list[tuple[str, int, tuple[float, ...], int, float]]:
  """Detection rows at `write_detections`' precision: a mAP computed from
  them is the mAP of the CSV file those rows are written to."""
  return [
    (vid, int(ts), tuple(float(f"{c:.3f}") for c in box), int(action), float(f"{score:.4f}"))
    for vid, ts, box, action, score in rows
  ]


# Keyframes are whole seconds from 902 to 1798 of each video's 15-minute
# segment (900-1800 s), whose frames PySlowFast extracts at 30 fps from 900 s
# on: frame file k (1-based, `VIDEO/VIDEO_{k:06d}.jpg`) is at 900 + (k - 1) / 30 s.
SEGMENT_START = 900
FPS = 30


def keyframe_index(timestamp: int, fps: float = FPS) -> int:
  """The 0-based frame of keyframe `timestamp` (PySlowFast's `sec_to_frame`)."""
  return int(round((int(timestamp) - SEGMENT_START) * fps))


def clip_start(center: int, num_frames: int, rate: int) -> int:
  """The first frame of PySlowFast's keyframe clip (`get_sequence`): T frames
  every `rate`, from `center - T * rate // 2` (the keyframe is the clip's
  (T / 2)-th frame)."""
  return center - num_frames * rate // 2


class AvaKeyframes(base.KeyframeClips):
  """AVA keyframes as clips: each record is the T x rate window of frames
  centred on one keyframe, with its person boxes and their labels.

  The record's "video" is the clip's window (`num_frames` = its span), so the
  pipeline's clip sampling at `rate` (one position, start 0) takes exactly
  PySlowFast's keyframe clip; frames before the first or past the last of
  the video repeat it (PySlowFast clamps the same way).

  Records: id (`frame_key`), index, path (the video's frame folder),
  labels [A] (the union of its boxes' labels), segments (empty), num_frames
  (the window span), fps, and the keyframe's "boxes" [P, 4] (y1, x1, y2, x2)
  with "box_labels" [P, A] int32 and "start" (the window's first frame).

  Boxes: the ground truth's, one per distinct box of a keyframe (rows of the
  same coordinates are one person, as PySlowFast groups them), plus or
  instead the detector's person boxes: `person_boxes` rows scoring at least
  `box_threshold`, added to the ground truth (training) or replacing it
  (`detections_only`, evaluation as the papers do it); a detection row's
  action, if any, labels its box. Actions outside the label map are dropped;
  keyframes left without a box, or excluded, are skipped.
  """

  detection = True

  def __init__(
    self,
    split: str,
    *,
    frames: str,
    annotations: str,
    labelmap: str,
    num_frames: int,
    rate: int,
    exclusions: str = "",
    person_boxes: str = "",
    box_threshold: float = 0.8,
    detections_only: bool = False,
    fps: float = FPS,
  ):
    """Args: split; frames: the folder of `VIDEO/VIDEO_000001.jpg` folders;
    annotations, labelmap, exclusions, person_boxes: the official files
    ("" for none); num_frames, rate: T and the clip's downsampling rate;
    box_threshold, detections_only: as above; fps: of the frame folders."""
    labels = read_labelmap(labelmap)
    column = {action: i for i, action in enumerate(labels)}
    excluded = read_exclusions(exclusions) if exclusions else set()
    sources = [] if detections_only else [read_boxes(annotations)]
    if person_boxes:
      sources.append(read_person_boxes(person_boxes, box_threshold))
    if detections_only and not person_boxes:
      raise ValueError("AvaKeyframes: detections_only needs a person_boxes file")
    frames_boxes: dict[str, dict[tuple, set]] = {}
    where: dict[str, tuple[str, int]] = {}
    for rows in sources:
      for vid, ts, box, action, key in zip(
        rows.video_ids, rows.timestamps, rows.boxes, rows.actions, rows.frames
      ):
        if key in excluded or (action >= 0 and action not in column):
          continue
        people = frames_boxes.setdefault(key, {})
        where[key] = (vid, int(ts))
        acts = people.setdefault(tuple(np.round(box, 6)), set())
        if action >= 0:
          acts.add(column[int(action)])
    span = transforms.clip_span(num_frames, rate)
    records = []
    for key, people in frames_boxes.items():
      vid, ts = where[key]
      box_labels = np.zeros((len(people), len(labels)), np.int32)
      for p, acts in enumerate(people.values()):
        box_labels[p, sorted(acts)] = 1
      xyxy = np.array(list(people), np.float32)
      records.append(
        {
          "id": key,
          "path": os.path.join(frames, vid),
          "labels": box_labels.max(axis=0),
          "segments": np.zeros((0, 3), np.float32),
          "num_frames": span,
          "fps": fps,
          "start": clip_start(keyframe_index(ts, fps), num_frames, rate),
          "boxes": xyxy[:, [1, 0, 3, 2]],
          "box_labels": box_labels,
        }
      )
    super().__init__(split, list(labels.values()), records)
    self.action_ids = tuple(labels)  # class column -> official action id
    # The official files this split is evaluated against (frame mAP).
    self.annotations, self.labelmap, self.exclusions = annotations, labelmap, exclusions

  def class_stats(self) -> base.ClassStats:
    """Statistics of the person boxes' labels (a detector's examples are its
    boxes): counts and co-occurrence per box, `num_videos` = boxes; the
    MLAR head's correlation mask and the chance predictor use them."""
    labels = [r["box_labels"] for r in self._records]
    a = self.num_classes
    return base.ClassStats.from_labels(np.concatenate(labels) if labels else np.zeros((0, a)))

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    """Window frames `indices` -> the video's frames from `start`, clamped."""
    n = _frame_count(record["path"])
    absolute = np.clip(record["start"] + np.asarray(indices), 0, n - 1)
    return video.decode_frames(record["path"], absolute, short_side)


@functools.lru_cache(maxsize=1024)
def _frame_count(path: str) -> int:
  return video.video_info(path, frames_fps=FPS).num_frames


def detection_rows(
  frame_ids: Iterable[str],
  boxes: np.ndarray,
  valid: np.ndarray,
  scores: np.ndarray,
  action_ids: Iterable[int],
) -> list[tuple[str, int, tuple[float, ...], int, float]]:
  """Per-box scores -> official detection rows for `write_detections`.

  Args:
    frame_ids: [K] keyframe ids (`frame_key`: "video,0902").
    boxes: [K, N, 4] (y1, x1, y2, x2) in [0, 1] of the keyframe (the source's
      convention; a centre crop's boxes must be mapped back first).
    valid: [K, N] bool; padding boxes give no row.
    scores: [K, N, A] per-class scores (probabilities: sigmoid of logits).
    action_ids: [A] the official action id of each class column.

  Returns:
    (video_id, timestamp, (x1, y1, x2, y2), action_id, score) per valid box
    and class, in frame, box and class order.
  """
  action_ids = list(action_ids)
  rows = []
  for key, b, v, s in zip(frame_ids, np.asarray(boxes), np.asarray(valid), np.asarray(scores)):
    vid, ts = key.rsplit(",", 1)
    for box, ok, box_scores in zip(b, v, s):
      if not ok:
        continue
      y1, x1, y2, x2 = (float(c) for c in box)
      for action, score in zip(action_ids, box_scores):
        rows.append((vid, int(ts), (x1, y1, x2, y2), int(action), float(score)))
  return rows
