"""Network dissection with action concepts (M-MiT sections 5.2 and 7.2),
with NetDissect's definitions (NetDissect-Lite's `feature_operation.py`).

For one layer with K units over a Broden dataset of N images:
  1. threshold_k: the top `quantile` (0.005) of unit k's activations over
     every position of every image, at the layer's resolution
     (`np.quantile`, linear interpolation, as NetDissect's `np.percentile`).
  2. Per image, unit k's map is resized bilinearly to the segmentation's
     size; its region is {map > threshold_k}.
  3. Over the dataset, per unit k and label l of category c:
       I[k, l]  = pixels of the region labelled l,
       L[l]     = pixels labelled l,
       U[k, c]  = pixels of the region, summed over the images where the
                  region touches some label of category c,
       IoU[k, l] = I[k, l] / (U[k, c] + L[l] - I[k, l]).
  4. A unit's concept is its label of highest IoU; the unit is
     interpretable when that IoU exceeds `iou_threshold` (0.04).
`summary` counts the concepts and interpretable units per category (M-MiT
Table 5), with all categories and without the action category (each unit's
best label then chosen among the others).

A video model reads clips: a Broden export of videos keeps each video's
frames in one folder (`scenes.export_broden`), consecutive images at the
training rate, and `clips` cuts them into clips of the model's length;
frame j of a T-frame clip reads time step floor(j T' / T) of the layer's
[T', h, w, K] output.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax.data import broden
from mlar_jax.explain import cam


@dataclasses.dataclass(frozen=True)
class Dissection:
  """The dissection of one layer.

  Attributes:
    layer: its module path ("backbone/res4_block0").
    thresholds: [K] each unit's activation threshold.
    iou: [K, L] IoU of each unit with each label (label 0: none, 0).
    names: [L] label names.
    categories: the category names.
    label_category: int [L], each label's category index (-1: label 0).
  """

  layer: str
  thresholds: np.ndarray
  iou: np.ndarray
  names: Sequence[str]
  categories: Sequence[str]
  label_category: np.ndarray

  def best(self, exclude: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's best label and its IoU ([K] int, [K] float), among the
    labels of the categories not in `exclude`."""
    allowed = self.label_category >= 0
    for cat in exclude:
      allowed &= self.label_category != self.categories.index(cat)
    iou = np.where(allowed[None], self.iou, -1.0)
    label = iou.argmax(axis=1)
    return label, np.maximum(iou[np.arange(len(label)), label], 0.0)


