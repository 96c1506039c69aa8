"""What the `python -m mlar_jax.explain` subcommands do, as functions of a
config, a workdir and their options (`__main__.py` parses the flags).

Each restores a checkpoint of the workdir (the latest that restores, or a
given step) into the model the config builds, reads clips of a split the way
evaluation does (`pipeline.VideoViews`: the same frames, view and extras),
runs the model once per video (`cam.forward_fn`) and writes into
`WORKDIR/explain/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from mlar_jax import checkpointing
from mlar_jax.data import base, broden, pipeline, sampling, transforms
from mlar_jax.explain import cam, dissect, localisation, plots
from mlar_jax.explain import report as report_lib
from mlar_jax.models import registry as models

Variables = dict[str, Any]
# The per-frame ground truth the localisation needs, when the source has it.
GROUND_TRUTH = ("boxes", "actor_labels", "masks")


def restore(
  config: ml_collections.ConfigDict, workdir: str, step: int = -1
) -> tuple[int, Variables]:
  """The model variables of checkpoint `step` of `workdir` (-1: the newest
  that restores), as host arrays.

  Raises:
    FileNotFoundError: no such checkpoint.
    checkpointing.CheckpointError: none restores.
  """
  directory, steps = checkpointing.saved_steps(workdir, config.checkpoint, step)
  return checkpointing.load_saved(directory, steps, step)


@dataclasses.dataclass
class Explained:
  """A restored model and the split it looks at.

  Attributes:
    config: the experiment config.
    workdir: where `explain/` goes.
    step: the checkpoint's step.
    variables: the model's variables.
    model: the classifier.
    forward: (variables, normalised video [B, T, S, S, 3]) -> `cam.Forward`.
    source: the split's videos.
    extras: the ground truth read with each clip.
  """

  config: ml_collections.ConfigDict
  workdir: str
  step: int
  variables: Variables
  model: Any
  forward: Callable[[Variables, Any], cam.Forward]
  source: base.VideoSource
  extras: pipeline.Extras

  @property
  def out_dir(self) -> str:
    return os.path.join(self.workdir, "explain")

  def run(self, clips: Sequence[dict[str, np.ndarray]]) -> cam.Forward:
    """The forward pass of clips (`clips_of`) as one batch."""
    video = np.stack([c["video"] for c in clips])
    data = self.config.data
    return self.forward(self.variables, transforms.normalize(video, data.mean, data.std))


def load(config: ml_collections.ConfigDict, workdir: str, split: str, step: int = -1) -> Explained:
  """Restores the workdir's model and opens `split` (module docstring)."""
  step, variables = restore(config, workdir, step)
  source = pipeline.make_source(config.data, split)
  # The class statistics only initialise the MLAR mask, which the
  # checkpoint's variables hold.
  model = models.build_model(config.model, source.num_classes)
  names = tuple(n for n in GROUND_TRUTH if n in source.extras)
  logging.info("Explaining step %d of %s on %s (%d videos)", step, workdir, split, len(source))
  return Explained(
    config,
    workdir,
    step,
    variables,
    model,
    cam.forward_fn(model),
    source,
    pipeline.Extras(names, config.data.max_actors, 0),
  )


def picture_plan(config: ml_collections.ConfigDict) -> tuple[sampling.View, ...]:
  """One clip per video for pictures: the centre clip at the first rate."""
  return sampling.view_plan(((config.data.rates[0], 1),), 1)


def clips_of(ex: Explained, position: int, plan: Sequence[sampling.View]) -> list[dict[str, Any]]:
  """The clips of video `position` in the views of `plan`, as evaluation
  reads them, each with "window_labels" int32 [A] (the activities its
  frames overlap) and "indices" [T] (its frames in the video)."""
  data = ex.config.data
  views = pipeline.VideoViews(
    ex.source,
    tuple(plan),
    data.num_frames,
    data.eval_short_side,
    data.crop_size,
    pipeline.DecodeErrors(data.max_error_ratio),
    ex.extras,
  )
  record = ex.source[position]
  n, fps = ex.source.video_info(record)
  out = []
  for clip in views.map(record):
    idx = sampling.view_indices(n, data.num_frames, plan[int(clip["view"])])
    labels = pipeline.window_labels(record, idx, fps) if "segments" in record else record["labels"]
    out.append({**clip, "window_labels": np.asarray(labels, np.int32), "indices": idx})
  return out


