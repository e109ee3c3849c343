"""Evaluation protocols, looked up by name (``config.evals``, ``--eval``).

Each evaluator is ``fn(ctx: Context) -> {metric: float}`` (flat) and may write PNG plots
into ``ctx.workdir``. ``ctx.embed`` maps uint8 images to L2-normalized embeddings, so the
protocols never see the model; thresholds are always chosen on data other than the data
they are scored on:

  pairs          random matched/mismatched pairs of held-out people, 10-fold threshold
  lfw_view2      LFW View 2 pairs of ``data.test_fold`` (thresholds from the calibration
                 folds' pairs, or the other nine folds'), distance and DeepFace pair
                 heads in one table, ROC PNG
  lfw_view1      the same on LFW View 1 (``data.lfw_view=1``): DevTest pairs scored,
                 thresholds from the DevTrain pairs; for choosing a model before View 2
                 (settings: ``evaluation.lfw_view2``, shared)
  one_shot       a gallery of held-out people enrolled from one image each: closed-set
                 rank-1/rank-5 over their other images (rank-5 with more than 5 people),
                 averaged over seeded repeats;
                 open set: half the people enrolled, a threshold calibrated on a
                 disjoint group of people for ``evaluation.one_shot.open_set_far``,
                 unknown-person rejection
  omniglot_runs  the 20 official Omniglot 20-way 1-shot runs
  episodes       random N-way K-shot episodes of held-out identities (mean, 95% CI)
  clustering     threshold clustering of held-out embeddings: NMI and purity at the
                 threshold chosen on training pairs (and the oracle best, labelled so)

An evaluator's settings are ``config.evaluation.<its name>`` (``evaluation.one_shot.repeats``);
``evaluation.flip_tta`` (embed an image with its mirror image) applies to every one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import ml_collections
import numpy as np

from facenet_jax import (clustering, episodes, lfw_runs, open_set, pair_head, recognition,
                         verification)
from facenet_jax.data import real
from facenet_jax.data.dataset import IdentityDataset
from infra.errors import UserError

Metrics = dict[str, float]


@dataclasses.dataclass
class Context:
  """What an evaluator may use. ``embed(images uint8 (N, ...)) -> (N, D) float32``."""
  config: ml_collections.ConfigDict
  embed: Callable[[np.ndarray], np.ndarray]
  held_out: IdentityDataset
  train: IdentityDataset | None = None
  workdir: str | None = None
  # after the names of files written into workdir: a re-evaluation with other settings or
  # data ("@data.source=lfw"), whose files must not replace the run's own
  suffix: str = ""
  _cache: dict = dataclasses.field(default_factory=dict)

  def held_out_embeddings(self) -> np.ndarray:
    if "held_out" not in self._cache:
      self._cache["held_out"] = self.embed(self.held_out.images)
    return self._cache["held_out"]

  def train_embeddings(self, max_images: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of (a seeded subset of) the training images."""
    if self.train is None:
      raise ValueError("this evaluator needs the training identities (Context.train)")
    if "train" not in self._cache:
      n = len(self.train)
      rows = np.arange(n)
      if n > max_images:
        rows = np.sort(np.random.default_rng(0).choice(n, max_images, replace=False))
      self._cache["train"] = (self.embed(self.train.images[rows]), self.train.labels[rows])
    return self._cache["train"]


# one_shot's evaluation.one_shot.calibrate_on: whom the open-set threshold is calibrated on
CALIBRATE_ON = ("train", "held_out")


