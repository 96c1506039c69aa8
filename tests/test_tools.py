"""model_info and the study runner's config handling."""

import json

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config

from mlar_jax import validation
from mlar_jax.data import sampling
from mlar_jax.models import heads
from mlar_jax.tools import ablate, model_info


def test_model_info_reports_params_and_gflops():
  config = load_config("synthetic", "head=mlar")
  info = model_info.model_info(config)
  assert {"backbone_params", "head_params", "gflops_per_view"} <= set(info)
  # The head alone, built by hand on the reported feature map.
  m = config.model.mlar
  head = heads.MLARHead(
    14,
    num_observations=m.num_observations,
    groups=m.groups,
    features=m.features,
    output=m.output,
  )
  shapes = jax.eval_shape(
    lambda: head.init(jax.random.key(0), {"map": jnp.zeros(info["feature_map"])}, train=False)
  )
  assert info["head_params"] == sum(p.size for p in jax.tree.leaves(shapes["params"]))
  assert info["feature_map"] == [1, 8, 4, 4, 64]
  assert 0 < info["head_gflops"] < info["gflops_per_view"]
  linear = model_info.model_info(load_config("synthetic"))
  assert linear["backbone_params"] == info["backbone_params"]
  assert linear["head_params"] == 64 * 14 + 14
  assert info["backbone"] == "resnet3d_tiny"
  # An audio-only model is named by its audio backbone, a fused one by both.
  for inputs, name in (("audio", "soundnet8"), ("video+audio", "resnet3d_tiny+soundnet8")):
    assert (
      model_info.model_info(load_config("scenes", f"runlocal,inputs={inputs}"))["backbone"] == name
    )


def test_study_variants_override_the_base_config():
  base = load_config("synthetic", "runlocal")
  for study, variants in ablate.STUDIES.items():
    for name, overrides in variants:
      config = ablate.variant_config(base, overrides, seed=3)
      assert config.seed == 3
      for key, value in overrides.items():
        node = config
        for part in key.split("."):
          node = node[part]
        assert node == value, (study, name, key)
  assert base.seed == 0  # the base is not modified
  rows = [
    {
      "variant": "a",
      "macro_map": [0.5, 0.7],
      "mean": 0.6,
      "std": 0.1414,
      "seeds": [0, 1],
      "chance_macro_map": 0.2,
    }
  ]
  assert "| a | 0.6000 +- 0.1414 | 0.5000, 0.7000 |" in ablate.format_table(rows)
  # Heads with several outputs get a column per extra output.
  rows[0]["outputs"] = {
    "logits": {"mean": 0.6, "std": 0.1414},
    "logits_activity": {"mean": 0.55, "std": 0.01},
  }
  table = ablate.format_table(rows)
  assert "| logits_activity |" in table.splitlines()[0]
  assert "| 0.5500 +- 0.0100 |" in table.splitlines()[2]
  # Every variant of the heads grid validates (no tied output without F_A);
  # the learning-rate search sets its rate whatever the config file's head.
  for _, overrides in ablate.STUDIES["heads_grid"]:
    validation.validate(ablate.variant_config(load_config("scenes", "runlocal"), overrides, 0))
  for name, overrides in ablate.STUDIES["heads_lr"]:
    config = ablate.variant_config(load_config("scenes", "runlocal,head=mlar"), overrides, 0)
    validation.validate(config)
    head, rate = name.split("/lr")
    assert config.schedule.base_lr == float(rate)
    assert config.model.head == dict(ablate.STUDIES["heads_grid"])[head]["model.head"]
  # Every rates variant tests on 10 temporal views times the config's crops
  # (3 on the synthetic videos, 1 on the square scenes frames): the same
  # FLOPs per video whatever its rates.
  for name, crops in (("synthetic", 3), ("scenes", 1)):
    for _, overrides in ablate.STUDIES["rates"]:
      config = ablate.variant_config(load_config(name, "speed_invariant"), overrides, 0)
      validation.validate(config)
      plan = sampling.view_plan(config.eval.views, config.eval.spatial_crops)
      assert len(plan) == 10 * crops, (name, overrides)
      assert {v.rate for v in plan} == set(config.stage2.rates)
  # Every variant of the modalities study validates on the scenes, and its
  # table has M-MiT's ranking columns.
  for _, overrides in ablate.STUDIES["modalities"]:
    validation.validate(ablate.variant_config(load_config("scenes", "runlocal"), overrides, 0))
  rows[0].update(
    study="modalities",
    metrics={k: {"mean": 0.25, "std": 0.0} for k in ablate.RANKING_METRICS},
  )
  header = ablate.format_table(rows, ablate._columns(rows)).splitlines()[0]
  assert "| micro_map | top1 | top5 | logits_activity |" in header
  # A study run in parts keeps the rows of the other parts, in study order.
  old = [{"variant": "mlar_meanobs_per_activity", "x": 1}, {"variant": "linear", "x": 1}]
  new = [{"variant": "linear", "x": 2}]
  merged = ablate.merge_rows("heads_grid", old, new)
  assert merged == [{"variant": "linear", "x": 2}, {"variant": "mlar_meanobs_per_activity", "x": 1}]


def test_scenes_figure_draws_a_video(tmp_path):
  from PIL import Image

  from mlar_jax.tools import scenes_figure

  out = tmp_path / "scenes.png"
  scenes_figure.main(["--out", str(out), "--frames", "3", "--resolution", "32"])
  width, height = Image.open(out).size
  assert width > 300 and height > 300


def test_transfer_study_pretrains_then_fine_tunes_with_a_new_head(tmp_path):
  target = load_config("synthetic", "runlocal")
  pretrain = load_config("scenes", "runlocal")
  rows = ablate.run_study(
    target,
    "transfer",
    [0],
    str(tmp_path),
    variants=["single_label"],
    pretrain=pretrain,
  )
  assert [r["variant"] for r in rows] == ["single_label"]
  for r in rows:
    assert set(r["metrics"]) == set(ablate.RANKING_METRICS) and 0 <= r["mean"] <= 1
  source = tmp_path / "pretrain" / "single_label" / "seed_0"
  assert (source / "checkpoints").is_dir()
  assert not (tmp_path / "pretrain" / "scratch").exists()
  tuned = json.loads((tmp_path / "single_label" / "seed_0" / "config.json").read_text())
  assert tuned["init_from"] == str(source) and tuned["init_from_skip"] == "head/"
  pretrained = json.loads((source / "config.json").read_text())
  assert pretrained["data"]["scenes"]["single_label"] is True
  with pytest.raises(ValueError, match="needs --pretrain"):
    ablate.run_study(target, "transfer", [0], str(tmp_path))


def test_a_stopped_run_stops_the_study_and_a_stopped_stage_1_stops_stage_2(monkeypatch, tmp_path):
  from mlar_jax import train
  from mlar_jax.tools import speed_invariant

  calls = []

  def stopped(config, workdir, final_eval=True):
    calls.append(workdir)
    return train.Stopped(15, 7, "Stopped by SIGTERM at step 7")

  monkeypatch.setattr(train, "train_and_evaluate", stopped)
  base = load_config("synthetic", "runlocal")
  with pytest.raises(ablate.StudyStopped, match="Stopped by SIGTERM"):
    ablate.run_study(base, "losses", [0, 1], str(tmp_path))
  assert len(calls) == 1  # the next seed and variants are not started
  calls.clear()
  config = load_config("synthetic", "runlocal,speed_invariant")
  assert isinstance(speed_invariant.run_two_stage(config, str(tmp_path / "si")), train.Stopped)
  assert calls == [str(tmp_path / "si" / "stage1")]
