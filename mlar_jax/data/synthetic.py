"""An embedded multi-label video dataset, rendered procedurally.

Each video is `video_frames` (default 32) RGB frames of `resolution` pixels
square, showing one *actor* (a coloured rectangle) on a textured background,
sometimes a second object (a disc), doing several activities at once. Every
video is a pure function of (seed, split, index): a plan of random choices is
drawn from `np.random.default_rng([seed, split_id, index])`, and any frame can
be rendered from the plan alone, so a clip costs only the frames it uses.

Generative rules (T = video_frames, probabilities per video):

Whole-clip activities
  * `move_right` / `move_left`: with p=0.7 the actor crosses 35-60% of the
    frame horizontally, rightwards with p=0.65. Mutually exclusive. Otherwise
    it drifts by at most 5% (not an activity).
  * `move_up` / `move_down`: with p=0.35 it crosses 30-50% vertically, upwards
    with p=0.6. Mutually exclusive with each other; free to combine with the
    horizontal motion (diagonal motion has two labels).
  * `grow` / `shrink`: when moving down (coming closer) the actor grows with
    p=0.6; otherwise it grows with p=0.2 or shrinks with p=0.1. Mutually
    exclusive. Size changes by +80% or -45% over the clip.
  * `rotate`: p=0.3; the rectangle turns by half a turn over the clip.
  * `lights_dim`: p=0.08; the whole frame darkens to 40% over the clip.
Medium-length activities
  * `color_change`: p=0.18; at a random time the actor's colour blends into
    another palette colour over 6 frames (the labelled segment).
  * `meet`: p=0.06; a disc waits near a corner and then travels to touch the
    actor over 10 frames in the second half of the clip.
Short activities (a few frames)
  * `jump`: p=0.15; the actor hops up by 15% of the frame for 4 frames.
  * `shake`: follows a jump (right after it) with p=0.75, else p=0.04; the
    actor jitters sideways for 4 frames. Co-occurs with `jump`.
  * `vanish`: p=0.03, never with `meet` (exclusive); the actor is invisible
    for 4 frames.
  * `flash`: right before a vanish with p=0.6, else p=0.02; the actor turns
    white for 3 frames. Co-occurs with `vanish`.
Distractor: without `meet`, with p=0.5 a disc drifts slowly and carries no
label. Brightness is otherwise a random constant in [0.75, 1].

So there are co-occurring pairs (jump-shake, vanish-flash, move_down-grow),
mutually exclusive pairs (right-left, up-down, grow-shrink, meet-vanish),
whole-clip and 3-to-4-frame activities (a clip sampled at rate 4 sees a short
event in one frame, or misses it), and a long tail (about 0.46 of videos move
right, 0.03 vanish). The mean is about 2.3 labels per video. Frame flips
change the meaning of `move_left`/`move_right`: train this data without
horizontal flips.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mlar_jax.data import base

CLASS_NAMES = (
  "move_right",
  "move_left",
  "move_up",
  "move_down",
  "grow",
  "shrink",
  "rotate",
  "lights_dim",
  "color_change",
  "meet",
  "jump",
  "shake",
  "vanish",
  "flash",
)
_C = {name: i for i, name in enumerate(CLASS_NAMES)}
FPS = 24.0  # nominal frame rate, for segments in seconds

# Saturated actor colours; a colour change goes to a different entry.
_PALETTE = np.array(
  [
    [0.95, 0.25, 0.2],
    [0.2, 0.85, 0.3],
    [0.25, 0.45, 0.95],
    [0.95, 0.85, 0.2],
    [0.85, 0.3, 0.9],
    [0.2, 0.9, 0.9],
  ],
  np.float32,
)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Every random choice of one video; frames are rendered from it alone."""

  labels: np.ndarray  # [C] int32
  segments: np.ndarray  # [C, 2] int32, [start, end) frames, -1 if absent
  x0: float
  y0: float
  dx: float
  dy: float
  size0: float
  size_gain: float
  angle0: float
  spin: float
  color0: int
  color1: int
  color_t: int
  dim: bool
  brightness: float
  bg_colors: np.ndarray  # [2, 3]
  texture_seed: int
  disc: str  # "none" | "distractor" | "meet"
  disc_xy0: tuple[float, float]
  disc_dxy: tuple[float, float]
  disc_t: tuple[int, int]  # motion start and end frames
  disc_color: int


