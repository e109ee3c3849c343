"""Pair verification metrics: k-fold threshold accuracy, ROC, AUC, EER, VAL@FAR.

A pair is declared "same" when its distance is <= a threshold (or, for a similarity
score, pass ``-score`` as the distance). The k-fold protocol picks each threshold on the
other k-1 folds and applies it to the held-out fold, so no threshold is chosen on the pairs
it is scored on (LFW View 2 protocol): the accuracy-maximizing one (``best_threshold``) and
the largest one with FAR <= 1e-3 (``val_far_transfer``, FaceNet's VAL@FAR), which also
serves the LFW evaluator's calibration-fold transfer.
"""

from __future__ import annotations

import numpy as np

from facenet_jax import open_set
from infra.errors import UserError


class PairsError(UserError, ValueError):
  """Too few identities, or too few images per identity, to draw verification pairs from."""


def make_pairs(labels: np.ndarray, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``n`` matched then ``n`` mismatched pairs of rows, no unordered pair twice, deterministic
  from ``seed``; ``n = min(num_pairs, matched pairs that exist, mismatched pairs that exist)``.

  Distinct, because the k-fold protocol chooses each threshold on the other folds: drawn with
  replacement, a pair's copy sat on both sides (ORL's 10 held-out people: 298 distinct of 500
  matched pairs; 10 people of 2 images with random embeddings scored 0.58 instead of 0.5). A
  small set gives fewer pairs than asked (ORL's 10 x 10 images: 450 matched exist), not repeats.
  Matched: an identity with >= 2 images uniformly, then two of its images; mismatched: two
  identities uniformly, then one image of each; a pair drawn before is drawn again. When ``n``
  is over half of the pairs that exist, ``n`` of them uniformly instead.

  Returns ``(i, j, issame)`` index arrays into ``labels``; matched pairs need identities
  with two or more images.
  """
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  multi = np.nonzero(counts >= 2)[0]
  if multi.size == 0 or ids.size < 2:
    raise PairsError("verification pairs need >= 2 identities, one with >= 2 images; "
                     f"got {ids.size} identities, {multi.size} with >= 2 images")
  by_id = [np.nonzero(inverse == k)[0] for k in range(ids.size)]
  c = counts.astype(np.int64)
  n_same, n_diff = int(np.sum(c * (c - 1) // 2)), int((c.sum() ** 2 - np.sum(c * c)) // 2)
  n = min(int(num_pairs), n_same, n_diff)

  def one_same():
    return rng.choice(by_id[rng.choice(multi)], 2, replace=False)

  def one_diff():
    ka, kb = rng.choice(ids.size, 2, replace=False)
    return rng.choice(by_id[ka]), rng.choice(by_id[kb])

  def every_same():
    return np.concatenate([np.stack([r[a], r[b]], 1) for r in by_id if r.size >= 2
                           for a, b in [np.triu_indices(r.size, 1)]])

  def every_diff():
    a, b = np.triu_indices(labels.size, 1)
    keep = inverse[a] != inverse[b]
    return np.stack([a[keep], b[keep]], 1)

  same = _distinct_pairs(rng, n, n_same, one_same, every_same)
  diff = _distinct_pairs(rng, n, n_diff, one_diff, every_diff)
  issame = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  return np.r_[same[:, 0], diff[:, 0]], np.r_[same[:, 1], diff[:, 1]], issame


def _distinct_pairs(rng: np.random.Generator, n: int, total: int, draw, every) -> np.ndarray:
  """``(n, 2)`` row pairs, no unordered pair twice: drawn with ``draw()`` and redrawn when seen,
  or, with ``n`` over half of the ``total`` that exist, ``n`` of ``every()`` uniformly."""
  if 2 * n > total:
    pairs = every()
    return pairs[np.sort(rng.choice(len(pairs), n, replace=False))]
  seen, out = set(), []
  while len(out) < n:
    a, b = (int(x) for x in draw())
    key = (min(a, b), max(a, b))
    if key not in seen:
      seen.add(key)
      out.append((a, b))
  return np.asarray(out, np.int64).reshape(n, 2)


class NonFiniteDistancesError(UserError, ValueError):
  """Pair distances with NaN or Inf (an embedding that is not finite)."""


def finite_distances(dist, what: str = "pair distances") -> np.ndarray:
  """``dist`` as float64, or NonFiniteDistancesError: a NaN fails every ``d <= t`` and sorts
  last, so it was scored as a rejected pair and every metric came out quietly wrong."""
  dist = np.asarray(dist, np.float64)
  bad = int(np.size(dist) - np.count_nonzero(np.isfinite(dist)))
  if bad:
    raise NonFiniteDistancesError(f"{what}: {bad} of {dist.size} are NaN or Inf (embeddings "
                                  "that are not finite?)")
  return dist


def best_threshold(dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
  """The threshold maximizing accuracy of ``dist <= t`` on these pairs, and that accuracy.

  Candidates are midpoints between consecutive sorted distances (and both ends); ties in
  accuracy go to the smallest threshold. NonFiniteDistancesError for NaN or Inf.
  """
  dist = finite_distances(dist)
  issame = np.asarray(issame, bool)
  order = np.argsort(dist, kind="stable")
  d, s = dist[order], issame[order]
  n = d.size
  # accepting the first k pairs (k = 0..n): correct = same among them + different after
  tp = np.r_[0, np.cumsum(s)]
  tn_after = (~s).sum() - np.r_[0, np.cumsum(~s)]
  acc = (tp + tn_after) / n
  # a cut between equal distances is not realizable
  cut_ok = np.r_[True, d[1:] > d[:-1], True]
  acc = np.where(cut_ok, acc, -1.0)
  k = int(np.argmax(acc))
  if k == 0:
    t = d[0] - 1.0
  elif k == n:
    t = d[-1] + 1.0
  else:
    t = open_set.threshold_between(d[k - 1], d[k])
  return float(t), float(acc[k])


def threshold_transfer(dist_fit: np.ndarray, issame_fit: np.ndarray, dist_test: np.ndarray,
                       issame_test: np.ndarray) -> tuple[float, float, float]:
  """Accuracy of ``dist_test <= t`` at the threshold ``t`` that is best on other pairs.

  ``t`` is :func:`best_threshold` of ``(dist_fit, issame_fit)``; returns ``(t, fit accuracy,
  test accuracy)``. The fit accuracy is in-sample (every model scored on the same fitting
  pairs gains the same kind of optimism), so it may rank models; the test accuracy is the
  one to report.
  """
  t, fit_acc = best_threshold(dist_fit, issame_fit)
  test_acc = np.mean((finite_distances(dist_test) <= t) == np.asarray(issame_test, bool))
  return t, fit_acc, float(test_acc)


def kfold_accuracy(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray | int = 10,
                   seed: int = 0, far_target: float = 1e-3) -> dict[str, float | np.ndarray]:
  """Verification accuracy and VAL@FAR with every threshold chosen on the other folds.

  For each fold f: the accuracy threshold (``best_threshold``) and the VAL threshold (the
  largest with FAR <= ``far_target``, ``val_far_transfer``) are chosen on the pairs outside
  f and applied to f's pairs; the results are averaged over folds.

  Args:
    dist: (N,) pair distances (smaller = more alike).
    issame: (N,) bool ground truth.
    folds: (N,) fold id per pair (LFW carries its own), or a fold count for a seeded
      random split.
    far_target: the false-accept rate of VAL.
  Returns:
    {"accuracy": mean over folds, "accuracy_std", "threshold": mean chosen threshold,
     "fold_accuracies": (k,) array, "val": mean test-fold VAL, "far": mean test-fold FAR
     reached at those thresholds (it can exceed ``far_target``)}
  """
  dist = np.asarray(dist, np.float64)
  issame = np.asarray(issame, bool)
  if dist.shape != issame.shape or dist.ndim != 1:
    raise ValueError(f"dist and issame must be equal 1-D shapes, got {dist.shape}, {issame.shape}")
  finite_distances(dist)
  if np.isscalar(folds):
    k = int(folds)
    fold_id = np.random.default_rng(seed).permutation(dist.size) % k
  else:
    fold_id = np.asarray(folds)
  accs, thresholds, vals, fars = [], [], [], []
  for f in np.unique(fold_id):
    test = fold_id == f
    t, _, acc = threshold_transfer(dist[~test], issame[~test], dist[test], issame[test])
    accs.append(acc)
    thresholds.append(t)
    val, far = val_far_transfer(dist[~test], issame[~test], dist[test], issame[test], far_target)
    vals.append(val)
    fars.append(far)
  accs = np.asarray(accs)
  return {"accuracy": float(accs.mean()), "accuracy_std": float(accs.std()),
          "threshold": float(np.mean(thresholds)), "fold_accuracies": accs,
          "val": float(np.nanmean(vals)), "far": float(np.nanmean(fars))}


def _roc_counts(dist: np.ndarray, issame: np.ndarray):
  """Integer ROC counts of ``dist <= t``: ``(fp, tp, n_neg, n_pos, thresholds)``, one entry
  per distinct distance after a leading t = -inf (nothing accepted)."""
  dist = finite_distances(dist)
  issame = np.asarray(issame, bool)
  order = np.argsort(dist, kind="stable")
  d, s = dist[order], issame[order]
  last = np.r_[d[1:] > d[:-1], True]          # end of each group of tied distances
  tp = np.r_[0, np.cumsum(s)[last]]
  fp = np.r_[0, np.cumsum(~s)[last]]
  return fp, tp, int((~s).sum()), int(s.sum()), np.r_[-np.inf, d[last]]


def _rate(count: np.ndarray, total: int) -> np.ndarray:
  """count / total, NaN throughout when total is 0 (a rate over no pairs is undefined)."""
  return count / total if total else np.full(count.shape, np.nan)


def roc(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC of ``dist <= t`` over all thresholds: (far, tar, thresholds), far ascending; far
  (tar) is NaN throughout when there are no different (same) pairs."""
  fp, tp, n_neg, n_pos, thresholds = _roc_counts(dist, issame)
  return _rate(fp, n_neg), _rate(tp, n_pos), thresholds


def roc_auc(dist: np.ndarray, issame: np.ndarray) -> float:
  """Area under the ROC; NaN when the pairs hold one class only (it gave 0.0)."""
  far, tar, _ = roc(dist, issame)
  return float(np.trapezoid(tar, far))


def eer(dist: np.ndarray, issame: np.ndarray) -> float:
  """Equal error rate: where the false-accept rate equals the false-reject rate.

  (FAR + FRR) / 2 at the threshold whose |FAR - FRR| is smallest. When two thresholds are
  equally close (the crossing lies exactly halfway between their operating points), the
  mean of their two values: where the straight line between them crosses FAR = FRR. The
  gaps are compared as integers, so such ties are found exactly, not left to rounding.
  """
  fp, tp, n_neg, n_pos, _ = _roc_counts(dist, issame)
  if not n_neg or not n_pos:   # one class only: undefined (it gave 0.0 or 1.0)
    return float("nan")
  fn = n_pos - tp
  gap = np.abs(fp * n_pos - fn * n_neg)        # n_pos n_neg |FAR - FRR|, exact
  best = np.flatnonzero(gap == gap.min())      # one point, or two on either side of the crossing
  return float(np.mean(0.5 * (fp[best] / n_neg + fn[best] / n_pos)))


def val_at_far(dist: np.ndarray, issame: np.ndarray, far_target: float = 1e-3) -> float:
  """FaceNet's VAL(d) at the largest threshold whose FAR on these same pairs is <=
  ``far_target``: in-sample, so optimistic; reports use ``kfold_accuracy``'s ``val``. NaN
  when the pairs hold one class only."""
  far, tar, _ = roc(dist, issame)
  if np.isnan(far[0]) or np.isnan(tar[0]):
    return float("nan")
  ok = far <= far_target
  return float(tar[ok].max()) if ok.any() else 0.0


def val_far_transfer(dist_fit: np.ndarray, issame_fit: np.ndarray, dist_test: np.ndarray,
                     issame_test: np.ndarray, far_target: float = 1e-3) -> tuple[float, float]:
  """VAL and FAR on test pairs at the threshold chosen on other pairs (FaceNet's protocol).

  The threshold is the largest one whose FAR on the fitting pairs is <= ``far_target``;
  returns ``(VAL, FAR)`` of ``dist_test <= threshold``: the FAR reached on the test pairs
  is reported because it can exceed the target. Fitting pairs with no different pairs
  accept every pair (FAR is 0 at every threshold there).
  """
  fp, _, n_neg, _, thresholds = _roc_counts(dist_fit, issame_fit)
  far = fp / n_neg if n_neg else np.zeros(fp.shape)
  t = float(thresholds[np.nonzero(far <= far_target)[0].max()])
  dist_test = finite_distances(dist_test)
  issame_test = np.asarray(issame_test, bool)
  accept = dist_test <= t
  val = accept[issame_test].mean() if issame_test.any() else float("nan")
  fa = accept[~issame_test].mean() if (~issame_test).any() else float("nan")
  return float(val), float(fa)


PIXEL_CHUNK_BYTES = 64 * 2 ** 20   # float64 pixels of one chunk of pairs, both sides


def _unit_pixels(x: np.ndarray) -> np.ndarray:
  x = x.reshape(x.shape[0], -1).astype(np.float64)
  x = x - x.mean(axis=1, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pixel_distances(images, i: np.ndarray, j: np.ndarray) -> np.ndarray:
  """The raw-pixel baseline: squared L2 distance of per-image standardized, unit-norm pixels.

  ``images``: (N, ...) array, or any object indexed by row arrays (``records.RecordImages``
  reads only those rows). Pairs are taken a chunk at a time, so memory stays at
  ``PIXEL_CHUNK_BYTES`` whatever the number of images and pairs (no float64 copy of the
  set); each pair's value is the same as from the whole set at once.
  """
  i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
  per_image = 8 * int(np.prod(images.shape[1:]))
  chunk = max(1, PIXEL_CHUNK_BYTES // (2 * per_image))
  out = np.zeros(i.size, np.float64)
  for s in range(0, i.size, chunk):
    a, b = _unit_pixels(images[i[s:s + chunk]]), _unit_pixels(images[j[s:s + chunk]])
    out[s:s + chunk] = np.sum((a - b) ** 2, axis=1)
  return out


def summarize(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray | int = 10,
              prefix: str = "") -> dict[str, float]:
  """Flat ``{name: float}`` of the standard verification metrics for these pairs.

  ``verification_accuracy`` (+ ``_std``, ``threshold``) and ``val_at_far_1e-3`` (with
  ``far_reached_1e-3``, the FAR those thresholds reached) are k-fold: thresholds from the
  other folds (``kfold_accuracy``); ``roc_auc`` and ``eer`` are threshold-free. For
  recognition, ``threshold_at_far_<f>`` for each f of ``open_set.THRESHOLD_FARS`` is the threshold
  accepting at most a fraction f of all the mismatched (impostor) pairs here
  (``open_set.calibrate_threshold``), and ``impostor_pairs`` their number: such a
  threshold resolves FARs down to about 1 / impostor_pairs only.
  """
  kf = kfold_accuracy(dist, issame, folds)
  impostors = np.asarray(dist, np.float64)[~np.asarray(issame, bool)]
  out = {
      f"{prefix}verification_accuracy": kf["accuracy"],
      f"{prefix}verification_accuracy_std": kf["accuracy_std"],
      f"{prefix}threshold": kf["threshold"],
      f"{prefix}val_at_far_1e-3": kf["val"],
      f"{prefix}far_reached_1e-3": kf["far"],
      f"{prefix}roc_auc": roc_auc(dist, issame),
      f"{prefix}eer": eer(dist, issame),
      f"{prefix}impostor_pairs": float(impostors.size),
  }
  if impostors.size:
    for far in open_set.THRESHOLD_FARS:
      out[prefix + open_set.far_key(far)] = open_set.calibrate_threshold(impostors, far)
  return out
