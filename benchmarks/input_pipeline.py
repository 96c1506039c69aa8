"""Training-clip throughput of the input pipeline on real mp4 files, and on
the same videos prepared as JPEG frames in ArrayRecord.

  .venv/bin/python benchmarks/input_pipeline.py [--videos 24] [--workers 0,1,2,4]
      [--batches 20] [--frames 32] [--crop 224] [--sources mp4,prepared]

Writes `--videos` H.264 mp4 files (320x240, 30 fps, 10 s, a keyframe every 2 s
as typical downloads have) to a temporary folder, then times the training
pipeline of `mlar_jax.data.pipeline.train_dataset`: random rate from {2, 4,
8}, seek + decode of 32 frames, short-side jitter [256, 320], 224 crop, flip,
batches of 8. `prepared` first writes the videos with `mlar_jax.data.prepare`
(short side 256, every frame) and then decodes only the sampled JPEG frames.
Reports clips per second after one warm-up batch for each number of grain
worker processes (0 = decode in the main process's threads), and for 0 the
CPU-seconds per clip (the process's CPU time over the timed batches), which
says how many cores a host needs to feed a given step rate. With `--eval`
(default) it also times one pass of the evaluation pipeline over every video
with the papers' 30 views (10 temporal windows x 3 crops), in the main
process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from absl import flags

from mlar_jax import config_lib
from mlar_jax.data import pipeline, prepare, sampling, video


def write_videos(folder: str, n: int, seconds: int = 10, fps: int = 30) -> None:
  rng = np.random.default_rng(0)
  with open(os.path.join(folder, "classes.txt"), "w") as f:
    f.write("a\nb\nc\n")
  lines = ["id,path,labels"]
  for v in range(n):
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 4 * t, axis=1) for t in range(seconds * fps)])
    # x264's own default quality (crf 23), as downloads have.
    options = {"g": str(2 * fps), "crf": "23"}
    video.write_video(os.path.join(folder, f"v{v}.mp4"), frames, fps, options=options)
    lines.append(f"v{v},v{v}.mp4,a;{'bc'[v % 2]}")
  with open(os.path.join(folder, "train.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


def time_pipeline(source, cfg, args) -> None:
  for workers in map(int, args.workers.split(",")):
    cfg.num_workers = workers
    it = iter(pipeline.train_dataset(source, cfg, global_batch_size=args.batch_size, seed=0))
    next(it)  # warm-up: worker start and first decode
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
      batch = next(it)
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    assert batch["video"].shape == (args.batch_size, args.frames, args.crop, args.crop, 3)
    clips = args.batches * args.batch_size
    cpu_note = f", {dcpu / clips:.3f} CPU-s/clip" if workers == 0 else ""
    print(f"  workers={workers}: {clips / dt:.1f} clips/s{cpu_note}", flush=True)
    it.close()  # stop prefetching before the next setting (and the folder's removal)


def time_eval(source, cfg, args) -> None:
  """Clips/s of the papers' 30-view evaluation (12 at rate 4, 9 at 8, 9 at 2)."""
  plan = sampling.view_plan(((4, 4), (8, 3), (2, 3)), 3)
  cfg.num_workers = 0
  t, cpu = time.perf_counter(), time.process_time()
  clips = sum(
    len(b["view"])
    for b in pipeline.eval_dataset(source, cfg, plan, local_batch_size=args.batch_size)
  )
  dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
  assert clips == len(source) * len(plan)
  print(
    f"  eval, 30 views: {clips / dt:.1f} clips/s, {dcpu / clips:.3f} CPU-s/clip "
    f"({len(source) / dt:.2f} videos/s)",
    flush=True,
  )


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--videos", type=int, default=24)
  p.add_argument("--workers", default="0,1,2,4")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--frames", type=int, default=32)
  p.add_argument("--crop", type=int, default=224)
  p.add_argument("--sources", default="mp4,prepared")
  p.add_argument(
    "--eval",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time the 30-view evaluation pipeline",
  )
  args = p.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  with tempfile.TemporaryDirectory() as folder:
    write_videos(folder, args.videos)
    cfg = config_lib.data_config()
    cfg.update(
      name="csv",
      num_frames=args.frames,
      rates=(2, 4, 8),
      crop_size=args.crop,
      min_short_side=256,
      max_short_side=320,
      eval_short_side=256,
    )
    cfg.csv.update(root=folder, classes="classes.txt")
    print(
      f"{args.videos} videos, clips of {args.frames} frames at {args.crop}px, "
      f"batch {args.batch_size}, {os.cpu_count()} CPUs"
    )
    for name in args.sources.split(","):
      if name == "prepared":
        t = time.perf_counter()
        prepare.prepare(
          cfg, "csv", ["train"], os.path.join(folder, "tfds"), short_side=256, fps=0, shard_size=8
        )
        print(f"prepared in {time.perf_counter() - t:.0f} s", flush=True)
        cfg.name = "prepared"
        cfg.prepared.update(data_dir=os.path.join(folder, "tfds"), dataset="csv")
      else:
        cfg.name = "csv"
      source = pipeline.make_source(cfg, "train")
      print(f"{name}:", flush=True)
      time_pipeline(source, cfg, args)
      if args.eval:
        time_eval(source, cfg, args)


if __name__ == "__main__":
  main()
