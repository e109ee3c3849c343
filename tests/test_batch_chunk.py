"""Chunked exact gradients (``config.batch_chunk``): the whole batch's loss and gradient with
memory that grows with the chunk, not the batch.

References: the plain step for a model without BatchNorm; for a BatchNorm model, the plain
model applied chunk by chunk (each chunk with its own batch statistics) in a Python loop,
differentiated by ordinary autodiff.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.facenet import get_config
from facenet_jax import mining, steps, train
from infra import mesh as mesh_lib
from infra.overrides import with_overrides

MINERS = tuple(mining.MINERS)


def _batch(b=32, p=8, shape=(16, 16, 3), seed=0):
  rng = np.random.default_rng(seed)
  return {"images": rng.integers(0, 256, (b, *shape)).astype(np.uint8),
          "labels": np.repeat(np.arange(p, dtype=np.int32), b // p), "mask": np.ones(b, bool)}


# no warmup: the default's learning rate is 0 at step 0, and a parameter comparison after one
# step then compared nothing (an audit found these tests' params equal whatever the gradient)
_TINY = with_overrides(get_config("tiny"), {"optim.warmup_steps": 0})


def _close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _no_bn_config(**kw):
  """A model without BatchNorm: a two-layer head over flattened 8x8x3 inputs."""
  return with_overrides(_TINY, {
      "model.name": "feature_head", "model.widths": (32,), "data.image_size": 8,
      "augment.flip": False, "augment.crop_pad": 0, "identities_per_batch": 8, **kw})


@pytest.mark.parametrize("miner", MINERS)
def test_chunked_step_equals_plain_step_without_batchnorm(miner):
  config = _no_bn_config(miner=miner)
  graphdef, tx, state = steps.create_train_state(config, example_shape=(8, 8, 3))
  batch = _batch(shape=(8, 8, 3))
  plain = jax.jit(steps.make_train_step(graphdef, tx, config))(state, batch, 0.2)
  chunked_cfg = with_overrides(config, {"batch_chunk": 8})
  chunked = jax.jit(steps.make_train_step(graphdef, tx, chunked_cfg))(state, batch, 0.2)
  _close(plain[1], chunked[1])          # loss, mining statistics, gradient norm
  _close(plain[0]["params"], chunked[0]["params"])
  assert float(plain[1]["grad_norm"]) > 0


def _per_chunk_reference(graphdef, config, state, x, batch, n):
  """Loss and gradient of the model applied to chunks x[j::n] one by one (plain autodiff)."""
  objective = steps.make_objective(config)

  def loss_fn(params):
    embs, states = [], []
    for j in range(n):
      model = nnx.merge(graphdef, params, state["model_state"], copy=True)
      embs.append(model(x[j::n], train=True))
      states.append(nnx.split(model, nnx.Param, ...)[2])
    emb = jnp.stack(embs, 1).reshape(x.shape[0], -1)   # back to the batch's row order
    loss, _ = objective(emb, batch, jax.random.key(0), config.margin)
    return loss, jax.tree.map(lambda *s: jnp.mean(jnp.stack(s), 0), *states)

  return jax.value_and_grad(loss_fn, has_aux=True)(state["params"])


def test_chunked_embedding_with_batchnorm_equals_per_chunk_reference():
  config = with_overrides(_TINY, {"miner": "batch_hard", "identities_per_batch": 8,
                                               "batch_chunk": 8})
  graphdef, _, state = steps.create_train_state(config, in_channels=3)
  batch = _batch()
  x = jnp.asarray(batch["images"], jnp.float32) / 127.5 - 1.0
  embed = steps.make_train_embed(graphdef, config.batch_chunk)
  objective = steps.make_objective(config)

  def loss_fn(params):
    emb, model_state = embed(params, state["model_state"], x)
    return objective(emb, batch, jax.random.key(0), config.margin)[0], model_state

  (loss, new_state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state["params"])
  (ref_loss, ref_state), ref_grads = _per_chunk_reference(graphdef, config, state, x, batch, 4)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _close(grads, ref_grads, rtol=1e-4, atol=1e-6)
  _close(new_state, ref_state)
  # and it is not the unchunked model's gradient: the chunks' statistics matter
  plain = steps.make_train_embed(graphdef)
  plain_loss = objective(plain(state["params"], state["model_state"], x)[0], batch,
                         jax.random.key(0), config.margin)[0]
  assert abs(float(plain_loss) - float(loss)) > 1e-6


def _sharded_step(config, devices, state, graphdef, tx, batch):
  mesh = mesh_lib.make_data_mesh(devices)
  repl, bsh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  step = steps.make_train_step(graphdef, tx, config)
  fn = jax.jit(lambda s, b: step(s, b, config.margin), in_shardings=(repl, bsh),
               out_shardings=(repl, repl))
  return fn(jax.device_put(state, repl), mesh_lib.shard_batch(batch, mesh))


def test_chunked_step_on_8_devices_equals_1_device():
  config = with_overrides(_TINY, {"identities_per_batch": 8, "batch_chunk": 8})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  batch = _batch()
  one = _sharded_step(config, jax.devices()[:1], state, graphdef, tx, batch)
  eight = _sharded_step(config, jax.devices()[:8], state, graphdef, tx, batch)
  _close(one[1], eight[1], rtol=1e-4, atol=1e-6)
  _close(one[0]["params"], eight[0]["params"], rtol=1e-4, atol=1e-6)


def test_k_margin_step_with_chunks_equals_single_chunked_steps():
  config = with_overrides(_TINY, {"identities_per_batch": 8, "batch_chunk": 8})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  step = steps.make_train_step(graphdef, tx, config)
  batch = _batch()
  margins = np.asarray([0.1, 0.5], np.float32)
  state_k, metrics_k = jax.jit(steps.make_member_step(step, margins))(steps.stack([state] * 2), batch)
  for k, m in enumerate(margins):
    single, metrics = jax.jit(functools.partial(step, margin=float(m)))(state, batch)
    _close(steps.unstack(state_k, k)["params"], single["params"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics_k["loss"][k], metrics["loss"], rtol=1e-5)


def test_chunking_cuts_compiled_temporary_memory_8x():
  """B = 1,024 images with chunks of 32: XLA's temporary buffers at least 8x smaller."""
  config = with_overrides(_TINY, {"identities_per_batch": 256})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  batch = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _batch(b=1024, p=256)))

  def temp_bytes(cfg):
    step = steps.make_train_step(graphdef, tx, cfg)
    lowered = jax.jit(lambda s, b: step(s, b, cfg.margin)).lower(state, batch)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  plain, chunked = temp_bytes(config), temp_bytes(with_overrides(config, {"batch_chunk": 32}))
  assert plain >= 8 * chunked, (plain, chunked)


