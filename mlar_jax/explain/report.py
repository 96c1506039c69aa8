"""The evaluation report a person looks at: `REPORT_DIR/report.html` with the
summary table and PNG plots (`plots`), the same images to TensorBoard.

Plots: per-class AP sorted (`ap_sorted.png`), precision-recall curves of the
best and worst classes (`pr_curves.png`), the MLAR head's correlation mask
beside its learned correlation when given (`correlation.png`), and macro mAP
per subset of rates when several rates were evaluated (`per_rate.png`). The
HTML references only the images that were written.
"""

from __future__ import annotations

import html
import os
from typing import Any, Sequence

import numpy as np
from absl import logging
from PIL import Image

from mlar_jax.explain import plots

SUMMARY_KEYS = (
  "split",
  "step",
  "output",
  "num_videos",
  "views",
  "aggregate",
  "macro_map",
  "micro_map",
  "top1",
  "top5",
  "chance_macro_map",
  "map_over_chance",
  "num_classes_with_positives",
)


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall at every distinct score, highest first, with ties
  as one threshold (as `metrics.average_precision`).

  Args:
    scores: [N]; -inf ranks last (a video without scores).
    labels: [N] in {0, 1}, at least one positive.

  Returns:
    precision, recall: [K] float64, K distinct scores, recall ascending.
  """
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  s, y = np.asarray(scores, np.float64)[order], np.asarray(labels)[order] > 0
  # The last item of each tie group: where the next score differs.
  ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
  tp = np.cumsum(y)[ends]
  return tp / (ends + 1), tp / y.sum()


def head_mask(model_state: Any) -> np.ndarray | None:
  """The MLAR head's correlation mask [A, A] from a state's model_state
  ({"constants": {"head": {"correlation_mask"}}}), or None (another head,
  or an array this process cannot read whole)."""
  mask = model_state.get("constants", {}).get("head", {}).get("correlation_mask")
  if mask is None or not getattr(mask, "is_fully_addressable", True):
    return None
  return np.asarray(mask, np.float32)


def _number(x: Any) -> str:
  return f"{x:.4f}" if isinstance(x, float) else html.escape(str(x))


def _html(results: dict[str, Any], images: Sequence[tuple[str, str]]) -> str:
  rows = "".join(
    f"<tr><th>{k}</th><td>{_number(results[k])}</td></tr>" for k in SUMMARY_KEYS if k in results
  )
  outputs = results.get("outputs", {})
  out_rows = "".join(
    f"<tr><td>{html.escape(name)}</td>"
    + "".join(f"<td>{_number(m.get(k))}</td>" for k in ("macro_map", "micro_map", "top1", "top5"))
    + "</tr>"
    for name, m in outputs.items()
  )
  figures = "".join(
    f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    for name, caption in images
  )
  return (
    "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
    f"<title>Evaluation, step {results.get('step')}</title>"
    "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:left}"
    " img{max-width:100%}</style></head><body>\n"
    f"<h1>Evaluation of {html.escape(str(results.get('split')))}, step {results.get('step')}</h1>\n"
    f"<table>{rows}</table>\n"
    "<h2>Outputs</h2><table><tr><th>output</th><th>macro mAP</th><th>micro mAP</th>"
    f"<th>top-1</th><th>top-5</th></tr>{out_rows}</table>\n"
    f"<h2>Plots</h2>{figures}\n</body></html>\n"
  )


def write_report(
  report_dir: str,
  results: dict[str, Any],
  scores: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  *,
  mask: np.ndarray | None = None,
  correlation: np.ndarray | None = None,
  writer: Any = None,
  num_curves: int = 3,
) -> str:
  """Writes the report of one evaluation.

  Args:
    report_dir: the folder (created).
    results: `eval_results.json`'s contents.
    scores: [N, A] aggregated video scores of `results["output"]` (-inf: a
      video without a decoded view).
    labels: [N, A] the split's labels.
    class_names: [A].
    mask: the MLAR head's correlation mask [A, A], if any.
    correlation: its learned correlation [A, A] (e.g. Attn_C averaged over
      clips), shown beside the mask.
    writer: a clu metric writer: the images also go there ("report/NAME").
    num_curves: PR curves of this many best and as many worst classes.

  Returns:
    The path of report.html.
  """
  os.makedirs(report_dir, exist_ok=True)
  step, split = results.get("step", 0), results.get("split", "")
  labels = np.asarray(labels) > 0
  per_class = results["per_class_ap"]
  ap = np.array([np.nan if per_class[n] is None else per_class[n] for n in class_names], float)
  images = []

  def add(name: str, caption: str, draw) -> None:
    path = os.path.join(report_dir, name)
    draw(path)
    images.append((name, caption))

  rate = labels.mean(axis=0)
  add(
    "ap_sorted.png",
    "Per-class AP, best first; ticks: the class's positive rate, the AP of a constant score.",
    lambda p: plots.ap_bars(p, class_names, ap, rate, f"{split}, step {step}: per-class AP"),
  )
  keep = np.flatnonzero(~np.isnan(ap))
  if len(keep):
    order = keep[np.argsort(-ap[keep], kind="stable")]
    chosen = list(dict.fromkeys([*order[:num_curves], *order[::-1][:num_curves]]))
    curves = [(class_names[c], *pr_curve(scores[:, c], labels[:, c]), ap[c]) for c in chosen]
    add(
      "pr_curves.png",
      f"Precision-recall of the {num_curves} best and {num_curves} worst classes by AP.",
      lambda p: plots.pr_curves(p, curves, f"{split}, step {step}: best and worst classes"),
    )
  if mask is not None:
    shown = [("Mask (training co-occurrence, N_jk / N_j)", mask)]
    if correlation is not None:
      shown.append(("learned Attn_C (mean over clips)", correlation))
    add(
      "correlation.png",
      "The MLAR head's correlation map: the fixed Mask"
      + (" beside the learned attention." if correlation is not None else "."),
      lambda p: plots.correlation_maps(p, class_names, shown, f"step {step}"),
    )
  if len(results.get("per_rate", {})) > 1:
    add(
      "per_rate.png",
      "Macro mAP of the views at each subset of the evaluated rates.",
      lambda p: plots.rate_bars(p, results["per_rate"], f"{split}, step {step}: rates"),
    )
  if writer is not None:
    with_images = {}
    for name, _ in images:
      with Image.open(os.path.join(report_dir, name)) as im:
        # Tagged by the folder: an evaluation-only run's images stay apart.
        tag = f"{os.path.basename(os.path.normpath(report_dir))}/{name[:-4]}"
        with_images[tag] = np.asarray(im.convert("RGB"))[None]
    writer.write_images(step, with_images)
  path = os.path.join(report_dir, "report.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(_html(results, images))
  return path


def after_evaluation(
  workdir: str,
  results: dict[str, Any],
  scores: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  model_state: Any,
  writer: Any = None,
  name: str = "report",
) -> str | None:
  """`write_report` into WORKDIR/NAME/, as `evaluate.Evaluator.run` calls
  it once the results are written: with the MLAR mask of `model_state`
  (`head_mask`), and a failure logged rather than raised (the results
  already on disk matter more than their pictures). An evaluation-only run
  names its report like its results (`evaluate.eval_name`), beside the
  training run's `report/`.

  Returns:
    The path of report.html, or None when it could not be written.
  """
  try:
    return write_report(
      os.path.join(os.fspath(workdir), name),
      results,
      scores,
      labels,
      class_names,
      mask=head_mask(model_state),
      writer=writer,
    )
  except Exception as e:  # noqa: BLE001  (matplotlib, PIL and the file system raise many kinds)
    logging.warning("The evaluation report could not be written: %s: %s", type(e).__name__, e)
    return None
