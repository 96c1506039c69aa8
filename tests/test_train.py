"""The train step and loop: learning, sharding invariance, exact resume."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import checkpoint_state, load_config

from mlar_jax import evaluate, sharding, train
from mlar_jax.data import base, pipeline, transforms


def _config(**overrides):
  config = load_config("synthetic", "runlocal")
  config.update(overrides)
  return config


def _fixed_batch(config, size):
  source = pipeline.make_source(config.data, "train")
  it = iter(pipeline.train_dataset(source, config.data, global_batch_size=size, seed=0))
  return next(it), source.num_classes


def _compiled_step(config, num_classes, mesh):
  """The trainer's own state and jitted step for `mesh` (train.build_training)."""
  training = train.build_training(config, mesh, base.ClassStats.placeholder(num_classes))
  return training.jit_init()(jax.random.key(0)), training.jit_step()


@pytest.fixture(scope="module")
def batch16():
  return _fixed_batch(_config(), 16)


def test_train_step_lowers_the_loss_on_a_fixed_batch(batch16, devices):
  batch, num_classes = batch16
  config = _config(num_train_steps=30)
  config.model.dropout_rate = 0.0
  mesh = sharding.make_mesh(config.mesh, devices[:1])
  state, step = _compiled_step(config, num_classes, mesh)
  gbatch = sharding.to_global(batch, sharding.batch_sharding(mesh))
  first = None
  for _ in range(30):
    state, m = step(state, gbatch)
    first = float(m["loss"]) if first is None else first
  assert np.isfinite(float(m["loss"]))
  assert float(m["loss"]) < 0.7 * first


@pytest.mark.parametrize("params_sharding", ["replicated", "fsdp"])
def test_eight_device_step_matches_one_device(batch16, devices, params_sharding):
  batch, num_classes = batch16
  results = []
  for devs, fsdp in ((devices[:1], 1), (devices, 2 if params_sharding == "fsdp" else 1)):
    config = _config(num_train_steps=3)
    config.mesh.fsdp = fsdp
    config.sharding.params = params_sharding
    config.sharding.fsdp_min_size = 256
    mesh = sharding.make_mesh(config.mesh, devs)
    state, step = _compiled_step(config, num_classes, mesh)
    gbatch = sharding.to_global(batch, sharding.batch_sharding(mesh))
    for _ in range(3):
      state, m = step(state, gbatch)
    results.append(
      (jax.device_get(state.params), jax.device_get(state.model_state), float(m["loss"]))
    )
  (p1, bs1, l1), (p8, bs8, l8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p1, p8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), bs1, bs8)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
  config = _config(num_train_steps=6)
  config.checkpoint.every_steps = 3
  config.checkpoint.async_save = True
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  train.train_and_evaluate(config, str(straight), final_eval=False)
  train.train_and_evaluate(config, str(interrupted), final_eval=False)
  # Interrupt after step 3: drop the later checkpoint and run the same command.
  shutil.rmtree(interrupted / "checkpoints" / "6")
  train.train_and_evaluate(config, str(interrupted), final_eval=False)
  a, b = checkpoint_state(straight, 6), checkpoint_state(interrupted, 6)
  assert int(a["step"]) == int(b["step"]) == 6
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The data position went into the checkpoint too: 6 batches of 8 consumed.
  state = json.loads(
    (interrupted / "checkpoints" / "6" / "data" / "process_0-of-1.json").read_text()
  )
  assert state == {"next_index": 6 * config.batch_size}


def test_eval_mode_reads_a_checkpoint_and_writes_results(tmp_path, monkeypatch):
  # A relative --workdir, as `make demo` passes (orbax itself needs absolute).
  monkeypatch.chdir(tmp_path)
  config = _config(num_train_steps=4)
  config.checkpoint.every_steps = 2
  train.train_and_evaluate(config, "run", final_eval=False)
  config.eval.step = 2
  results = evaluate.evaluate(config, "run")
  # Named by its step and view plan; the training run wrote no eval_results.json.
  assert results["results_file"] == "run/eval_test_step2_r8x1_c1_sum.json"
  assert not (tmp_path / "run" / "eval_results.json").exists()
  on_disk = json.loads((tmp_path / results["results_file"]).read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk["step"] == 2 and on_disk["num_videos"] == config.data.synthetic.num_test
  assert set(on_disk["per_class_ap"]) == set(pipeline.make_source(config.data, "test").class_names)
  for key in ("macro_map", "top1", "top5", "chance_macro_map", "micro_map"):
    assert 0.0 <= on_disk[key] <= 1.0
  config.eval.step = 3
  with pytest.raises(FileNotFoundError, match="No checkpoint 3"):
    evaluate.evaluate(config, "run")


def test_the_mlar_step_reports_its_attention_entropies(devices):
  """The step's metrics carry the MLAR head's attention diagnostics (logged
  as train/attn/...), the numbers of the head's own maps."""
  from mlar_jax import sharding as sh
  from mlar_jax.models import heads

  config = load_config("synthetic", "runlocal,head=mlar")
  batch, num_classes = _fixed_batch(config, config.batch_size)
  mesh = sh.make_mesh(config.mesh, devices[:1])
  state, step = _compiled_step(config, num_classes, mesh)
  variables = jax.tree.map(np.asarray, {"params": state.params, **state.model_state})
  _, metrics = step(state, sh.to_global(batch, sh.batch_sharding(mesh)))  # donates state
  attn = {k[len("attn/") :]: float(v) for k, v in metrics.items() if k.startswith("attn/")}
  assert attn.keys() == {
    "attn_obs_entropy",
    "attn_obs_positions",
    "attn_activity_entropy",
    "attn_activity_observations",
    "observations_used",
  }
  assert 0 <= attn["attn_obs_entropy"] <= 1 and 0 <= attn["attn_activity_entropy"] <= 1
  k = config.model.mlar.num_observations
  assert 1 <= attn["attn_activity_observations"] <= k and 1 <= attn["observations_used"] <= k
  # The same numbers as the function on the head's own maps for this batch.
  training = train.build_training(config, mesh, base.ClassStats.placeholder(num_classes))
  video = transforms.normalize(batch["video"], config.data.mean, config.data.std, np.float32)
  _, inter = training.model.apply(
    variables, video, train=True, mutable=["intermediates", "batch_stats"],
    rngs={"dropout": jax.random.fold_in(jax.random.key(config.seed), 0)},
  )  # fmt: skip
  want = heads.attention_diagnostics(inter["intermediates"])
  for key, value in want.items():
    np.testing.assert_allclose(attn[key], float(value), rtol=1e-3, err_msg=key)