def video_positions(source: base.VideoSource, videos: str, num: int) -> list[int]:
  """The positions of the comma-separated video ids `videos`, or else of the
  first `num` videos (all: num <= 0)."""
  ids = source.video_ids()
  if videos:
    where = {v: i for i, v in enumerate(ids)}
    wanted = [v.strip() for v in videos.split(",") if v.strip()]
    missing = [v for v in wanted if v not in where]
    if missing:
      raise ValueError(f"videos {missing} are not in the split; its first ids: {ids[:5]}")
    return [where[v] for v in wanted]
  return list(range(len(ids) if num <= 0 else min(num, len(ids))))


def _frame_maps(maps: np.ndarray, clip: dict[str, np.ndarray]) -> np.ndarray:
  """[..., t, h, w] feature-map maps -> normalised [..., T, S, S] at the
  clip's frames."""
  return cam.normalize(cam.upsample(maps, clip["video"].shape[:3]))


def predicted(scores: np.ndarray, threshold: float) -> np.ndarray:
  """The classes scoring >= threshold, best first; the best one when none
  does (a picture always shows something)."""
  order = np.argsort(-scores, kind="stable")
  keep = [int(c) for c in order if scores[c] >= threshold]
  return np.array(keep or [int(order[0])])


def mcam(
  ex: Explained,
  positions: Sequence[int],
  *,
  output: str | None = None,
  score_threshold: float = 0.5,
  distance_threshold: float = 1e-4,
  active_threshold: float = 0.5,
) -> list[str]:
  """Multi-label CAM pictures (`plots.mcam_grid`), one PNG per video in
  `explain/mcam/`, for the classes predicted on its centre clip.

  Returns:
    The paths written.
  """
  head = ex.config.model.head
  names = ex.source.class_names
  paths = []
  for pos in positions:
    (clip,) = clips_of(ex, pos, picture_plan(ex.config))
    fwd = ex.run([clip])
    if output is None:
      default = cam.DEFAULT_OUTPUT.get(head, "logits")
      output = default if default in fwd.outputs else "logits"
    if output not in fwd.outputs:
      raise ValueError(f"--output {output!r} is not one of the model's {sorted(fwd.outputs)}")
    scores = jax.nn.sigmoid(fwd.outputs[output][0])
    classes = predicted(np.asarray(scores), score_threshold)
    maps = _frame_maps(cam.class_maps(head, fwd, ex.variables, output)[0, classes], clip)
    kw = dict(distance_threshold=distance_threshold, active_threshold=active_threshold)
    separated = cam.multi_label_cam(maps, **kw)
    plain, _ = cam.multi_label_cam(maps, separate=False)
    vid = ex.source.video_ids()[pos]
    shown = [f"{names[c]} {scores[c]:.2f}" for c in classes]
    paths.append(
      plots.mcam_grid(
        os.path.join(ex.out_dir, "mcam", f"{ex.source.split}_{vid}.png"),
        clip["video"],
        shown,
        classes,
        maps,
        separated,
        plain,
        f"{vid} step {ex.step}: multi-label CAM of {head} head, output {output}",
      )
    )
  return paths


def _require_mlar(ex: Explained, what: str) -> None:
  if ex.config.model.head != "mlar":
    raise ValueError(f"{what} needs the MLAR head; this model's head is {ex.config.model.head!r}")