def test_sizes_that_do_not_divide_are_named():
  mesh = mesh_lib.make_data_mesh(jax.devices()[:8])
  config = with_overrides(_TINY, {"batch_chunk": 6})   # global batch 16
  with pytest.raises(ValueError, match=r"batch_chunk=6.*global batch of 16"):
    train.check_chunking(config, 16, mesh)
  config = with_overrides(_TINY, {"batch_chunk": 4})
  with pytest.raises(ValueError, match=r"batch_chunk=4.*8 devices"):
    train.check_chunking(config, 16, mesh)
  train.check_chunking(with_overrides(config, {"batch_chunk": 8}), 16, mesh)


def test_chunked_offline_triplet_step_equals_plain_without_batchnorm():
  """Offline batches (anchors, then positives, then negatives) chunked across the thirds."""
  config = _no_bn_config(**{"offline.enabled": True, "offline.triplets_per_batch": 8})
  graphdef, tx, state = steps.create_train_state(config, example_shape=(8, 8, 3))
  batch = _batch(b=24, p=8, shape=(8, 8, 3))
  plain = jax.jit(steps.make_train_step(graphdef, tx, config))(state, batch, 0.2)
  chunked_cfg = with_overrides(config, {"batch_chunk": 6})
  chunked = jax.jit(steps.make_train_step(graphdef, tx, chunked_cfg))(state, batch, 0.2)
  _close(plain[1], chunked[1])
  _close(plain[0]["params"], chunked[0]["params"])
