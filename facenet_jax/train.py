"""The FaceNet training driver: data, state, the loop, evaluation, results.

``train_and_evaluate(config, workdir)`` trains one model per margin on the margin axis:
``config.margins = ()`` is one run at ``config.margin`` written into ``workdir``; K margins
train K models in one vmapped program (``steps.make_member_step``), model k written into
``workdir/margin=<alpha_k>/`` exactly as a single run writes its workdir, so
``inference.load``, scripts/evaluate_facenet.py and scripts/compare_runs.py read each as a
run. Every model starts from the same initial parameters (``config.seed``), sees the same
batches with the same augmentation and mines its own triplets with its own margin, so model k
ends where the single run with ``margin = alpha_k`` ends (tested).

Data flows one way: config -> :func:`prepare_data` -> ``steps`` (pure, jitted) ->
``infra.loop.run_loop`` -> metrics, checkpoints -> :func:`run_evaluators` -> ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from facenet_jax import config_usage, evaluators, offline, steps, sweep, verification, vgg_features
from facenet_jax import members as members_lib, workdir as workdir_lib
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import batches as batches_lib, sources, streamed
from facenet_jax.data.raw import DataError
from facenet_jax.data.batches import TrainBatches, input_workers
from facenet_jax.sampler import PKSampler
from infra import distributed, files, loop, mesh as mesh_lib, overrides

State = steps.State


def check_dataset(ds, config: ml_collections.ConfigDict) -> None:
  """Shapes and values the model can take: (N, *spatial, C) with finite values."""
  rank = config.model.spatial_dims
  if ds.images.ndim != rank + 2:
    raise DataError(
        f"{ds.name}: examples have shape {ds.images.shape[1:]}, but config.model.spatial_dims="
        f"{rank} expects {rank} spatial axes and a channel axis, e.g. {(32,) * rank + (3,)}")
  if np.issubdtype(ds.images.dtype, np.floating) and not np.all(np.isfinite(ds.images)):
    bad = int(np.argwhere((~np.isfinite(ds.images.reshape(len(ds), -1))).any(axis=1))[0, 0])
    raise DataError(f"{ds.name}: example {bad} contains NaN or Inf values")


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
  loader: TrainBatches

  def batch(self, step: int, rows: slice = slice(None)) -> dict:
    """``rows`` of the P x K training batch of ``step`` (default all): ``{images, labels,
    mask}`` (host arrays). A process of a multi-process run reads only its rows
    (``mesh_lib.process_slice``); the sampler's indices are cheap, the images are not.
    A function of the step alone (``data/batches.py``): a resumed run continues the
    uninterrupted run's batches with nothing but its step restored."""
    return self.loader(step, rows)


def global_batch_size(config: ml_collections.ConfigDict) -> int:
  """Images per step: P x K, or 3 x offline.triplets_per_batch (anchors, positives, negatives)."""
  return (3 * config.offline.triplets_per_batch if config.offline.enabled
          else config.identities_per_batch * config.images_per_identity)


def check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """The global batch size, checked against the devices and ``batch_chunk`` (before any data
  is read)."""
  global_batch = global_batch_size(config)
  mesh_lib.check_divisible(global_batch, mesh, "global batch (identities_per_batch x "
                           "images_per_identity, or 3 x offline.triplets_per_batch)")
  check_chunking(config, global_batch, mesh)
  return global_batch


def check_chunking(config: ml_collections.ConfigDict, global_batch: int,
                   mesh: jax.sharding.Mesh) -> None:
  """``config.batch_chunk`` must divide the global batch, and the device count must divide it
  (each chunk's rows are spread evenly over the devices: steps.make_train_embed)."""
  c, n = config.batch_chunk, mesh.devices.size
  if c and global_batch % c:
    raise ConfigError(f"config.batch_chunk={c} does not divide the global batch of {global_batch} "
                     "(identities_per_batch x images_per_identity, or 3 x offline.triplets_per_batch)")
  if c and c % n:
    raise ConfigError(f"config.batch_chunk={c} is not a multiple of the {n} devices the batch is "
                     "split over (each device holds the same share of every chunk)")