def _plan(seed: int, split: str, index: int, num_frames: int) -> _Plan:
  """Draws the activities of one video and their parameters."""
  rng = np.random.default_rng([seed, base.SPLIT_IDS[split], index])
  t_last = num_frames - 1
  labels = np.zeros(len(CLASS_NAMES), np.int32)
  segments = np.full((len(CLASS_NAMES), 2), -1, np.int32)

  def add(name, start=0, end=num_frames):
    labels[_C[name]] = 1
    segments[_C[name]] = (start, end)

  # Whole-clip motion.
  if rng.random() < 0.7:
    dx = rng.uniform(0.35, 0.6) * (1 if rng.random() < 0.65 else -1)
    add("move_right" if dx > 0 else "move_left")
  else:
    dx = rng.uniform(-0.05, 0.05)
  if rng.random() < 0.35:
    dy = rng.uniform(0.3, 0.5) * (-1 if rng.random() < 0.6 else 1)
    add("move_up" if dy < 0 else "move_down")
  else:
    dy = rng.uniform(-0.05, 0.05)
  u = rng.random()
  if labels[_C["move_down"]]:
    size_gain = 0.8 if u < 0.6 else 0.0
  else:
    size_gain = 0.8 if u < 0.2 else (-0.45 if u < 0.3 else 0.0)
  if size_gain > 0:
    add("grow")
  elif size_gain < 0:
    add("shrink")
  spin = 0.0
  if rng.random() < 0.3:
    spin = np.pi / t_last * (1 if rng.random() < 0.5 else -1)
    add("rotate")
  dim = bool(rng.random() < 0.08)
  if dim:
    add("lights_dim")

  # Medium-length activities.
  color0 = int(rng.integers(len(_PALETTE)))
  color1, color_t = color0, num_frames
  if rng.random() < 0.18:
    color1 = int((color0 + rng.integers(1, len(_PALETTE))) % len(_PALETTE))
    color_t = int(rng.integers(0, num_frames - 6 + 1))
    add("color_change", color_t, color_t + 6)
  meet = bool(rng.random() < 0.06)

  # Short events.
  if rng.random() < 0.15:
    t = int(rng.integers(0, num_frames - 8 + 1))
    add("jump", t, t + 4)
    if rng.random() < 0.75:
      add("shake", t + 4, t + 8)
  elif rng.random() < 0.04:
    t = int(rng.integers(0, num_frames - 4 + 1))
    add("shake", t, t + 4)
  if not meet and rng.random() < 0.03:
    t = int(rng.integers(3, num_frames - 4 + 1))
    add("vanish", t, t + 4)
    if rng.random() < 0.6:
      add("flash", t - 3, t)
  elif rng.random() < 0.02:
    t = int(rng.integers(0, num_frames - 3 + 1))
    add("flash", t, t + 3)

  # Placement keeps the actor's path inside [0.15, 0.85].
  x0 = rng.uniform(0.15 + max(0.0, -dx), 0.85 - max(0.0, dx))
  y0 = rng.uniform(0.15 + max(0.0, -dy), 0.85 - max(0.0, dy))

  disc, disc_xy0, disc_dxy, disc_t = "none", (0.0, 0.0), (0.0, 0.0), (0, 1)
  if meet:
    t0 = int(rng.integers(num_frames // 4, num_frames // 2 + 1))
    t1 = min(t0 + 10, t_last)
    add("meet", t0, t1 + 1)
    # The disc starts in the corner farthest from where the actor will be.
    ax, ay = x0 + dx * t1 / t_last, y0 + dy * t1 / t_last
    sx, sy = (0.1 if ax > 0.5 else 0.9), (0.1 if ay > 0.5 else 0.9)
    disc, disc_xy0, disc_dxy, disc_t = "meet", (sx, sy), (ax - sx, ay - sy), (t0, t1)
  elif rng.random() < 0.5:
    disc = "distractor"
    disc_xy0 = (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
    disc_dxy = (rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15))
    disc_t = (0, t_last)

  return _Plan(
    labels=labels,
    segments=segments,
    x0=x0,
    y0=y0,
    dx=dx,
    dy=dy,
    size0=rng.uniform(0.08, 0.12),
    size_gain=size_gain,
    angle0=rng.uniform(0, np.pi),
    spin=spin,
    color0=color0,
    color1=color1,
    color_t=color_t,
    dim=dim,
    brightness=rng.uniform(0.75, 1.0),
    bg_colors=rng.uniform(0.05, 0.45, size=(2, 3)).astype(np.float32),
    texture_seed=int(rng.integers(2**31)),
    disc=disc,
    disc_xy0=disc_xy0,
    disc_dxy=disc_dxy,
    disc_t=disc_t,
    disc_color=int(rng.integers(len(_PALETTE))),
  )


def _in_segment(plan: _Plan, name: str, t: np.ndarray) -> np.ndarray:
  start, end = plan.segments[_C[name]]
  return (t >= start) & (t < end)


def _render(plan: _Plan, t: np.ndarray, num_frames: int, res: int) -> np.ndarray:
  """Renders frames `t` ([F] int) of a planned video as uint8 [F, res, res, 3]."""
  t = np.asarray(t)
  tf = t.astype(np.float32)
  frac = tf / (num_frames - 1)
  coords = (np.arange(res, dtype=np.float32) + 0.5) / res
  gy, gx = coords[None, :, None], coords[None, None, :]  # [1, H, 1], [1, 1, W]

  tex_rng = np.random.default_rng(plan.texture_seed)
  texture = tex_rng.normal(0.0, 0.05, size=(res, res, 1)).astype(np.float32)
  lerp = coords[:, None, None]
  background = plan.bg_colors[0] * (1 - lerp) + plan.bg_colors[1] * lerp + texture

  # Actor trajectory, with the short events as offsets.
  cx = plan.x0 + plan.dx * frac
  cy = plan.y0 + plan.dy * frac
  jump = _in_segment(plan, "jump", t)
  phase = (t - plan.segments[_C["jump"], 0] + 1) / 5.0
  cy = cy - np.where(jump, 0.15 * np.sin(np.pi * phase), 0.0)
  shake = _in_segment(plan, "shake", t)
  cx = cx + np.where(shake, np.where(t % 2 == 0, 0.06, -0.06), 0.0)
  size = plan.size0 * (1 + plan.size_gain * frac)
  angle = plan.angle0 + plan.spin * tf
  blend = np.clip((tf - plan.color_t) / 6.0, 0.0, 1.0)[:, None]
  color = _PALETTE[plan.color0] * (1 - blend) + _PALETTE[plan.color1] * blend
  color = np.where(_in_segment(plan, "flash", t)[:, None], 1.0, color)
  visible = ~_in_segment(plan, "vanish", t)

  # Soft-edged rotated rectangle, half-extents size x 0.6 size, in pixels.
  ex = (gx - cx[:, None, None]) * res
  ey = (gy - cy[:, None, None]) * res
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  u = ex * cos + ey * sin
  v = -ex * sin + ey * cos
  half = size[:, None, None] * res
  actor = np.clip(half - np.abs(u) + 0.5, 0, 1) * np.clip(0.6 * half - np.abs(v) + 0.5, 0, 1)
  actor = (actor * visible[:, None, None])[..., None]
  frames = background[None] * (1 - actor) + color[:, None, None, :] * actor

  if plan.disc != "none":
    t0, t1 = plan.disc_t
    p = np.clip((tf - t0) / max(t1 - t0, 1), 0.0, 1.0)
    dxp = (gx - (plan.disc_xy0[0] + plan.disc_dxy[0] * p)[:, None, None]) * res
    dyp = (gy - (plan.disc_xy0[1] + plan.disc_dxy[1] * p)[:, None, None]) * res
    disc = np.clip(0.07 * res - np.sqrt(dxp**2 + dyp**2) + 0.5, 0, 1)[..., None]
    frames = frames * (1 - disc) + _PALETTE[plan.disc_color] * 0.8 * disc

  light = plan.brightness * (1 - 0.6 * frac if plan.dim else np.ones_like(frac))
  frames = frames * light[:, None, None, None]
  return (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


class SyntheticVideos(base.PlannedVideos):
  """One split of the embedded dataset as a grain random-access source.

  Attributes:
    split: "train", "val" or "test".
    seed: dataset seed; (seed, split, index) fixes a video.
    num_videos: number of videos in the split.
    video_frames: frames per video (T_v).
    resolution: frame height and width in pixels.
  """

  def __init__(
    self,
    split: str,
    *,
    seed: int = 0,
    num_videos: int = 1024,
    video_frames: int = 32,
    resolution: int = 64,
  ):
    if video_frames < 16:
      raise ValueError(f"video_frames must be at least 16, got {video_frames}")
    super().__init__(split, seed, num_videos)
    self.video_frames = video_frames
    self.resolution = resolution

  def __repr__(self) -> str:
    return (
      f"SyntheticVideos(split={self.split!r}, seed={self.seed}, "
      f"num_videos={self.num_videos}, video_frames={self.video_frames}, "
      f"resolution={self.resolution})"
    )

  @property
  def class_names(self) -> Sequence[str]:
    return CLASS_NAMES

  def _draw(self, index: int) -> _Plan:
    return _plan(self.seed, self.split, index, self.video_frames)

  def __getitem__(self, index: int) -> base.Record:
    plan = self.plan(index)
    present = np.flatnonzero(plan.labels)
    segments = np.concatenate([present[:, None], plan.segments[present] / FPS], axis=1)
    return {
      "id": self._video_id(index),
      "index": int(index),
      "plan": plan,
      "labels": plan.labels,
      "segments": segments.astype(np.float32),
      "num_frames": self.video_frames,
      "fps": FPS,
    }

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    del short_side  # rendered at the dataset's resolution
    return _render(self.plan_of(record), np.asarray(indices), self.video_frames, self.resolution)
