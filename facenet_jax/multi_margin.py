"""K models with K triplet margins in one compiled program (``config.margins``).

The train step of :func:`facenet_jax.train.make_train_step` is vmapped over the leading
axis of a stacked state (parameters, BatchNorm statistics, optimizer state, NaN guard) and
the margin vector alpha_K, with the batch shared:

  state_K, metrics_K = vmap(train_step, in_axes=(0, None, 0))(state_K, batch, alpha_K)

Every model starts from the same initial parameters (``config.seed``), sees the same
batches with the same augmentation (its key is (seed, step), as in a single run) and mines
its own triplets with its own margin on its own embeddings, so model k ends where the
single run with ``margin = alpha_k`` ends (tested to float tolerance).

Outputs: model k writes ``<workdir>/margin=<alpha_k>/`` exactly as a single run writes its
workdir (``config.json`` with ``margin = alpha_k`` and ``margins = ()``, ``checkpoints/``,
``metrics.jsonl``, TensorBoard events, ``results.json``), so inference.load,
scripts/evaluate_facenet.py and scripts/compare_runs.py read each as a run.
``<workdir>/results.json`` lists the members' final metrics and ``<workdir>/sweep.json`` is
the sweep index over ``margin`` (facenet_jax/sweep.py). A killed run resumes from the
latest step that every member has checkpointed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from facenet_jax import evaluators, inference, models, sweep, train
from facenet_jax.config_checks import check_config
from infra import checkpoints, files, mesh as mesh_lib, overrides
from infra.metric_writer import MetricWriter


def member_overrides(margin: float) -> dict[str, Any]:
  """The overrides that turn the K-margin config into member ``margin``'s own config."""
  return {"margin": float(margin), "margins": ()}


def member_name(margin: float) -> str:
  """``margin=0.2``: the member's directory under the workdir (and its sweep point name)."""
  return overrides.point_name({"margin": float(margin)})


def stack(trees: list[Any]) -> Any:
  """K pytrees of equal structure -> one pytree with a leading K axis on every leaf."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Member ``k`` of a stacked pytree."""
  return jax.tree.map(lambda x: x[k], tree)


def _per_member(f):
  """``f`` whose ``vmap`` runs ``f`` once per member and stacks the results.

  Arguments that are not batched (the shared input images of the first layer) are shared by
  all members. Used for the convolutions: ``vmap`` of a conv whose kernel is batched becomes
  one K-group convolution, which XLA:CPU runs about 2x slower than K separate ones.
  """
  g = jax.custom_batching.custom_vmap(f)

  @g.def_vmap
  def rule(axis_size, in_batched, *args):
    outs = [f(*(a[k] if b else a for a, b in zip(args, in_batched))) for k in range(axis_size)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    return stacked, jax.tree.map(lambda _: True, stacked)

  return g


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _member_conv(x, w, strides, pads):
  return models._lax_conv(x, w, strides, pads)


def _member_conv_fwd(x, w, strides, pads):
  y = _per_member(lambda x_, w_: models._lax_conv(x_, w_, strides, pads))(x, w)
  return y, (x, w)


def _member_conv_bwd(strides, pads, res, g):
  return _per_member(lambda x_, w_, g_: models._conv_bwd(strides, pads, (x_, w_), g_))(*res, g)


_member_conv.defvjp(_member_conv_fwd, _member_conv_bwd)


def member_conv(lhs, rhs, window_strides, padding, **kwargs):
  """``lax.conv_general_dilated`` for nnx.Conv whose ``vmap`` over K models stays K convolutions.

  Forward and gradients are those of ``models.cpu_conv_general_dilated`` (the conv a single
  CPU run uses: XLA's conv and input gradient, per-tap matmul kernel gradient), each run once
  per member under ``vmap`` instead of as a K-group convolution; anything but a plain
  channels-last conv goes to ``models.cpu_conv_general_dilated``.
  """
  if not models.is_plain_conv(lhs, **kwargs):
    return models.cpu_conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
  return _member_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))


@contextlib.contextmanager
def vmappable_convs():
  """Models created inside use :func:`member_conv` on the CPU backend (same parameters, same
  values); on accelerators XLA's K-group convolution is kept."""
  if jax.default_backend() != "cpu":
    yield
    return
  old, models.CONV_IMPL = models.CONV_IMPL, member_conv
  try:
    yield
  finally:
    models.CONV_IMPL = old


def create_train_state(config: ml_collections.ConfigDict, example_shape: tuple[int, ...],
                       fit_examples: np.ndarray | None = None):
  """``train.create_train_state`` with :func:`vmappable_convs`: ``(graphdef, tx, state)`` of
  one model (the same initial arrays as a single run's), to be stacked K times."""
  with vmappable_convs():
    return train.create_train_state(config, example_shape=example_shape,
                                    fit_examples=fit_examples)


def make_multi_step(graphdef, tx, config: ml_collections.ConfigDict, margins_K: jax.Array):
  """``(state_K, batch) -> (state_K, metrics_K)``: the single-run step vmapped over K models."""
  step = train.make_train_step(graphdef, tx, config)
  vstep = jax.vmap(step, in_axes=(0, None, 0))
  return lambda state_K, batch: vstep(state_K, batch, margins_K)


