"""`python -m mlar_jax.explain` end to end on tiny scenes workdirs (the MLAR
and the linear head, trained once for this module), and its subcommands'
functions in this process."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config, run_main
from PIL import Image, ImageSequence

from mlar_jax import checkpointing
from mlar_jax.data import scenes
from mlar_jax.explain import commands
from mlar_jax.models import registry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """`configs/scenes.py:runlocal,head=mlar` trained for its 6 steps
  (checkpoints at 3 and 6) and evaluated on the test split."""
  wd = tmp_path_factory.mktemp("scenes_mlar")
  run = run_main(wd, config="scenes.py:runlocal,head=mlar")
  assert run.returncode == 0, run.stderr[-3000:]
  return wd


@pytest.fixture(scope="module")
def linear_workdir(tmp_path_factory):
  """A workdir whose one checkpoint (step 0) holds the untrained variables of
  `configs/scenes.py:runlocal` (the linear head): enough for the pictures,
  in 5 s rather than a training run's 20."""
  wd = tmp_path_factory.mktemp("scenes_linear")
  config = _config("linear")
  model = registry.build_model(config.model, len(scenes.CLASS_NAMES))
  video = np.zeros((1, config.data.num_frames, 16, 16, 3), np.float32)
  # Jitted: op by op, init takes 3x longer.
  variables = dict(jax.jit(lambda v: model.init(jax.random.key(0), v, train=False))(video))
  state = {"params": variables.pop("params"), "model_state": variables, "step": 0}
  with checkpointing.make_manager(str(wd), config.checkpoint) as manager:
    checkpointing.save(manager, 0, state, None)
    manager.wait_until_finished()
  return wd


def _config(head):
  return load_config("scenes", f"runlocal,head={head}")