def prepare_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunData:
  """Checks the batch against the devices, then loads and checks the datasets of ``config``
  and builds its sampler and held-out pairs."""
  global_batch = check_batch(config, mesh)   # before any data is read
  train_ds, eval_ds = sources.load(config, int(config.identities_per_batch))
  raw_train_ds, raw_eval_ds = train_ds, eval_ds
  features = vgg_features.transform_for(config)
  if features is not None:   # frozen backbone: train the head on cached activations
    train_ds, eval_ds = (dataclasses.replace(ds, images=features(ds.images, ds.name))
                         for ds in (train_ds, eval_ds))
  for ds in (train_ds, eval_ds):
    check_dataset(ds, config)
  sampler = PKSampler(train_ds.labels, config.identities_per_batch, config.images_per_identity,
                      config.seed)
  eval_bs = int(np.lcm(config.eval_batch_size, mesh.devices.size))
  d = config.data
  loader = TrainBatches(train_ds.images, sampler, config.num_steps, prefetch=d.prefetch,
                        workers=input_workers(d.workers, train_ds.images),
                        skip_bad=d.skip_corrupt)
  if not len(eval_ds):   # every identity trains: no pairs to verify (evaluators.skipped)
    empty = np.zeros(0, np.int32)
    return RunData(train_ds, eval_ds, raw_train_ds, raw_eval_ds, features, global_batch,
                   sampler, eval_bs, empty, empty, empty.astype(bool), {}, loader)
  try:   # before the workdir is written: say which identities are too few
    pair_i, pair_j, issame = verification.make_pairs(eval_ds.labels, config.data.eval_pairs,
                                                     seed=config.seed + 1)
  except verification.PairsError as e:
    raise DataError(f"{eval_ds.name}, the held-out identities (config.data.eval_identities = "
                    f"{config.data.eval_identities}): {e}") from None
  pixel = verification.summarize(verification.pixel_distances(eval_ds.images, pair_i, pair_j),
                                 issame, config.data.eval_folds, prefix="pixel_")
  return RunData(train_ds, eval_ds, raw_train_ds, raw_eval_ds, features, global_batch, sampler,
                 eval_bs, pair_i, pair_j, issame, pixel, loader)


