"""Triplet-embedding training: pure jitted steps and the ``train_and_evaluate`` loop.

The model is split once with ``nnx.split`` into a static graphdef and array state; the
train step is a pure function ``(state, batch) -> (state, metrics)`` that merges them
inside ``jax.jit``. Data parallelism is ``jax.jit`` over a 1-D device mesh: parameters
replicated, the batch sharded along its leading axis, and the loss (mining included)
computed on the *global* batch, so 8 devices compute what 1 device computes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from facenet_jax import (evaluators, inference, mining, models, offline, preprocess, verification,
                         vgg_features)
from facenet_jax.config_checks import check_config
from facenet_jax.data import sources
from facenet_jax.sampler import PKSampler
from infra import checkpoints, files, loop, mesh as mesh_lib
from infra.errors import NonFiniteLossError, Preempted  # noqa: F401 (re-exported)
from infra.metric_writer import MetricWriter
from infra.progress import Progress

State = dict[str, Any]


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW/Adam/SGD with linear warmup and cosine (or constant) decay, optional clipping."""
  warmup = min(int(optim.warmup_steps), max(num_steps - 1, 0))
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
    models.fit_pca_whitening(model, fit_examples, float(config.model.whiten_eps))
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


def _objective(config: ml_collections.ConfigDict) -> Callable:
  """``(emb_BxD, batch, key, margin) -> (loss, stats)`` for online mining or offline triplets."""
  if config.offline.enabled:
    def offline_loss(emb_BxD, batch, key, margin):
      del key
      a, p, n = jnp.split(emb_BxD, 3)
      return mining.explicit_triplet_loss(a, p, n, batch["mask"][: a.shape[0]],
                                          margin, config.loss)
    return offline_loss

  def online_loss(emb_BxD, batch, key, margin):
    return mining.batch_loss(emb_BxD, batch["labels"], batch["mask"], loss=config.loss,
                             miner=config.miner, margin=margin,
                             fallback=config.semi_hard_fallback, key=key)
  return online_loss


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable[..., tuple[State, dict]]:
  """The pure train step ``(state, batch, margin=config.margin) -> (state, metrics)``.

  ``batch``: ``images`` (B, *spatial, C) uint8 or float, ``labels`` (B,) int32, ``mask``
  (B,) bool. ``margin``: alpha, a float or a traced scalar, so ``jax.vmap(step, in_axes=(0,
  None, 0))`` trains K models with K margins on the same batch (facenet_jax/multi_margin.py).
  Randomness (augmentation, random miner) comes from (seed, step).
  """
  objective = _objective(config)
  aug = config.augment

  def train_step(state: State, batch: dict, margin: float | jax.Array | None = None
                 ) -> tuple[State, dict]:
    margin = config.margin if margin is None else margin
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    k_aug, k_mine = jax.random.split(key)
    x = preprocess.to_float(batch["images"])
    x = preprocess.augment(x, k_aug, flip=aug.flip, crop_pad=aug.crop_pad, scale=aug.scale,
                           rotate=aug.rotate, brightness=aug.brightness, contrast=aug.contrast)

    def loss_fn(params, model_state):
      # merged inside the differentiated function: NNX variables may only be mutated
      # (BatchNorm statistics) at the trace level that created them
      model = nnx.merge(graphdef, params, model_state, copy=True)
      emb_BxD = model(x, train=True)
      loss, stats = objective(emb_BxD, batch, k_mine, margin)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (stats, model_state)

    (loss, (stats, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["model_state"])
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
      emb = models.l2_normalize(emb + model(jnp.flip(x, axis=x.ndim - 2), train=False))
    return emb
  return embed


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


def check_dataset(ds, config: ml_collections.ConfigDict) -> None:
  """Shapes and values the model can take: (N, *spatial, C) with finite values."""
  rank = config.model.spatial_dims
  if ds.images.ndim != rank + 2:
    raise ValueError(
        f"{ds.name}: examples have shape {ds.images.shape[1:]}, but config.model.spatial_dims="
        f"{rank} expects {rank} spatial axes and a channel axis, e.g. {(32,) * rank + (3,)}")
  if np.issubdtype(ds.images.dtype, np.floating) and not np.all(np.isfinite(ds.images)):
    bad = int(np.argwhere((~np.isfinite(ds.images.reshape(len(ds), -1))).any(axis=1))[0, 0])
    raise ValueError(f"{ds.name}: example {bad} contains NaN or Inf values")


@dataclasses.dataclass
class RunData:
  """What a run reads: its datasets (``raw_*`` before a feature transform), the P x K batch
  sampler, the held-out verification pairs and their raw-pixel baseline metrics."""
  train_ds: Any
  eval_ds: Any
  raw_train_ds: Any
  raw_eval_ds: Any
  features: Callable | None
  global_batch: int
  sampler: PKSampler
  eval_bs: int
  pair_i: np.ndarray
  pair_j: np.ndarray
  issame: np.ndarray
  pixel: dict[str, float]

  def batch(self, step: int) -> dict:
    """The P x K training batch of ``step``: ``{images, labels, mask}`` (host arrays)."""
    b = self.sampler(step)
    return {"images": self.train_ds.images[b.indices], "labels": b.labels, "mask": b.mask}


def prepare_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunData:
  """Loads and checks the datasets of ``config`` and builds its sampler and held-out pairs."""
  train_ds, eval_ds = sources.load(config)
  raw_train_ds, raw_eval_ds = train_ds, eval_ds
  features = vgg_features.transform_for(config)
  if features is not None:   # frozen backbone: train the head on cached activations
    train_ds, eval_ds = (dataclasses.replace(ds, images=features(ds.images, ds.name))
                         for ds in (train_ds, eval_ds))
  for ds in (train_ds, eval_ds):
    check_dataset(ds, config)
  global_batch = (3 * config.offline.triplets_per_batch if config.offline.enabled
                  else config.identities_per_batch * config.images_per_identity)
  mesh_lib.check_divisible(global_batch, mesh, "global batch (identities_per_batch x "
                           "images_per_identity, or 3 x offline.triplets_per_batch)")
  sampler = PKSampler(train_ds.labels, config.identities_per_batch, config.images_per_identity,
                      config.seed)
  eval_bs = int(np.lcm(config.eval_batch_size, mesh.devices.size))
  pair_i, pair_j, issame = verification.make_pairs(eval_ds.labels, config.data.eval_pairs,
                                                   seed=config.seed + 1)
  pixel = verification.summarize(verification.pixel_distances(eval_ds.images, pair_i, pair_j),
                                 issame, config.data.eval_folds, prefix="pixel_")
  return RunData(train_ds, eval_ds, raw_train_ds, raw_eval_ds, features, global_batch, sampler,
                 eval_bs, pair_i, pair_j, issame, pixel)


def pair_metrics(embed_fn: Callable, state: State, data: RunData, mesh: jax.sharding.Mesh,
                 config: ml_collections.ConfigDict) -> dict[str, float]:
  """Verification metrics of ``state`` on the held-out pairs (squared L2 distances)."""
  emb = embed_all(embed_fn, state, data.eval_ds.images, data.eval_bs, mesh)
  d = np.sum((emb[data.pair_i] - emb[data.pair_j]) ** 2, axis=1)
  return verification.summarize(d, data.issame, config.data.eval_folds)


def run_evaluators(config: ml_collections.ConfigDict, workdir: str | None, state: State,
                   embed_fn: Callable, data: RunData, mesh: jax.sharding.Mesh,
                   pairs: dict[str, float]) -> dict[str, dict[str, float]]:
  """The end-of-training protocols of ``config.evals`` (``pairs``: the metrics given)."""
  def embed(images: np.ndarray) -> np.ndarray:
    if data.features is not None:
      images = data.features(images, "evaluation images")
    return embed_all(embed_fn, state, images, data.eval_bs, mesh)

  ctx = evaluators.Context(config=config, embed=embed, held_out=data.raw_eval_ds,
                           train=data.raw_train_ds, workdir=workdir)
  evals = {}
  for name in evaluators.names(config.evals):
    evals[name] = pairs if name == "pairs" else evaluators.EVALUATORS[name](ctx)
    print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in evals[name].items()), flush=True)
  return evals