def _restore(ckpts: list[checkpoints.Checkpointer], abstract: Any):
  """``(step, [state_k])`` at the latest step every member has, or None."""
  common = set.intersection(*(set(c.all_steps()) for c in ckpts))
  if not common:
    return None
  step = max(common)
  return step, [c.restore(abstract, step=step)[1] for c in ckpts]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list | None = None) -> dict:
  """Trains one model per ``config.margins`` entry in one vmapped program (see module doc).

  Returns ``{margins, members: {name: metrics}, step, wall_seconds}`` (also written to
  ``workdir/results.json``).
  """
  t_start = time.time()
  check_config(config)
  margins = tuple(float(m) for m in config.margins)
  if not margins:
    raise ValueError("config.margins is empty: use train.train_and_evaluate for one margin")
  K = len(margins)
  workdir = os.path.abspath(workdir)
  names = [member_name(m) for m in margins]
  dirs = [os.path.join(workdir, n) for n in names]
  configs = [overrides.with_overrides(config, member_overrides(m)) for m in margins]
  mesh = mesh_lib.make_data_mesh(devices)
  lead = jax.process_index() == 0
  data = train.prepare_data(config, mesh)
  graphdef, tx, state1 = create_train_state(config, data.train_ds.example_shape,
                                            data.train_ds.images)
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  margins_K = jnp.asarray(margins, jnp.float32)
  multi_step = jax.jit(make_multi_step(graphdef, tx, config, margins_K),
                       in_shardings=(repl, batch_sh), out_shardings=(repl, repl),
                       donate_argnums=0)
  embed_fn = jax.jit(train.make_embed_fn(graphdef, config.evaluation.flip_tta),
                     in_shardings=(repl, repl, batch_sh),
                     out_shardings=repl)
  # as in train.train_and_evaluate: nothing is written before data, config and model are checked
  for c, d in zip(configs, dirs):
    os.makedirs(d, exist_ok=True)
    if lead:
      inference.save_config(c, d)
  if lead:
    inference.save_config(config, workdir)
  ckpts = [checkpoints.Checkpointer(os.path.join(d, "checkpoints"), every=config.checkpoint_every,
                                    keep=config.keep_checkpoints) for d in dirs]
  restored = _restore(ckpts, state1)
  start, members = 0, [state1] * K
  if restored is not None:
    start, members = restored
    print(f"resumed {K} margins from step {start}", flush=True)
  state = jax.device_put(stack(members), repl)
  del members, state1

  writers = [MetricWriter(d, enabled=lead) for d in dirs]
  if start == 0:
    for w in writers:
      w.write_scalars(0, data.pixel)
  last_train: list[dict[str, float]] = [{} for _ in margins]
  last_eval: list[dict[str, float]] = [{} for _ in margins]

  def evaluate(state_K, k: int) -> dict[str, float]:
    return train.pair_metrics(embed_fn, unstack(state_K, k), data, mesh, configs[k])

  def on_log(step: int, host: list[dict], progress) -> None:
    rate = progress.rate(step)
    for k in range(K):
      last_train[k] = {key: float(np.mean([m[key][k] for m in host])) for key in host[0]}
      last_train[k]["steps_per_sec"] = rate
      writers[k].write_scalars(step, {f"train/{n}": v for n, v in last_train[k].items()})
    progress.report(step, {f"active@{overrides.format_value(m)}": t["frac_active"]
                           for m, t in zip(margins, last_train)})

  def on_eval(step: int, state_K) -> None:
    for k in range(K):
      last_eval[k] = evaluate(state_K, k)
      writers[k].write_scalars(step, {f"eval/{n}": v for n, v in last_eval[k].items()})
    print(f"  eval step {step}: verification_accuracy " + ", ".join(
        f"{n}: {e['verification_accuracy']:.4f}" for n, e in zip(names, last_eval)), flush=True)

  def on_checkpoint(step: int, state_K) -> None:
    train._check_finite(state_K, f"checkpoint of step {step}")
    for k, c in enumerate(ckpts):
      c.save(step, unstack(state_K, k), {"config_variant": config.variant}, force=True)

  print(f"training {K} x {config.model.name} (margins {', '.join(map(overrides.format_value, margins))}) "
        f"on {data.train_ds.name}: {len(data.train_ds)} images, global batch {data.global_batch} over "
        f"{mesh.devices.size} device(s); held-out {data.issame.size} pairs; raw-pixel baseline "
        f"accuracy {data.pixel['pixel_verification_accuracy']:.3f}", flush=True)
  state = train.run_loop(config, state, start, step_fn=multi_step,
                         make_batch=lambda step, _: data.batch(step), mesh=mesh,
                         on_log=on_log, on_eval=on_eval, on_checkpoint=on_checkpoint,
                         writers=writers, closeables=ckpts)

  final_step = int(np.max(jax.device_get(state["step"])))
  out = {"margins": list(margins), "members": {}, "step": final_step}
  for k, (c, d, w) in enumerate(zip(configs, dirs, writers)):
    if not last_eval[k]:   # resumed at the last step: evaluate the restored state
      last_eval[k] = evaluate(state, k)
    print(f"margin {margins[k]:g}:", flush=True)
    evals = train.run_evaluators(c, d if lead else None, unstack(state, k), embed_fn, data, mesh,
                                 last_eval[k])
    w.write_scalars(final_step, {f"final/{n}": v for n, v in evaluators.flatten(evals).items()})
    results = train.make_results(c, final_step, last_eval[k], evals, last_train[k], data, mesh,
                                 t_start)
    results["trained_with"] = {"margins": list(margins), "workdir": workdir}
    if lead:
      files.write_json_atomic(os.path.join(d, "results.json"), results)
    out["members"][names[k]] = results["metrics"]
    w.close()
    ckpts[k].close()
  out["wall_seconds"] = time.time() - t_start
  if lead:
    files.write_json_atomic(os.path.join(workdir, "results.json"), out)
    sweep.write_index(workdir, [{"margin": m} for m in margins],
                      header={"kind": "vmapped margins", "config": config.to_dict()})
  return out
