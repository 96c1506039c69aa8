"""Training-clip throughput of the input pipeline on real mp4 files.

  .venv/bin/python benchmarks/input_pipeline.py [--videos 24] [--workers 0,1,2,4]
      [--batches 20] [--frames 32] [--crop 224]

Writes `--videos` H.264 mp4 files (320x240, 30 fps, 10 s, a keyframe every 2 s
as typical downloads have) to a temporary folder, then times the training
pipeline of `mlar_jax.data.pipeline.train_dataset`: random rate from {2, 4,
8}, seek + decode of 32 frames, short-side jitter [256, 320], 224 crop, flip,
batches of 8. Reports clips per second after one warm-up batch for each
number of grain worker processes (0 = decode in the main process's threads).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import av
import numpy as np
from absl import flags

from mlar_jax import config_lib
from mlar_jax.data import pipeline
from mlar_jax.data import sources


def write_videos(folder: str, n: int, seconds: int = 10, fps: int = 30) -> None:
  rng = np.random.default_rng(0)
  with open(os.path.join(folder, "classes.txt"), "w") as f:
    f.write("a\nb\nc\n")
  lines = ["id,path,labels"]
  for v in range(n):
    path = os.path.join(folder, f"v{v}.mp4")
    with av.open(path, "w") as out:
      s = out.add_stream("libx264", rate=fps)
      s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
      s.options = {"g": str(2 * fps)}
      base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
      for t in range(seconds * fps):
        frame = np.roll(base, 4 * t, axis=1)
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          out.mux(p)
      for p in s.encode():
        out.mux(p)
    lines.append(f"v{v},v{v}.mp4,a;{'bc'[v % 2]}")
  with open(os.path.join(folder, "train.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", type=int, default=24)
  p.add_argument("--workers", default="0,1,2,4")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--frames", type=int, default=32)
  p.add_argument("--crop", type=int, default=224)
  args = p.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  with tempfile.TemporaryDirectory() as folder:
    write_videos(folder, args.videos)
    cfg = config_lib.data_config()
    cfg.update(name="csv", num_frames=args.frames, rates=(2, 4, 8), crop_size=args.crop,
               min_short_side=256, max_short_side=320, eval_short_side=256)
    cfg.csv.update(root=folder, classes="classes.txt")
    source = pipeline.make_source(cfg, "train")
    assert isinstance(source, sources.FileVideos)
    print(f"{args.videos} videos, clips of {args.frames} frames at {args.crop}px, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs")
    for workers in map(int, args.workers.split(",")):
      cfg.num_workers = workers
      it = iter(pipeline.train_dataset(source, cfg, global_batch_size=args.batch_size, seed=0))
      next(it)  # warm-up: worker start and first decode
      t = time.perf_counter()
      for _ in range(args.batches):
        batch = next(it)
      dt = time.perf_counter() - t
      assert batch["video"].shape == (args.batch_size, args.frames, args.crop, args.crop, 3)
      print(f"workers={workers}: {args.batches * args.batch_size / dt:.1f} clips/s", flush=True)
      it.close()  # stop prefetching before the next setting (and the folder's removal)


if __name__ == "__main__":
  main()
