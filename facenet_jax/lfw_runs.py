"""LFW View 2 cross-validations on disk: their test folds' scores, pooled, and a model chosen
per fold without looking at its test fold.

A cross-validation workdir (``scripts/cross_validate.py``) holds one run directory per test
fold k, in which the ``lfw_view2`` evaluator wrote ``lfw_scores_fold<k>.npz``: every View 2
pair's score under each scorer (``distance``, ``head_chi2``, ...; smaller = more alike) with
its ``fold`` and ``issame``. For that run only fold k's 600 pairs are test pairs; the pairs of
its calibration folds (``data.calibration_folds`` in its ``config.json``: the folds after k,
whose people it never trained on) set its threshold; the other folds are its training people.

Nested selection (:func:`select_per_fold`): for each test fold the candidate whose threshold
is most accurate on that fold's calibration pairs is chosen, and the chosen model's test
accuracy is counted. The test folds never take part in a choice, so the mean over folds
estimates the selection procedure itself, unlike the mean of whichever candidate did best on
the test folds.

What the threshold costs (:func:`threshold_costs`): each test fold's accuracy at its
calibration threshold, at a threshold cross-validated within the fold, and at the fold's own
best threshold, which separates the optimism of an in-sample maximum from a real loss in
taking the threshold from other people.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile

import numpy as np

from facenet_jax import verification

SCORES_PREFIX = "lfw_scores_fold"


@dataclasses.dataclass(frozen=True)
class FoldScores:
  """One run's ``lfw_scores_fold<fold>.npz``: ``scores[name]``, ``folds`` and ``issame`` are
  (P,) over all View 2 pairs."""
  path: str
  fold: int
  scores: dict[str, np.ndarray]
  folds: np.ndarray
  issame: np.ndarray

  @property
  def test(self) -> np.ndarray:
    return self.folds == self.fold

  def of(self, scorer: str) -> np.ndarray:
    """The (P,) scores of ``scorer``; ValueError naming the file and the scorers it has."""
    if scorer not in self.scores:
      raise ValueError(f"{self.path}: no scores {scorer!r} (has {sorted(self.scores)})")
    return self.scores[scorer]


def check_out_of_runs(out: str | None, roots: dict[str, str]) -> None:
  """ValueError when the table file ``out`` would land inside one of the runs it reads (it
  replaced a fold's results.json or the cross-validation's summary.json, exit 0)."""
  if not out:
    return
  path = os.path.realpath(out)
  for label, root in roots.items():
    if os.path.commonpath([path, os.path.realpath(root)]) == os.path.realpath(root):
      raise ValueError(f"--out={out}: inside the run {label}={root} that it reads; write the "
                       f"table elsewhere")


def parse_runs(entries: list[str], flag: str = "--runs") -> dict[str, str]:
  """``LABEL=DIR`` entries as ``{label: DIR}``; ValueError naming ``flag`` for a malformed
  entry, a repeated label or a missing directory."""
  out: dict[str, str] = {}
  for entry in entries:
    label, sep, root = entry.partition("=")
    if not sep or not label or not root:
      raise ValueError(f"{flag}: expected LABEL=DIR, got {entry!r}")
    if label in out:
      raise ValueError(f"{flag}: label {label!r} given twice")
    if not os.path.isdir(root):
      raise ValueError(f"{flag}: {label}={root}: no such directory")
    out[label] = root
  return out


def run_dirs(root: str) -> list[str]:
  """The run directories of a cross-validation workdir, sorted."""
  return [os.path.join(root, d) for d in sorted(os.listdir(root))
          if os.path.isdir(os.path.join(root, d))]


def fold_scores(dirs: list[str], folds: list[int] | None = None) -> dict[int, FoldScores]:
  """``{test fold: FoldScores}`` of the runs in ``dirs`` (``folds``: keep only these).
  ValueError naming the file for a fold found twice (a pool would count its pairs twice) and
  for a damaged or foreign score file."""
  out: dict[int, FoldScores] = {}
  for d in dirs:
    for f in sorted(os.listdir(d)):
      # the run's own scores only: a re-evaluation's carry its settings ("...fold0@x=1.npz")
      if not re.fullmatch(re.escape(SCORES_PREFIX) + r"\d+\.npz", f):
        continue
      fold = int(f[len(SCORES_PREFIX):-4])
      if folds is not None and fold not in folds:
        continue
      path = os.path.join(d, f)
      if fold in out:
        raise ValueError(f"{path}: test fold {fold} was read before from {out[fold].path}")
      try:
        with np.load(path, allow_pickle=False) as z:
          arrays = {name: z[name] for name in z.files}
        scores = {k: v for k, v in arrays.items() if k not in ("fold", "issame")}
        out[fold] = FoldScores(path, fold, scores, arrays["fold"], arrays["issame"].astype(bool))
      except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable LFW score file ({type(e).__name__}: {e})") from e
      check_fold_scores(out[fold])
  return out


def check_fold_scores(fs: FoldScores) -> None:
  """ValueError naming the file when its arrays are not one (P,) entry per pair each (the
  scorers, ``fold``, ``issame``), or a score is NaN/Inf: a short array was an IndexError
  traceback, a NaN an error naming neither file nor scorer."""
  shapes = {name: a.shape for name, a in {**fs.scores, "fold": fs.folds, "issame": fs.issame}.items()}
  if len(set(shapes.values())) != 1 or len(shapes["fold"]) != 1:
    raise ValueError(f"{fs.path}: expected one value per pair in every array, got shapes "
                     + ", ".join(f"{k} {v}" for k, v in shapes.items()))
  for name, a in fs.scores.items():
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
      bad = "not numbers" if not np.issubdtype(a.dtype, np.number) else \
          f"{int(np.sum(~np.isfinite(a)))} of {a.size} NaN or Inf"
      raise ValueError(f"{fs.path}: scores {name!r}: {bad}")


def pooled_scores(dirs: list[str], folds: list[int] | None = None
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[int]]:
  """Each run's own test pairs, pooled over the runs in ``dirs`` (in directory order):
  ``({scorer: (dist_N, issame_N)}, test folds read, sorted)``."""
  read = fold_scores(dirs, folds)
  parts: dict[str, list] = {}
  for fs in read.values():
    for name, s in fs.scores.items():
      parts.setdefault(name, []).append((s[fs.test], fs.issame[fs.test]))
  pooled = {name: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
            for name, ps in parts.items()}
  return pooled, sorted(read)


def calibration_folds(fs: FoldScores) -> tuple[int, ...]:
  """The calibration folds of the run that wrote ``fs``, from ``config.json`` beside it:
  the ``data.calibration_folds`` folds after its test fold, cyclically. ValueError naming
  the file when it is missing, is not that run's (another test fold), or has none (its
  threshold then came from its own training people, which cannot rank models)."""
  path = os.path.join(os.path.dirname(fs.path), "config.json")
  try:
    with open(path) as f:
      data = json.load(f)["data"]
    test, k = int(data["test_fold"]), int(data["calibration_folds"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: expected the run's config with data.test_fold and "
                     f"data.calibration_folds beside {os.path.basename(fs.path)} "
                     f"({type(e).__name__}: {e})") from e
  num = int(fs.folds.max()) + 1
  if test != fs.fold:
    raise ValueError(f"{path}: data.test_fold = {test}, but the scores beside it are of fold {fs.fold}")
  if not 1 <= k <= num - 2:
    raise ValueError(f"{path}: data.calibration_folds = {k}: selection needs 1..{num - 2} folds "
                     f"held out of training (with 0 the threshold is fitted on training people)")
  return tuple((test + 1 + i) % num for i in range(k))


@dataclasses.dataclass(frozen=True)
class FoldChoice:
  """One test fold: each candidate's calibration accuracy and test metrics (``accuracy``,
  ``val_at_far``, ``far``, ``roc_auc``, ``eer``: :func:`fold_metrics`), and the one chosen."""
  fold: int
  calibration: tuple[int, ...]
  calibration_accuracy: dict[str, float]
  test: dict[str, dict[str, float]]
  chosen: str


def fold_metrics(dist: np.ndarray, issame: np.ndarray, fit: np.ndarray, test: np.ndarray,
                 far: float) -> dict[str, float]:
  """One scorer's metrics on the ``test`` pairs with thresholds chosen on the ``fit`` pairs
  (masks over the same pairs), as ``lfw_view2`` reports them: ``accuracy`` at the fit pairs'
  best threshold and that threshold's ``calibration_accuracy`` on them; ``val_at_far`` and the
  ``far`` reached at the fit pairs' FAR-``far`` threshold; ``roc_auc`` and ``eer`` of the test
  pairs alone."""
  d, same = np.asarray(dist), np.asarray(issame, bool)
  _, cal_acc, acc = verification.threshold_transfer(d[fit], same[fit], d[test], same[test])
  val, far_reached = verification.val_far_transfer(d[fit], same[fit], d[test], same[test], far)
  return {"accuracy": acc, "calibration_accuracy": cal_acc, "val_at_far": val, "far": far_reached,
          "roc_auc": verification.roc_auc(d[test], same[test]),
          "eer": verification.eer(d[test], same[test])}


def select_per_fold(candidates: dict[str, list[str]], scorer: str = "distance",
                    far: float = 1e-3) -> list[FoldChoice]:
  """Nested model selection over LFW View 2 cross-validations (module docstring).

  ``candidates``: ``{label: run directories}``, in order of preference: a tie in calibration
  accuracy goes to the earlier label (list the baseline first). For every test fold, each
  candidate's threshold is :func:`verification.best_threshold` on the calibration pairs;
  its accuracy there ranks the candidates and the same threshold scores the test pairs
  (VAL@``far``: the threshold of FAR ``far`` on the calibration pairs, as ``lfw_view2``).
  ValueError when the candidates were tested on different folds, calibrated on different
  folds, lack ``scorer``, or scored different pairs."""
  if not candidates:
    raise ValueError("no candidates to choose among")
  per = {label: fold_scores(dirs) for label, dirs in candidates.items()}
  folds = {label: sorted(fs) for label, fs in per.items()}
  first = next(iter(candidates))
  for label, got in folds.items():
    if not got:
      raise ValueError(f"{label}: no {SCORES_PREFIX}<k>.npz in its run directories")
    if got != folds[first]:
      raise ValueError(f"the candidates were tested on different folds {folds}")
  out = []
  for k in folds[first]:
    cal_acc, test, cal_of = {}, {}, {}
    for label, by_fold in per.items():
      fs = by_fold[k]
      scores = fs.of(scorer)
      if not (np.array_equal(fs.folds, per[first][k].folds)
              and np.array_equal(fs.issame, per[first][k].issame)):
        raise ValueError(f"{fs.path}: its pairs differ from {per[first][k].path}'s")
      cal_of[label] = calibration_folds(fs)
      fit = np.isin(fs.folds, cal_of[label])
      test[label] = fold_metrics(scores, fs.issame, fit, fs.test, far)
      cal_acc[label] = test[label].pop("calibration_accuracy")
    if len(set(cal_of.values())) > 1:
      raise ValueError(f"test fold {k}: the candidates were calibrated on different folds {cal_of}")
    best = max(cal_acc.values())
    chosen = next(label for label in candidates if cal_acc[label] == best)
    out.append(FoldChoice(k, cal_of[first], cal_acc, test, chosen))
  return out


def selection_summary(choices: list[FoldChoice]) -> dict[str, dict[str, float]]:
  """``{label or "selected": {"<metric>/mean", "<metric>/std", "std_ddof", "n", "chosen"}}``
  over the test folds (std: population, ddof 0, as ``cross_validate`` reports; ``chosen``: how many folds
  picked that label, absent for "selected")."""
  labels = list(choices[0].test)
  rows = {label: [c.test[label] for c in choices] for label in labels}
  rows["selected"] = [c.test[c.chosen] for c in choices]
  out = {}
  for k, per_fold in rows.items():
    out[k] = {"n": len(per_fold), "std_ddof": 0}
    for m in per_fold[0]:
      v = np.asarray([f[m] for f in per_fold], np.float64)
      out[k][f"{m}/mean"], out[k][f"{m}/std"] = float(v.mean()), float(v.std())
  for label in labels:
    out[label]["chosen"] = sum(c.chosen == label for c in choices)
  return out


# ------------------------------------------------------------------- what the threshold costs

@dataclasses.dataclass(frozen=True)
class ThresholdCost:
  """One run's test fold scored at three thresholds of the same scores (accuracies):

  ``transfer``: at the best threshold of its calibration pairs (what the run reports);
  ``within_fold``: each test pair at a threshold chosen on the *other* test pairs (k-fold
  within the fold, averaged over random splits): same people, no pair scored by a threshold
  it chose; ``in_sample``: at the test pairs' own best threshold, optimistic by construction.
  ``calibration_in_sample``: the calibration pairs' accuracy at their own best threshold."""
  fold: int
  calibration: tuple[int, ...]
  calibration_in_sample: float
  transfer: float
  within_fold: float
  in_sample: float


