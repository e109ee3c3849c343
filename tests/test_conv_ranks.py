"""1-D and 3-D: the 3x3x3 conv shape, the procedural EKG and volume identities, their
configs, and the unchanged training loop + evaluators on both ranks."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs.facenet import get_config
from facenet_jax import inference, layers, open_set, train, verification
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import sources
from facenet_jax.data.ekg import EKGSpec, make_ekg_identities
from facenet_jax.data.volumes import VolumeSpec, make_volume_identities, rotation_matrices


def test_volume_32x32x32x16_through_32_valid_3x3x3_filters_is_30x30x30x32():
  conv = layers.he_conv(16, 32, (3, 3, 3), 1, padding="VALID", use_bias=False,
                        dtype=np.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).standard_normal((1, 32, 32, 32, 16)).astype(np.float32)
  y = np.asarray(conv(x))
  assert y.shape == (1, 30, 30, 30, 32)
  w = np.asarray(conv.kernel[...])                       # (3, 3, 3, 16, 32)
  for d, h, v in ((0, 0, 0), (29, 29, 29), (7, 13, 21)):  # y[p] = sum_k x[p + k] w[k]
    want = np.einsum("abci,abcio->o", x[0, d:d + 3, h:h + 3, v:v + 3], w)
    np.testing.assert_allclose(y[0, d, h, v], want, rtol=1e-4, atol=1e-4)


def test_ekg_shapes_determinism_and_per_person_morphology():
  spec = EKGSpec(num_identities=20, images_per_identity=(6, 6), length=300)
  a, b = make_ekg_identities(spec, 3), make_ekg_identities(spec, 3)
  assert a.images.shape == (120, 300, 1) and a.images.dtype == np.float32
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.allclose(make_ekg_identities(spec, 4).images, a.images)
  # the R peak height is the person's (electrode gain and wander off): far more spread
  # between people than within one
  steady = make_ekg_identities(dataclasses.replace(spec, gain_std=0.0, wander_mv=0.0), 3)
  peak = steady.images[..., 0].max(axis=1).reshape(20, 6)
  assert peak.std(axis=1).mean() < 0.5 * peak.mean(axis=1).std()
  # every strip holds 2-5 beats (R peaks above half the maximum, >= 0.3 s apart)
  x = make_ekg_identities(EKGSpec(num_identities=4, images_per_identity=(1, 1), noise_std=0.0,
                                  wander_mv=0.0), 0).images[..., 0]
  for s in x:
    hi = np.flatnonzero((s > 0.5 * s.max()) & (s >= np.roll(s, 1)) & (s >= np.roll(s, -1)))
    assert 2 <= np.sum(np.diff(hi) > 30) + 1 <= 5


def test_volume_identity_structure_survives_pose_and_differs_between_identities():
  assert np.allclose([r @ r.T for r in rotation_matrices(np.eye(3), np.array([0.3, 1.0, 2.0]))],
                     np.eye(3), atol=1e-12)
  spec = VolumeSpec(num_identities=10, images_per_identity=(4, 4), size=10)
  v = make_volume_identities(spec, 0)
  assert v.images.shape == (40, 10, 10, 10, 1) and v.images.dtype == np.uint8
  np.testing.assert_array_equal(v.images, make_volume_identities(spec, 0).images)
  # without pose and noise, volumes of one identity correlate ~perfectly (gain/offset only)
  still = make_volume_identities(VolumeSpec(num_identities=10, images_per_identity=(2, 2), size=10,
                                            max_rotation_deg=0.0, scale_range=(1.0, 1.0),
                                            max_translation=0.0, noise_std=0.0), 0)
  f = still.images.reshape(20, -1).astype(np.float64)
  c = np.corrcoef(f)
  same = np.array([c[2 * i, 2 * i + 1] for i in range(10)])
  other = np.array([c[2 * i, 2 * j] for i in range(10) for j in range(10) if i != j])
  assert same.min() > 0.98 and np.median(other) < same.min() - 0.05


@pytest.mark.parametrize("variant,rank", [("ekg", 1), ("volume", 3)])
def test_variant_configs_and_rank_mismatch_is_named(variant, rank):
  c = get_config(variant)
  check_config(c)
  assert c.model.spatial_dims == rank and c.data.source == variant
  c.model.spatial_dims = 2
  with pytest.raises(ConfigError, match=rf"model.spatial_dims = 2: expected {rank} with "
                                        rf"data.source='{variant}'"):
    check_config(c)


def _shrunk(variant: str, **data):
  c = get_config(variant)
  c.data.update(train_identities=8, eval_identities=6, images_per_identity=(3, 4),
                eval_images_per_identity=(3, 3), eval_pairs=40, **data)
  c.model.update(widths=(4, 8), embedding_dim=8)
  c.update(identities_per_batch=4, images_per_identity=2, num_steps=2, log_every=1, eval_every=2,
           checkpoint_every=2, eval_batch_size=16)
  c.evaluation.one_shot.repeats = 1
  return c


@pytest.mark.parametrize("variant,data", [("ekg", dict(image_size=64)),
                                          ("volume", dict(image_size=8))])
def test_training_loop_and_evaluators_run_unchanged(tmp_path, variant, data):
  config = _shrunk(variant, **data)
  train_ds, held_out = sources.load(config)
  assert train_ds.example_shape == (data["image_size"],) * config.model.spatial_dims + (1,)
  assert held_out.num_identities == 6 and train_ds.name != held_out.name   # disjoint seeds
  r = train.train_and_evaluate(config, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["step"] == 2 and set(saved["evals"]) == {"pairs", "one_shot"}
  # the evaluators' numbers on 1-D / 3-D embeddings, recomputed from the restored final
  # checkpoint: the pair metrics from NumPy distances of the same seeded pairs, and rank-1
  # by brute force (nearest enrolled image) over the same seeded one-shot splits
  emb = np.asarray(inference.load(str(tmp_path)).embed(held_out.images), np.float64)
  labels = held_out.labels
  i, j, issame = verification.make_pairs(labels, config.data.eval_pairs, seed=config.seed + 1)
  want = verification.summarize(np.sum((emb[i] - emb[j]) ** 2, axis=1), issame,
                                config.data.eval_folds)
  for k, v in want.items():
    assert r["metrics"][k] == pytest.approx(v, abs=1e-6), k
  rank1 = []
  for rep in range(config.evaluation.one_shot.repeats):
    split = open_set.open_set_split(labels, 6, shots=1, seed=config.seed + rep,
                                    calibration_fraction=0.0)
    hits = [labels[split.gallery[np.argmin(np.sum((emb[split.gallery] - emb[q]) ** 2, axis=1))]]
            == labels[q] for q in split.known]
    rank1.append(np.mean(hits))
  assert r["evals"]["one_shot"]["rank1"] == pytest.approx(np.mean(rank1), abs=1e-12)
  assert r["evals"]["one_shot"]["people"] == 6.0


def test_gram_style_cost_is_dimension_agnostic():
  from style_jax import losses
  rng = np.random.default_rng(0)
  for shape in ((50, 6), (9, 7, 6), (4, 5, 3, 6)):   # 1-D, 2-D and 3-D activations, 6 channels
    a, b = rng.standard_normal((2,) + shape).astype(np.float32)
    f, g = a.reshape(-1, 6), b.reshape(-1, 6)
    m = f.shape[0]
    want = np.sum((f.T @ f - g.T @ g) ** 2) / (2 * m * 6) ** 2   # Gatys eq. 4
    np.testing.assert_allclose(float(losses.layer_style_cost(a, b)), want, rtol=1e-4)


def test_texture_1d_script_lowers_the_gram_loss(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, os.path.join(root, "scripts", "texture_1d.py"),
                      f"--out={tmp_path}", "--length=128", "--widths=4,8", "--steps=5",
                      "--layers=conv1_1,conv2_1"], capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu",
                               # the tests' persistent compilation cache (conftest.py)
                               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5"))
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(tmp_path / "results.json"))
  assert res["gram_loss_final"] < 0.5 * res["gram_loss_start"]
  assert os.path.getsize(tmp_path / "texture_1d.png") > 1000


@pytest.mark.parametrize("shape,window", [((2, 9, 3), 3), ((2, 9, 8, 3), 2), ((1, 5, 4, 6, 2), 2)])
def test_max_pool_and_its_gradient_match_a_loop_reference(shape, window):
  """Non-overlapping VALID max-pool in 1, 2 and 3 spatial dims (sizes that do not divide:
  the remainder is cut), against a loop over windows; the gradient goes to each window's first
  maximum, ties included (a quarter of the entries are set equal)."""
  import itertools
  import jax.numpy as jnp
  from facenet_jax.layers import max_pool
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  x[rng.random(shape) < 0.25] = 0.5   # ties inside windows
  out_sp = [n // window for n in shape[1:-1]]
  ref, grad = np.zeros((shape[0], *out_sp, shape[-1]), np.float32), np.zeros_like(x)
  cot = rng.normal(size=ref.shape).astype(np.float32)
  for b, c in itertools.product(range(shape[0]), range(shape[-1])):
    for o in itertools.product(*map(range, out_sp)):
      cells = list(itertools.product(*[range(k * window, (k + 1) * window) for k in o]))
      vals = [x[(b, *p, c)] for p in cells]
      first = int(np.argmax(vals))   # numpy's argmax: the first maximum
      ref[(b, *o, c)] = vals[first]
      grad[(b, *cells[first], c)] += cot[(b, *o, c)]
  np.testing.assert_array_equal(np.asarray(max_pool(jnp.asarray(x), window, window)), ref)
  g = jax.grad(lambda v: jnp.sum(max_pool(v, window, window) * cot))(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(g), grad)