def activity_maps(
  ex: Explained,
  positions: Sequence[int],
  *,
  classes: str = "present",
  score_threshold: float = 0.5,
  threshold: float = 0.5,
) -> list[str]:
  """MLAR section 7 pictures: per video a PNG grid (frames x activities)
  and an animated GIF with one box per activity, in `explain/activity_maps/`.

  Args:
    ex: the restored model.
    positions: the videos.
    classes: "present" (the activities the clip overlaps) or "predicted"
      (scoring >= score_threshold on the head's output).
    score_threshold: of "predicted".
    threshold: the normalised map's region whose box is drawn.

  Returns:
    The paths written.
  """
  _require_mlar(ex, "activity-maps")
  names = ex.source.class_names
  paths = []
  for pos in positions:
    (clip,) = clips_of(ex, pos, picture_plan(ex.config))
    fwd = ex.run([clip])
    scores = np.asarray(jax.nn.sigmoid(fwd.outputs["logits"][0]))
    shown = np.flatnonzero(clip["window_labels"]) if classes == "present" else np.zeros(0, int)
    if not len(shown):
      shown = predicted(scores, score_threshold)
    maps = _frame_maps(cam.activity_maps(fwd, ex.variables)[0, shown], clip)
    boxes, valid = cam.region_boxes(maps, threshold)
    vid = ex.source.video_ids()[pos]
    stem = os.path.join(ex.out_dir, "activity_maps", f"{ex.source.split}_{vid}")
    label = [f"{names[c]} {scores[c]:.2f}" for c in shown]
    title = f"{vid} step {ex.step}: MLAR activity maps ({classes}), boxes at {threshold}"
    paths.append(
      plots.activity_grid(f"{stem}.png", clip["video"], label, shown, maps, boxes, valid, title)
    )
    paths.append(plots.boxes_gif(f"{stem}.gif", clip["video"], shown, boxes, valid))
  return paths


def observations(ex: Explained, positions: Sequence[int], *, index: int = 0) -> list[str]:
  """MLAR Figure 4c: observation `index`'s attention Attn_O[index] on the
  centre clip of each video, one row per video, `explain/observations/`."""
  _require_mlar(ex, "observations")
  frames, maps, ids = [], [], []
  for pos in positions:
    (clip,) = clips_of(ex, pos, picture_plan(ex.config))
    attn = ex.run([clip]).head["attn_obs"][0]
    if not 0 <= index < len(attn):
      raise ValueError(f"--index {index}: the head has {len(attn)} observations")
    frames.append(clip["video"])
    maps.append(_frame_maps(attn[index], clip))
    ids.append(ex.source.video_ids()[pos])
  path = os.path.join(ex.out_dir, "observations", f"{ex.source.split}_obs{index}.png")
  return [plots.observation_grid(path, frames, maps, ids, f"observation {index}, step {ex.step}")]


def localise(
  ex: Explained,
  positions: Sequence[int],
  *,
  score_threshold: float = 0.5,
  threshold: float = 0.5,
  distance_threshold: float = 1e-4,
  active_threshold: float = 0.5,
  seed: int = 0,
) -> dict[str, Any]:
  """Localisation of the present activities (`localisation` module) in every
  evaluation view of the videos, for each kind of map: "cam" (the head's
  CAM per class), "mcam_separated" (each class's map after region
  separation among the predicted and present classes, smoothed as the
  multi-label CAM), "activity_maps" (MLAR head only) and "random".

  Writes `explain/localisation_SPLIT.json`.

  Returns:
    {"split", "step", "videos", "clips", "maps": {kind: localisation.summarize}}.
  """
  if set(GROUND_TRUTH) - set(ex.extras.names):
    raise ValueError(f"localisation needs a source with {GROUND_TRUTH}; {ex.source!r} has not")
  head = ex.config.model.head
  output = cam.DEFAULT_OUTPUT.get(head, "logits")
  plan = sampling.view_plan(ex.config.eval.views, ex.config.eval.spatial_crops)
  rng = np.random.default_rng(seed)
  events: dict[str, list] = {"cam": [], "mcam_separated": [], "random": []}
  if head == "mlar":
    events["activity_maps"] = []
  num_clips = 0
  for pos in positions:
    clips = clips_of(ex, pos, plan)
    if not clips:
      continue
    fwd = ex.run(clips)
    out = output if output in fwd.outputs else "logits"
    cams = cam.class_maps(head, fwd, ex.variables, out)
    act = cam.activity_maps(fwd, ex.variables) if head == "mlar" else None
    for i, clip in enumerate(clips):
      num_clips += 1
      present = np.flatnonzero(clip["window_labels"])
      if not len(present):
        continue
      scores = np.asarray(jax.nn.sigmoid(fwd.outputs[out][i]))
      chosen = np.union1d(present, np.flatnonzero(scores >= score_threshold))
      maps = _frame_maps(cams[i, chosen], clip)
      separated = cam.smooth(cam.separate_regions(maps, distance_threshold, active_threshold))
      where = np.searchsorted(chosen, present)
      kinds = {
        "cam": maps[where],
        "mcam_separated": cam.normalize(separated[where]),
        "random": localisation.random_maps(rng, maps[where].shape),
      }
      if act is not None:
        kinds["activity_maps"] = _frame_maps(act[i, present], clip)
      gt = {k: clip[k] for k in ("boxes", "box_valid", "masks", "actor_labels")}
      for kind, m in kinds.items():
        events[kind].append(localisation.clip_events(m, present, threshold=threshold, **gt))
  results = {
    "split": ex.source.split,
    "step": ex.step,
    "head": head,
    "output": output,
    "videos": len(positions),
    "clips": num_clips,
    "threshold": threshold,
    "maps": {kind: localisation.summarize(e) for kind, e in events.items()},
  }
  path = os.path.join(ex.out_dir, f"localisation_{ex.source.split}.json")
  os.makedirs(ex.out_dir, exist_ok=True)
  with open(path, "w") as f:
    f.write(json.dumps(results, indent=2) + "\n")
  logging.info("Wrote %s", path)
  return results