def thresholds(activations: np.ndarray, quantile: float = 0.005) -> np.ndarray:
  """Step 1: [N, h, w, K] activations -> [K] top-`quantile` thresholds."""
  flat = activations.reshape(-1, activations.shape[-1])
  return np.quantile(flat, 1.0 - quantile, axis=0)


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of [h, w, K] to [H, W, K]."""
  if maps.shape[:2] == tuple(size):
    return maps
  return np.asarray(jax.image.resize(jnp.asarray(maps), (*size, maps.shape[-1]), "linear"))


def tally(
  activations: np.ndarray,
  segmentations: Sequence[dict[str, np.ndarray]],
  categories: Sequence[str],
  label_category: np.ndarray,
  threshold: np.ndarray,
) -> np.ndarray:
  """Steps 2 and 3: the [K, L] IoU of every unit with every label.

  Args:
    activations: [N, h, w, K], one map per image.
    segmentations: [N] of {category: int [H, W] global label numbers}.
    categories: the category names (index of `label_category`).
    label_category: int [L].
    threshold: [K].
  """
  num_labels, k = len(label_category), activations.shape[-1]
  both = np.zeros((k, num_labels))
  units_cat = np.zeros((k, len(categories)))
  labels = np.zeros(num_labels)
  for acts, segs in zip(activations, segmentations):
    if not segs:
      continue
    size = next(iter(segs.values())).shape
    region = (_resize(acts, size) > threshold).reshape(-1, k).astype(np.float64)  # [P, K]
    area = region.sum(axis=0)  # [K]
    for cat, seg in segs.items():
      flat = seg.ravel()
      onehot = np.zeros((len(flat), num_labels))
      onehot[np.arange(len(flat)), flat] = 1.0
      onehot[:, 0] = 0.0  # unlabelled pixels
      labels += onehot.sum(axis=0)
      inter = region.T @ onehot  # [K, L]
      both += inter
      units_cat[:, categories.index(cat)] += area * (inter.sum(axis=1) > 0)
  union = units_cat[:, np.maximum(label_category, 0)] + labels[None] - both
  iou = np.where(union > 0, both / np.maximum(union, 1e-10), 0.0)
  iou[:, label_category < 0] = 0.0
  return iou


def dissect(
  layer: str,
  activations: np.ndarray,
  segmentations: Sequence[dict[str, np.ndarray]],
  data: broden.Broden,
  *,
  quantile: float = 0.005,
) -> Dissection:
  """Dissects one layer from its activations on every image of `data`
  ([N, h, w, K], in `data.rows` order or any order matching
  `segmentations`)."""
  thr = thresholds(activations, quantile)
  iou = tally(activations, segmentations, data.categories, data.label_category, thr)
  return Dissection(layer, thr, iou, data.names, data.categories, data.label_category)


def units(d: Dissection, iou_threshold: float = 0.04) -> list[dict[str, Any]]:
  """Per unit: {"unit", "category", "label", "iou", "interpretable"}."""
  label, iou = d.best()
  return [
    {
      "unit": k,
      "category": d.categories[d.label_category[label[k]]] if iou[k] > 0 else "",
      "label": d.names[label[k]] if iou[k] > 0 else "",
      "iou": float(iou[k]),
      "interpretable": bool(iou[k] > iou_threshold),
    }
    for k in range(len(label))
  ]


def summary(d: Dissection, iou_threshold: float = 0.04, action: str = "action") -> dict:
  """M-MiT Table 5 for one layer: with all categories and without `action`,
  the concepts (distinct best labels of interpretable units) and
  interpretable units, in all and per category."""
  out = {}
  settings = {"all": ()}
  if action in d.categories:
    settings[f"without_{action}"] = (action,)
  for name, exclude in settings.items():
    label, iou = d.best(exclude)
    keep = iou > iou_threshold
    per_cat = {}
    for ci, cat in enumerate(d.categories):
      if cat in exclude:
        continue
      mine = keep & (d.label_category[label] == ci)
      per_cat[cat] = {"concepts": len(set(label[mine].tolist())), "units": int(mine.sum())}
    out[name] = {
      "concepts": len(set(label[keep].tolist())),
      "units": int(keep.sum()),
      "of_units": len(label),
      "per_category": per_cat,
    }
  return out


# Model activations ----------------------------------------------------------


def clips(data: broden.Broden, num_frames: int) -> Iterator[list[int]]:
  """Row indices of consecutive images of one folder (a video), in name
  order, `num_frames` at a time; a folder's last incomplete clip is left
  out."""
  groups = collections.defaultdict(list)
  for i, row in enumerate(data.rows):
    groups[os.path.dirname(row["image"])].append(i)
  for folder in sorted(groups):
    rows = sorted(groups[folder], key=lambda i: data.rows[i]["image"])
    for start in range(0, len(rows) - num_frames + 1, num_frames):
      yield rows[start : start + num_frames]


def layer_fn(model: nn.Module, layers: Sequence[str]):
  """A jitted (variables, video [B, T, S, S, 3]) -> {layer: [B, T', h, w, K]
  float32} of the modules at paths `layers` ("backbone/res4_block0";
  "backbone" is the backbone's feature map), from one pass of `model`."""
  paths = {tuple(layer.split("/")): layer for layer in layers}

  def wanted(module: nn.Module, method: str) -> bool:
    return method == "__call__" and module.path in paths

  @jax.jit
  def run(variables, video):
    _, inter = cam.apply_capturing(model, variables, video, wanted)
    out = {}
    for path, layer in paths.items():
      node = inter
      for key in path:
        node = node[key]
      value = node["__call__"][0]
      out[layer] = (value["map"] if isinstance(value, dict) else value).astype(jnp.float32)
    return out

  return run


def frame_activations(acts: np.ndarray, num_frames: int) -> np.ndarray:
  """[T', h, w, K] of one clip -> [T, h, w, K]: frame j reads step
  floor(j T' / T)."""
  steps = np.arange(num_frames) * acts.shape[0] // num_frames
  return acts[steps]