def _explain(*args):
  return subprocess.run(
    [sys.executable, "-m", "mlar_jax.explain", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def _is_png(path, frames=None):
  with Image.open(path) as im:
    assert im.format == ("GIF" if frames else "PNG")
    assert im.width > 100 and im.height > 100
    if frames:
      # PIL merges identical consecutive frames, adding up their durations.
      durations = [f.info["duration"] for f in ImageSequence.Iterator(im)]
      assert sum(durations) == frames * 250


def test_cli_writes_mcam_pictures_and_fails_in_one_line(workdir):
  wd = workdir
  config = str(ROOT / "configs" / "scenes.py:runlocal,head=mlar")
  run = _explain("mcam", "--config", config, "--workdir", str(wd), "--num", "2")
  assert run.returncode == 0, run.stderr[-3000:]
  paths = run.stdout.split()
  assert paths == [str(wd / "explain" / "mcam" / f"test_test00000{i}.png") for i in range(2)]
  for path in paths:
    _is_png(path)
  # Without --config: the workdir's config.json, the same pictures.
  first = [open(p, "rb").read() for p in paths]
  again = _explain("mcam", "--workdir", str(wd), "--num", "2")
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.split() == paths
  assert [open(p, "rb").read() for p in paths] == first
  run = _explain("mcam", "--workdir", str(wd), "--step", "5")
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
    f"Error: No checkpoint 5 in {wd}/checkpoints; steps there: [3, 6]"
  )


def test_restore_picks_the_latest_or_the_step(workdir):
  config = _config("mlar")
  assert commands.restore(config, str(workdir))[0] == 6
  step, variables = commands.restore(config, str(workdir), 3)
  assert step == 3 and set(variables) == {"params", "model_state"}


def test_activity_maps_and_observations(workdir):
  wd = workdir
  ex = commands.load(_config("mlar"), str(wd), "test")
  ids = ex.source.video_ids()[3:5]
  paths = commands.activity_maps(ex, commands.video_positions(ex.source, ",".join(ids), 0))
  assert paths == [
    str(wd / "explain" / "activity_maps" / f"test_{vid}.{ext}")
    for vid in ids
    for ext in "png gif".split()
  ]
  for png, gif in zip(paths[::2], paths[1::2]):
    _is_png(png)
    _is_png(gif, frames=ex.config.data.num_frames)
  (path,) = commands.observations(ex, [0, 1, 2], index=1)
  assert path == str(wd / "explain" / "observations" / "test_obs1.png")
  _is_png(path)
  with pytest.raises(ValueError, match="observations"):
    commands.observations(ex, [0], index=ex.config.model.mlar.num_observations)
  with pytest.raises(ValueError, match="not in the split"):
    commands.video_positions(ex.source, "nope", 0)
  top = commands.unit_classes(ex, 5, top=3)
  assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_linear_head_mcam(linear_workdir):
  wd = linear_workdir
  ex = commands.load(_config("linear"), str(wd), "val")
  (path,) = commands.mcam(ex, [0], score_threshold=0.0)
  assert path == str(wd / "explain" / "mcam" / "val_val000000.png")
  _is_png(path)
  with pytest.raises(ValueError, match="--output 'logits_activity' is not one of"):
    commands.mcam(ex, [0], output="logits_activity")
  with pytest.raises(ValueError, match="activity-maps needs the MLAR head"):
    commands.activity_maps(ex, [0])
  # A unit alone, biases off: the linear head's logits are its kernel's row.
  kernel = np.asarray(ex.variables["params"]["head"]["classifier"]["kernel"])
  got = commands.unit_classes(ex, 3, top=4)
  assert [n for n, _ in got] == [ex.source.class_names[c] for c in np.argsort(-kernel[3])[:4]]
  np.testing.assert_allclose([v for _, v in got], np.sort(kernel[3])[::-1][:4], rtol=1e-5)
  with pytest.raises(ValueError, match="has 64 units"):
    commands.unit_classes(ex, 64)


@pytest.mark.parametrize("head", ["mlar", "linear"])
def test_localise_writes_every_map_kind(workdir, linear_workdir, head):
  wd = workdir if head == "mlar" else linear_workdir
  ex = commands.load(_config(head), str(wd), "test")
  results = commands.localise(ex, commands.video_positions(ex.source, "", 6))
  kinds = {"cam", "mcam_separated", "random"} | ({"activity_maps"} if head == "mlar" else set())
  assert set(results["maps"]) == kinds
  assert results["clips"] == 6 * 2  # runlocal evaluates 2 views per video
  saved = json.loads((wd / "explain" / "localisation_test.json").read_text())
  assert saved == json.loads(json.dumps(results))
  counts = {s["events"] for s in results["maps"].values()}
  assert len(counts) == 1 and counts.pop() > 0  # every kind scores the same events
  for s in results["maps"].values():
    assert 0 <= s["pointing"] <= 1 and 0 <= s["iou"] <= 1
  table = commands.localisation_table(results).splitlines()
  assert len(table) == 2 + len(kinds)
  assert np.isfinite(results["maps"]["random"]["pointing"])


def test_evaluation_writes_the_report_and_the_command_adds_the_learned_correlation(workdir):
  report_dir = workdir / "report"
  html = (report_dir / "report.html").read_text()
  srcs = re.findall(r'src="([^"]+)"', html)
  # The evaluation sees the mask (a model constant), not the attention.
  assert sorted(srcs) == ["ap_sorted.png", "correlation.png", "pr_curves.png"]
  assert sorted(os.listdir(report_dir)) == sorted([*srcs, "report.html"])
  assert "learned Attn_C" not in html
  ex = commands.load(_config("mlar"), str(workdir), "test")
  path = commands.report(ex, [0, 1, 2])
  assert path == str(report_dir / "report.html")
  html = (report_dir / "report.html").read_text()
  assert "beside the learned attention" in html
  for src in re.findall(r'src="([^"]+)"', html):
    _is_png(report_dir / src)
  with pytest.raises(ValueError, match="pass --split"):
    commands.report(commands.load(_config("mlar"), str(workdir), "val"), [0])


def test_dissect_a_trained_model_over_a_scenes_broden_export(workdir, tmp_path):
  out = tmp_path / "broden"
  scenes.export_broden(
    str(out), seed=0, num_train=0, num_test=2, resolution=16, min_frames=64, max_frames=64
  )
  ex = commands.load(_config("mlar"), str(workdir), "test")
  layers = ["backbone/res3_block0", "backbone"]
  results = commands.dissect_layers(ex, str(out), layers)
  # 2 videos x 16 images (every 4th of 64 frames), in clips of 4.
  assert results["images"] == 32
  assert list(results["layers"]) == layers
  dissect_dir = workdir / "explain" / "dissect"
  widths = {"backbone/res3_block0": 32, "backbone": 64}
  for layer, s in results["layers"].items():
    assert set(s) == {"all", "without_action"} and s["all"]["of_units"] == widths[layer]
    assert set(s["all"]["per_category"]) == {"object", "color", "texture", "action"}
    lines = (dissect_dir / f"{layer.replace('/', '.')}.csv").read_text().splitlines()
    assert lines[0] == "unit,category,label,iou,interpretable" and len(lines) == 1 + widths[layer]
  assert json.loads((dissect_dir / "summary.json").read_text())["layers"] == results["layers"]
  _is_png(dissect_dir / "blocks.png")
  table = commands.dissection_table(results).splitlines()
  assert len(table) == 2 + len(layers)
