"""The train step on 8 devices vs 1, resume equivalence, NaN guard, config errors."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs.facenet import get_config
from facenet_jax import inference, steps, train, verification
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import sources
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.sampler import PKSampler
from infra import checkpoints, mesh as mesh_lib
from infra.errors import NonFiniteLossError, Preempted
from infra.overrides import with_overrides

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _tiny(**overrides):
  return with_overrides(get_config("tiny"), overrides)


def _one_step(config, devices):
  mesh = mesh_lib.make_data_mesh(devices)
  train_ds, _ = sources.load(config)
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  repl, bsh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  train_step = steps.make_train_step(graphdef, tx, config)
  step = jax.jit(lambda s, b: train_step(s, b, config.margin), in_shardings=(repl, bsh),
                 out_shardings=(repl, repl))
  b = PKSampler(train_ds.labels, config.identities_per_batch, config.images_per_identity,
                config.seed)(0)
  batch = {"images": train_ds.images[b.indices], "labels": b.labels, "mask": b.mask}
  state = jax.device_put(state, repl)
  for _ in range(2):
    state, metrics = step(state, batch)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("miner", ["semi_hard", "batch_all"])
def test_step_on_8_devices_equals_1_device(miner):
  assert jax.device_count() == 8
  config = _tiny(miner=miner, identities_per_batch=4, images_per_identity=4)
  s1, m1 = _one_step(config, jax.devices()[:1])
  s8, m8 = _one_step(config, jax.devices())
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)
  assert m1["num_valid"] > 0


def _final_state(workdir, config):
  _, _, target = steps.create_train_state(config, in_channels=3)
  ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), every=1)
  step, state, _ = ck.restore(target)
  ck.close()
  return step, state


@pytest.mark.parametrize("offline", [False, True])
def test_resumed_run_equals_uninterrupted_run(tmp_path, offline, capsys):
  config = _tiny(**{"offline.enabled": offline})
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  if offline:   # each re-score says how many triplets violate and what is fed (none said it)
    import re
    lines = re.findall(r"offline re-score at step (\d+): (\d+) of (\d+) pool triplets violate "
                       r"the margin [\d.]+ \(eval-mode embeddings\); fed: ", capsys.readouterr().out)
    assert lines and [int(s) for s, _, _ in lines] == list(
        range(0, config.num_steps, config.offline.rescore_every))
    assert all(0 <= int(k) <= int(n) == config.offline.pool_size for _, k, n in lines)
  # the same run, "killed" after its step-2 checkpoint: later checkpoints and results gone
  part = tmp_path / "part"
  train.train_and_evaluate(config, str(part))
  for s in (4, 6):
    shutil.rmtree(part / "checkpoints" / str(s))
  os.remove(part / "results.json")
  resumed = train.train_and_evaluate(config, str(part))
  assert resumed["step"] == full["step"] == config.num_steps
  s_full, st_full = _final_state(str(tmp_path / "full"), config)
  s_res, st_res = _final_state(str(part), config)
  assert s_full == s_res == config.num_steps
  for a, b in zip(jax.tree.leaves(st_full), jax.tree.leaves(st_res)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed["metrics"] == full["metrics"]


def test_results_json_and_checkpoints(tmp_path):
  config = _tiny()
  r = train.train_and_evaluate(config, str(tmp_path))
  import json
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["step"] == config.num_steps
  # the reported metrics are the final checkpoint's on the held-out pairs: re-embedding the
  # held-out people with the restored model and scoring the same seeded pairs (NumPy
  # distances) reproduces them; the pixel baseline is the same pairs on raw pixels
  _, held = sources.load(config)
  i, j, issame = verification.make_pairs(held.labels, config.data.eval_pairs, seed=config.seed + 1)
  emb = np.asarray(inference.load(str(tmp_path)).embed(held.images), np.float64)
  want = verification.summarize(np.sum((emb[i] - emb[j]) ** 2, axis=1), issame,
                                config.data.eval_folds)
  assert set(saved["metrics"]) == set(want)
  for k, v in want.items():
    assert saved["metrics"][k] == pytest.approx(v, abs=1e-6), k
  pixel = verification.summarize(verification.pixel_distances(held.images, i, j), issame,
                                 config.data.eval_folds, prefix="pixel_")
  assert saved["pixel_baseline"] == pytest.approx(pixel, abs=1e-12)
  # and they differ from the pixel baseline's: not the same numbers written twice
  assert saved["metrics"]["roc_auc"] != pytest.approx(pixel["pixel_roc_auc"], abs=1e-3)
  assert saved["config"]["margin"] == config.margin
  assert "pixel_verification_accuracy" in saved["pixel_baseline"]
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4, 6]
  assert os.path.exists(tmp_path / "metrics.jsonl")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert r["metrics"] == saved["metrics"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = _tiny(log_every=1)
  real_load = sources.load

  def poisoned(cfg, *args):
    train_ds, eval_ds = real_load(cfg, *args)
    imgs = train_ds.images.astype(np.float32) / 127.5 - 1
    return IdentityDataset(imgs, train_ds.labels, "poisoned"), eval_ds

  # a finite dataset that the model turns into NaN at step 3: scale the params then
  calls = {"n": 0}
  real_step = steps.make_train_step

  def make_step(graphdef, tx, cfg):
    step = real_step(graphdef, tx, cfg)

    def wrapped(state, batch, margin):
      bad = state["step"] >= 3
      batch = dict(batch, images=jnp.where(bad, jnp.nan, batch["images"]))
      return step(state, batch, margin)
    calls["n"] += 1
    return wrapped

  monkeypatch.setattr(sources, "load", poisoned)
  monkeypatch.setattr(steps, "make_train_step", make_step)
  with pytest.raises(NonFiniteLossError, match="step 3") as e:
    train.train_and_evaluate(config, str(tmp_path))
  from infra import cli   # a script prints it as one line (exit 2): it names what to change
  assert "optim.learning_rate" in cli.user_message(e.value) and "\n" not in cli.user_message(e.value)
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert saved == [2]
  assert not os.path.exists(tmp_path / "results.json")
  _, state = _final_state(str(tmp_path), config)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))


def test_nan_in_input_data_is_named(tmp_path, monkeypatch):
  real_load = sources.load

  def nan_data(cfg, *args):
    train_ds, eval_ds = real_load(cfg, *args)
    imgs = train_ds.images.astype(np.float32)
    imgs[5, 0, 0, 0] = np.nan
    return IdentityDataset(imgs, train_ds.labels, "nan-data"), eval_ds

  monkeypatch.setattr(sources, "load", nan_data)
  with pytest.raises(ValueError, match="nan-data: example 5 contains NaN"):
    train.train_and_evaluate(_tiny(), str(tmp_path))


def test_wrong_input_rank_is_named(tmp_path):
  with pytest.raises(ValueError, match="spatial_dims=1"):
    train.train_and_evaluate(_tiny(**{"model.spatial_dims": 1}), str(tmp_path))


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    train.train_and_evaluate(_tiny(identities_per_batch=3, images_per_identity=3), str(tmp_path))


@pytest.mark.parametrize("field,value,match", [
    ("margin", -0.1, "config.margin"),
    ("miner", "hardest", "config.miner"),
    ("loss", "arcface", "config.loss"),
    ("identities_per_batch", 1, "config.identities_per_batch"),
    ("images_per_identity", 0, "config.images_per_identity"),
    ("model.name", "vgg", "config.model.name"),
    ("num_steps", 2.5, "config.num_steps"),
    ("semi_hard_fallback", "closest", "config.semi_hard_fallback"),
])
def test_bad_config_values_are_named(field, value, match):
  c = get_config("tiny")
  c.unlock()
  target = c
  *path, last = field.split(".")
  for p in path:
    target = target[p]
  with target.ignore_type():
    target[last] = value
  with pytest.raises(ConfigError, match=match):
    check_config(c)


def test_unknown_and_mistyped_command_line_overrides_are_errors():
  def parse(*args):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/facenet.py"), flag_values=fv,
                                    sys_argv=["prog", *args])
    fv(["prog", *args])
    return fv.config
  assert parse("--config.margin=0.3").margin == 0.3
  assert parse("--config=" + os.path.join(ROOT, "configs/facenet.py") + ":tiny").num_steps == 6
  # a misspelt field: ml_collections' AttributeError suggesting the right name
  with pytest.raises(AttributeError, match=r"marign.*Did you mean \"margin\" instead"):
    parse("--config.marign=0.3")
  with pytest.raises(flags.IllegalFlagValueError,
                     match=r"--config.margin=abc: could not convert string to float"):
    parse("--config.margin=abc")
  with pytest.raises(ValueError, match="unknown facenet config variant"):
    get_config("nope")


def test_more_images_per_identity_than_available_is_handled():
  # K = 8 while identities have 2..6 images: padded rows are masked, not repeated triplets
  config = _tiny(images_per_identity=8, identities_per_batch=2)
  train_ds, _ = sources.load(config)
  s = PKSampler(train_ds.labels, 2, 8, seed=0)
  b = s(0)
  assert b.mask.sum() < 16 and s.short_identities > 0


def test_sigterm_checkpoints_current_step_and_resume_finishes(tmp_path, monkeypatch):
  import signal
  config = _tiny(checkpoint_every=100, num_steps=6)
  real_call = PKSampler.__call__

  def call(self, step):
    if step == 2:   # preempted while step 3 is being prepared
      os.kill(os.getpid(), signal.SIGTERM)
    return real_call(self, step)

  monkeypatch.setattr(PKSampler, "__call__", call)
  with pytest.raises(Preempted, match="step 3"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  monkeypatch.setattr(PKSampler, "__call__", real_call)
  r = train.train_and_evaluate(config, str(tmp_path))
  assert r["step"] == 6


def test_process_slices_partition_the_global_batch():
  rows = [mesh_lib.process_slice(24, i, 4) for i in range(4)]
  assert [(s.start, s.stop) for s in rows] == [(0, 6), (6, 12), (12, 18), (18, 24)]
  with pytest.raises(ValueError, match="not divisible by 5"):
    mesh_lib.process_slice(24, 0, 5)