def localisation_table(results: dict[str, Any]) -> str:
  """`localise`'s results as a Markdown table."""
  lines = ["| map | events | pointing game | mask IoU |", "| --- | ---: | ---: | ---: |"]
  for kind, s in results["maps"].items():
    lines.append(f"| {kind} | {s['events']} | {s['pointing']:.3f} | {s['iou']:.3f} |")
  return "\n".join(lines)


def report(ex: Explained, positions: Sequence[int]) -> str:
  """The evaluation report (`report.write_report`) of the workdir's last
  evaluation (`eval_results.json`, `predictions.txt`), into WORKDIR/report/,
  with the MLAR head's learned correlation Attn_C averaged over the centre
  clips of the videos at `positions`.

  Returns:
    The path of report.html.
  """
  results_path = os.path.join(ex.workdir, "eval_results.json")
  if not os.path.exists(results_path):
    raise FileNotFoundError(f"No {results_path}: evaluate first (mlar_jax.main --mode eval)")
  with open(results_path) as f:
    results = json.load(f)
  if results["split"] != ex.source.split:
    raise ValueError(f"the evaluation is of split {results['split']!r}: pass --split to match")
  with open(os.path.join(ex.workdir, "predictions.txt")) as f:
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in f if line.strip()}
  ids = ex.source.video_ids()
  scores = np.array([rows.get(v, [-np.inf] * ex.source.num_classes) for v in ids])
  mask = report_lib.head_mask(ex.variables["model_state"])
  correlation = None
  if ex.config.model.head == "mlar" and ex.config.model.mlar.use_correlation:
    clips = [c for pos in positions for c in clips_of(ex, pos, picture_plan(ex.config))]
    correlation = ex.run(clips).head["attn_corr"].mean(axis=0)
  return report_lib.write_report(
    os.path.join(ex.workdir, "report"),
    results,
    scores,
    ex.source.label_matrix(),
    ex.source.class_names,
    mask=mask,
    correlation=correlation,
  )


