"""Pure training and embedding functions: optimizer, train state, train step, embed function.

The model is split once with ``nnx.split`` into a static graphdef and array state; the train
step is a pure function ``(state, batch, margin) -> (state, metrics)`` that merges them inside
``jax.jit``. Data parallelism is ``jax.jit`` over a 1-D device mesh: parameters replicated, the
batch sharded along its leading axis, and the loss (mining included) computed on the *global*
batch, so 8 devices compute what 1 device computes. On more than one device the gradients
come from a ``shard_map`` that adds every cross-device sum in device order
(:func:`make_ordered_grads`): 2 processes x 2 devices end bit-identical to 1 process x 4.
K models with K margins are the same step vmapped over a leading member axis of the state
(:func:`make_member_step`).

This module imports no driver: the loop, data preparation and results live in
``facenet_jax/train.py``, the run directory in ``facenet_jax/workdir.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from facenet_jax import layers, mining, models, preprocess, whitening
from infra import mesh as mesh_lib
from infra.errors import NonFiniteLossError

State = dict[str, Any]
OPTIMIZERS = ("adamw", "adam", "sgd")   # optim.name
SCHEDULES = ("cosine", "constant")      # optim.schedule


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW/Adam/SGD with linear warmup and cosine (or constant) decay, optional clipping."""
  warmup = min(int(optim.warmup_steps), max(num_steps - 1, 0))
  if optim.schedule not in SCHEDULES or optim.name not in OPTIMIZERS:
    raise ValueError(f"optim.name={optim.name!r} / optim.schedule={optim.schedule!r}: expected one "
                     f"of {OPTIMIZERS} / {SCHEDULES}")
  if optim.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, warmup, max(num_steps, warmup + 1))
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, optim.learning_rate, warmup),
                               optax.constant_schedule(optim.learning_rate)], [warmup])
  if optim.name == "adamw":
    tx = optax.adamw(lr, weight_decay=optim.weight_decay)
  elif optim.name == "adam":
    tx = optax.adam(lr)
  else:
    tx = optax.sgd(lr, momentum=0.9)
  if optim.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx


def create_train_state(config: ml_collections.ConfigDict, in_channels: int | None = None, *,
                       example_shape: tuple[int, ...] | None = None,
                       fit_examples: np.ndarray | None = None):
  """Returns ``(graphdef, tx, state)``; ``state`` is a pytree of arrays only.

  ``example_shape``: (*spatial, C) of one example (needed by feature_head / vgg models);
  ``in_channels`` defaults to its last entry. ``fit_examples``: the training examples a
  data-dependent initialization (``model.head_init='pca_whiten'``) is fitted on; without
  them the head starts random, which is right only when a checkpoint is restored over it.
  """
  if in_channels is None:
    in_channels = example_shape[-1]
  model = models.create_model(config.model, in_channels=in_channels, rngs=nnx.Rngs(config.seed),
                              example_shape=example_shape)
  if config.model.head_init == "pca_whiten" and fit_examples is not None:
    whitening.fit_pca_whitening(model, fit_examples, float(config.model.whiten_eps))
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(config.optim, config.num_steps)
  state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "model_state": model_state,
      "opt_state": tx.init(params),
      # first step whose loss or gradients were not finite (-1: none); such steps are
      # not applied, so the state stays the last good one
      "nonfinite_step": jnp.full((), -1, jnp.int32),
  }
  return graphdef, tx, state


def check_example_fits(graphdef: Any, state: dict, example_shape: tuple[int, ...]) -> None:
  """Traces the forward pass once on one abstract example (shapes only: no compile, no
  arithmetic), so that a network whose strides and pools shrink the example to nothing raises
  ``layers.InputTooSmallError`` before a run writes anything, not a NaN loss at step 0."""
  model = nnx.merge(graphdef, state["params"], state["model_state"])
  jax.eval_shape(lambda x: model(x, train=False),
                 jax.ShapeDtypeStruct((1, *example_shape), jnp.float32))