def embed_loaded(embed_fn: Callable, state: State, loader: TrainBatches, rows_R: np.ndarray,
                 labels_N: np.ndarray, batch_size: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """(R, D) embeddings of training rows ``rows_R`` read through ``loader`` (its workers decode
  prepared records ahead; each process reads only its rows of each chunk), in the chunks of
  ``steps.embed_all`` and so the same values it gives on ``images[rows_R]``."""
  chunks = batches_lib.RowChunks(rows_R, labels_N[rows_R], batch_size)
  loader.use(chunks, len(chunks))
  mine = mesh_lib.process_slice(batch_size)
  out = []
  for k in range(len(chunks)):
    images = loader.read(k, mine)["images"]
    emb = embed_fn(state["params"], state["model_state"],
                   mesh_lib.assemble_batch(images, mesh, batch_size))
    out.append(np.asarray(emb)[:min(batch_size, rows_R.size - k * batch_size)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pair_metrics(embed_fn: Callable, state: State, data: RunData, mesh: jax.sharding.Mesh,
                 config: ml_collections.ConfigDict) -> dict[str, float]:
  """Verification metrics of ``state`` on the held-out pairs (squared L2 distances)."""
  emb = steps.embed_all(embed_fn, state, data.eval_ds.images, data.eval_bs, mesh)
  d = np.sum((emb[data.pair_i] - emb[data.pair_j]) ** 2, axis=1)
  return verification.summarize(d, data.issame, config.data.eval_folds)


def run_evaluators(config: ml_collections.ConfigDict, workdir: str | None, state: State,
                   embed_fn: Callable, data: RunData, mesh: jax.sharding.Mesh,
                   pairs: dict[str, float]) -> dict[str, dict[str, float]]:
  """The end-of-training protocols of ``config.evals`` (``pairs``: the metrics given)."""
  def embed(images: np.ndarray) -> np.ndarray:
    if data.features is not None:
      images = data.features(images, "evaluation images")
    return steps.embed_all(embed_fn, state, images, data.eval_bs, mesh)

  ctx = evaluators.Context(config=config, embed=embed, held_out=data.raw_eval_ds,
                           train=data.raw_train_ds, workdir=workdir)
  evals = {}
  skipped = evaluators.skipped(config.evals, data.raw_eval_ds)
  for name, why in skipped.items():
    print(f"  {name}: skipped, {why}", flush=True)
  for name in [n for n in evaluators.names(config.evals) if n not in skipped]:
    evals[name] = pairs if name == "pairs" else evaluators.EVALUATORS[name](ctx)
    print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in evals[name].items()), flush=True)
  return evals


def make_results(config: ml_collections.ConfigDict, step: int, pairs: dict, evals: dict,
                 last_train: dict, data: RunData, mesh: jax.sharding.Mesh, t_start: float,
                 skipped_records: int | None = None) -> dict:
  """The ``results.json`` dict of a finished run (``pairs``: its held-out pair metrics;
  ``skipped``: ``{evaluator: reason}`` when some could not run; ``skipped_records``: the
  training rows masked out, with ``data.skip_corrupt``)."""
  skipped = evaluators.skipped(config.evals, data.raw_eval_ds)
  return {
      **({"skipped": skipped} if skipped else {}),
      "config": config.to_dict(),
      "step": int(step),
      "metrics": pairs,
      "evals": evals,
      "train_metrics": last_train,
      "pixel_baseline": data.pixel,
      # the prepared shards read (folder / recordio): evaluate refuses other files later
      **({"prepared_data": name} if (name := streamed.prepared_name(data.raw_train_ds)) else {}),
      # records that did not decode, masked out of training (data.skip_corrupt)
      **({"skipped_records": skipped_records} if skipped_records is not None else {}),
      "devices": mesh.devices.size,
      "platform": jax.devices()[0].platform,
      "wall_seconds": time.time() - t_start,
  }


def jit_train_step(graphdef, tx, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                   ) -> Callable:
  """The jitted step of the margin axis: ``(state, batch) -> (state, metrics)`` of one model
  at ``config.margin``, or of K stacked models at ``config.margins``; on more than one
  device with its cross-device sums in device order (the step is made under ``mesh``)."""
  with jax.set_mesh(mesh):
    step = steps.make_train_step(graphdef, tx, config)
  if tuple(config.margins):
    fn = steps.make_member_step(step, jnp.asarray(tuple(config.margins), jnp.float32))
  else:
    fn = lambda state, batch: step(state, batch, config.margin)
  repl = mesh_lib.replicated(mesh)
  jitted = jax.jit(fn, in_shardings=(repl, mesh_lib.batch_sharded(mesh)),
                   out_shardings=(repl, repl), donate_argnums=0)
  return distributed.CompiledTogether(jitted, "the train step")


def finish(config: ml_collections.ConfigDict, workdir: str, state: State, cb: members_lib.MemberLoop,
           embed_fn: Callable, data: RunData, mesh: jax.sharding.Mesh, t_start: float,
           skipped_records: int | None = None) -> dict:
  """Runs the evaluators of every member, writes each ``results.json`` (and a K-margin run's
  own ``results.json`` and ``sweep.json``); returns the one run's results, or
  ``{margins, members: {name: metrics}, step, wall_seconds}`` for K margins."""
  lead = jax.process_index() == 0
  final_step = int(np.max(jax.device_get(state["step"])))
  summary = {"margins": [m.margin for m in cb.members], "members": {}, "step": final_step}
  for k, m in enumerate(cb.members):
    member_state = cb.state_of(state, k)
    if not m.last_eval and len(data.eval_ds):   # resumed at the last step: evaluate it
      m.last_eval = cb.evaluate(member_state, m.config)
    if cb.stacked:
      print(f"margin {m.margin:g}:", flush=True)
    evals = run_evaluators(m.config, m.workdir if lead else None, member_state, embed_fn, data,
                           mesh, m.last_eval)
    m.writer.forget(final_step, "final/")   # a finished run run again: one copy, this one's
    m.writer.write_scalars(final_step, {f"final/{n}": v for n, v in evaluators.flatten(evals).items()})
    results = make_results(m.config, final_step, m.last_eval, evals, m.last_train, data, mesh,
                           t_start, skipped_records)
    if cb.stacked:
      results["trained_with"] = {"margins": summary["margins"], "workdir": workdir}
    if lead:
      workdir_lib.write_results(m.workdir, results)
    summary["members"][members_lib.member_name(m.margin)] = results["metrics"]
    m.writer.close()
    m.ckpt.close()
  if not cb.stacked:
    return results
  summary["wall_seconds"] = time.time() - t_start
  if lead:
    workdir_lib.write_results(workdir, summary)
    sweep.write_index(workdir, [{"margin": m} for m in summary["margins"]],
                      header={"kind": "vmapped margins", "config": config.to_dict()})
  return summary


def open_run(config: ml_collections.ConfigDict, workdir: str, state1: State,
             mesh: jax.sharding.Mesh, data_key: str, changes: list[str]
             ) -> tuple[list[members_lib.Member], int, State, dict]:
  """Opens the members and resumes them: ``(members, start, state, meta)``. What a killed run logged past its last
  checkpoint is dropped, results of fewer steps are set aside, the configs and data.json are
  written (process 0)."""
  stacked = bool(tuple(config.margins))
  members = members_lib.open_members(config, workdir, distributed.is_lead())
  start, state, meta = members_lib.resume(members, state1, mesh, stacked)
  for m in members:   # what a killed run logged after its last checkpoint is logged again
    m.writer.restart_at(start + 1 if start else 0)   # a fresh start rewrites its step-0 rows
  if distributed.is_lead():   # results of fewer steps first: not beside the new config.json
    for d in [m.workdir for m in members] + ([workdir] if stacked else []):
      if aside := workdir_lib.set_aside_results(d, start, config.num_steps):
        print(f"continuing past its results: {d}/{workdir_lib.RESULTS_FILE} kept as {aside}",
              flush=True)
    members_lib.save_configs(config, members, workdir)
    workdir_lib.record_training_data(workdir, data_key)
  if changes:
    print(f"continuing {workdir} with changed " + "; ".join(changes), flush=True)
  return members, start, state, meta


def batch_source(config: ml_collections.ConfigDict, data: RunData, embed_fn: Callable,
                 mesh: jax.sharding.Mesh, meta: dict
                 ) -> tuple[Callable, Callable[[], dict], Callable[[], int] | None]:
  """``(make_batch(step, state), extra_meta(), skipped())``: this process's rows of every
  global batch (P x K, or offline selection's triplets), what checkpoints carry for them,
  and the run's count of masked records (None without ``data.skip_corrupt``)."""
  rows = mesh_lib.process_slice(data.global_batch)   # this process's rows of every batch
  make_batch = lambda step, _: mesh_lib.assemble_batch(data.batch(step, rows), mesh,
                                                       data.global_batch)
  extra_meta = dict
  if config.offline.enabled:   # one model (check_config): its embeddings pick the triplets
    # both the re-score's pool rows and each step's triplets are read by data.loader
    batches = offline.OfflineBatches(config.offline, data.train_ds.labels, data.loader,
                                     config.margin, config.seed, meta, config.num_steps)
    embed_rows = lambda st, r: embed_loaded(embed_fn, st, data.loader, r, data.train_ds.labels,
                                            data.eval_bs, mesh)
    make_batch = lambda step, st: mesh_lib.assemble_batch(
        batches.batch(step, embed_rows, st, rows), mesh, data.global_batch)
    extra_meta = batches.meta
  if not config.data.skip_corrupt:
    return make_batch, extra_meta, None
  # each process masks only its own rows, and counts from 0 after a resume: the run's count
  # is the checkpoint's plus every process's since (results.json gave process 0's since)
  before = int(meta.get("skipped_records", 0))
  skipped = lambda: before + distributed.process_sum(data.loader.skipped)
  return make_batch, lambda: {**extra_meta(), "skipped_records": skipped()}, skipped


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list | None = None) -> dict:
  """Trains every model of ``config``'s margin axis in ``workdir`` (resuming from its latest
  checkpoints) and evaluates (see the module doc).

  Writes TensorBoard events and ``metrics.jsonl``, checkpoints under ``checkpoints/`` and, at
  the end, ``results.json`` (``{config, step, metrics: {verification_accuracy, ...}, evals,
  pixel_baseline, ...}``) into each run directory. Returns the one run's results dict, or a
  K-margin run's summary.
  """
  t_start = time.time()
  check_config(config)
  workdir = os.path.abspath(workdir)
  # a run directory keeps its config: only CONTINUABLE fields may change (checked first)
  changes = workdir_lib.check_continuation(config, workdir)
  for note in config_usage.check_settings_read(config, workdir):
    print(note, flush=True)
  # the processes of a run must agree on its config and data, checked before the first barrier
  distributed.check_same_everywhere("the config", json.dumps(config.to_dict(), sort_keys=True,
                                                             default=str))
  mesh = mesh_lib.make_data_mesh(devices)
  stacked = bool(tuple(config.margins))
  data = prepare_data(config, mesh)
  data_key = streamed.data_key(data.raw_train_ds)
  distributed.check_same_everywhere(
      "the data they read", f"training {data_key}, held out {streamed.data_key(data.raw_eval_ds)}")
  graphdef, tx, state = steps.create_train_state(config, example_shape=data.train_ds.example_shape,
                                                 fit_examples=data.train_ds.images)
  steps.check_example_fits(graphdef, state, data.train_ds.example_shape)
  step_fn = jit_train_step(graphdef, tx, config, mesh)
  embed_fn = steps.jit_embed_fn(graphdef, config.evaluation.flip_tta, mesh)

  # nothing is written before the data, the config and the model have been checked: a bad
  # input leaves no partial workdir behind; then one process at a time trains here
  if note := workdir_lib.check_training_data(
      workdir, data_key, [d for _, _, d in members_lib.member_configs(config, workdir)]):
    print(note, flush=True)
  with files.hold_lock(workdir, "workdir", enabled=distributed.is_lead()):
    members, start, state, meta = open_run(config, workdir, state, mesh, data_key, changes)
    make_batch, extra_meta, skipped = batch_source(config, data, embed_fn, mesh, meta)
    if start == 0:
      for m in members:
        m.writer.write_scalars(0, data.pixel)
    evaluate = lambda st, c: pair_metrics(embed_fn, st, data, mesh, c)
    cb = members_lib.MemberLoop(config, members, stacked, evaluate, extra_meta)
    print(describe(config, data, mesh), flush=True)
    periods = loop.Periods(config.log_every, config.eval_every, config.checkpoint_every)
    state = loop.run_loop(
        state, start, config.num_steps, periods, step_fn=step_fn,
        make_batch=make_batch,
        check=steps.check_finite, on_log=cb.on_log,
        on_eval=cb.on_eval if len(data.eval_ds) else None,
        on_checkpoint=cb.on_checkpoint, writers=[m.writer for m in members],
        unlogged=members_lib.restore_unlogged(members, stacked), on_unlogged=cb.on_unlogged,
        closeables=[m.ckpt for m in members] + [data.loader])
    data.loader.close()   # input worker processes
    return finish(config, workdir, state, cb, embed_fn, data, mesh, t_start,
                  skipped() if skipped else None)


