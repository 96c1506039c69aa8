"""View plans, view aggregation, stage-2 freezing and multi-view evaluation."""

import json

import jax
import numpy as np
import pytest
from conftest import checkpoint_state, load_config
from flax import traverse_util

from mlar_jax import evaluate, sharding, train
from mlar_jax.data import pipeline, sampling, transforms
from mlar_jax.tools import speed_invariant


@pytest.mark.parametrize("num_video_frames", [64, 100, 33])
@pytest.mark.parametrize("rate,positions", [(2, 3), (4, 4), (8, 3), (4, 10), (2, 5)])
def test_view_plan_covers_the_video_uniformly(num_video_frames, rate, positions):
  plan = sampling.view_plan(((rate, positions),), 3)
  assert len(plan) == positions * 3
  t = 8
  starts = [sampling.view_start(num_video_frames, t, v) for v in plan if v.crop == 0]
  span = transforms.clip_span(t, rate)
  room = max(num_video_frames - span, 0)
  assert starts[0] == 0
  assert starts[-1] == room  # the last clip ends at the last frame (or start 0)
  gaps = np.diff(starts)
  assert (gaps >= 0).all() and gaps.max() - gaps.min() <= 1
  covered = np.zeros(num_video_frames, bool)
  for s in starts:
    covered[s : s + span] = True
  if positions * span >= num_video_frames:
    assert covered.all()


def test_the_default_plan_is_the_papers_30_views():
  config = load_config("synthetic", "speed_invariant")
  plan = sampling.view_plan(config.eval.views, config.eval.spatial_crops)
  rates = [v.rate for v in plan]
  assert len(plan) == 30 and rates.count(4) == 12 and rates.count(8) == 9 and rates.count(2) == 9
  # PySlowFast's 3 crops: first, centre, last along the longer side.
  assert [transforms.uniform_crop_origin(36, 48, 32, i, 3) for i in range(3)] == [
    (2, 0),
    (2, 8),
    (2, 16),
  ]
  assert [transforms.uniform_crop_origin(48, 36, 32, i, 3) for i in range(3)] == [
    (0, 2),
    (8, 2),
    (16, 2),
  ]
  assert transforms.uniform_crop_origin(36, 48, 32, 0, 1) == (2, 8)


@pytest.mark.parametrize("how", ["sum", "mean", "max"])
def test_aggregation_equals_a_loop(how):
  rng = np.random.default_rng(0)
  n, v, a = 5, 4, 3
  pairs = [(i, j) for i in range(n) for j in range(v)]
  rng.shuffle(pairs)
  video = np.array([p[0] for p in pairs])
  view = np.array([p[1] for p in pairs])
  scores = rng.random((len(pairs), a))
  keep = [0, 2]
  got = sampling.aggregate_views(scores, video, view, n, how, keep)
  for i in range(n):
    rows = [scores[m] for m in range(len(pairs)) if video[m] == i and view[m] in keep]
    want = {"sum": np.sum, "mean": np.mean, "max": np.max}[how](rows, axis=0)
    np.testing.assert_allclose(got[i], want)


def test_seven_videos_batch_four_on_eight_devices_count_once(devices, tmp_path):
  config = load_config("synthetic", "runlocal,speed_invariant")
  config.data.synthetic.num_test = 7
  config.eval.batch_size = 4
  # 2 windows x 3 crops: each window is decoded once for its 3 views.
  config.eval.views, config.eval.spatial_crops = ((4, 1), (2, 1)), 3
  config.data.eval_short_side = config.data.crop_size + 4
  mesh = sharding.make_mesh(config.mesh, devices)
  source = pipeline.make_source(config.data, "test")
  # The trainer's own model, state and shardings (train.build_training).
  training = train.build_training(config, mesh, source.class_stats())
  model, s = training.model, config.data.crop_size
  state = training.jit_init()(jax.random.key(0))
  evaluator = evaluate.Evaluator(
    config,
    mesh,
    model,
    evaluate.variable_shardings(training.state_shardings),
    splits=["test"],
    class_names=source.class_names,
    train_stats=source.class_stats(),
    workdir=str(tmp_path),
  )
  collectors, errors = evaluator.score(state, "test")
  assert errors.failed == 0
  arrays = collectors["logits"].arrays()
  # 7 videos x 6 views = 42 clips in batches of 4 padded to 8 rows: each once.
  assert sorted(zip(arrays["index"], arrays["view"])) == [
    (i, j) for i in range(7) for j in range(6)
  ]
  scores = sampling.aggregate_views(arrays["scores"], arrays["index"], arrays["view"], 7, "sum")
  # Against a loop: every clip through the model alone, summed per video.
  plan = evaluator.plan
  variables = {"params": jax.device_get(state.params), **jax.device_get(state.model_state)}
  for i in range(7):
    total = 0
    for view in plan:
      frames = source.load_frames(
        source[i], sampling.view_indices(source[i]["num_frames"], config.data.num_frames, view)
      )
      crop = transforms.eval_crop(
        *frames.shape[1:3],
        short_side=config.data.eval_short_side,
        crop_size=s,
        crop_index=view.crop,
        num_crops=view.num_crops,
      )
      clip = transforms.crop_frames(frames, crop)
      x = transforms.normalize(clip[None], config.data.mean, config.data.std)
      total = total + jax.nn.sigmoid(model.apply(variables, x, train=False)["logits"][0])
    np.testing.assert_allclose(scores[i], np.asarray(total), rtol=1e-4, atol=1e-5)


def test_stage_two_freezes_the_whole_backbone_and_tunes_the_head(tmp_path):
  config = load_config("synthetic", "runlocal,speed_invariant")
  results = speed_invariant.run_two_stage(config, str(tmp_path))
  first = checkpoint_state(tmp_path / "stage1", config.num_train_steps)
  second = checkpoint_state(tmp_path / "stage2", config.stage2.num_train_steps)
  p1 = traverse_util.flatten_dict(first["params"], sep="/")
  p2 = traverse_util.flatten_dict(second["params"], sep="/")
  # Every backbone leaf, batch-norm scales and biases included (section 3.5).
  backbone = [k for k in p1 if k.startswith("backbone/")]
  assert any(k.endswith("scale") for k in backbone)
  for k in backbone:
    np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
  head = [k for k in p1 if k.startswith("head/")]
  assert head and all(not np.array_equal(p1[k], p2[k]) for k in head)
  jax.tree.map(np.testing.assert_array_equal, first["model_state"], second["model_state"])
  # The stage-2 report has the combined plan and every subset of its rates.
  on_disk = json.loads((tmp_path / "stage2" / "eval_results.json").read_text())
  assert on_disk["views"] == 8 and set(on_disk["per_rate"]) == {
    "2",
    "4",
    "8",
    "2+4",
    "2+8",
    "4+8",
    "2+4+8",
  }
  assert on_disk["per_rate"]["2+4+8"]["macro_map"] == pytest.approx(results["macro_map"])
  lines = (tmp_path / "stage2" / "predictions.txt").read_text().splitlines()
  assert len(lines) == config.data.synthetic.num_test
  assert all(len(line.split()) == 1 + 14 for line in lines) and lines[0].startswith("test000000 ")
