"""The modalities study's test AP by what a class gives to each sense.

The scenes classes are silent (seen only), seen and heard (a tone sounds
during every instance: `scenes.SOUNDS`) or heard only (`scenes.AUDIO_ONLY`,
no pixel changes). This prints, for every variant of a finished
`tools.ablate --study modalities` workdir, the mean over seeds of the mean
per-class AP in each group, so the README can say where fusion gains or
loses against video and audio alone:

  python benchmarks/modalities_by_sound.py WORKDIR [--json OUT.json]
"""

import argparse
import glob
import json
import os

import numpy as np

from mlar_jax.data import scenes

GROUPS = {
  "silent": [c for c in scenes.CLASS_NAMES if c not in scenes.SOUNDS],
  "seen_and_heard": [c for c in scenes.SOUNDS if c not in scenes.AUDIO_ONLY],
  "heard_only": list(scenes.AUDIO_ONLY),
}


def group_aps(workdir: str) -> dict[str, dict[str, float]]:
  """{variant: {group: mean over seeds of the group's mean AP}} of a workdir."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "*", "*", "seed_*", "eval_results.json"))):
    variant = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
    with open(path) as f:
      ap = json.load(f)["per_class_ap"]
    out.setdefault(variant, []).append(
      {g: np.mean([ap[c] for c in cs]) for g, cs in GROUPS.items()}
    )
  return {
    v: {g: float(np.mean([s[g] for s in seeds])) for g in GROUPS} | {"seeds": len(seeds)}
    for v, seeds in out.items()
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = group_aps(args.workdir)
  print("| variant | " + " | ".join(f"{g} ({len(cs)})" for g, cs in GROUPS.items()) + " | seeds |")
  print("|---" * (len(GROUPS) + 2) + "|")
  for v, row in rows.items():
    print(f"| {v} | " + " | ".join(f"{row[g]:.3f}" for g in GROUPS) + f" | {row['seeds']} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"groups": GROUPS, "mean_ap": rows}, f, indent=2)


if __name__ == "__main__":
  main()
