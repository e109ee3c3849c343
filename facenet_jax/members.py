"""The margin axis of a FaceNet run: one model per ``config.margins`` entry (or the one run),
each with its run directory, metric writer and checkpoints; the loop callbacks that log,
evaluate and checkpoint every member; and resuming them from their common latest step,
with the train metrics not yet logged (so a resumed run's logs are the uninterrupted run's)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from facenet_jax import steps
from facenet_jax import workdir as workdir_lib
from infra import checkpoints, mesh as mesh_lib, overrides
from infra.metric_writer import MetricWriter
from infra.progress import Progress

State = steps.State


def member_name(margin: float) -> str:
  """``margin=0.2``: a K-margin run's directory of one member (and its sweep point name)."""
  return overrides.point_name({"margin": float(margin)})


@dataclasses.dataclass
class Member:
  """One model of the margin axis: its config (``margin = alpha``, ``margins = ()``), its run
  directory, metric writer and checkpoints, its last logged train / eval metrics, and the
  train metrics of the steps since the last log (:func:`unlogged_rows`, for its checkpoints)."""
  margin: float
  config: ml_collections.ConfigDict
  workdir: str
  writer: MetricWriter
  ckpt: checkpoints.Checkpointer
  last_train: dict = dataclasses.field(default_factory=dict)
  last_eval: dict = dataclasses.field(default_factory=dict)
  unlogged: dict = dataclasses.field(default_factory=dict)


def unlogged_rows(host: list[dict], k: int | None) -> dict:
  """``{dtypes: {name: dtype}, steps: [{name: value}]}``: the train metrics of model ``k`` of
  a stacked run (None: the one run) for the steps since the last log, as its checkpoint meta
  keeps them. Each step's value, not a sum: the log that a resumed run writes then averages
  the same numbers as the uninterrupted run's, bit for bit."""
  if not host:
    return {}
  pick = (lambda v: np.asarray(v)) if k is None else (lambda v: np.asarray(v)[k])
  return {"dtypes": {name: str(np.asarray(v).dtype) for name, v in host[0].items()},
          "steps": [{name: pick(v).item() for name, v in h.items()} for h in host]}


def restore_unlogged(members: list[Member], stacked: bool) -> list[dict]:
  """The run loop's metrics of the steps since the last log (``infra.loop.run_loop``'s
  ``unlogged``), rebuilt from each member's checkpoint meta in the form the train step
  returned them (stacked: one value per member), so the first log after a resume averages
  the steps the uninterrupted run averaged. Empty from a checkpoint written without them."""
  counts = [len(m.unlogged.get("steps", ())) for m in members]
  if len(set(counts)) > 1:
    raise checkpoints.CheckpointError(
        "checkpoints to resume from disagree on their meta unlogged_train: " + ", ".join(
            f"{m.workdir} holds {n} steps" for m, n in zip(members, counts)))
  if not counts or not counts[0]:
    return []
  dtypes = members[0].unlogged["dtypes"]

  def value(name: str, i: int) -> np.ndarray:
    v = [m.unlogged["steps"][i][name] for m in members]
    return np.asarray(v if stacked else v[0], dtypes[name])
  return [{name: value(name, i) for name in dtypes} for i in range(counts[0])]


# per-triplet statistics of a step (mining._stats: over its num_valid triplets), pooled over a
# log window by num_valid rather than averaged per step
TRIPLET_MEANS = ("frac_active", "mean_d_ap", "mean_d_an")


def window_means(rows: list[dict]) -> dict[str, float]:
  """The train metrics a log reports for the steps ``rows`` (each ``{name: scalar}``): the
  mean over steps, except TRIPLET_MEANS, which are means over the window's valid triplets,
  ``sum_s num_valid_s * x_s / sum_s num_valid_s``. A step without a valid triplet (semi-hard
  with ``fallback='drop'``) reports them as 0; a plain mean counted those zeros, so a window
  with one such step in two halved mean_d_ap and turned frac_active into the share of steps
  with a triplet. A window without any valid triplet reports them as 0, as its steps do."""
  out = {key: float(np.mean([np.asarray(r[key], np.float64) for r in rows])) for key in rows[0]}
  if "num_valid" in rows[0]:
    n = np.asarray([r["num_valid"] for r in rows], np.float64)
    for key in TRIPLET_MEANS:
      if key in rows[0] and n.sum() > 0:
        out[key] = float(np.sum(n * np.asarray([r[key] for r in rows], np.float64)) / n.sum())
  return out


def member_configs(config: ml_collections.ConfigDict, workdir: str
                   ) -> list[tuple[float, ml_collections.ConfigDict, str]]:
  """``[(alpha, config, directory)]``: the run itself, or one per ``config.margins`` entry."""
  if not tuple(config.margins):
    return [(float(config.margin), config, workdir)]
  return [(float(m), overrides.with_overrides(config, {"margin": float(m), "margins": ()}),
           os.path.join(workdir, member_name(m))) for m in config.margins]


def open_members(config: ml_collections.ConfigDict, workdir: str, lead: bool) -> list[Member]:
  """Creates the run directories and opens their writers and checkpoints."""
  members = []
  for alpha, c, d in member_configs(config, workdir):
    os.makedirs(d, exist_ok=True)
    members.append(Member(alpha, c, d, MetricWriter(d, enabled=lead),
                          workdir_lib.checkpointer(d, config)))
  return members


