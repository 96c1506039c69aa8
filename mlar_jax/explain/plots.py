"""Every picture of `mlar_jax.explain`: matplotlib grids (PNG) and animated
GIFs (PIL). Maps come in normalised to [0, 1] at the frames' resolution;
frames are uint8 [T, S, S, 3]. Nothing here computes a map."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

CELL = 1.3  # inches per grid cell


def class_color(c: int) -> tuple[float, float, float]:
  """A fixed colour per class index (tab10 then tab20b)."""
  cmap = plt.get_cmap("tab10") if c < 10 else plt.get_cmap("tab20b")
  return tuple(float(x) for x in cmap(c % (10 if c < 10 else 20))[:3])


def _box_patch(ax, box: np.ndarray, size: int, color, lw: float = 1.5) -> None:
  """Draws [y1, x1, y2, x2] in [0, 1] on an image of `size` pixels (pixel
  edges at -0.5 .. size - 0.5 in imshow's coordinates)."""
  y1, x1, y2, x2 = np.asarray(box) * size - 0.5
  ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=lw, ec=color))


def _grid(rows: int, cols: int, title: str):
  fig, axes = plt.subplots(
    rows, cols, figsize=(CELL * cols + 1.2, CELL * rows + 0.4), squeeze=False
  )
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  return fig, axes


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)
  return path


def activity_grid(
  path: str,
  frames: np.ndarray,
  names: Sequence[str],
  classes: Sequence[int],
  maps: np.ndarray,
  boxes: np.ndarray,
  valid: np.ndarray,
  title: str,
) -> str:
  """MLAR Figure 4a/b: the frames with one box per activity, then one row
  per activity with its map.

  Args:
    path: the PNG to write.
    frames: uint8 [T, S, S, 3].
    names, classes: [A'] the activities shown and their class indices
      (colours).
    maps: [A', T, S, S] normalised activity maps.
    boxes: [A', T, 4], valid: bool [A', T]: each map's thresholded region.
    title: the figure's title.

  Returns:
    `path`.
  """
  t, s = frames.shape[0], frames.shape[1]
  fig, axes = _grid(1 + len(names), t, title)
  for j in range(t):
    axes[0, j].imshow(frames[j], interpolation="nearest")
    axes[0, j].set_title(f"frame {j}", fontsize=7)
    for i, c in enumerate(classes):
      if valid[i, j]:
        _box_patch(axes[0, j], boxes[i, j], s, class_color(c))
      axes[i + 1, j].imshow(maps[i, j], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
      if valid[i, j]:
        _box_patch(axes[i + 1, j], boxes[i, j], s, "white", lw=1.0)
  axes[0, 0].set_ylabel("input", fontsize=7)
  for i, (name, c) in enumerate(zip(names, classes)):
    axes[i + 1, 0].set_ylabel(name, fontsize=7, color=class_color(c))
  return _save(fig, path)


def _label_regions(ax, owner: np.ndarray, combined: np.ndarray, names, classes) -> None:
  """Each class's name at the centre of its pixels in one frame's map."""
  for i, (name, c) in enumerate(zip(names, classes)):
    ys, xs = np.nonzero((owner == i) & (combined >= 0.5))
    if len(ys):
      ax.text(
        xs.mean(),
        ys.mean(),
        name,
        fontsize=6,
        color="white",
        ha="center",
        va="center",
        bbox=dict(boxstyle="round,pad=0.1", fc=class_color(c), alpha=0.8, lw=0),
      )


def mcam_grid(
  path: str,
  frames: np.ndarray,
  names: Sequence[str],
  classes: Sequence[int],
  maps: np.ndarray,
  separated: tuple[np.ndarray, np.ndarray],
  plain: np.ndarray,
  title: str,
) -> str:
  """M-MiT Figures 5/6: the frames, the multi-label CAM with region
  separation over them (each class's name at its region), without it, and
  each predicted class's own CAM.

  Args:
    path: the PNG to write.
    frames: uint8 [T, S, S, 3].
    names, classes: [N] the predicted classes shown.
    maps: [N, T, S, S] their normalised CAMs.
    separated: (combined [T, S, S], owner [T, S, S]) of `cam.multi_label_cam`.
    plain: [T, S, S] the multi-label CAM without separation.
    title: the figure's title.

  Returns:
    `path`.
  """
  t = frames.shape[0]
  fig, axes = _grid(3 + len(names), t, title)
  combined, owner = separated
  for j in range(t):
    axes[0, j].imshow(frames[j], interpolation="nearest")
    axes[0, j].set_title(f"frame {j}", fontsize=7)
    for row, m in ((1, combined), (2, plain)):
      axes[row, j].imshow(frames[j], interpolation="nearest")
      axes[row, j].imshow(m[j], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    _label_regions(axes[1, j], owner[j], combined[j], names, classes)
    for i in range(len(names)):
      axes[3 + i, j].imshow(maps[i, j], cmap="jet", vmin=0, vmax=1, interpolation="nearest")
  for row, label in enumerate(("input", "mCAM (separated)", "mCAM (max only)")):
    axes[row, 0].set_ylabel(label, fontsize=7)
  for i, (name, c) in enumerate(zip(names, classes)):
    axes[3 + i, 0].set_ylabel(name, fontsize=7, color=class_color(c))
  return _save(fig, path)


def observation_grid(
  path: str, frames: Sequence[np.ndarray], maps: Sequence[np.ndarray], ids: Sequence[str], title
) -> str:
  """MLAR Figure 4c: one observation's attention over several videos, one
  row per video ([T, S, S, 3] frames with the [T, S, S] map over them)."""
  t = frames[0].shape[0]
  fig, axes = _grid(len(frames), t, title)
  for r, (f, m, vid) in enumerate(zip(frames, maps, ids)):
    for j in range(t):
      axes[r, j].imshow(f[j], interpolation="nearest")
      axes[r, j].imshow(m[j], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    axes[r, 0].set_ylabel(vid, fontsize=7)
  return _save(fig, path)


def boxes_gif(
  path: str,
  frames: np.ndarray,
  classes: Sequence[int],
  boxes: np.ndarray,
  valid: np.ndarray,
  scale: int = 8,
  fps: float = 4.0,
) -> str:
  """An animated GIF of the frames, enlarged `scale` times, with each
  activity's box ([A', T, 4] in [0, 1], valid [A', T]) in its colour."""
  images = []
  for j, frame in enumerate(frames):
    im = Image.fromarray(frame).resize(
      (frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(im)
    for i, c in enumerate(classes):
      if valid[i, j]:
        y1, x1, y2, x2 = (boxes[i, j] * np.array([im.height, im.width] * 2)).tolist()
        color = tuple(int(255 * x) for x in class_color(c))
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=color, width=2)
    images.append(im)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
  return path


# The evaluation report ---------------------------------------------------------


def ap_bars(
  path: str, names: Sequence[str], ap: np.ndarray, positive_rate: np.ndarray, title: str
) -> str:
  """Per-class AP, sorted, with each class's positive rate (the AP of a
  constant score) beside it. Classes without a positive (NaN AP) are left
  out and counted in the title.

  Args:
    path: the PNG to write.
    names: [A] class names.
    ap: [A] per-class AP (NaN: no positive).
    positive_rate: [A] the fraction of positives per class.
    title: the figure's title.
  """
  keep = np.flatnonzero(~np.isnan(ap))
  order = keep[np.argsort(-ap[keep], kind="stable")]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(order) + 1.5), 3.6))
  x = np.arange(len(order))
  ax.bar(x, ap[order], color="tab:blue", label="AP")
  ax.plot(x, positive_rate[order], "k_", ms=8, mew=1.5, label="positive rate (constant score)")
  ax.axhline(np.mean(ap[keep]) if len(keep) else 0.0, color="tab:red", lw=1, label="macro mAP")
  ax.set_xticks(x, [names[i] for i in order], rotation=90, fontsize=7)
  ax.set_ylim(0, 1)
  ax.set_ylabel("average precision")
  skipped = len(ap) - len(keep)
  ax.set_title(title + (f" ({skipped} classes without positives left out)" if skipped else ""))
  ax.legend(fontsize=7, loc="upper right")
  return _save(fig, path)


def pr_curves(path: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], title) -> str:
  """Precision-recall curves: (name, precision [K], recall [K], AP) each."""
  fig, ax = plt.subplots(figsize=(5.0, 4.0))
  for name, precision, recall, ap in curves:
    # The precision of a threshold holds over the recall it adds: from the
    # previous point's recall (0 first) to its own.
    ax.step(
      np.r_[0.0, recall],
      np.r_[precision[:1], precision],
      where="pre",
      marker=".",
      ms=3,
      label=f"{name} (AP {ap:.3f})",
    )
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="lower left")
  return _save(fig, path)


