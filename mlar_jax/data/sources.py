"""Video datasets on disk: Charades, Multi-Moments in Time, and a generic CSV.

Each is a `base.VideoSource`: records are parsed once from the annotation
files (errors name the file and line), frames are decoded on demand with
`video.decode_frames` and the "audio" extra with `audio.decode_audio`
(resampled to the source's `sample_rate`; silence for frame folders and
files without sound), and the label matrix, class counts and co-occurrence
come from the annotations alone, without touching a video.

Record fields: id, index, path (a video file or a frame folder), labels [A]
int32 (video level), segments float32 [S, 3] (class, start s, end s; empty
when the dataset has no temporal annotation), num_frames (-1: probed from the
file when the clip is sampled) and fps.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from typing import Iterator, Sequence

import numpy as np

from mlar_jax.data import audio, base, video

# SoundNet's rate: what a source's sound is resampled to unless told.
SAMPLE_RATE = 22050
# Prepared sound is int16: sample / PCM_SCALE.
PCM_SCALE = 32767.0


class FileVideos(base.RecordVideos):
  """A split whose records were parsed from annotation files; it provides
  the "audio" extra at `sample_rate` (Hz)."""

  extras = ("audio",)

  def __init__(
    self,
    split: str,
    class_names: Sequence[str],
    records: list[base.Record],
    sample_rate: int = SAMPLE_RATE,
  ):
    self.sample_rate = sample_rate
    super().__init__(split, class_names, records)

  def video_info(self, record: base.Record) -> tuple[int, float]:
    if record["num_frames"] > 0:
      return record["num_frames"], record["fps"]
    return _probe(record["path"], record["fps"])

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    return video.decode_frames(record["path"], indices, short_side)

  def has_audio(self, record: base.Record) -> bool:
    # From the container's stream list (cached per file), not the annotations.
    return audio.audio_info(record["path"]).has_audio

  def audio(self, record: base.Record, start: int, stop: int) -> np.ndarray:
    sound = audio.decode_audio(record["path"], start, stop, self.sample_rate)
    return np.zeros(stop - start, np.float32) if sound is None else sound


@functools.lru_cache(maxsize=4096)
def _probe(path: str, frames_fps: float) -> tuple[int, float]:
  # Evaluation asks once per view (30 per video): open each container once.
  info = video.video_info(path, frames_fps=frames_fps)
  return info.num_frames, info.fps


def _read_text(path: str) -> str:
  """The UTF-8 text of an annotation file; undecodable bytes name their line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: annotation file not found")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    # Python's message gives a byte offset into the whole file; a user
    # needs the line (and the column, to find the byte in an editor).
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise ValueError(
      f"{path}:{line}: not UTF-8 (byte {data[e.start]:#04x} at column {column}: {e.reason})"
    ) from None


def _csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
  """(line, fields) for every non-blank CSV row of `path`.

  `line` is where the row starts. csv's strict mode rejects what its lenient
  mode silently repairs: an unclosed quote otherwise swallows the next lines
  into one field and the row reads as valid with the wrong fields. A quoted
  field spanning lines is valid CSV and stays accepted; rows whose fields do
  not match are reported by the callers with the line this gives.
  """
  reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
  end = 0
  while True:
    start = end + 1
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise ValueError(
        f"{path}:{start}: malformed CSV row ({e}; is a quote opened on this line unclosed?)"
      ) from None
    end = reader.line_num
    if row and "".join(row).strip():
      yield start, row


def _check_fields(path: str, line: int, row: list[str], columns: list[str]) -> None:
  """A row has exactly one field per header column (a missing or extra field
  shifts every later column, e.g. `actions` into `length`)."""
  if len(row) != len(columns):
    raise ValueError(
      f"{path}:{line}: {len(row)} fields, the header has {len(columns)} ({','.join(columns)})"
    )


def _check_unique_id(path: str, line: int, vid: str, seen: dict[str, int]) -> None:
  """Video ids are unique: a duplicate would be trained and evaluated twice."""
  if not vid:
    raise ValueError(f"{path}:{line}: empty video id")
  if vid in seen:
    raise ValueError(f"{path}:{line}: duplicate video id {vid!r} (also on line {seen[vid]})")
  seen[vid] = line