def save_configs(config: ml_collections.ConfigDict, members: list[Member], workdir: str) -> None:
  """Writes each run directory's ``config.json`` (and a K-margin run's own), once the
  checkpoints restored under this config (before any step: scripts/evaluate_facenet.py
  rebuilds the model from it)."""
  for m in members:
    workdir_lib.save_config(m.config, m.workdir)
  if tuple(config.margins):   # the K-margin run's own config, beside its members
    workdir_lib.save_config(config, workdir)


def restore_members(ckpts: list[checkpoints.Checkpointer], abstract: Any
                    ) -> tuple[int, list[Any], list[dict]] | None:
  """``(step, [state_k], [meta_k])`` at the latest step every member has checkpointed, or
  None (a killed K-margin run resumes from there)."""
  common = set.intersection(*(set(c.all_steps()) for c in ckpts))
  if not common:
    return None
  step = max(common)
  restored = [c.restore(abstract, step=step) for c in ckpts]
  return step, [r[1] for r in restored], [r[2] for r in restored]


class MemberLoop:
  """The loop callbacks of the margin axis: logs, evaluations and checkpoints of every member
  (``stacked``: the state has a leading member axis; else it is the one run's state)."""

  def __init__(self, config: ml_collections.ConfigDict, members: list[Member], stacked: bool,
               evaluate: Callable[[State, ml_collections.ConfigDict], dict],
               extra_meta: Callable[[], dict]):
    self.config, self.members, self.stacked = config, members, stacked
    self.evaluate, self.extra_meta = evaluate, extra_meta

  def state_of(self, state: State, k: int) -> State:
    return steps.unstack(state, k) if self.stacked else state

  def on_log(self, step: int, host: list[dict], progress: Progress) -> None:
    rate = progress.rate(step)
    for k, m in enumerate(self.members):
      m.last_train = window_means([{key: h[key][k] if self.stacked else h[key] for key in h}
                                   for h in host])
      m.last_train["steps_per_sec"] = rate
      m.writer.write_scalars(step, {f"train/{n}": v for n, v in m.last_train.items()})
    if self.stacked:
      progress.report(step, {f"active@{overrides.format_value(m.margin)}": m.last_train["frac_active"]
                             for m in self.members})
    else:
      t = self.members[0].last_train
      progress.report(step, {k: t[k] for k in ("loss", "frac_active", "mean_d_ap", "mean_d_an")})

  def on_unlogged(self, step: int, host: list[dict]) -> None:
    """Keeps the metrics of the steps since the last log for the checkpoint of ``step``."""
    for k, m in enumerate(self.members):
      m.unlogged = unlogged_rows(host, k if self.stacked else None)

  def on_eval(self, step: int, state: State) -> None:
    for k, m in enumerate(self.members):
      m.last_eval = self.evaluate(self.state_of(state, k), m.config)
      m.writer.write_scalars(step, {f"eval/{n}": v for n, v in m.last_eval.items()})
    if self.stacked:
      print(f"  eval step {step}: verification_accuracy " + ", ".join(
          f"{member_name(m.margin)}: {m.last_eval['verification_accuracy']:.4f}"
          for m in self.members), flush=True)
    else:
      e = self.members[0].last_eval
      print(f"  eval step {step}: verification_accuracy={e['verification_accuracy']:.4f} "
            f"(+-{e['verification_accuracy_std']:.4f}), val@far1e-3={e['val_at_far_1e-3']:.4f}, "
            f"auc={e['roc_auc']:.4f}", flush=True)

  def on_checkpoint(self, step: int, state: State) -> None:
    steps.check_finite(state, f"checkpoint of step {step}")
    for k, m in enumerate(self.members):
      # the last logged train metrics (a run resumed at its final step reports them too) and
      # those of the steps after that log (a run resumed here logs the uninterrupted windows)
      meta = {"config_variant": self.config.variant, "train_metrics": m.last_train,
              "unlogged_train": m.unlogged, **self.extra_meta()}
      m.ckpt.save(step, self.state_of(state, k), meta, force=True)


def resume(members: list[Member], state1: State, mesh: jax.sharding.Mesh, stacked: bool
           ) -> tuple[int, State, dict]:
  """``(start, state, meta)``: the latest step every member checkpointed (0 and ``state1`` for
  each when none), the state replicated over ``mesh`` (stacked for K members) and the first
  member's checkpoint meta."""
  # restored straight into the replicated sharding: a checkpoint restored onto the devices it
  # was saved from would sit on process 0's device, which no other process can read from
  replicated = mesh_lib.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          state1)
  restored = restore_members([m.ckpt for m in members], abstract)
  start, states, metas = 0, [state1] * len(members), [{}] * len(members)
  if restored is not None:
    start, states, metas = restored
    print(f"resumed {len(members)} margins from step {start}" if stacked else
          f"resumed from {members[0].ckpt.directory}/{start}", flush=True)
  for m, meta in zip(members, metas):
    m.last_train = dict(meta.get("train_metrics", {}))
    m.unlogged = dict(meta.get("unlogged_train", {}))
  state = steps.stack(states) if stacked else states[0]
  return start, jax.device_put(state, replicated), metas[0]