def dissect_layers(
  ex: Explained,
  broden_dir: str,
  layers: Sequence[str],
  *,
  quantile: float = 0.005,
  iou_threshold: float = 0.04,
  batch_size: int = 16,
) -> dict[str, Any]:
  """Network dissection (`dissect`) of `layers` over a Broden folder: every
  clip of its videos (`dissect.clips`) in the evaluation view. Writes
  `explain/dissect/LAYER.csv` (per unit: its concept, category, IoU and
  whether it is interpretable), `explain/dissect/summary.json` (Table 5 per
  layer) and `explain/dissect/blocks.png` (interpretable units per category
  and layer, M-MiT Figure 7).

  Returns:
    {layer: `dissect.summary`}.
  """
  data = broden.read(broden_dir)
  cfg = ex.config.data
  run = dissect.layer_fn(ex.model, layers)
  acts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
  segs: list[dict[str, np.ndarray]] = []
  all_clips = list(dissect.clips(data, cfg.num_frames))
  if not all_clips:
    raise ValueError(f"{broden_dir} has no video folder of {cfg.num_frames} images")
  for start in range(0, len(all_clips), batch_size):
    videos = []
    for rows in all_clips[start : start + batch_size]:
      frames = np.stack([data.image(i) for i in rows])
      crop = transforms.eval_crop(
        *frames.shape[1:3], short_side=cfg.eval_short_side, crop_size=cfg.crop_size
      )
      videos.append(transforms.crop_frames(frames, crop))
      for i in rows:
        segs.append(
          {c: transforms.crop_masks(m[None], crop)[0] for c, m in data.segmentation(i).items()}
        )
    out = jax.device_get(
      run(ex.variables, transforms.normalize(np.stack(videos), cfg.mean, cfg.std))
    )
    for layer in layers:
      acts[layer].extend(dissect.frame_activations(a, cfg.num_frames) for a in out[layer])
  out_dir = os.path.join(ex.out_dir, "dissect")
  os.makedirs(out_dir, exist_ok=True)
  summaries = {}
  for layer in layers:
    d = dissect.dissect(layer, np.concatenate(acts[layer]), segs, data, quantile=quantile)
    rows = dissect.units(d, iou_threshold)
    with open(os.path.join(out_dir, f"{layer.replace('/', '.')}.csv"), "w") as f:
      f.write("unit,category,label,iou,interpretable\n")
      f.writelines(
        f"{r['unit']},{r['category']},{r['label']},{r['iou']:.4f},{int(r['interpretable'])}\n"
        for r in rows
      )
    summaries[layer] = dissect.summary(d, iou_threshold)
  results = {
    "step": ex.step,
    "broden": broden_dir,
    "images": len(segs),
    "quantile": quantile,
    "iou_threshold": iou_threshold,
    "layers": summaries,
  }
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    f.write(json.dumps(results, indent=2) + "\n")
  plots.block_counts(
    os.path.join(out_dir, "blocks.png"),
    {layer: s["all"]["per_category"] for layer, s in summaries.items()},
    f"step {ex.step}: interpretable units (IoU > {iou_threshold}) per layer",
  )
  return results


def dissection_table(results: dict[str, Any]) -> str:
  """`dissect_layers`'s results as Markdown (Table 5 per layer)."""
  lines = ["| layer | concepts | interpretable units | without action: concepts | units |"]
  lines.append("| --- | ---: | ---: | ---: | ---: |")
  for layer, s in results["layers"].items():
    w = s.get("without_action", {"concepts": "-", "units": "-"})
    lines.append(
      f"| {layer} | {s['all']['concepts']} | {s['all']['units']}/{s['all']['of_units']} "
      f"| {w['concepts']} | {w['units']} |"
    )
  return "\n".join(lines)


def unit_classes(ex: Explained, unit: int, top: int = 5) -> list[tuple[str, float]]:
  """M-MiT section 7.2.2: the classes a unit of the backbone's last feature
  map drives most when it alone is active. The head reads a map whose unit
  `unit` is 1 at every position and every other unit 0, with its output
  biases set to 0 (the linear head's logits are then its classifier's row
  `unit`); classes are ranked by the head's `cam.DEFAULT_OUTPUT` logit.

  Returns:
    The `top` (class name, logit) pairs, highest first.
  """
  (clip,) = clips_of(ex, 0, picture_plan(ex.config))
  shape = ex.run([clip]).fmap.shape  # [1, T', h, w, C]
  if not 0 <= unit < shape[-1]:
    raise ValueError(f"--unit {unit}: the backbone's last feature map has {shape[-1]} units")
  fmap = np.zeros(shape, np.float32)
  fmap[..., unit] = 1.0
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: np.zeros_like(x) if "bias" in jax.tree_util.keystr(path) else x,
    ex.variables["params"]["head"],
  )
  state = {k: v["head"] for k, v in ex.variables["model_state"].items() if "head" in v}
  outputs = ex.model.head.apply(
    {"params": params, **state}, {"map": fmap, "pooled": fmap.mean(axis=(1, 2, 3))}, train=False
  )
  head = ex.config.model.head
  output = cam.DEFAULT_OUTPUT.get(head, "logits")
  logits = np.asarray(outputs[output if output in outputs else "logits"][0])
  order = np.argsort(-logits, kind="stable")[:top]
  return [(ex.source.class_names[c], float(logits[c])) for c in order]