def threshold_costs(dirs: list[str], scorer: str = "distance", splits: int = 10,
                    repeats: int = 20) -> list[ThresholdCost]:
  """Where the accuracy lost to the threshold goes, per test fold of one cross-validation.

  ``in_sample - within_fold`` is the optimism of maximizing accuracy over the same pairs it
  is read on (no protocol can claim it); ``within_fold - transfer`` is what taking the
  threshold from the calibration folds' people costs against a threshold from the test
  fold's own distribution (fitted on ``(splits - 1) / splits`` of its pairs: for LFW's 600,
  540 pairs against the calibration fold's 600). ``within_fold`` is the mean over seeds
  ``0..repeats-1`` of :func:`verification.kfold_accuracy` with ``splits`` random folds.
  ValueError as :func:`select_per_fold` for a run without calibration folds or scores.
  """
  if splits < 2 or repeats < 1:
    raise ValueError(f"splits must be >= 2 and repeats >= 1, got {splits} and {repeats}")
  read = fold_scores(dirs)
  if not read:
    raise ValueError(f"no {SCORES_PREFIX}<k>.npz in the run directories {dirs}")
  out = []
  for k, fs in sorted(read.items()):
    d, same = np.asarray(fs.of(scorer), np.float64), fs.issame
    if splits > int(fs.test.sum()):   # more splits than pairs were printed as that many
      raise ValueError(f"splits={splits}: {fs.path} has {int(fs.test.sum())} test pairs; expected "
                       f"at most that many splits")
    cal = calibration_folds(fs)
    fit = np.isin(fs.folds, cal)
    _, cal_acc, transfer = verification.threshold_transfer(d[fit], same[fit], d[fs.test], same[fs.test])
    within = np.mean([verification.kfold_accuracy(d[fs.test], same[fs.test], folds=splits, seed=r)
                      ["accuracy"] for r in range(repeats)])
    _, in_sample = verification.best_threshold(d[fs.test], same[fs.test])
    out.append(ThresholdCost(k, cal, cal_acc, transfer, float(within), in_sample))
  return out
