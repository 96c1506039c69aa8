"""Multi-actor scenes: an embedded dataset with boxes, masks, sound and long videos.

Each video is 96 to 160 frames (uniform, `min_frames`..`max_frames`) of
`resolution` pixels square at a nominal `FPS` = 24. It shows 1 to 4 *actors*
on a textured background, each doing a sequence of activities in its own
quarter of the frame, two actors sometimes interacting, plus unlabelled
distractor objects. Every video is a pure function of (seed, split, index): a
plan of random choices is drawn from `np.random.default_rng([seed, split_id,
index])`, and any frame, box or mask is computed from the plan alone, so a
clip costs only its frames and ground truth nobody asks for is not computed.

Generative rules (T = frames of the video; probabilities per video unless
said otherwise):

Scene
  * Actors: 1, 2, 3 or 4 with p = 0.25, 0.35, 0.25, 0.15. Each takes a
    different quarter of the frame (its *region*; it walks inside it), a
    different colour of the 8-colour `PALETTE`, a shape from `SHAPES`
    (rectangle, disc, triangle, cross, diamond; uniform, repeats allowed), a
    half-size of 0.065-0.085 of the frame and a dark "head" dot, so its
    orientation shows. Later actors are drawn over earlier ones.
  * Distractors: 0, 1 or 2 with p = 0.3, 0.45, 0.25; a smaller shape in a
    muted palette colour drifting slowly anywhere, under the actors. No label.
  * Background: a vertical blend of two dark colours with a texture from
    `TEXTURES` (plain, noise, stripes, checker; uniform); brightness a random
    constant in [0.8, 1].

Person-level activities (one actor; an actor does one at a time)
  Each actor's timeline is filled from frame 0: an idle gap (p=0.6 32-80
  frames, else 0-24), then an activity drawn with these weights: walk 0.26,
  jump 0.16, shake 0.12, rotate 0.10, pace 0.08, carry 0.07, crouch 0.06,
  resize 0.05, change_color 0.04, flash 0.04, vanish 0.02; and again until
  the video ends. Durations (frames, uniform, cut to the free time):
  * `walk_left` / `walk_right` (12-60): the actor moves 0.005 of the frame
    per frame towards the side of its region with more room, and stays
    there (the only lasting change).
  * `pace` (12-0.6 T): it sways sideways, 0.06 of the frame, period 9.
  * `jump` (3-6): it hops up by 0.1 of the frame. Followed at once by `land`
    (3-4: squashed to 65% height, 130% width) with p=0.8; `land` never
    happens otherwise.
  * `crouch` (6-30): 55% height, feet kept. Followed at once by `stand_up`
    (4-8: height from 55% to 85%, then back to 100%) with p=0.7; never
    otherwise.
  * rotate is `spin` (8-36: a full turn every 10 frames) in videos that spin
    (p=0.6) and `wave` (6-24: +-1.2 rad, period 3) in the others: the two
    are mutually exclusive in a video.
  * resize is `inflate` (6-20: 1.18x, up to 1.6x and back) in videos that
    inflate (p=0.65), `shrink` (6-20: 0.87x, down to 0.55x and back) in the
    others: mutually exclusive.
  * `shake` (3-10): it jitters sideways every frame, by 0.04, -0.04 and 0.02 of the
    frame in turn.
  * `change_color` (6-40): it takes another palette colour, then its own.
  * `flash` (3-5): it turns white. Followed at once by `vanish` with p=0.6.
  * `vanish` (3-8): it is not drawn (and has no box).
  * `carry` (16-0.8 T): a small pale item rides at its side. Followed at
    once by `throw` (4-8: the item flies off in an arc towards the middle of
    the frame) with p=0.5; `throw`
    never happens otherwise.

Interactions (two actors, both labelled; needs 2+ actors)
  0, 1 or 2 attempts with p = 0.45, 0.4, 0.15, placed before the person-level
  activities; an attempt is dropped when either actor is already busy then.
  The class is `meet` 0.4, `follow` 0.25, `push` 0.2, `hand_over` 0.15:
  * `meet` (10-30): both approach until they touch, then go back.
  * `follow` (16-48): the leader moves 0.12 of the frame sideways and back;
    the follower makes the same motion 3 frames later.
  * `push` (6-14): the first reaches the second in half the time and goes
    back; the second is knocked 0.1 of the frame away and comes back.
  * `hand_over` (8-20): both come a quarter of the way closer while an item
    travels from the first to the second.

Scene-level activities (no actor)
  * lights: with p=0.25 one instance, `lights_dim` (p=0.75; 12-0.7 T, the
    frame darkens to 45% over 6 frames and back at the end) or
    `lights_flicker` (4-12: 45%, 80% and 60% brightness in turn): mutually
    exclusive.
  * `camera_shake` (3-12): p=0.12; the view jumps by 2, -2 and 1 pixels in turn,
    a new place each frame.

Sound (mono, SAMPLE_RATE = 16 kHz)
  * With p=0.15 a video has no sound track (`has_audio` False: silence).
    Otherwise: Gaussian noise of standard deviation 0.01-0.04 (uniform),
    plus a tone of amplitude 0.3 at the class's `SOUNDS` frequency during
    every instance of a sounding class: `land`, `push`, `meet`,
    `hand_over`, `throw`, `camera_shake`, `lights_flicker` (seen and heard)
    and the audio-only scene-level classes:
  * `ring` (8-48): p=0.1; an 880 Hz tone switched on and off every 0.05 s.
  * `knock` (3-10): p=0.05; 180 Hz pulses of 0.03 s every 0.1 s.
  The other classes are silent; `ring` and `knock` change no pixel.

So activities last from 3 frames to most of the video, with idle stretches
between them (clips at rates 2, 4 and 8 see different things); jump-land,
crouch-stand_up, flash-vanish and carry-throw co-occur (the second only after
the first); spin-wave, inflate-shrink and lights_dim-lights_flicker are
mutually exclusive; class frequencies are long-tailed. `walk_left` and
`walk_right` are mirror images: train without horizontal flips.

Ground truth (computed on demand by `SceneVideos` methods):
  `labels` [A]: video-level, the union of the instances' classes.
  `segments` [S, 3] float32: (class, start s, end s), one row per instance.
  `instances` [S, 5] int32: (class, actor, other actor or -1, start frame,
    end frame), end exclusive; scene-level instances have actor -1.
  `boxes(record, idx)`: float32 [F, MAX_ACTORS, 4] amodal boxes [y1, x1, y2,
    x2] in [0, 1] and bool [F, MAX_ACTORS] validity (actor present and
    drawn).
  `masks(record, idx)`: int32 [F, H, W] instance ids, 0 background or item,
    k + 1 for actor k (what is visible after occlusion).
  `actor_labels(record, idx)`: int32 [F, MAX_ACTORS, A], each actor's active
    person-level and interaction labels.
  `concepts(record, idx)`: Broden-style concept masks, int32 [F, H, W] each,
    0 where absent: `shape` (1 + SHAPES index of the actor or distractor
    seen), `color` (1 + palette index of the colour seen on an actor's body
    or a distractor, len(PALETTE) + 1 for white), `texture` (1 + TEXTURES
    index where the background is seen) and `action` (1 + the class an actor
    performs, on its visible pixels).
  `audio(record, start, stop)`: float32 [stop - start], samples start..stop
    of the sound track; `has_audio` in the record.

Export: `python -m mlar_jax.data.scenes export --format charades --out DIR`
writes the train and test splits as a Charades folder (class file, CSVs, one
H.264 mp4 per video with its AAC sound track; `export_charades`), which
`config.data.name=charades` with `config.data.charades.root=DIR` reads like
the real dataset. `--format ava` writes them as an AVA folder (frame
folders, keyframe box annotations, label map, exclusions, person boxes;
`export_ava`) for `config.data.name=ava`. `--format broden` writes the test
split's frames (every BRODEN_FRAME_STEP-th) with their concept masks as a
Broden folder (`export_broden`, `data/broden.py`) for `python -m
mlar_jax.explain dissect`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import time
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image

from mlar_jax import config_lib
from mlar_jax.data import ava, base, broden, transforms, video, volleyball
from mlar_jax.data.synthetic import FPS

PERSON = (
  "walk_left",
  "walk_right",
  "pace",
  "jump",
  "land",
  "crouch",
  "stand_up",
  "wave",
  "spin",
  "shake",
  "inflate",
  "shrink",
  "flash",
  "vanish",
  "change_color",
  "carry",
  "throw",
)
INTERACTIONS = ("meet", "follow", "push", "hand_over")
SCENE = ("lights_dim", "lights_flicker", "camera_shake")
AUDIO_ONLY = ("ring", "knock")
CLASS_NAMES = PERSON + INTERACTIONS + SCENE + AUDIO_ONLY
_C = {name: i for i, name in enumerate(CLASS_NAMES)}
SHAPES = ("rectangle", "disc", "triangle", "cross", "diamond")
TEXTURES = ("plain", "noise", "stripes", "checker")
MAX_ACTORS = 4
SAMPLE_RATE = 16000
# The classes that sound, and their tone's frequency in Hz; the others are
# silent.
SOUNDS = {
  "land": 120.0,
  "push": 250.0,
  "meet": 440.0,
  "hand_over": 560.0,
  "throw": 700.0,
  "camera_shake": 90.0,
  "lights_flicker": 1250.0,
  "ring": 880.0,
  "knock": 180.0,
}

PALETTE = np.array(
  [
    [0.95, 0.2, 0.2],
    [0.2, 0.85, 0.3],
    [0.25, 0.45, 0.95],
    [0.95, 0.85, 0.2],
    [0.85, 0.3, 0.9],
    [0.2, 0.9, 0.9],
    [0.98, 0.55, 0.1],
    [0.6, 0.95, 0.5],
  ],
  np.float32,
)
# Colour ids: the palette, then white (a flash).
_COLORS = np.concatenate([PALETTE, np.ones((1, 3), np.float32)])
_ITEM_COLOR = np.array([1.0, 1.0, 0.7], np.float32)

# Person-level draws: (activity, weight); rotate and resize become the
# video's spin/wave and inflate/shrink.
_DRAWS = (
  ("walk", 0.26),
  ("jump", 0.16),
  ("shake", 0.12),
  ("rotate", 0.10),
  ("pace", 0.08),
  ("carry", 0.07),
  ("crouch", 0.06),
  ("resize", 0.05),
  ("change_color", 0.04),
  ("flash", 0.04),
  ("vanish", 0.02),
)
_DRAW_P = np.array([w for _, w in _DRAWS])
# Activity -> (its follower, probability), placed right after it.
_CHAINS = {
  "jump": ("land", 0.8),
  "crouch": ("stand_up", 0.7),
  "flash": ("vanish", 0.6),
  "carry": ("throw", 0.5),
}
_WALK_SPEED = 0.005


def _duration_range(name: str, num_frames: int) -> tuple[int, int]:
  """(min, max) frames of an activity in a video of `num_frames` frames."""
  ranges = {
    "walk_left": (12, 60),
    "walk_right": (12, 60),
    "pace": (12, int(0.6 * num_frames)),
    "jump": (3, 6),
    "land": (3, 4),
    "crouch": (6, 30),
    "stand_up": (4, 8),
    "wave": (6, 24),
    "spin": (8, 36),
    "shake": (3, 10),
    "inflate": (6, 20),
    "shrink": (6, 20),
    "flash": (3, 5),
    "vanish": (3, 8),
    "change_color": (6, 40),
    "carry": (16, int(0.8 * num_frames)),
    "throw": (4, 8),
    "meet": (10, 30),
    "follow": (16, 48),
    "push": (6, 14),
    "hand_over": (8, 20),
    "lights_dim": (12, int(0.7 * num_frames)),
    "lights_flicker": (4, 12),
    "camera_shake": (3, 12),
    "ring": (8, 48),
    "knock": (3, 10),
  }
  return ranges[name]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every random choice of one video; frames and ground truth come from it.

  Attributes (N actors, S activity instances, D distractors):
    num_frames: T.
    shape, color, region: int [N], indices into SHAPES, PALETTE and the
      quarters (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    xy0: float [N, 2], start centre (x, y) in [0, 1].
    size: float [N], half-size as a fraction of the frame.
    angle0: float [N], orientation in radians.
    instances: int32 [S, 5], (class, actor, other, start, end) as in the
      module docstring, sorted by start.
    param: float [S], an instance's parameter: a walk's or follow's signed
      displacement, a colour change's palette index, a throw's direction.
    distractors: float [D, 7], (shape, x, y, dx, dy, size, colour index).
    bg_colors: float [2, 3]; texture: index into TEXTURES; texture_seed: int.
    brightness: float.
    has_audio: whether the video has a sound track; noise: its noise level.
  """

  num_frames: int
  shape: np.ndarray
  color: np.ndarray
  region: np.ndarray
  xy0: np.ndarray
  size: np.ndarray
  angle0: np.ndarray
  instances: np.ndarray
  param: np.ndarray
  distractors: np.ndarray
  bg_colors: np.ndarray
  texture: int
  texture_seed: int
  brightness: float
  has_audio: bool
  noise: float

  @property
  def num_actors(self) -> int:
    return len(self.shape)

  @property
  def labels(self) -> np.ndarray:
    """int32 [A], the union of the instances' classes."""
    labels = np.zeros(len(CLASS_NAMES), np.int32)
    labels[self.instances[:, 0]] = 1
    return labels