def describe(config: ml_collections.ConfigDict, data: RunData, mesh: jax.sharding.Mesh) -> str:
  """The line a run prints before its first step."""
  what = config.model.name
  if tuple(config.margins):
    what = (f"{len(config.margins)} x {what} (margins "
            f"{', '.join(map(overrides.format_value, config.margins))})")
  return (f"training {what} on {data.train_ds.name}: {len(data.train_ds)} images of "
          f"{data.train_ds.num_identities} identities, global batch {data.global_batch} over "
          f"{mesh.devices.size} device(s); " + (
              f"held-out {data.eval_ds.num_identities} identities, {data.issame.size} pairs; "
              f"raw-pixel baseline accuracy {data.pixel['pixel_verification_accuracy']:.3f}"
              if data.pixel else evaluators.NO_HELD_OUT))


def run_sweep_point(config: ml_collections.ConfigDict, point: Mapping[str, Any], root: str) -> str:
  """Trains one sweep point into ``root/<name>`` unless it holds the finished run of this
  point's config (``workdir.finished_results``); returns the status before (``done``: skipped)."""
  name = overrides.point_name(point)
  wd = os.path.join(root, name)
  point_config = overrides.with_overrides(config, point)
  before = sweep.point_status(wd)
  if before["status"] == "done" and workdir_lib.finished_results(point_config, wd) is not None:
    print(f"{name}: done before (step {before['step']}), skipped", flush=True)
    return "done"
  what = (f"resuming from step {before['step']}" if before["status"] == "partial" else
          f"continuing from step {before['step']}" if before["status"] == "done" else "starting")
  print(f"=== {name}: {what} -> {wd}", flush=True)
  train_and_evaluate(point_config, wd)
  return before["status"]