def make_objective(config: ml_collections.ConfigDict) -> Callable:
  """``(emb_BxD, batch, key, margin) -> (loss, stats)`` for online mining or offline triplets
  (an offline batch is the anchors, then the positives, then the negatives)."""
  if config.offline.enabled:
    def offline_loss(emb_BxD, batch, key, margin):
      del key
      a, p, n = jnp.split(emb_BxD, 3)
      # a triplet counts only if its three rows are real (a record skipped as undecodable,
      # data.skip_corrupt, masks its row, whichever of the three it is)
      valid = jnp.all(jnp.stack(jnp.split(batch["mask"], 3)), axis=0)
      return mining.explicit_triplet_loss(a, p, n, valid, margin, config.loss)
    return offline_loss

  def online_loss(emb_BxD, batch, key, margin):
    return mining.batch_loss(emb_BxD, batch["labels"], batch["mask"], loss=config.loss,
                             miner=config.miner, margin=margin,
                             fallback=config.semi_hard_fallback, key=key)
  return online_loss


def make_train_embed(graphdef: nnx.GraphDef, batch_chunk: int = 0, *,
                     device_axis: str | None = None, devices: int = 1) -> Callable:
  """``(params, model_state, x_B...) -> (emb_BxD, model_state)``: the model in train mode.

  ``batch_chunk`` = c > 0 (the gradient cache of Gao et al. 2021, "Scaling Deep Contrastive
  Learning Batch Size under Memory Limited Setup"): the B rows are embedded as n = B / c
  chunks, chunk j = rows j, j + n, j + 2n, ... (so a batch sharded over devices keeps each
  chunk's rows on their own devices, and the chunks do not depend on the device count), one
  chunk at a time by ``lax.map`` over a ``jax.checkpoint``-ed forward: its activations are
  recomputed in the backward pass instead of stored, so memory grows with c, not B. The
  embeddings, and the gradient of any loss of all B of them, are those of this model with
  each chunk's BatchNorm using that chunk's batch statistics; every chunk starts from the
  same running statistics and the new ones are the mean of the chunks' updates (one EMA
  update per step with the mean of the chunk statistics).

  ``device_axis``: inside ``jax.shard_map`` over that mesh axis of ``devices`` devices, ``x``
  is one device's rows of the global batch (B / devices) and BatchNorm takes the global
  batch's statistics in device order (``layers.BatchNorm``); chunk j is then the device's
  share of the global chunk j (its rows j, j + n, ...; c / devices of them).
  """
  def embed(params, model_state, x):
    # merged inside the differentiated function: NNX variables may only be mutated
    # (BatchNorm statistics) at the trace level that created them
    model = nnx.merge(graphdef, params, model_state, copy=True)
    if device_axis is not None:
      layers.set_device_axis(model, device_axis)
    emb_BxD = model(x, train=True)
    _, _, model_state = nnx.split(model, nnx.Param, ...)
    return emb_BxD, model_state

  if not batch_chunk:
    return embed

  def chunked(params, model_state, x):
    b, rows = x.shape[0], batch_chunk // devices   # rows of each chunk this call embeds
    if batch_chunk % devices or b % rows:
      raise ValueError(f"batch_chunk={batch_chunk} does not divide the global batch of "
                       f"{b * devices} evenly over {devices} device(s)")
    n = b // rows
    xs = jnp.swapaxes(x.reshape(rows, n, *x.shape[1:]), 0, 1)   # chunk j = x[j::n]
    body = jax.checkpoint(lambda xc: embed(params, model_state, xc))
    emb_n, states_n = jax.lax.map(body, xs)
    emb_BxD = jnp.swapaxes(emb_n, 0, 1).reshape(b, -1)
    mean = lambda s: jnp.mean(s, 0).astype(s.dtype) if jnp.issubdtype(s.dtype, jnp.floating) else s[-1]
    return emb_BxD, jax.tree.map(mean, states_n)
  return chunked


