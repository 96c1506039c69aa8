"""The scenes dataset's statistics quoted in the README (seed 0, 500 train videos).

python benchmarks/scenes_stats.py [--num 500]
"""

import argparse

import numpy as np

from mlar_jax.data import scenes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=500)
  n = parser.parse_args().num
  src = scenes.SceneVideos("train", seed=0, num_videos=n)
  plans = [src.plan(i) for i in range(n)]
  actors = np.array([p.num_actors for p in plans])
  labels = src.label_matrix()
  concurrent = 0
  for i, p in enumerate(plans):
    active = src.actor_labels(src[i], np.arange(p.num_frames))[:, : p.num_actors]  # [T, N, A]
    busy = active.any(-1)
    # Two busy actors whose active labels differ in the same frame.
    differ = (active[:, :, None] != active[:, None, :]).any(-1)
    concurrent += (differ & busy[:, :, None] & busy[:, None, :]).any()
  print(
    f"videos {n}; actors 1/2/3/4: {[round(float(np.mean(actors == k)), 2) for k in (1, 2, 3, 4)]} "
    f"(mean {actors.mean():.1f}); 2+ actors doing different things at once: {concurrent / n:.2f}; "
    f"labels per video {labels.sum(1).mean():.1f}; class frequency "
    f"{labels.mean(0).max():.3f} to {labels.mean(0).min():.3f}"
  )


if __name__ == "__main__":
  main()