def plot_roc(path: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> str:
  """ROC curves (TAR against FAR, log FAR axis) of several scorers into one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.6, 3.8))
  for name, (far, tar) in curves.items():
    ax.plot(np.maximum(far, 1e-4), tar, label=name, lw=1.4)
  ax.set_xscale("log")
  ax.set_xlim(1e-3, 1.0)
  ax.set_ylim(0.0, 1.01)
  ax.set_xlabel("false accept rate")
  ax.set_ylabel("true accept rate")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="lower right")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# --------------------------------------------------------------------------- pairs


def eval_pairs(ctx: Context) -> Metrics:
  c = ctx.config
  i, j, issame = verification.make_pairs(ctx.held_out.labels, c.data.eval_pairs, seed=c.seed + 1)
  emb = ctx.held_out_embeddings()
  d = np.sum((emb[i] - emb[j]) ** 2, axis=1)
  return verification.summarize(d, issame, c.data.eval_folds)


# ----------------------------------------------------------------------------- LFW


VIEW1_KFOLD = 10


def eval_lfw_view1(ctx: Context) -> Metrics:
  """LFW View 1 (``data.lfw_view=1``, ``data/lfw_view1.py``): the DevTest pairs whose photos
  the data holds, thresholds from the DevTrain pairs, as ``eval_lfw_view2`` scores a fold.
  The model trained on DevTrain's people, whose distances are smaller than new people's, so
  ``<scorer>/kfold_accuracy`` also scores each DevTest pair at a threshold chosen on the other
  DevTest pairs (``VIEW1_KFOLD`` seeded random folds, the same split for every model: nobody
  in them was trained on). Writes ``lfw_view1_scores.npz`` and ``roc_lfw_view1.png``.
  Settings: ``evaluation.lfw_view2``."""
  return eval_lfw_view2(ctx)


def eval_lfw_view2(ctx: Context) -> Metrics:
  """The held-out fold's 600 official pairs. Thresholds (accuracy and VAL@FAR) come from
  the pairs of ``data.calibration_folds`` folds whose people the model never saw, or with
  0 from the other nine folds' 5,400 pairs (the official protocol; for a model trained
  on those people their distances are optimistic). Never from the test fold.
  ``<scorer>/calibration_accuracy`` is the threshold's accuracy on the pairs that chose it:
  what ``lfw_runs.select_per_fold`` ranks models by without looking at the test fold. Pair
  heads are fitted on random pairs of training people (frozen embeddings). Settings:
  ``config.evaluation.lfw_view2`` (``far``, ``pair_features``, ``pair_head_*``)."""
  c = ctx.config
  test, view = real.lfw_test_fold(c), int(c.data.lfw_view)
  images, pairs = real.lfw_view2(c)
  emb = ctx.embed(images.images)
  ea, eb = emb[pairs.i], emb[pairs.j]
  scores = {"distance": np.sum((ea - eb) ** 2, axis=1)}
  e = c.evaluation.lfw_view2
  if e.pair_features:
    tr_emb, tr_labels = ctx.train_embeddings()
    a, b, same = pair_head.training_pairs(tr_emb, tr_labels, e.pair_head_pairs, seed=c.seed)
    for feat in [f for f in e.pair_features.split(",") if f]:
      head, _ = pair_head.fit_pair_head(feat, a, b, same, steps=e.pair_head_steps, lr=e.pair_head_lr,
                                        seed=c.seed, weight_decay=e.pair_head_weight_decay)
      scores[f"head_{feat}"] = -pair_head.pair_scores(head, feat, ea, eb)   # as a distance
  calibration = real.lfw_calibration_folds(c, int(pairs.fold.max()) + 1)
  out: Metrics = ({"test_pairs": float(np.sum(pairs.fold == test)),
                   "calibration_pairs": float(np.sum(pairs.fold != test))} if view == 1 else
                  {"test_fold": float(test), "calibration_folds": float(len(calibration))})
  curves = {}
  on_test = pairs.fold == test
  fit = np.isin(pairs.fold, calibration) if calibration else ~on_test
  for name, d in scores.items():
    m = lfw_runs.fold_metrics(d, pairs.issame, fit, on_test, e.far)
    if view == 1:   # DevTrain's people were trained on: also thresholds from other DevTest pairs
      kf = verification.kfold_accuracy(d[on_test], pairs.issame[on_test], VIEW1_KFOLD, seed=0)
      m["kfold_accuracy"] = kf["accuracy"]
    out.update({f"{name}/{k}": v for k, v in m.items()})
    far_c, tar_c, _ = verification.roc(d[on_test], pairs.issame[on_test])
    curves[name] = (far_c, tar_c)
  if ctx.workdir:
    n = int(np.sum(on_test))
    roc, title, scores_file = ((f"roc_lfw_view1{ctx.suffix}.png", f"LFW View 1, DevTest ({n} pairs)",
                                f"lfw_view1_scores{ctx.suffix}.npz") if view == 1 else
                               (f"roc_lfw_fold{test}{ctx.suffix}.png", f"LFW View 2, fold {test} ({n} pairs)",
                                f"{lfw_runs.SCORES_PREFIX}{test}{ctx.suffix}.npz"))
    plot_roc(os.path.join(ctx.workdir, roc), curves, title)
    # written whole or not at all: select_lfw_model / lfw_threshold_costs read it later (View 2;
    # View 1's file has another name, so they never take it for a fold)
    path = os.path.join(ctx.workdir, scores_file)
    tmp = path + ".tmp.npz"
    np.savez(tmp, fold=pairs.fold, issame=pairs.issame, **scores)
    os.replace(tmp, path)
  return out


# ------------------------------------------------------------------------ one-shot


def eval_one_shot(ctx: Context) -> Metrics:
  """Closed set: every held-out person with >= 2 images enrolled from one image, the rest
  of their images identified (``repeats`` seeded choices of the enrolment
  image). Open set: ``open_set_enrolled`` of them enrolled (0: half), the others unknown;
  the threshold accepts a fraction ``open_set_far`` of a calibration group of other people
  (``calibrate_on``). Settings: ``config.evaluation.one_shot``."""
  c, e = ctx.config, ctx.config.evaluation.one_shot
  emb, labels = ctx.held_out_embeddings(), ctx.held_out.labels
  people = np.unique(labels)
  multi = people[[np.sum(labels == p) >= 2 for p in people]]
  if multi.size < 2:
    raise ValueError(f"one_shot: {ctx.held_out.name} has {multi.size} people with >= 2 images; "
                     "need >= 2")
  rank1, rank5 = [], []
  for r in range(e.repeats):
    split = open_set.open_set_split(labels, multi.size, shots=1, seed=c.seed + r,
                                    calibration_fraction=0.0)
    g = recognition.Gallery(emb.shape[1])
    for row in split.gallery:
      g.enrol(int(labels[row]), emb[row])
    ids, dist = g.distances(emb[split.known])
    rank1.append(open_set.rank_k_accuracy(dist, ids, labels[split.known], 1))
    if len(ids) > 5:   # rank-5 among 5 people or fewer is 1 by construction (open_set_report too)
      rank5.append(open_set.rank_k_accuracy(dist, ids, labels[split.known], 5))
  out = {"people": float(multi.size), "rank1": float(np.mean(rank1)),
         "rank1_std": float(np.std(rank1))}
  if rank5:
    out["rank5"] = float(np.mean(rank5))
  # open set: the threshold is calibrated on people who are neither enrolled nor scored as
  # unknowns: the training people (calibrate_on="train"; more of them, but
  # seen in training) or half of the non-enrolled held-out people ("held_out")
  enrolled = e.open_set_enrolled or max(1, multi.size // 2)
  on_train = e.calibrate_on == "train" and ctx.train is not None
  opens = []
  for r in range(e.repeats):
    split = open_set.open_set_split(labels, enrolled, shots=1, seed=c.seed + 100 + r,
                                    calibration_fraction=0.0 if on_train else 0.5)
    if split.unknown.size == 0 or (split.calibration.size == 0 and not on_train):
      break
    g = recognition.Gallery(emb.shape[1])
    for row in split.gallery:
      g.enrol(int(labels[row]), emb[row])
    _, cal_d = g.distances(ctx.train_embeddings()[0] if on_train else emb[split.calibration])
    t = open_set.calibrate_threshold(cal_d.min(axis=1), e.open_set_far)
    opens.append(open_set.open_set_report(emb[split.gallery], labels[split.gallery],
                                          emb[split.known], labels[split.known],
                                          emb[split.unknown], t, ranks=(1,)))
  if opens:
    for k in ("dir", "far", "unknown_rejection_rate", "threshold"):
      out[f"open_{k}"] = float(np.mean([o[k] for o in opens]))
    out["open_enrolled"] = float(enrolled)
    out["open_target_far"] = float(e.open_set_far)
  return out


# ------------------------------------------------------------------------ omniglot


def eval_omniglot_runs(ctx: Context) -> Metrics:
  """20-way 1-shot: each test image goes to the nearest of the run's 20 training images."""
  runs = real.omniglot_runs(ctx.config)
  r, w = runs.train_classes.shape
  t = runs.test_classes.shape[1]
  sup = ctx.embed(runs.train_images.reshape((r * w,) + runs.train_images.shape[2:]))
  qry = ctx.embed(runs.test_images.reshape((r * t,) + runs.test_images.shape[2:]))
  sup, qry = sup.reshape(r, w, 1, -1), qry.reshape(r, t, -1)
  accs = []
  for k in range(r):
    pred = episodes.classify(sup[k], qry[k])          # index into the run's classes
    accs.append(float(np.mean(runs.train_classes[k][pred] == runs.test_classes[k])))
  mean, ci = episodes.mean_ci95(np.asarray(accs))
  return {"accuracy": mean, "ci95": ci, "runs": float(r), "ways": float(w),
          "worst_run": float(min(accs)), "best_run": float(max(accs))}


