"""Broden-format segmentation datasets (NetDissect's layout): write and read.

A folder holds:
  images/NAME.png          the image (uint8 RGB).
  images/STEM_CAT.png      its segmentation in category CAT: the global label
                           number of each pixel as R + 256 G (0: unlabelled).
  index.csv                image, split, ih, iw, sh, sw, then one column per
                           category: the segmentation's file name, empty when
                           the image has no pixel of the category.
  category.csv             name, first, last, count, frequency: the global
                           numbers of each category's labels and the images
                           it labels.
  label.csv                number, name, category ("color(3)": the category
                           and the label's code in it), frequency (images),
                           coverage (pixels, in whole images), syns.
  c_CAT.csv                code, number, name, frequency, coverage: the
                           category's labels, codes 1..count.
Global numbers run over the categories in order from 1, so each label
belongs to exactly one category. Images are PNG rather than Broden's JPEG:
the frames here are small and synthetic, and JPEG would blur their edges.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

META = ("image", "split", "ih", "iw", "sh", "sw")


@dataclasses.dataclass(frozen=True)
class Item:
  """One image of a Broden dataset.

  Attributes:
    name: its path under images/ ("test000003/f0012.png").
    split: e.g. "test".
    image: uint8 [H, W, 3].
    masks: {category: int [H, W]}, the category's codes 1..count (0: none).
  """

  name: str
  split: str
  image: np.ndarray
  masks: dict[str, np.ndarray]


def _write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def write(out_dir: str, items: Iterable[Item], categories: dict[str, Sequence[str]]) -> int:
  """Writes `items` as a Broden folder (module docstring).

  Args:
    out_dir: the folder (created).
    items: the images with their masks.
    categories: {category: [its label names, code 1 first]}, in order.

  Returns:
    The number of images written.
  """
  first, number = {}, 1
  for cat, names in categories.items():
    first[cat] = number
    number += len(names)
  num_labels = number
  frequency = np.zeros(num_labels, np.int64)
  coverage = np.zeros(num_labels)
  cat_frequency = dict.fromkeys(categories, 0)
  rows = []
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  for item in items:
    h, w = item.image.shape[:2]
    path = os.path.join(out_dir, "images", item.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(item.image).save(path)
    stem = item.name.rsplit(".", 1)[0]
    row = [item.name, item.split, h, w, h, w]
    for cat in categories:
      codes = np.asarray(item.masks.get(cat, np.zeros((h, w), int)))
      if not codes.any():
        row.append("")
        continue
      global_ = np.where(codes > 0, codes + first[cat] - 1, 0)
      seg = np.stack([global_ % 256, global_ // 256, np.zeros_like(global_)], -1)
      Image.fromarray(seg.astype(np.uint8)).save(
        os.path.join(out_dir, "images", f"{stem}_{cat}.png")
      )
      row.append(f"{stem}_{cat}.png")
      counts = np.bincount(global_.ravel(), minlength=num_labels)
      counts[0] = 0
      frequency += counts > 0
      coverage += counts / (h * w)
      cat_frequency[cat] += 1
    rows.append(row)
  _write_csv(os.path.join(out_dir, "index.csv"), [*META, *categories], rows)
  _write_csv(
    os.path.join(out_dir, "category.csv"),
    ["name", "first", "last", "count", "frequency"],
    [
      [cat, first[cat], first[cat] + len(names) - 1, len(names), cat_frequency[cat]]
      for cat, names in categories.items()
    ],
  )
  labels, by_cat = [], {cat: [] for cat in categories}
  for cat, names in categories.items():
    for code, name in enumerate(names, start=1):
      n = first[cat] + code - 1
      labels.append([n, name, f"{cat}({code})", frequency[n], f"{coverage[n]:.6g}", ""])
      by_cat[cat].append([code, n, name, frequency[n], f"{coverage[n]:.6g}"])
  header = ["number", "name", "category", "frequency", "coverage", "syns"]
  _write_csv(os.path.join(out_dir, "label.csv"), header, labels)
  for cat, c_rows in by_cat.items():
    header = ["code", "number", "name", "frequency", "coverage"]
    _write_csv(os.path.join(out_dir, f"c_{cat}.csv"), header, c_rows)
  return len(rows)


@dataclasses.dataclass(frozen=True)
class Broden:
  """A Broden folder as read by `read`.

  Attributes:
    directory: the folder.
    rows: index.csv's rows (dicts of strings), in file order.
    categories: the category names, in order.
    names: [L] label names by global number (0: "-", unlabelled).
    label_category: int [L], each label's category index (-1 for 0).
  """

  directory: str
  rows: list[dict[str, str]]
  categories: list[str]
  names: list[str]
  label_category: np.ndarray

  def image(self, i: int) -> np.ndarray:
    """Image i, uint8 [ih, iw, 3]."""
    path = os.path.join(self.directory, "images", self.rows[i]["image"])
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))

  def segmentation(self, i: int) -> dict[str, np.ndarray]:
    """Image i's segmentations, {category: int32 [sh, sw] global numbers};
    a category the image does not label is absent."""
    out = {}
    for cat in self.categories:
      name = self.rows[i].get(cat, "")
      if name:
        with Image.open(os.path.join(self.directory, "images", name)) as im:
          rgb = np.asarray(im.convert("RGB")).astype(np.int32)
        out[cat] = rgb[..., 0] + 256 * rgb[..., 1]
    return out


def read(directory: str) -> Broden:
  """Reads a Broden folder's index and label tables (not its images)."""

  def rows_of(name):
    with open(os.path.join(directory, name), newline="", encoding="utf-8") as f:
      return list(csv.DictReader(f))

  categories = [r["name"] for r in rows_of("category.csv")]
  labels = rows_of("label.csv")
  size = 1 + max((int(r["number"]) for r in labels), default=0)
  names, label_category = ["-"] * size, np.full(size, -1)
  for r in labels:
    n = int(r["number"])
    names[n] = r["name"]
    # A label listed in several categories belongs to its first one here.
    label_category[n] = categories.index(r["category"].split(";")[0].split("(")[0])
  return Broden(directory, rows_of("index.csv"), categories, names, label_category)