def make_global_grads(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> Callable:
  """``(params, model_state, x, batch, key, margin) -> (loss, stats, model_state, grads)`` on
  the global batch under ``jax.jit``: XLA partitions it over the batch's devices and inserts
  the all-reduces (whose summation order is the collective library's)."""
  objective = make_objective(config)
  embed = make_train_embed(graphdef, config.batch_chunk)

  def grads_fn(params, model_state, x, batch, key, margin):
    def loss_fn(params, model_state):
      emb_BxD, model_state = embed(params, model_state, x)
      loss, stats = objective(emb_BxD, batch, key, margin)
      return loss, (stats, model_state)
    (loss, (stats, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state)
    return loss, stats, model_state, grads
  return grads_fn


def make_ordered_grads(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> Callable:
  """:func:`make_global_grads` with every sum across devices in device order, so its bits
  depend on the device count only, not on how the devices are split over processes.

  ``jax.shard_map`` over the mesh's ``data`` axis: each device embeds its rows (BatchNorm
  statistics over the global batch, ``layers.BatchNorm``); the embeddings are all-gathered
  (exact) and the objective (mining included) runs on the whole batch on every device; the
  gradient wrt a device's own rows goes back through its forward (the VJP), and the
  per-device parameter gradients are added in device order (``mesh.ordered_tree_sum``).
  """
  axis, n = mesh_lib.DATA_AXIS, mesh.devices.size
  objective = make_objective(config)
  embed = make_train_embed(graphdef, config.batch_chunk, device_axis=axis, devices=n)

  def local(params, model_state, x, batch, key, margin):
    emb, vjp, model_state = jax.vjp(lambda p: embed(p, model_state, x), params, has_aux=True)
    emb_BxD = jax.lax.all_gather(emb, axis, tiled=True)
    (loss, stats), g_BxD = jax.value_and_grad(objective, has_aux=True)(
        emb_BxD, batch, jax.random.wrap_key_data(key), margin)
    rows = emb.shape[0]
    (grads,) = vjp(jax.lax.dynamic_slice_in_dim(g_BxD, jax.lax.axis_index(axis) * rows, rows))
    return loss, stats, model_state, mesh_lib.ordered_tree_sum(grads, axis)

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis), P(), P(), P()),
                          out_specs=P(), check_vma=False)

  def grads_fn(params, model_state, x, batch, key, margin):
    batch = {k: v for k, v in batch.items() if k != "images"}
    return sharded(params, model_state, x, batch, jax.random.key_data(key),
                   jnp.asarray(margin, jnp.float32))
  return grads_fn


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[..., tuple[State, dict]]:
  """The pure train step ``(state, batch, margin) -> (state, metrics)``.

  ``batch``: ``images`` (B, *spatial, C) uint8 or float, ``labels`` (B,) int32, ``mask``
  (B,) bool. ``margin``: alpha, a float or a traced scalar (:func:`make_member_step` vmaps
  it). ``config.batch_chunk``: the embedding of :func:`make_train_embed`. Randomness
  (augmentation, random miner) comes from (seed, step). A step whose loss or gradient norm
  is not finite is not applied; ``nonfinite_step`` records the first one.

  ``mesh``: the mesh the step is jitted over (default: the one set by ``jax.set_mesh`` around
  this call, if any); with more than one device on its ``data`` axis the gradients come from
  :func:`make_ordered_grads` (the same bits however its devices are spread over processes).
  Without one (or with one device), :func:`make_global_grads`.
  """
  mesh = jax.sharding.get_mesh() if mesh is None else mesh
  if not mesh.empty and mesh.shape.get(mesh_lib.DATA_AXIS, 1) > 1:
    grads_fn = make_ordered_grads(graphdef, config, mesh)
  else:
    grads_fn = make_global_grads(graphdef, config)
  aug = config.augment

  def train_step(state: State, batch: dict, margin: float | jax.Array) -> tuple[State, dict]:
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    k_aug, k_mine = jax.random.split(key)
    x = preprocess.to_float(batch["images"])
    x = preprocess.augment(x, k_aug, flip=aug.flip, crop_pad=aug.crop_pad, scale=aug.scale,
                           rotate=aug.rotate, brightness=aug.brightness, contrast=aug.contrast)
    loss, stats, model_state, grads = grads_fn(state["params"], state["model_state"], x, batch,
                                               k_mine, margin)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {
        "step": state["step"] + 1,
        "params": keep(params, state["params"]),
        "model_state": keep(model_state, state["model_state"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite,
                                    state["step"], state["nonfinite_step"]),
    }
    metrics = dict(stats, loss=loss, grad_norm=grad_norm)
    return new_state, metrics

  return train_step


def make_member_step(train_step: Callable, margins_K: jax.Array) -> Callable:
  """``(state_K, batch) -> (state_K, metrics_K)``: ``train_step`` vmapped over K models.

  Every leaf of ``state_K`` has a leading member axis K; the batch is shared; model k trains
  with margin ``margins_K[k]``. Model k ends where a single run with that margin ends (the
  convolutions stay K plain ones on CPU: ``infra.convolution.per_member``).
  """
  vstep = jax.vmap(train_step, in_axes=(0, None, 0))
  return lambda state_K, batch: vstep(state_K, batch, margins_K)


def stack(trees: list[Any]) -> Any:
  """K pytrees of equal structure -> one pytree with a leading K axis on every leaf."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Member ``k`` of a stacked pytree."""
  return jax.tree.map(lambda x: x[k], tree)


def make_embed_fn(graphdef: nnx.GraphDef, flip_tta: bool = False) -> Callable:
  """``(params, model_state, images) -> emb_BxD`` in inference mode (running BN stats).

  ``flip_tta``: emb = normalize(f(x) + f(flip(x))), flip along the last spatial axis (the
  mirror image), so an image and its mirror get the same embedding (config.evaluation.flip_tta).
  """
  def embed(params, model_state, images):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    x = preprocess.to_float(images)
    emb = model(x, train=False)
    if flip_tta:
      emb = layers.l2_normalize(emb + model(jnp.flip(x, axis=x.ndim - 2), train=False))
    return emb
  return embed


def jit_embed_fn(graphdef: nnx.GraphDef, flip_tta: bool, mesh: jax.sharding.Mesh) -> Callable:
  """:func:`make_embed_fn` jitted over ``mesh``: state replicated, images batch-sharded."""
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  return jax.jit(make_embed_fn(graphdef, flip_tta), in_shardings=(repl, repl, batch_sh),
                 out_shardings=repl)


def embed_all(embed_fn: Callable, state: State, images: np.ndarray, batch_size: int,
              mesh: jax.sharding.Mesh) -> np.ndarray:
  """Embeds every row of ``images`` in fixed-size chunks (last one padded); returns numpy."""
  n = images.shape[0]
  out = []
  for i in range(0, n, batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    emb = embed_fn(state["params"], state["model_state"], mesh_lib.shard_batch(chunk, mesh))
    out.append(np.asarray(emb)[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def check_finite(state: State, where: str) -> None:
  """Raises NonFiniteLossError if any step of ``state`` (one model or K stacked) was not
  finite; ``where`` says when it was found."""
  bad = int(np.max(jax.device_get(state["nonfinite_step"])))
  if bad >= 0:
    raise NonFiniteLossError(
        f"loss or gradients became NaN/Inf at step {bad} (found at {where}); the update of "
        f"that step was not applied and no checkpoint after it was written. Lower "
        f"optim.learning_rate, set optim.grad_clip_norm, or check the input data.")