# ------------------------------------------------------------------------ episodes


def eval_episodes(ctx: Context) -> Metrics:
  """Seeded N-way K-shot episodes (``config.evaluation.episodes``) of held-out people."""
  e = ctx.config.evaluation.episodes
  ep = episodes.sample_episodes(ctx.held_out.labels, e.n_way, e.k_shot, e.n_query,
                                e.num_episodes, seed=ctx.config.seed)
  return episodes.score_episodes(ctx.held_out_embeddings(), ep)


# ---------------------------------------------------------------------- clustering


def eval_clustering(ctx: Context) -> Metrics:
  """NMI and purity of held-out people clustered (``config.evaluation.clustering.linkage``)
  at the threshold best on training pairs, and the oracle threshold's NMI."""
  c = ctx.config
  linkage = c.evaluation.clustering.linkage
  emb, labels = ctx.held_out_embeddings(), ctx.held_out.labels
  out: Metrics = {}
  if ctx.train is not None:
    tr_emb, tr_labels = ctx.train_embeddings()
    i, j, same = verification.make_pairs(tr_labels, min(3000, len(tr_labels)), seed=c.seed)
    t, _ = verification.best_threshold(np.sum((tr_emb[i] - tr_emb[j]) ** 2, axis=1), same)
    pred = clustering.cluster(emb, t, linkage)
    out.update(threshold=t, nmi=clustering.nmi(pred, labels), purity=clustering.purity(pred, labels),
               clusters=float(np.unique(pred).size))
  sweep = clustering.threshold_sweep(emb, labels, linkage=linkage)
  out.update(oracle_nmi=float(sweep["best_nmi"]), oracle_threshold=float(sweep["best_threshold"]),
             people=float(np.unique(labels).size))
  return out


