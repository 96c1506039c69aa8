"""A picture of one scenes video: frames with each actor's box and active
labels, the instance masks, the activity timeline per actor, and the sound.

  python -m mlar_jax.tools.scenes_figure --out docs/scenes.png [--split train
      --index 7 --frames 8 --resolution 96]

Everything drawn comes from the dataset's own ground truth (`SceneVideos.boxes`,
`masks`, `actor_labels`, `instances`, `audio`), so the picture is also a check
that they agree with the pixels.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlar_jax.data import scenes  # noqa: E402
from mlar_jax.data.synthetic import FPS  # noqa: E402


def _pick(src: scenes.SceneVideos, min_actors: int) -> int:
  """The first video with `min_actors` actors, sound and an interaction."""
  interactions = {scenes.CLASS_NAMES.index(n) for n in scenes.INTERACTIONS}
  for i in range(len(src)):
    plan = src.plan(i)
    if (
      plan.num_actors >= min_actors
      and plan.has_audio
      and interactions & set(plan.instances[:, 0].tolist())
    ):
      return i
  return 0


def figure(src: scenes.SceneVideos, index: int, num_shown: int, out: str) -> None:
  """Draws video `index` of `src` into the PNG `out`.

  Args:
    src: the split.
    index: the video.
    num_shown: frames in the strip, evenly spaced over the video.
    out: the PNG path.
  """
  record = src[index]
  plan = src.plan(index)
  n = record["num_frames"]
  t = np.linspace(0, n - 1, num_shown).round().astype(int)
  frames = src.load_frames(record, t)
  boxes, valid = src.boxes(record, t)
  masks = src.masks(record, t)
  active = src.actor_labels(record, t)  # [F, MAX_ACTORS, A]
  res = src.resolution
  colors = [scenes.PALETTE[c] for c in plan.color]

  fig = plt.figure(figsize=(2.0 * num_shown, 8.2))
  grid = fig.add_gridspec(4, num_shown, height_ratios=[1.25, 1.0, 1.1, 0.7], hspace=0.35)
  for j in range(num_shown):
    ax = fig.add_subplot(grid[0, j])
    ax.imshow(frames[j], interpolation="nearest")
    for k in range(plan.num_actors):
      if not valid[j, k]:
        continue
      y1, x1, y2, x2 = boxes[j, k] * res - 0.5
      ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colors[k]))
      names = [scenes.CLASS_NAMES[c] for c in np.flatnonzero(active[j, k])]
      if names:
        ax.text(x1, y1 - 1, ",".join(names), color=colors[k], fontsize=6.5, va="bottom")
    ax.set_title(f"frame {t[j]}", fontsize=8)
    ax.axis("off")
    ax = fig.add_subplot(grid[1, j])
    rgb = np.zeros((res, res, 3))
    for k in range(plan.num_actors):
      rgb[masks[j] == k + 1] = colors[k]
    ax.imshow(rgb, interpolation="nearest")
    ax.axis("off")
  fig.text(0.01, 0.77, "frames, boxes,\nactive labels", fontsize=8, rotation=90)
  fig.text(0.01, 0.55, "instance masks", fontsize=8, rotation=90)

  ax = fig.add_subplot(grid[2, :])
  rows = _timeline(ax, record["instances"], plan.num_actors, colors)
  ax.set_xlim(0, n)
  ax.set_yticks(range(len(rows)), rows, fontsize=7)
  ax.invert_yaxis()
  for x in t:
    ax.axvline(x, color="0.8", lw=0.6, zorder=0)
  ax.set_xlabel("frame", fontsize=8)
  ax.tick_params(labelsize=7)

  ax = fig.add_subplot(grid[3, :])
  samples = int(n / FPS * scenes.SAMPLE_RATE)
  ax.specgram(src.audio(record, 0, samples), Fs=scenes.SAMPLE_RATE, NFFT=512, noverlap=384)
  ax.set_ylim(0, 1500)
  ax.set_xlim(0, n / FPS)
  ax.set_ylabel("Hz", fontsize=8)
  ax.set_xlabel("seconds (sound, 16 kHz)", fontsize=8)
  ax.tick_params(labelsize=7)
  labels = [scenes.CLASS_NAMES[c] for c in np.flatnonzero(record["labels"])]
  fig.suptitle(f"scenes {record['id']}: {n} frames, labels: {', '.join(labels)}", fontsize=9)
  fig.savefig(out, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _timeline(ax, instances: np.ndarray, num_actors: int, colors: Sequence) -> list[str]:
  """One bar per instance, a row per actor (then the scene); returns the row
  names."""
  rows = [f"actor {k}" for k in range(num_actors)] + ["scene"]
  for c, a, b, s, e in instances:
    for row in (a, b) if a >= 0 else (num_actors,):
      if row < 0:
        continue
      color = colors[row] if row < num_actors else (0.5, 0.5, 0.5)
      ax.barh(row, e - s, left=s, height=0.6, color=color, alpha=0.75)
      ax.text(s + 0.5, row, scenes.CLASS_NAMES[c], fontsize=6, va="center")
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--split", default="train", choices=("train", "val", "test"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--index", type=int, default=-1, help="-1: a 3-actor video with sound")
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--resolution", type=int, default=96)
  args = parser.parse_args(argv)
  src = scenes.SceneVideos(args.split, seed=args.seed, num_videos=200, resolution=args.resolution)
  index = args.index if args.index >= 0 else _pick(src, 3)
  figure(src, index, args.frames, args.out)
  print(f"wrote {args.out} ({src[index]['id']})")


if __name__ == "__main__":
  main()