def _free(busy: list[tuple[int, int]], start: int, end: int) -> bool:
  return all(end <= s or start >= e for s, e in busy)


def _plan(seed: int, split: str, index: int, min_frames: int, max_frames: int) -> Plan:
  """Draws one video's actors, activities and their parameters."""
  rng = np.random.default_rng([seed, base.SPLIT_IDS[split], index])
  T = int(rng.integers(min_frames, max_frames + 1))
  n = int(rng.choice(4, p=(0.25, 0.35, 0.25, 0.15))) + 1
  region = rng.permutation(4)[:n]
  corner = np.stack([region % 2, region // 2], axis=1) * 0.5  # [N, 2] (x, y)
  xy0 = corner + rng.uniform(0.12, 0.38, size=(n, 2))
  shape = rng.integers(len(SHAPES), size=n)
  color = rng.permutation(len(PALETTE))[:n]
  rotate = "spin" if rng.random() < 0.6 else "wave"
  resize = "inflate" if rng.random() < 0.65 else "shrink"
  inst: list[tuple[int, int, int, int, int]] = []
  param: list[float] = []
  busy: list[list[tuple[int, int]]] = [[] for _ in range(n)]

  def add(name, actor, other, start, end, p=0.0):
    inst.append((_C[name], actor, other, start, end))
    param.append(p)
    for a in (actor, other):
      if a >= 0:
        busy[a].append((start, end))

  def span(name):
    lo, hi = _duration_range(name, T)
    dur = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(0, T - dur + 1))
    return start, start + dur

  # Scene-level activities.
  if rng.random() < 0.25:
    name = "lights_dim" if rng.random() < 0.75 else "lights_flicker"
    add(name, -1, -1, *span(name))
  if rng.random() < 0.12:
    add("camera_shake", -1, -1, *span("camera_shake"))
  for name, p in (("ring", 0.1), ("knock", 0.05)):
    if rng.random() < p:
      add(name, -1, -1, *span(name))

  # Interactions first, so that both actors are free at the same time.
  if n >= 2:
    for _ in range(int(rng.choice(3, p=(0.45, 0.4, 0.15)))):
      name = INTERACTIONS[rng.choice(4, p=(0.4, 0.25, 0.2, 0.15))]
      a, b = (int(i) for i in rng.choice(n, size=2, replace=False))
      start, end = span(name)
      if _free(busy[a], start, end) and _free(busy[b], start, end):
        add(name, a, b, start, end, rng.choice((-0.12, 0.12)))

  # Person-level timelines in the free time, with their chained followers.
  for a in range(n):
    lo_x, hi_x = corner[a, 0] + 0.1, corner[a, 0] + 0.4
    x, t = xy0[a, 0], 0
    while True:
      t += int(rng.integers(32, 81) if rng.random() < 0.6 else rng.integers(0, 25))
      if t >= T - 3:
        break
      ahead = [s for s, e in busy[a] if e > t]
      limit = min(ahead, default=T)
      if limit <= t:  # inside an interaction: resume after it
        t = min(e for s, e in busy[a] if e > t)
        continue
      name = _DRAWS[rng.choice(len(_DRAWS), p=_DRAW_P)][0]
      name = {"rotate": rotate, "resize": resize}.get(name, name)
      lo, hi = _duration_range("walk_left" if name == "walk" else name, T)
      hi = min(hi, limit - t)
      if lo > hi:
        t = limit
        continue
      dur = int(rng.integers(lo, hi + 1))
      p = 0.0
      if name == "walk":
        room = hi_x - x if hi_x - x > x - lo_x else lo_x - x
        p = float(np.clip(_WALK_SPEED * dur, 0, abs(room)) * np.sign(room))
        x += p
        name = "walk_right" if p > 0 else "walk_left"
      elif name == "change_color":
        p = float((color[a] + rng.integers(1, len(PALETTE))) % len(PALETTE))
      add(name, a, -1, t, t + dur, p)
      t += dur
      if name in _CHAINS and rng.random() < _CHAINS[name][1]:
        follower = _CHAINS[name][0]
        lo, hi = _duration_range(follower, T)
        dur = min(int(rng.integers(lo, hi + 1)), limit - t)
        if dur >= lo:
          # A throw goes towards the middle of the frame, where it is seen.
          add(follower, a, -1, t, t + dur, 1.0 if corner[a, 0] == 0 else -1.0)
          t += dur

  instances = np.array(inst, np.int32).reshape(-1, 5)
  order = np.argsort(instances[:, 3], kind="stable")
  num_distractors = int(rng.choice(3, p=(0.3, 0.45, 0.25)))
  distractors = np.stack(
    [
      rng.integers(len(SHAPES), size=num_distractors),
      *rng.uniform(0.1, 0.9, size=(2, num_distractors)),
      *rng.uniform(-0.15, 0.15, size=(2, num_distractors)),
      rng.uniform(0.035, 0.05, size=num_distractors),
      rng.integers(len(PALETTE), size=num_distractors),
    ],
    axis=1,
  )
  return Plan(
    num_frames=T,
    shape=shape,
    color=color,
    region=region,
    xy0=xy0,
    size=rng.uniform(0.065, 0.085, size=n),
    angle0=rng.uniform(-0.3, 0.3, size=n),
    instances=instances[order],
    param=np.array(param, np.float64)[order],
    distractors=distractors,
    bg_colors=rng.uniform(0.05, 0.35, size=(2, 3)).astype(np.float32),
    texture=int(rng.integers(len(TEXTURES))),
    texture_seed=int(rng.integers(2**31)),
    brightness=float(rng.uniform(0.8, 1.0)),
    has_audio=bool(rng.random() < 0.85),
    noise=float(rng.uniform(0.01, 0.04)),
  )


@dataclasses.dataclass(frozen=True)
class _State:
  """Geometry of frames `t` ([F]) of a video, from its plan alone.

  Attributes (N actors, F frames; lengths are fractions of the frame):
    cx, cy: [N, F] actor centres; half_w, half_h: [N, F] half-extents.
    angle: [N, F] radians; color_id: int [N, F], rows of `_COLORS`;
    visible: bool [N, F].
    items: (x [F], y [F], on bool [F]) of each carried or thrown item.
    light: [F] brightness factor; shift: int [F, 2] camera offset (x, y) in
      pixels.
  """

  cx: np.ndarray
  cy: np.ndarray
  half_w: np.ndarray
  half_h: np.ndarray
  angle: np.ndarray
  color_id: np.ndarray
  visible: np.ndarray
  items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
  light: np.ndarray
  shift: np.ndarray


def _state(plan: Plan, t: np.ndarray) -> _State:
  """Applies every activity instance to the actors' rest pose at frames `t`."""
  f, n = len(t), plan.num_actors
  cx = np.repeat(plan.xy0[:, :1], f, axis=1)
  cy = np.repeat(plan.xy0[:, 1:], f, axis=1)
  half_w = np.repeat(plan.size[:, None], f, axis=1)
  half_h = half_w.copy()
  angle = np.repeat(plan.angle0[:, None], f, axis=1)
  color_id = np.repeat(plan.color[:, None], f, axis=1)
  visible = np.ones((n, f), bool)
  light = np.full(f, plan.brightness)
  shift = np.zeros((f, 2), np.int64)
  # Walks come first: theirs is the one lasting change, and interactions aim
  # at where the actors have walked to.
  for (c, a, _, s, e), p in zip(plan.instances, plan.param):
    if CLASS_NAMES[c] in ("walk_left", "walk_right"):
      cx[a] += p * np.clip((t - s + 1) / (e - s), 0.0, 1.0)
  items = []
  for (c, a, b, s, e), p in zip(plan.instances, plan.param):
    name = CLASS_NAMES[c]
    act = (t >= s) & (t < e)
    if not act.any():
      continue
    # Progress in (0, 1) over the active frames, and periodic motions whose
    # phases never hit the rest pose, so that every active frame differs from
    # it; bump and tri rise from 0 to 1 and back. Periods are odd: a clip at
    # rate 2, 4 or 8 then sees the motion change (a period of 2, 4 or 8 would
    # show it frozen at one phase).
    q = np.where(act, (t - s + 1) / (e - s + 1), 0.0)
    bump = np.sin(np.pi * q) * act
    tri = (1 - np.abs(2 * q - 1)) * act
    if name in INTERACTIONS:
      dx, dy = cx[b] - cx[a], cy[b] - cy[a]
      dist = np.maximum(np.hypot(dx, dy), 1e-6)
      reach = np.maximum(dist - plan.size[a] - plan.size[b], 0.0) / dist
    if name == "pace":
      cx[a] += 0.06 * np.sin(2 * np.pi * (t - s + 0.25) / 9) * act
    elif name == "jump":
      cy[a] -= 0.1 * bump
    elif name == "land":
      half_h[a] *= 1 - 0.35 * bump
      half_w[a] *= 1 + 0.3 * bump
    elif name == "crouch":
      half_h[a] *= np.where(act, 0.55, 1.0)
    elif name == "stand_up":
      half_h[a] *= np.where(act, 0.55 + 0.3 * q, 1.0)
    elif name == "wave":
      angle[a] += 1.2 * np.sin(2 * np.pi * (t - s + 0.25) / 3) * act
    elif name == "spin":
      angle[a] += 2 * np.pi * (t - s + 0.5) / 10 * act
    elif name == "shake":
      cx[a] += 0.04 * np.array([1.0, -1.0, 0.5])[(t - s) % 3] * act
    elif name in ("inflate", "shrink"):
      # Starts and ends at 30% of the full change: visible at 32 pixels.
      gain = 1 + (0.6 if name == "inflate" else -0.45) * (0.3 + 0.7 * bump) * act
      half_w[a] *= gain
      half_h[a] *= gain
    elif name == "flash":
      color_id[a, act] = len(PALETTE)
    elif name == "vanish":
      visible[a] &= ~act
    elif name == "change_color":
      color_id[a, act] = int(p)
    elif name in ("carry", "throw", "hand_over"):
      items.append((name, a, b, act, q, p))
      if name == "hand_over":
        for k, sign in ((a, 0.25), (b, -0.25)):
          cx[k] += sign * dx * tri
          cy[k] += sign * dy * tri
    elif name == "meet":
      for k, sign in ((a, 0.5), (b, -0.5)):
        cx[k] += sign * reach * dx * tri
        cy[k] += sign * reach * dy * tri
    elif name == "push":
      cx[a] += reach * dx * tri
      cy[a] += reach * dy * tri
      knock = 0.1 * np.sin(np.pi * np.clip(2 * q - 1, 0.0, 1.0)) * act / dist
      cx[b] += knock * dx
      cy[b] += knock * dy
    elif name == "follow":
      cx[a] += p * tri
      lag = (t >= s + 3) & act
      q_b = np.clip((t - s - 2) / (e - s - 2), 0.0, 1.0)
      cx[b] += p * (1 - np.abs(2 * q_b - 1)) * lag
    elif name == "lights_dim":
      light *= 1 - 0.55 * np.clip(np.minimum((t - s + 1) / 6, (e - t) / 6), 0.0, 1.0) * act
    elif name == "lights_flicker":
      light *= np.where(act, np.array([0.45, 0.8, 0.6])[(t - s) % 3], 1.0)
    elif name == "camera_shake":
      shift[act, 0] = np.array([2, -2, 1])[(t[act] - s) % 3]
      shift[act, 1] = np.where(t[act] % 4 < 2, 2, -2)
  # Feet stay put when an actor is squashed.
  cy += np.maximum(plan.size[:, None] - half_h, 0.0)
  item_xy = []
  for name, a, b, act, q, p in items:
    if name == "carry":
      x, y = cx[a] + 1.4 * half_w[a], cy[a]
    elif name == "throw":
      x = cx[a] + p * (1.4 * half_w[a] + 0.3 * q)
      y = cy[a] - 0.15 * np.sin(np.pi * q)
    else:
      x, y = cx[a] + (cx[b] - cx[a]) * q, cy[a] + (cy[b] - cy[a]) * q
    item_xy.append((x, y, act))
  return _State(cx, cy, half_w, half_h, angle, color_id, visible, item_xy, light, shift)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """bool, whether local coordinates (u, v) (units of the half-extents, v
  pointing down) fall inside a shape of SHAPES."""
  au, av = np.abs(u), np.abs(v)
  name = SHAPES[int(shape)]
  if name == "rectangle":
    return (au <= 0.7) & (av <= 1)
  if name == "disc":
    return u**2 + v**2 <= 1
  if name == "triangle":
    return (av <= 1) & (au <= (v + 1) / 2)
  if name == "cross":
    return ((au <= 0.3) & (av <= 1)) | ((av <= 0.3) & (au <= 1))
  return au + av <= 1  # diamond


def _grid(res: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Frame coordinates of the pixel centres, x [F, 1, W] and y [F, H, 1],
  moved by the camera's shift (pixels, [F, 2])."""
  pix = np.arange(res) + 0.5
  gx = (pix[None, None, :] + shift[:, 0, None, None]) / res
  gy = (pix[None, :, None] + shift[:, 1, None, None]) / res
  return gx, gy


def _actors(plan: Plan, st: _State, res: int) -> tuple[np.ndarray, np.ndarray]:
  """Each actor's full (amodal) shape and its head dot, bool [N, F, H, W]."""
  gx, gy = _grid(res, st.shift)
  body, head = [], []
  for k in range(plan.num_actors):
    ex, ey = gx - st.cx[k, :, None, None], gy - st.cy[k, :, None, None]
    cos, sin = np.cos(st.angle[k])[:, None, None], np.sin(st.angle[k])[:, None, None]
    u = (ex * cos + ey * sin) / st.half_w[k, :, None, None]
    v = (-ex * sin + ey * cos) / st.half_h[k, :, None, None]
    inside = _inside(plan.shape[k], u, v) & st.visible[k, :, None, None]
    body.append(inside)
    head.append(inside & (u**2 + (v + 0.5) ** 2 <= 0.2))
  return np.stack(body), np.stack(head)


def _items(st: _State, res: int) -> np.ndarray:
  """Where any item is, bool [F, H, W]."""
  gx, gy = _grid(res, st.shift)
  out = np.zeros((len(st.light), res, res), bool)
  for x, y, on in st.items:
    near = (np.abs(gx - x[:, None, None]) <= 0.025) & (np.abs(gy - y[:, None, None]) <= 0.025)
    out |= near & on[:, None, None]
  return out


def _distractors(
  plan: Plan, t: np.ndarray, st: _State, res: int
) -> list[tuple[int, int, np.ndarray]]:
  """(shape, palette index, where it is bool [F, H, W]) of each distractor."""
  gx, gy = _grid(res, st.shift)
  frac = t / (plan.num_frames - 1)
  out = []
  for shape, x, y, dx, dy, size, c in plan.distractors:
    u = (gx - (x + dx * frac)[:, None, None]) / size
    v = (gy - (y + dy * frac)[:, None, None]) / size
    out.append((int(shape), int(c), _inside(shape, u, v)))
  return out


def _audio(plan: Plan, start: int, stop: int, rate: int = SAMPLE_RATE) -> np.ndarray:
  """Samples [start, stop) at `rate` Hz of a planned video's sound track,
  float32: the tones are functions of time, the noise is drawn per block."""
  out = np.zeros(stop - start, np.float32)
  if not plan.has_audio or stop <= start:
    return out
  # Noise comes in 0.1 s blocks, each from its own seed, so that a span of
  # samples draws only the blocks it overlaps.
  block = max(rate // 10, 1)
  for b in range(start // block, (stop - 1) // block + 1):
    noise = np.random.default_rng([plan.texture_seed, b]).normal(0, plan.noise, block)
    lo, hi = max(start, b * block), min(stop, (b + 1) * block)
    out[lo - start : hi - start] = noise[lo - b * block : hi - b * block]
  time = np.arange(start, stop) / rate
  for c, _, _, s, e in plan.instances:
    name = CLASS_NAMES[c]
    if name not in SOUNDS:
      continue
    on = (time >= s / FPS) & (time < e / FPS)
    if name == "ring":
      on &= time % 0.1 < 0.05
    elif name == "knock":
      on &= time % 0.1 < 0.03
    out += np.where(on, 0.3 * np.sin(2 * np.pi * SOUNDS[name] * time), 0.0).astype(np.float32)
  return np.clip(out, -1.0, 1.0)


def _background(plan: Plan, size: int) -> np.ndarray:
  """float32 [size, size, 3], the static scene the camera looks at."""
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  lerp = coords[:, None, None]
  i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  name = TEXTURES[plan.texture]
  if name == "noise":
    texture = np.random.default_rng(plan.texture_seed).normal(0, 0.05, (size, size))
  elif name == "stripes":
    texture = ((i + j) // 2 % 2) * 0.1 - 0.05
  elif name == "checker":
    texture = ((i // 3 + j // 3) % 2) * 0.1 - 0.05
  else:
    texture = np.zeros((size, size))
  bg = plan.bg_colors[0] * (1 - lerp) + plan.bg_colors[1] * lerp + texture[..., None]
  return bg.astype(np.float32)


def _render(plan: Plan, t: np.ndarray, res: int) -> np.ndarray:
  """Renders frames `t` ([F] int) of a planned video as uint8 [F, res, res, 3]."""
  st = _state(plan, t)
  margin = 2  # the camera shakes by up to 2 pixels
  bg = _background(plan, res + 2 * margin)
  rows = np.arange(res)[None, :] + margin + st.shift[:, 1:]
  cols = np.arange(res)[None, :] + margin + st.shift[:, :1]
  frames = bg[rows[:, :, None], cols[:, None, :]]
  for _, c, inside in _distractors(plan, t, st, res):
    frames = np.where(inside[..., None], PALETTE[c] * 0.5 + 0.15, frames)
  body, head = _actors(plan, st, res)
  for k in range(plan.num_actors):
    color = _COLORS[st.color_id[k]][:, None, None]
    frames = np.where(body[k, ..., None], color, frames)
    frames = np.where(head[k, ..., None], color * 0.3, frames)
  frames = np.where(_items(st, res)[..., None], _ITEM_COLOR, frames)
  frames = frames * st.light[:, None, None, None]
  return (np.clip(frames, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


class SceneVideos(base.PlannedVideos):
  """One split of the scenes dataset as a grain random-access source.

  Records hold the `base.VideoSource` keys plus `instances` (int32 [S, 5]) and `plan`;
  boxes, masks, per-actor labels and sound are computed by the methods below
  only when asked: it provides every extra of `pipeline.EXTRAS`.

  Attributes:
    split: "train", "val" or "test".
    seed: dataset seed; (seed, split, index) fixes a video.
    num_videos: number of videos in the split.
    resolution: frame height and width in pixels.
    min_frames, max_frames: the range of video lengths.
    sample_rate: Hz of the sound track (`config.data.audio.sample_rate`);
      the tones are the same at any rate, the noise is drawn per rate.
    single_label: annotate each video with one activity only, its dominant
      one (the longest in total, ties to the lower class id), as Moments in
      Time annotates what Multi-Moments in Time labels fully: the labels and
      segments keep that class alone (the video and its extras are the same).
  """

  extras = ("boxes", "actor_labels", "masks", "audio")
  max_actors = MAX_ACTORS

  def __init__(
    self,
    split: str,
    *,
    seed: int = 0,
    num_videos: int = 1024,
    resolution: int = 48,
    min_frames: int = 96,
    max_frames: int = 160,
    sample_rate: int = SAMPLE_RATE,
    single_label: bool = False,
  ):
    if not 64 <= min_frames <= max_frames:
      raise ValueError(f"need 64 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    super().__init__(split, seed, num_videos)
    self.resolution = resolution
    self.min_frames = min_frames
    self.max_frames = max_frames
    self.sample_rate = sample_rate
    self.single_label = single_label

  def __repr__(self) -> str:
    return (
      f"SceneVideos(split={self.split!r}, seed={self.seed}, num_videos={self.num_videos}, "
      f"resolution={self.resolution}, min_frames={self.min_frames}, "
      f"max_frames={self.max_frames}, sample_rate={self.sample_rate})"
    )

  @property
  def class_names(self) -> Sequence[str]:
    return CLASS_NAMES

  def _draw(self, index: int) -> Plan:
    return _plan(self.seed, self.split, index, self.min_frames, self.max_frames)

  def _labelled(self, plan: Plan) -> np.ndarray:
    """The instances the video is annotated with: all, or with
    `single_label` those of its dominant class."""
    inst = plan.instances
    if not self.single_label or not len(inst):
      return inst
    length = np.bincount(inst[:, 0], weights=inst[:, 4] - inst[:, 3], minlength=len(CLASS_NAMES))
    return inst[inst[:, 0] == np.argmax(length)]

  def label_matrix(self) -> np.ndarray:
    if not self.single_label:
      return super().label_matrix()
    if self._labels is None:
      labels = np.zeros((self.num_videos, len(CLASS_NAMES)), np.int32)
      for i in range(self.num_videos):
        labels[i, self._labelled(self.plan(i))[:, 0]] = 1
      self._labels = labels
    return self._labels

  def __getitem__(self, index: int) -> base.Record:
    plan = self.plan(index)
    inst = self._labelled(plan)
    labels = np.zeros(len(CLASS_NAMES), np.int32)
    labels[inst[:, 0]] = 1
    segments = np.concatenate([inst[:, :1], inst[:, 3:] / FPS], axis=1)
    return {
      "id": self._video_id(index),
      "index": int(index),
      "plan": plan,
      "labels": labels,
      "segments": segments.astype(np.float32),
      "instances": plan.instances,
      "has_audio": plan.has_audio,
      "num_frames": plan.num_frames,
      "fps": FPS,
    }

  def load_frames(
    self, record: base.Record, indices: np.ndarray, short_side: int | None = None
  ) -> np.ndarray:
    del short_side  # rendered at the dataset's resolution
    return _render(self.plan_of(record), np.asarray(indices), self.resolution)

  def boxes(self, record: base.Record, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each actor's box at frames `indices` ([F]).

    Returns:
      boxes: float32 [F, MAX_ACTORS, 4], [y1, x1, y2, x2] in [0, 1], the
        pixel-edge bounds of the actor's whole shape (occluded parts
        included, the frame's border cutting it); zeros where not valid.
      valid: bool [F, MAX_ACTORS], the actor exists and has pixels in frame.
    """
    plan = self.plan_of(record)
    body, _ = _actors(plan, _state(plan, np.asarray(indices)), self.resolution)
    box, valid = transforms.region_boxes(body)  # [N, F, 4], [N, F]
    out = np.zeros((len(indices), MAX_ACTORS, 4), np.float32)
    out[:, : plan.num_actors] = box.transpose(1, 0, 2)
    out_valid = np.zeros((len(indices), MAX_ACTORS), bool)
    out_valid[:, : plan.num_actors] = valid.T
    return out, out_valid

  def masks(self, record: base.Record, indices: np.ndarray) -> np.ndarray:
    """Instance ids per pixel at frames `indices`, int32 [F, H, W]: 0 for the
    background, distractors and items, k + 1 where actor k is visible."""
    plan = self.plan_of(record)
    st = _state(plan, np.asarray(indices))
    body, _ = _actors(plan, st, self.resolution)
    ids = np.zeros(body.shape[1:], np.int32)
    for k in range(plan.num_actors):
      ids = np.where(body[k], k + 1, ids)
    return np.where(_items(st, self.resolution), 0, ids)

  def actor_labels(self, record: base.Record, indices: np.ndarray) -> np.ndarray:
    """Each actor's active labels at frames `indices`, int32 [F, MAX_ACTORS,
    A]: its person-level activities and interactions (scene-level ones
    belong to no actor)."""
    t = np.asarray(indices)
    out = np.zeros((len(t), MAX_ACTORS, len(CLASS_NAMES)), np.int32)
    for c, a, b, s, e in record["instances"]:
      act = (t >= s) & (t < e)
      for k in (a, b):
        if k >= 0:
          out[act, k, c] = 1
    return out

  def audio(self, record: base.Record, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the video's sound track at `sample_rate`,
    float32 [stop - start] in [-1, 1]; zeros when it has none."""
    return _audio(self.plan_of(record), start, stop, self.sample_rate)

  def concepts(self, record: base.Record, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Concept masks at frames `indices` (see the module docstring).

    Returns:
      {"shape", "color", "texture", "action"}: int32 [F, H, W] each.
    """
    plan = self.plan_of(record)
    t = np.asarray(indices)
    st = _state(plan, t)
    body, head = _actors(plan, st, self.resolution)
    shape = np.zeros(body.shape[1:], np.int32)
    color = np.zeros_like(shape)
    for s, c, inside in _distractors(plan, t, st, self.resolution):
      shape = np.where(inside, s + 1, shape)
      color = np.where(inside, c + 1, color)
    active = self.actor_labels(record, t)
    doing = (active.argmax(-1) + 1) * active.any(-1)  # [F, MAX_ACTORS]
    action = np.zeros_like(shape)
    for k in range(plan.num_actors):
      shape = np.where(body[k], plan.shape[k] + 1, shape)
      color = np.where(body[k], np.where(head[k], 0, st.color_id[k, :, None, None] + 1), color)
      action = np.where(body[k], doing[:, k, None, None], action)
    items = _items(st, self.resolution)
    shape, color, action = (np.where(items, 0, m) for m in (shape, color, action))
    texture = np.where((shape == 0) & ~items, plan.texture + 1, 0)
    masks = {"shape": shape, "color": color, "texture": texture, "action": action}
    return {name: m.astype(np.int32) for name, m in masks.items()}


# Export ----------------------------------------------------------------------

# The columns of the official Charades CSVs, in their order.
CHARADES_COLUMNS = (
  "id",
  "subject",
  "scene",
  "quality",
  "relevance",
  "verified",
  "script",
  "objects",
  "descriptions",
  "actions",
  "length",
)
# Beside an export: its settings. It marks the folder as one, and a rerun
# with the same settings keeps the videos already written.
EXPORT_MANIFEST = "scenes_export.json"


def _write_text(path: str, text: str) -> None:
  # Renamed into place: a file under its final name is always complete.
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def _write_jpeg(path: str, image: np.ndarray) -> None:
  # JPEG quality 95, renamed into place as `_write_text`.
  Image.fromarray(image).save(f"{path}.tmp", format="JPEG", quality=95)
  os.replace(f"{path}.tmp", path)


def _export_splits(
  fmt: str,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
) -> tuple[dict[str, SceneVideos], dict]:
  """An export's "train" and "test" splits and its manifest settings."""
  shape = {"resolution": resolution, "min_frames": min_frames, "max_frames": max_frames}
  splits = {
    split: SceneVideos(split, seed=seed, num_videos=n, **shape)
    for split, n in (("train", num_train), ("test", num_test))
  }
  return splits, {"format": fmt, "seed": seed, **shape}


def _open_export(out_dir: str, settings: dict, overwrite: bool, media_dir: str) -> dict | None:
  """Checks `out_dir` may take an export of `settings`, creates it and
  `media_dir`, writes the manifest; returns the previous export's settings
  (None if none), whose files a rerun with the same settings keeps."""
  manifest = os.path.join(out_dir, EXPORT_MANIFEST)
  previous = None
  if os.path.exists(manifest):
    with open(manifest, encoding="utf-8") as f:
      previous = json.load(f)
  if os.path.isdir(out_dir) and os.listdir(out_dir) and previous != settings and not overwrite:
    what = "files that are not a scenes export" if previous is None else f"an export of {previous}"
    raise FileExistsError(f"{out_dir} holds {what}; pass --overwrite to write over it")
  os.makedirs(media_dir, exist_ok=True)
  _write_text(manifest, json.dumps(settings, indent=2) + "\n")
  return previous


def _charades_row(record: base.Record) -> dict[str, str]:
  """A record as a row of CHARADES_COLUMNS. The columns the scenes have no
  counterpart for (subject, scene, ratings, script, objects, descriptions)
  are empty; every video is `verified`: its labels are true by construction."""
  actions = ";".join(f"c{int(c):03d} {s:.2f} {e:.2f}" for c, s, e in record["segments"])
  row = dict.fromkeys(CHARADES_COLUMNS, "")
  row.update(
    id=record["id"],
    verified="Yes",
    actions=actions,
    length=f"{record['num_frames'] / FPS:.2f}",
  )
  return row


def export_charades(
  out_dir: str,
  *,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
  overwrite: bool = False,
) -> dict[str, int]:
  """Writes the "train" and "test" splits as a Charades folder.

  The names are `config.data.charades`'s defaults, so the `charades` source
  reads the folder with only `root` set:
    Charades_v1_classes.txt: "c000 walk_left" lines in CLASS_NAMES order.
    Charades_v1_{train,test}.csv: one row a video in index order, ids as
      `SceneVideos` gives them ("train000012"), the official columns;
      `actions` "c003 1.25 1.50;c010 0.00 3.00" from the segments (seconds,
      2 decimals), `length` in seconds.
    Charades_v1_480/ID.mp4: every frame at FPS (`video.write_video`: H.264,
      crf 10), and when the video has sound its SAMPLE_RATE mono track as
      AAC; no audio stream otherwise.
    EXPORT_MANIFEST: the settings that fix the videos' content.

  Videos are written first, each under a temporary name and then renamed,
  and the annotations last: an interrupted export has no CSVs, and running it
  again keeps the videos already written and writes the rest.

  Args:
    out_dir: the folder; created if missing. A folder that holds anything but
      an export of the same seed, resolution and frame range is refused
      unless `overwrite` (which writes over files of the same names, and
      rewrites every video, but deletes nothing).
    seed, resolution, min_frames, max_frames: as `SceneVideos`.
    num_train, num_test: videos of each split.

  Returns:
    {"videos", "written", "kept"}: counts of videos in the export, written
    by this call, and kept from an earlier one.
  """
  if resolution % 2:
    raise ValueError(f"resolution must be even for H.264 (yuv420p), got {resolution}")
  splits, settings = _export_splits(
    "charades", seed, num_train, num_test, resolution, min_frames, max_frames
  )
  names = config_lib.data_config().charades
  videos_dir = os.path.join(out_dir, names.videos)
  previous = _open_export(out_dir, settings, overwrite, videos_dir)
  summary = _write_mp4s(splits, videos_dir, names.video_ext, keep=previous == settings)
  for split, videos in splits.items():
    table = io.StringIO()
    writer = csv.DictWriter(table, CHARADES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_charades_row(videos[i]) for i in range(len(videos)))
    _write_text(os.path.join(out_dir, names[f"{split}_csv"]), table.getvalue())
  classes = "".join(f"c{i:03d} {name}\n" for i, name in enumerate(CLASS_NAMES))
  _write_text(os.path.join(out_dir, names.classes), classes)
  return summary


def _write_mp4s(splits: dict[str, SceneVideos], videos_dir: str, ext: str, keep: bool) -> dict:
  """Every video of `splits` as `videos_dir/ID{ext}` (`video.write_video`:
  H.264 crf 10 at FPS, with its SAMPLE_RATE mono AAC track when it has
  sound), each written under a temporary name and renamed; with `keep`,
  files already there are kept. Returns {"videos", "written", "kept"}."""
  written = kept = 0
  for split, videos in splits.items():
    for i in tqdm.tqdm(range(len(videos)), desc=f"scenes {split}", unit="video"):
      record = videos[i]
      path = os.path.join(videos_dir, record["id"] + ext)
      if keep and os.path.exists(path):
        kept += 1
        continue
      audio = None
      if record["has_audio"]:
        audio = videos.audio(record, 0, round(record["num_frames"] / FPS * SAMPLE_RATE))
      video.write_video(path, videos.video(i), FPS, audio=audio, sample_rate=SAMPLE_RATE)
      written += 1
  return {"videos": written + kept, "written": written, "kept": kept}


def export_csv(
  out_dir: str,
  *,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
  overwrite: bool = False,
) -> dict[str, int]:
  """Writes the "train" and "test" splits in the generic CSV layout
  (`config.data.csv`; configs/hockey.py:runlocal reads it):
    classes.txt: CLASS_NAMES, one a line;
    train.csv, test.csv: a header `id,path,labels`, then a row a video: its
      id, `ID.mp4` and its video-level class names joined by ";";
    videos/ID.mp4: as `export_charades`;
    EXPORT_MANIFEST: the settings.
  Args and returns: as `export_charades`."""
  if resolution % 2:
    raise ValueError(f"resolution must be even for H.264 (yuv420p), got {resolution}")
  splits, settings = _export_splits(
    "csv", seed, num_train, num_test, resolution, min_frames, max_frames
  )
  videos_dir = os.path.join(out_dir, "videos")
  previous = _open_export(out_dir, settings, overwrite, videos_dir)
  summary = _write_mp4s(splits, videos_dir, ".mp4", keep=previous == settings)
  for split, videos in splits.items():
    rows = ["id,path,labels"]
    for i in range(len(videos)):
      record = videos[i]
      labels = ";".join(CLASS_NAMES[c] for c in np.flatnonzero(record["labels"]))
      rows.append(f"{record['id']},{record['id']}.mp4,{labels}")
    _write_text(os.path.join(out_dir, f"{split}.csv"), "".join(r + "\n" for r in rows))
  _write_text(os.path.join(out_dir, "classes.txt"), "".join(n + "\n" for n in CLASS_NAMES))
  return summary


# AVA's label map of an export: the actor-level classes (person-level and
# interactions), official ids 1.. in CLASS_NAMES order.
AVA_CLASSES = PERSON + INTERACTIONS


def _ava_split(videos: SceneVideos, frames_dir: str, keep: bool) -> tuple[list, list, list, int]:
  """One split's AVA rows, writing its frame folders (unless `keep` and
  the folder is complete): (ground-truth rows, person-box rows, excluded
  keyframes, videos written)."""
  gt, boxes, excluded, written = [], [], [], 0
  classes = [CLASS_NAMES.index(name) for name in AVA_CLASSES]
  for i in tqdm.tqdm(range(len(videos)), desc=f"scenes {videos.split}", unit="video"):
    record = videos[i]
    vid, n = record["id"], record["num_frames"]
    folder = os.path.join(frames_dir, vid)
    files = [os.path.join(folder, f"{vid}_{k + 1:06d}.jpg") for k in range(n)]
    if not (keep and all(os.path.exists(f) for f in files)):
      os.makedirs(folder, exist_ok=True)
      for f, frame in zip(files, videos.video(i)):
        _write_jpeg(f, frame)
      written += 1
    # Keyframes: whole seconds of the video, frame 0 at SEGMENT_START.
    seconds = np.arange(1, (n - 1) // FPS + 1)
    idx = (seconds * FPS).astype(np.int64)
    box, valid = videos.boxes(record, idx)
    labels = videos.actor_labels(record, idx)[..., classes]
    for s, b, v, lab in zip(seconds, box, valid, labels):
      ts = ava.SEGMENT_START + int(s)
      annotated = False
      for actor in np.flatnonzero(v):
        y1, x1, y2, x2 = (float(c) for c in b[actor])
        xyxy = f"{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f}"
        # Every person seen is a detection (an oracle person detector); the
        # labelled ones are the ground truth, as AVA annotates them.
        boxes.append(f"{vid},{ts:04d},{xyxy},,1.0")
        for c in np.flatnonzero(lab[actor]):
          gt.append(f"{vid},{ts:04d},{xyxy},{int(c) + 1},{int(actor)}")
          annotated = True
      if not annotated:
        excluded.append(f"{vid},{ts:04d}")
  return gt, boxes, excluded, written


def export_ava(
  out_dir: str,
  *,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
  overwrite: bool = False,
) -> dict[str, int]:
  """Writes the "train" and "test" splits as an AVA folder (train and val).

  The names are `config.data.ava`'s defaults, so the `ava` source reads the
  folder with `root`, `fps` = FPS and the person-box files set:
    frames/ID/ID_000001.jpg: every frame (JPEG, quality 95), PySlowFast's
      layout; frame 0 is at 900 s (`ava.SEGMENT_START`), so keyframe second
      s of a video (1 <= s, s * FPS < frames) is timestamp 900 + s.
    ava_action_list_v2.2_for_activitynet_2019.pbtxt: AVA_CLASSES, ids 1..
    ava_{train,val}_v2.2.csv: per keyframe, every actor drawn with labels,
      one row per label: `video,timestamp,x1,y1,x2,y2,action_id,actor`
      (boxes to 3 decimals, as AVA's).
    ava_{train,val}_excluded_timestamps_v2.2.csv: keyframes without a
      labelled actor.
    ava_{train,val}_predicted_boxes.csv: every actor drawn at a keyframe,
      labelled or not, with score 1.0: the person boxes of a perfect
      detector (AVA's come from a Faster R-CNN).
    EXPORT_MANIFEST: the settings that fix the content.

  Frame folders are written first (a rerun with the same settings keeps
  complete ones) and the annotations last.

  Args: as `export_charades`; the "test" split becomes AVA's "val".

  Returns:
    {"videos", "written", "kept"}.
  """
  splits, settings = _export_splits(
    "ava", seed, num_train, num_test, resolution, min_frames, max_frames
  )
  names = config_lib.data_config().ava
  frames_dir = os.path.join(out_dir, names.frames)
  previous = _open_export(out_dir, settings, overwrite, frames_dir)
  written = total = 0
  for split, part in (("train", "train"), ("test", "val")):
    videos = splits[split]
    gt, boxes, excluded, done = _ava_split(videos, frames_dir, keep=previous == settings)
    written, total = written + done, total + len(videos)
    _write_text(os.path.join(out_dir, names[f"{part}_csv"]), "".join(r + "\n" for r in gt))
    _write_text(
      os.path.join(out_dir, names[f"{part}_exclusions"]), "".join(r + "\n" for r in excluded)
    )
    _write_text(
      os.path.join(out_dir, f"ava_{part}_predicted_boxes.csv"), "".join(r + "\n" for r in boxes)
    )
  labelmap = "".join(
    f'item {{\n  name: "{name}"\n  id: {i}\n}}\n' for i, name in enumerate(AVA_CLASSES, 1)
  )
  _write_text(os.path.join(out_dir, names.labelmap), labelmap)
  return {"videos": total, "written": written, "kept": total - written}


# A Volleyball export's vocabularies (`config.data.volleyball.actions` and
# `.activities` of configs/volleyball.py:runlocal): each player's action is
# its actor-level activity at the target frame, or "idle"; the group activity
# is the side of the frame ("r", "l") of the actor that started its current
# activity last, and that activity's kind.
VOLLEYBALL_ACTIONS = AVA_CLASSES + ("idle",)
GROUP_KINDS = {
  "move": ("walk_left", "walk_right", "pace", "meet", "follow"),
  "hop": ("jump", "land", "crouch", "stand_up"),
  "turn": ("wave", "spin", "shake", "inflate", "shrink"),
  "show": ("flash", "vanish", "change_color", "carry", "throw", "push", "hand_over"),
}
VOLLEYBALL_ACTIVITIES = tuple(f"{side}_{kind}" for side in ("r", "l") for kind in GROUP_KINDS)
_KIND_OF = {name: kind for kind, names in GROUP_KINDS.items() for name in names}


def _volleyball_clip(videos: SceneVideos, record: base.Record) -> tuple[int, str, list] | None:
  """(target frame, group activity, [(x, y, w, h, action)] per actor drawn
  at it, boxes in pixels) of one video, or None when no actor is busy in
  a frame with HALF_WINDOW frames each side. The target is the busy frame
  nearest the middle."""
  n, half, res = record["num_frames"], volleyball.HALF_WINDOW, videos.resolution
  t = np.arange(half, n - half)
  box, valid = videos.boxes(record, t)
  classes = [CLASS_NAMES.index(name) for name in AVA_CLASSES]
  busy = videos.actor_labels(record, t)[..., classes].any(-1) & valid  # [F, MAX_ACTORS]
  frames = np.flatnonzero(busy.any(-1))
  if not len(frames):
    return None
  f = frames[np.argmin(np.abs(t[frames] - n // 2))]
  target = int(t[f])
  # Each actor's current instance at the target: (start, class).
  current = {}
  for c, a, b, start, end in record["instances"]:
    if start <= target < end and CLASS_NAMES[c] in _KIND_OF:
      for k in (a, b):
        if k >= 0 and (k not in current or start > current[k][0]):
          current[k] = (int(start), int(c))
  acting = max((k for k in current if valid[f, k]), key=lambda k: (current[k][0], -k))
  y1, x1, y2, x2 = box[f, acting]
  group = f"{'l' if (x1 + x2) / 2 < 0.5 else 'r'}_{_KIND_OF[CLASS_NAMES[current[acting][1]]]}"
  players = []
  for k in np.flatnonzero(valid[f]):
    y1, x1, y2, x2 = (int(round(float(v) * res)) for v in box[f, k])
    action = CLASS_NAMES[current[k][1]] if k in current else "idle"
    players.append((x1, y1, max(x2 - x1, 1), max(y2 - y1, 1), action))
  return target, group, players


def export_volleyball(
  out_dir: str,
  *,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
  overwrite: bool = False,
) -> dict[str, int]:
  """Writes the "train" and "test" splits as a Volleyball folder.

  The public layout (`data/volleyball.py`), read by the `volleyball` source
  with `root` and the export's vocabularies set (configs/volleyball.py):
    VIDEO_ID/annotations.txt for all 55 ids: the "train" split's videos go
      to the official train and val ids in turn, the "test" split's to the
      test ids; a video's line `FRAME.jpg GROUP x y w h ACTION ...`, one
      group per actor drawn at the target frame (`_volleyball_clip`; boxes
      the pixel-edge bounds, integers as the public files');
    VIDEO_ID/FRAME/N.jpg: the 41 frames around the target (N = FRAME - 20
      .. FRAME + 20; JPEG quality 95); FRAME = 100 (k + 1) for the k-th clip
      of a video id.
    actions.txt, activities.txt: VOLLEYBALL_ACTIONS and _ACTIVITIES, one a
      line (`config.data.volleyball.actions` and `.activities`);
    EXPORT_MANIFEST: the settings.
  A video with no busy actor at least HALF_WINDOW frames from its ends is
  left out (counted in "skipped"). Frames are written first, annotations
  last; a rerun with the same settings keeps complete clip folders.

  Args: as `export_charades`; min_frames must leave 41 frames.

  Returns:
    {"videos", "written", "kept", "skipped"}.
  """
  splits, settings = _export_splits(
    "volleyball", seed, num_train, num_test, resolution, min_frames, max_frames
  )
  previous = _open_export(out_dir, settings, overwrite, out_dir)
  ids = {
    "train": volleyball.OFFICIAL_SPLITS["train"] + volleyball.OFFICIAL_SPLITS["val"],
    "test": volleyball.OFFICIAL_SPLITS["test"],
  }
  lines: dict[int, list[str]] = {vid: [] for part in ids.values() for vid in part}
  written = kept = skipped = 0
  half = volleyball.HALF_WINDOW
  for split, videos in splits.items():
    for i in tqdm.tqdm(range(len(videos)), desc=f"scenes {split}", unit="video"):
      record = videos[i]
      clip = _volleyball_clip(videos, record)
      if clip is None:
        skipped += 1
        continue
      target, group, players = clip
      vid = ids[split][i % len(ids[split])]
      frame = 100 * (len(lines[vid]) + 1)
      folder = os.path.join(out_dir, str(vid), str(frame))
      files = [volleyball.frame_path(folder, frame + o) for o in range(-half, half + 1)]
      if previous == settings and all(os.path.exists(f) for f in files):
        kept += 1
      else:
        os.makedirs(folder, exist_ok=True)
        pixels = videos.load_frames(record, np.arange(target - half, target + half + 1))
        for f, image in zip(files, pixels):
          _write_jpeg(f, image)
        written += 1
      fields = " ".join(f"{x} {y} {w} {h} {action}" for x, y, w, h, action in players)
      lines[vid].append(f"{frame}.jpg {group} {fields}")
  for name, vocabulary in (("actions", VOLLEYBALL_ACTIONS), ("activities", VOLLEYBALL_ACTIVITIES)):
    _write_text(os.path.join(out_dir, f"{name}.txt"), "".join(n + "\n" for n in vocabulary))
  for vid, rows in lines.items():
    os.makedirs(os.path.join(out_dir, str(vid)), exist_ok=True)
    _write_text(
      os.path.join(out_dir, str(vid), volleyball.ANNOTATIONS), "".join(r + "\n" for r in rows)
    )
  return {"videos": written + kept, "written": written, "kept": kept, "skipped": skipped}


# Names of the colour ids of `concepts` (the palette, then white).
COLOR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "lime", "white")
# Broden categories: (NetDissect's name, the `concepts` key, label names).
BRODEN_CATEGORIES = (
  ("object", "shape", SHAPES),
  ("color", "color", COLOR_NAMES),
  ("texture", "texture", TEXTURES),
  ("action", "action", CLASS_NAMES),
)
# A Broden export keeps every BRODEN_FRAME_STEP-th frame: the rate the
# scenes configs train at, so consecutive images make a clip.
BRODEN_FRAME_STEP = 4


def export_broden(
  out_dir: str,
  *,
  seed: int,
  num_train: int,
  num_test: int,
  resolution: int,
  min_frames: int,
  max_frames: int,
  overwrite: bool = False,
) -> dict[str, int]:
  """Writes the "test" split as a Broden folder (`broden.write`) for network
  dissection: every BRODEN_FRAME_STEP-th frame of each video as an image
  `ID/fFRAME.png`, with its `concepts` as the categories object (the shape
  seen), color, texture (the background's, where seen) and action (the class
  an actor performs, on its visible pixels). A video's images, in name
  order, are its frames at rate BRODEN_FRAME_STEP: `explain dissect` cuts
  them into clips.

  Args:
    out_dir: the folder; one that holds files is refused unless `overwrite`.
    seed, resolution, min_frames, max_frames: as `SceneVideos`.
    num_train: unused (dissection needs no training images); kept for the
      shared export settings.
    num_test: videos exported.

  Returns:
    {"videos", "written", "kept"}: videos exported (all written).
  """
  del num_train
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} is not empty (pass --overwrite to write into it)")
  src = SceneVideos(
    "test",
    seed=seed,
    num_videos=num_test,
    resolution=resolution,
    min_frames=min_frames,
    max_frames=max_frames,
  )

  def items():
    for i in tqdm.trange(len(src), desc="broden", leave=False):
      record = src[i]
      idx = np.arange(0, record["num_frames"], BRODEN_FRAME_STEP)
      frames = src.load_frames(record, idx)
      concepts = src.concepts(record, idx)
      for j, t in enumerate(idx):
        masks = {cat: concepts[key][j] for cat, key, _ in BRODEN_CATEGORIES}
        yield broden.Item(f"{record['id']}/f{t:04d}.png", "test", frames[j], masks)

  broden.write(out_dir, items(), {cat: names for cat, _, names in BRODEN_CATEGORIES})
  return {"videos": len(src), "written": len(src), "kept": 0}


# Formats of `export --format`, each a function of (out_dir, **EXPORT_SETTINGS,
# overwrite).
EXPORTERS = {
  "charades": export_charades,
  "csv": export_csv,
  "ava": export_ava,
  "broden": export_broden,
  "volleyball": export_volleyball,
}
# The export's settings, whose defaults are `config.data.scenes`'s.
EXPORT_SETTINGS = ("seed", "num_train", "num_test", "resolution", "min_frames", "max_frames")


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m mlar_jax.data.scenes export --format FORMAT --out DIR` (EXPORTERS)."""
  defaults = config_lib.data_config().scenes
  parser = argparse.ArgumentParser(
    prog="python -m mlar_jax.data.scenes", description="The scenes dataset as files."
  )
  commands = parser.add_subparsers(dest="command", required=True)
  export = commands.add_parser(
    "export", help="write the train and test splits in another dataset's layout"
  )
  export.add_argument("--format", required=True, choices=sorted(EXPORTERS))
  export.add_argument("--out", required=True, help="folder to write (created if missing)")
  for key in EXPORT_SETTINGS:
    export.add_argument(
      f"--{key}", type=int, default=defaults[key], help=f"default: config.data.scenes.{key}"
    )
  export.add_argument(
    "--overwrite",
    action="store_true",
    help="write into a folder that holds other files or another export (deletes nothing)",
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    summary = EXPORTERS[args.format](
      args.out, overwrite=args.overwrite, **{key: getattr(args, key) for key in EXPORT_SETTINGS}
    )
  except (FileExistsError, ValueError) as e:  # bad settings or folder: one line, no trace
    sys.exit(f"error: {e}")
  print(
    f"{args.out}: {summary['videos']} scenes videos as {args.format} ({summary['written']} "
    f"written, {summary['kept']} kept"
    + (f", {summary['skipped']} skipped" if summary.get("skipped") else "")
    + f") in {time.perf_counter() - start:.1f} s"
  )


if __name__ == "__main__":
  main()