def make_results(config: ml_collections.ConfigDict, step: int, pairs: dict, evals: dict,
                 last_train: dict, data: RunData, mesh: jax.sharding.Mesh, t_start: float) -> dict:
  """The ``results.json`` dict of a finished run (``pairs``: its held-out pair metrics)."""
  return {
      "config": config.to_dict(),
      "step": int(step),
      "metrics": pairs,
      "evals": evals,
      "train_metrics": last_train,
      "pixel_baseline": data.pixel,
      "devices": mesh.devices.size,
      "platform": jax.devices()[0].platform,
      "wall_seconds": time.time() - t_start,
  }


def _check_finite(state: State, where: str) -> None:
  bad = int(np.max(jax.device_get(state["nonfinite_step"])))
  if bad >= 0:
    raise NonFiniteLossError(
        f"loss or gradients became NaN/Inf at step {bad} (found at {where}); the update of "
        f"that step was not applied and no checkpoint after it was written. Lower "
        f"optim.learning_rate, set optim.grad_clip_norm, or check the input data.")


def run_loop(config: ml_collections.ConfigDict, state: State, start: int, *,
             step_fn: Callable, make_batch: Callable[[int, State], dict], mesh: jax.sharding.Mesh,
             **callbacks) -> State:
  """``infra.loop.run_loop`` over ``config``'s steps and periods, each host batch sharded."""
  periods = loop.Periods(config.log_every, config.eval_every, config.checkpoint_every)
  return loop.run_loop(state, start, config.num_steps, periods, step_fn=step_fn,
                       make_batch=lambda s, st: mesh_lib.shard_batch(make_batch(s, st), mesh),
                       check=_check_finite, **callbacks)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list | None = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

  Writes TensorBoard events and ``metrics.jsonl`` to ``workdir``, checkpoints to
  ``workdir/checkpoints`` and, at the end, ``workdir/results.json``:
  ``{config, step, metrics: {verification_accuracy, ...}, pixel_baseline, ...}``.
  Returns the same dict.
  """
  t_start = time.time()
  check_config(config)
  if tuple(config.margins):   # K margins, one vmapped program, one run directory each
    from facenet_jax import multi_margin
    return multi_margin.train_and_evaluate(config, workdir, devices=devices)
  workdir = os.path.abspath(workdir)
  mesh = mesh_lib.make_data_mesh(devices)
  lead = jax.process_index() == 0

  data = prepare_data(config, mesh)
  train_ds, eval_ds, eval_bs = data.train_ds, data.eval_ds, data.eval_bs
  global_batch, issame, pixel = data.global_batch, data.issame, data.pixel
  offline_mode = bool(config.offline.enabled)

  graphdef, tx, state = create_train_state(config, example_shape=train_ds.example_shape,
                                           fit_examples=train_ds.images)
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  state = jax.device_put(state, repl)
  train_step = jax.jit(make_train_step(graphdef, tx, config), in_shardings=(repl, batch_sh),
                       out_shardings=(repl, repl), donate_argnums=0)
  embed_fn = jax.jit(make_embed_fn(graphdef, config.evaluation.flip_tta),
                     in_shardings=(repl, repl, batch_sh),
                     out_shardings=repl)

  # nothing is written before the data, the config and the model have been checked: a bad
  # input leaves no partial workdir behind
  os.makedirs(workdir, exist_ok=True)
  if lead:   # before any step: scripts/evaluate_facenet.py rebuilds the model from it
    inference.save_config(config, workdir)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  every=config.checkpoint_every, keep=config.keep_checkpoints)
  restored = ckpt.restore(state)
  start, meta = 0, {}
  if restored is not None:
    start, state, meta = restored
    print(f"resumed from {ckpt.directory}/{start}", flush=True)
  pool = np.asarray(meta.get("offline_pool", np.zeros((0, 3))), np.int64).reshape(-1, 3)
  selected = np.asarray(meta.get("offline_selected", np.zeros((0, 3))), np.int64).reshape(-1, 3)

  def evaluate(state) -> dict[str, float]:
    return pair_metrics(embed_fn, state, data, mesh, config)

  def rescore(state, step):
    nonlocal pool, selected
    pool = offline.sample_pool(train_ds.labels, config.offline.pool_size, config.seed,
                               step // config.offline.rescore_every)
    rows = np.unique(pool)
    emb = np.zeros((len(train_ds), config.model.embedding_dim), np.float32)
    emb[rows] = embed_all(embed_fn, state, train_ds.images[rows], eval_bs, mesh)
    selected = offline.violating(pool, emb, config.margin)

  def make_batch(step: int, state: State) -> dict:
    if offline_mode:
      if step % config.offline.rescore_every == 0 or pool.shape[0] == 0:
        rescore(state, step)
      trip = offline.draw(selected, pool, config.offline.triplets_per_batch, config.seed, step)
      rows = trip.T.reshape(-1)
      return {"images": train_ds.images[rows], "labels": train_ds.labels[rows],
              "mask": np.ones(rows.shape[0], bool)}
    return data.batch(step)

  def checkpoint_meta() -> dict:
    # the last logged train metrics: a run resumed at its final step reports them too
    m = {"config_variant": config.variant, "train_metrics": last_train}
    if offline_mode:
      m.update(offline_pool=pool.tolist(), offline_selected=selected.tolist())
    return m

  writer = MetricWriter(workdir, enabled=lead)
  if start == 0 and lead:
    writer.write_scalars(0, pixel)
  last_train: dict[str, float] = dict(meta.get("train_metrics", {}))
  last_eval: dict[str, float] = {}

  def on_log(step: int, host: list[dict], progress: Progress) -> None:
    nonlocal last_train
    last_train = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    last_train["steps_per_sec"] = progress.rate(step)
    writer.write_scalars(step, {f"train/{k}": v for k, v in last_train.items()})
    progress.report(step, {k: last_train[k] for k in ("loss", "frac_active", "mean_d_ap", "mean_d_an")})

  def on_eval(step: int, state: State) -> None:
    nonlocal last_eval
    last_eval = evaluate(state)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in last_eval.items()})
    print(f"  eval step {step}: verification_accuracy={last_eval['verification_accuracy']:.4f} "
          f"(+-{last_eval['verification_accuracy_std']:.4f}), "
          f"val@far1e-3={last_eval['val_at_far_1e-3']:.4f}, auc={last_eval['roc_auc']:.4f}",
          flush=True)

  def on_checkpoint(step: int, state: State) -> None:
    _check_finite(state, f"checkpoint of step {step}")
    ckpt.save(step, state, checkpoint_meta(), force=True)

  print(f"training {config.model.name} on {train_ds.name}: {len(train_ds)} images of "
        f"{train_ds.num_identities} identities, global batch {global_batch} over "
        f"{mesh.devices.size} device(s); held-out {eval_ds.num_identities} identities, "
        f"{issame.size} pairs; raw-pixel baseline accuracy {pixel['pixel_verification_accuracy']:.3f}",
        flush=True)
  state = run_loop(config, state, start, step_fn=train_step, make_batch=make_batch, mesh=mesh,
                   on_log=on_log, on_eval=on_eval, on_checkpoint=on_checkpoint,
                   writers=[writer], closeables=[ckpt])

  if not last_eval:   # resumed at the last step: evaluate the restored state
    last_eval = evaluate(state)

  evals = run_evaluators(config, workdir if lead else None, state, embed_fn, data, mesh,
                         last_eval)
  final_step = int(jax.device_get(state["step"]))
  writer.write_scalars(final_step, {f"final/{k}": v for k, v in evaluators.flatten(evals).items()})
  results = make_results(config, final_step, last_eval, evals, last_train, data, mesh, t_start)
  if lead:
    files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  writer.close()
  ckpt.close()
  return results