def correlation_maps(
  path: str, names: Sequence[str], maps: Sequence[tuple[str, np.ndarray]], title: str
) -> str:
  """[A, A] matrices side by side (rows: activity j, columns: activity k),
  each (title, matrix)."""
  a = len(names)
  size = max(3.5, 0.16 * a + 1.5)
  fig, axes = plt.subplots(1, len(maps), figsize=(size * len(maps), size), squeeze=False)
  for ax, (label, m) in zip(axes[0], maps):
    im = ax.imshow(m, cmap="magma", vmin=0, interpolation="nearest")
    ax.set_title(label, fontsize=9)
    ax.set_xticks(range(a), names, rotation=90, fontsize=6)
    ax.set_yticks(range(a), names, fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def rate_bars(path: str, per_rate: dict[str, dict], title: str) -> str:
  """Macro mAP per subset of the evaluated rates (`eval_results.json`'s
  "per_rate": {"2+4": {"views", "macro_map"}, ...})."""
  keys = list(per_rate)
  values = [per_rate[k]["macro_map"] or 0.0 for k in keys]
  fig, ax = plt.subplots(figsize=(max(3.0, 0.6 * len(keys) + 1.5), 3.0))
  ax.bar(range(len(keys)), values, color="tab:green")
  ax.set_xticks(range(len(keys)), [f"{k}\n{per_rate[k]['views']} views" for k in keys], fontsize=7)
  ax.set_xlabel("rates")
  ax.set_ylabel("macro mAP")
  ax.set_title(title, fontsize=9)
  return _save(fig, path)


def block_counts(path: str, counts: dict[str, dict[str, dict[str, int]]], title: str) -> str:
  """M-MiT Figure 7: interpretable units per category, one group of bars
  per layer ({layer: {category: {"units", "concepts"}}})."""
  layers = list(counts)
  cats = list(next(iter(counts.values()))) if counts else []
  fig, ax = plt.subplots(figsize=(max(3.5, 1.2 * len(layers) + 1.5), 3.0))
  width = 0.8 / max(len(cats), 1)
  for i, cat in enumerate(cats):
    x = np.arange(len(layers)) + (i - (len(cats) - 1) / 2) * width
    ax.bar(x, [counts[layer][cat]["units"] for layer in layers], width, label=cat)
  ax.set_xticks(range(len(layers)), layers, fontsize=7)
  ax.set_ylabel("interpretable units")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)