EVALUATORS: dict[str, Callable[[Context], Metrics]] = {
    "pairs": eval_pairs,
    "lfw_view2": eval_lfw_view2,
    "lfw_view1": eval_lfw_view1,
    "one_shot": eval_one_shot,
    "omniglot_runs": eval_omniglot_runs,
    "episodes": eval_episodes,
    "clustering": eval_clustering,
}

# evaluators that score a dataset's own protocol, so only a run on that data.source has it
SOURCE_OF = {"lfw_view2": "lfw", "lfw_view1": "lfw", "omniglot_runs": "omniglot"}

# what ``scripts/evaluate_facenet.py --eval=NAME`` runs for a dataset name
DATASET_EVALS = {
    "lfw": ("lfw_view2",),
    "orl": ("one_shot", "pairs", "clustering"),
    "omniglot": ("omniglot_runs", "episodes"),
    "folder": ("one_shot", "pairs", "clustering"),
    "synthetic": ("pairs", "one_shot", "episodes", "clustering"),
}


class EvaluatorError(UserError, ValueError):
  """An evaluator or dataset name that is not one (``config.evals``, ``--eval``)."""


def names(spec: str) -> list[str]:
  """Evaluator names of a comma-separated spec of evaluator or dataset names."""
  out: list[str] = []
  for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
    if part in EVALUATORS:
      out.append(part)
    elif part in DATASET_EVALS:
      out.extend(DATASET_EVALS[part])
    else:
      raise EvaluatorError(f"evaluator {part!r} is unknown; expected one of "
                           f"{sorted(EVALUATORS)} or a dataset name {sorted(DATASET_EVALS)}")
  return list(dict.fromkeys(out))


# the evaluators scored on the held-out people of the run's split (``ctx.held_out``); the
# others bring their own pairs or runs (LFW View 2, the Omniglot runs)
ON_HELD_OUT = ("pairs", "one_shot", "episodes", "clustering")
NO_HELD_OUT = ("no held-out identities (config.data.eval_identities = 0 with every identity "
               "in training)")


def skipped(spec: str, held_out: IdentityDataset) -> dict[str, str]:
  """``{evaluator: reason}`` for the evaluators of ``spec`` that cannot run: those of
  ON_HELD_OUT when ``held_out`` holds no image."""
  return {n: NO_HELD_OUT for n in names(spec) if n in ON_HELD_OUT and len(held_out) == 0}


def run(spec: str, ctx: Context) -> dict[str, Metrics]:
  """``{evaluator: metrics}`` for every evaluator named by ``spec`` that can run (see
  :func:`skipped`)."""
  skip = skipped(spec, ctx.held_out)
  return {n: EVALUATORS[n](ctx) for n in names(spec) if n not in skip}


def flatten(results: dict[str, Metrics]) -> Metrics:
  """``{"pairs/verification_accuracy": ..., ...}``: one flat dict for writers and JSON."""
  return {f"{n}/{k}": float(v) for n, m in results.items() for k, v in m.items()}