def read_class_names(path: str) -> tuple[list[str], dict[str, int]]:
  """Class file -> (names, lookup of every accepted spelling -> index).

  Accepted lines: "c008 Opening a door" (Charades: the code is the key),
  "name,index" or "index,name" (M-MiT), or one name per line.
  """
  names, lookup, first = [], {}, {}
  for n, line in enumerate(_read_text(path).splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 2 and parts[1].isdigit():
      name, idx = parts[0], int(parts[1])
    elif len(parts) == 2 and parts[0].isdigit():
      idx, name = int(parts[0]), parts[1]
    else:
      name, idx = line, len(names)
    if idx != len(names):
      raise ValueError(f"{path}:{n}: class index {idx}, expected {len(names)} (in order)")
    if name in first:
      raise ValueError(f"{path}:{n}: duplicate class {name!r} (also on line {first[name]})")
    first[name] = n
    code = name.split(" ", 1)[0]
    names.append(name)
    lookup[name] = idx
    lookup[code] = idx
    lookup[str(idx)] = idx
  if not names:
    raise ValueError(f"{path}: no classes")
  return names, lookup


def _multi_hot(classes: list[int], num_classes: int) -> np.ndarray:
  labels = np.zeros(num_classes, np.int32)
  labels[classes] = 1
  return labels


def charades(
  split: str,
  *,
  root: str,
  train_csv: str,
  test_csv: str,
  classes: str,
  videos: str,
  frames: bool,
  video_ext: str,
  fps: float,
  sample_rate: int = SAMPLE_RATE,
) -> FileVideos:
  """Charades: `Charades_v1_{train,test}.csv` and `Charades_v1_classes.txt`.

  Args:
    split: "train", or "val"/"test" (both read the official test CSV;
      Charades has no separate validation set).
    root: folder the other paths are relative to.
    train_csv, test_csv, classes: annotation files.
    videos: folder of `ID{video_ext}` files, or of `ID/ID-000001.jpg` frame
      folders when `frames`.
    frames: read frame folders rather than video files.
    video_ext: video file suffix, e.g. ".mp4".
    fps: frame rate of frame folders (24 for the official frames).
    sample_rate: of the "audio" extra, Hz (frame folders are silent).

  Actions "c092 11.90 21.20;c147 0.00 12.60" give the segments; a video's
  labels are all its actions. Videos without any action are kept: training
  sees them as all-negative, and evaluation's macro mAP counts them as
  negatives with their scores; the official script in effect leaves them out
  (`metrics.charades_map`).

  Raises:
    ValueError naming the file and line: a row with missing or extra fields
    (or an unclosed quote), an empty or duplicate id, an unknown class, a
    segment with non-finite or negative times or start > end, bytes that
    are not UTF-8.
  """
  j = lambda p: os.path.join(root, p)
  names, lookup = read_class_names(j(classes))
  path = j(train_csv if split == "train" else test_csv)
  records, seen = [], {}
  rows = _csv_rows(path)
  header_line, columns = next(rows, (1, []))
  columns = [c.strip() for c in columns]
  for col in ("id", "actions", "length"):
    if col not in columns:
      raise ValueError(f"{path}:{header_line}: missing column {col!r}; columns: {columns}")
  for line, row in rows:
    _check_fields(path, line, row, columns)
    row = dict(zip(columns, row))
    vid = row["id"].strip()
    _check_unique_id(path, line, vid, seen)
    segments = []
    for action in filter(None, row["actions"].split(";")):
      parts = action.split()
      if len(parts) != 3 or parts[0] not in lookup:
        raise ValueError(
          f"{path}:{line}: bad action {action!r} (want 'c092 11.90 21.20' "
          f"with a class of {classes})"
        )
      try:
        start, end = float(parts[1]), float(parts[2])
      except ValueError:
        raise ValueError(f"{path}:{line}: bad times in action {action!r}") from None
      # Zero-length segments are allowed (they label no frame); negative,
      # reversed or non-finite ones are typos that would label nothing or
      # everything without a word.
      if not (np.isfinite(start) and np.isfinite(end) and 0 <= start <= end):
        raise ValueError(
          f"{path}:{line}: impossible segment in action {action!r} "
          "(want finite times with 0 <= start <= end)"
        )
      segments.append((lookup[parts[0]], start, end))
    records.append(
      {
        "id": vid,
        "path": j(os.path.join(videos, vid) if frames else os.path.join(videos, vid + video_ext)),
        "labels": _multi_hot([s[0] for s in segments], len(names)),
        "segments": np.array(segments, np.float32).reshape(-1, 3),
        "num_frames": -1,
        "fps": float(fps),
      }
    )
  return FileVideos(split, names, records, sample_rate)


def video_list(
  split: str,
  *,
  root: str,
  csv_file: str,
  classes: str,
  videos: str,
  fps: float,
  header: bool,
  sample_rate: int = SAMPLE_RATE,
) -> FileVideos:
  """M-MiT style lists: `path,label1,label2,...` lines (labels are class names,
  codes or indices of the class file); with `header`, the first line names the
  columns and must have `path` and `labels` (labels separated by ';').

  Rows with the wrong number of fields (header mode), an empty path, a
  duplicate id (or path), unknown labels or bytes that are not UTF-8 are
  ValueErrors naming the file and line. `sample_rate`: of the "audio"
  extra, Hz."""
  j = lambda p: os.path.join(root, p)
  names, lookup = read_class_names(j(classes))
  path = j(csv_file)
  records, seen, columns = [], {}, None
  for line, row in _csv_rows(path):
    if header and columns is None:
      columns = [c.strip() for c in row]
      if "path" not in columns or "labels" not in columns:
        raise ValueError(f"{path}:{line}: header needs 'path' and 'labels' columns, got {columns}")
      continue
    if header:
      _check_fields(path, line, row, columns)
      fields = dict(zip(columns, row))
      rel, label_names = fields["path"].strip(), fields["labels"].split(";")
      vid = fields.get("id", "").strip() or os.path.splitext(rel)[0]
    else:
      rel, label_names = row[0].strip(), row[1:]
      vid = os.path.splitext(rel)[0]
    if not rel:
      raise ValueError(f"{path}:{line}: empty video path")
    _check_unique_id(path, line, vid, seen)
    label_names = [n.strip() for n in label_names if n.strip()]
    unknown = [n for n in label_names if n not in lookup]
    if unknown:
      raise ValueError(f"{path}:{line}: unknown labels {unknown} (not in {classes})")
    records.append(
      {
        "id": vid,
        "path": j(os.path.join(videos, rel)),
        "labels": _multi_hot([lookup[n] for n in label_names], len(names)),
        "segments": np.zeros((0, 3), np.float32),
        "num_frames": -1,
        "fps": float(fps),
      }
    )
  return FileVideos(split, names, records, sample_rate)


PREPARED_VERSION = "1.3.0"


def prepared_dir(data_dir: str, dataset: str) -> str:
  """Where `python -m mlar_jax.data.prepare` writes `dataset`."""
  return os.path.join(data_dir, f"mlar_{dataset}", PREPARED_VERSION)


class PreparedVideos(base.AnnotatedVideos):
  """A split written by `mlar_jax.data.prepare` (its command or its TFDS
  builders), read with TFDS's ArrayRecord data source. Frames are JPEG bytes;
  only the sampled ones are decoded. Class names, video ids, the label
  matrix and the sound's sample rate come from the dataset's metadata.json,
  so ids, counts and co-occurrence need no pass over the examples. It
  provides the "audio" extra from the stored sound track."""

  extras = ("audio",)

  def __init__(self, split: str, *, data_dir: str, dataset: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    root = prepared_dir(data_dir, dataset)
    hint = f"(run python -m mlar_jax.data.prepare --dataset {dataset} --data_dir {data_dir})"
    if not os.path.exists(os.path.join(root, "dataset_info.json")):
      raise FileNotFoundError(
        f"{root}: no prepared {dataset!r} data of version {PREPARED_VERSION} {hint}"
      )
    builder = tfds.builder_from_directory(root)
    meta = builder.info.metadata or {}
    if split not in builder.info.splits or split not in meta.get("labels", {}):
      raise FileNotFoundError(
        f"{root}: split {split!r} is not prepared; prepared: {sorted(builder.info.splits)} {hint}"
      )
    self._data = builder.as_data_source(split)
    ids = meta["ids"][split]
    labels = np.zeros((len(meta["labels"][split]), len(meta["class_names"])), np.int32)
    for row, classes in zip(labels, meta["labels"][split]):
      row[classes] = 1
    if not len(ids) == len(labels) == len(self._data):
      raise ValueError(
        f"{root}/metadata.json: {len(ids)} ids and {len(labels)} "
        f"labels for split {split!r} of {len(self._data)} examples"
      )
    super().__init__(split, meta["class_names"], labels, ids)
    self.sample_rate = int(meta["sample_rate"])

  def __getitem__(self, index: int) -> base.Record:
    ex = self._data[int(index)]
    return {
      "id": ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"]),
      "index": int(index),
      "labels": np.asarray(ex["labels"], np.int32),
      "segments": np.asarray(ex["segments"], np.float32),
      "num_frames": len(ex["frames"]),
      "fps": float(ex["fps"]),
      "frames": ex["frames"],
      "audio": ex["audio"],
      "has_audio": bool(ex["has_audio"]),
    }

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    name = f"prepared:{record['id']}"
    frames = record["frames"]
    indices = np.asarray(indices)
    if indices.size and not 0 <= indices.min() <= indices.max() < len(frames):
      raise video.VideoDecodeError(name, f"frame {indices.max()} of {len(frames)} requested")
    return np.stack(
      [video.decode_image(io.BytesIO(frames[i]), short_side, name=name) for i in indices]
    )

  def audio(self, record: base.Record, start: int, stop: int) -> np.ndarray:
    # The stored track ends with the frames' time, rounded up; zeros after.
    out = np.zeros(stop - start, np.float32)
    stored = np.asarray(record["audio"][start:stop], np.float32) / PCM_SCALE
    out[: len(stored)] = stored
    return out
