from fractions import Fraction

import numpy as np
import pytest

from facenet_jax import open_set, verification as V


def _brute_best_threshold(d, s):
  cands = np.r_[d.min() - 1, (np.sort(d)[1:] + np.sort(d)[:-1]) / 2, d.max() + 1]
  accs = [np.mean((d <= t) == s) for t in cands]
  return float(np.max(accs))


def _brute_auc(d, s):
  """P(a random same pair is closer than a random different pair), ties counting 1/2."""
  ds, dd = d[s], d[~s]
  return float(np.mean((ds[:, None] < dd[None, :]) + 0.5 * (ds[:, None] == dd[None, :])))


def _brute_eer(d, s):
  """Every threshold t (-inf and each distance) with FAR(t) = P(different pair <= t) and
  FRR(t) = P(same pair > t) as exact fractions; (FAR + FRR) / 2 where |FAR - FRR| is
  smallest, averaged over the (at most two) thresholds that tie for it."""
  ds, dd = d[s], d[~s]
  pts = [(Fraction(int(np.sum(dd <= t)), dd.size), Fraction(int(np.sum(ds > t)), ds.size))
         for t in np.r_[-np.inf, np.unique(d)]]
  best = min(abs(far - frr) for far, frr in pts)
  vals = [(far + frr) / 2 for far, frr in pts if abs(far - frr) == best]
  return float(sum(vals) / len(vals))


def test_threshold_transfer_scores_other_pairs_at_the_fitted_threshold():
  """The fitted threshold is the smallest of the brute-force best cuts; the test accuracy is
  the plain count of test pairs on the right side of it."""
  rng = np.random.default_rng(7)
  for _ in range(20):
    s_fit, s_test = rng.random(50) < 0.5, rng.random(40) < 0.5
    d_fit = np.round(rng.normal(size=50) + np.where(s_fit, 0.0, 1.0), 1)
    d_test = np.round(rng.normal(size=40) + np.where(s_test, 0.0, 1.0), 1)
    cands = np.r_[d_fit.min() - 1, (np.sort(d_fit)[1:] + np.sort(d_fit)[:-1]) / 2, d_fit.max() + 1]
    cands = [t for t in cands if t not in d_fit]       # a cut between equal distances is none
    accs = [np.mean((d_fit <= t) == s_fit) for t in cands]
    t_ref = min(t for t, a in zip(cands, accs) if a == max(accs))
    t, fit_acc, test_acc = V.threshold_transfer(d_fit, s_fit, d_test, s_test)
    assert fit_acc == pytest.approx(max(accs))
    assert np.mean((d_fit <= t) == s_fit) == np.mean((d_fit <= t_ref) == s_fit)
    assert test_acc == sum(int((d <= t_ref) == s) for d, s in zip(d_test, s_test)) / 40


def test_best_threshold_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    s = rng.random(60) < 0.5
    d = rng.normal(size=60) + np.where(s, 0.0, 1.0)
    d = np.round(d, 1)   # ties
    t, acc = V.best_threshold(d, s)
    assert acc == pytest.approx(_brute_best_threshold(d, s))
    assert np.mean((d <= t) == s) == pytest.approx(acc)


def test_kfold_never_uses_the_test_fold_threshold():
  # fold 0 alone would prefer a threshold the other folds reject
  d = np.array([0.1, 0.2, 0.9, 1.0] * 3 + [0.3, 0.4, 0.95, 0.98], float)
  s = np.array([1, 1, 0, 0] * 3 + [0, 0, 1, 1], bool)
  folds = np.repeat(np.arange(4), 4)[::-1]
  r = V.kfold_accuracy(d, s, folds)
  # the held-out fold 0 (last 4 pairs) is scored with t = 0.55 from the other folds: all wrong
  assert r["fold_accuracies"][0] == pytest.approx(0.0)
  assert r["accuracy"] == pytest.approx(0.75)


def test_roc_auc_eer_val_against_numpy():
  rng = np.random.default_rng(1)
  s = rng.random(400) < 0.5
  d = rng.normal(size=400) + np.where(s, 0.0, 1.5)
  # AUC = P(d_same < d_diff) (Mann-Whitney); no ties in continuous draws
  ds, dd = d[s], d[~s]
  assert V.roc_auc(d, s) == pytest.approx(_brute_auc(d, s), abs=1e-12)
  far, tar, _ = V.roc(d, s)
  assert far[0] == 0 and tar[-1] == 1 and np.all(np.diff(far) >= 0)
  # VAL@FAR: the fraction of same pairs below the largest threshold with FAR <= target
  target = 0.05
  ts = np.sort(dd)
  k = int(np.floor(target * dd.size))
  thr = ts[k] if k < dd.size else np.inf   # accept strictly below the (k+1)-th mismatched distance
  assert V.val_at_far(d, s, target) == pytest.approx(np.mean(ds < thr))
  assert V.eer(d, s) == pytest.approx(_brute_eer(d, s), abs=1e-12)


def test_auc_and_eer_with_tied_distances_match_brute_force():
  # few distinct distances: same and different pairs tie at most thresholds
  checked_ties = 0
  for seed in range(300):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    s = rng.random(n) < rng.uniform(0.2, 0.8)
    if s.all() or not s.any():
      continue
    d = rng.integers(0, 5, n).astype(float) + np.where(s, 0.0, rng.integers(0, 2))
    checked_ties += bool(np.intersect1d(d[s], d[~s]).size)
    assert V.roc_auc(d, s) == pytest.approx(_brute_auc(d, s), abs=1e-12), seed
    assert V.eer(d, s) == pytest.approx(_brute_eer(d, s), abs=1e-12), seed
  assert checked_ties > 200


def test_eer_tie_halfway_between_two_thresholds():
  # same pairs at 0, 2, 2; different at 1, 3, 3. t = 1: FAR 1/3, FRR 2/3; t = 2: FAR 1/3,
  # FRR 0. Both are 1/3 from FAR = FRR, and the line between them (FAR = 1/3) crosses it
  # at 1/3. In floats 1/3 - (1 - 1/3) is a hair beyond -1/3, so picking by rounding gave
  # the t = 2 point alone: 1/6.
  d = np.array([0.0, 2.0, 2.0, 1.0, 3.0, 3.0])
  s = np.array([1, 1, 1, 0, 0, 0], bool)
  assert V.eer(d, s) == pytest.approx(1 / 3, abs=1e-15)
  # AUC: same 0 beats all 3; each same 2 beats the two 3s and ties nothing: (3 + 2 + 2) / 9
  assert V.roc_auc(d, s) == pytest.approx(7 / 9, abs=1e-15)
  # a tie across the classes counts 1/2: same 1 vs different 1
  assert V.roc_auc(np.array([1.0, 1.0]), np.array([1, 0], bool)) == 0.5
  assert V.eer(np.array([1.0, 1.0]), np.array([1, 0], bool)) == 0.5


def test_perfect_separation():
  d = np.r_[np.zeros(10), np.ones(10)]
  s = np.r_[np.ones(10, bool), np.zeros(10, bool)]
  m = V.summarize(d, s, folds=5)
  assert m["verification_accuracy"] == 1.0 and m["roc_auc"] == 1.0 and m["eer"] == 0.0
  assert m["val_at_far_1e-3"] == 1.0


def test_pairs_are_balanced_and_correct():
  labels = np.repeat(np.arange(20), 3)
  i, j, s = V.make_pairs(labels, 50, seed=0)
  assert s.sum() == 50 and (~s).sum() == 50
  np.testing.assert_array_equal(labels[i] == labels[j], s)
  assert np.all(i[s] != j[s])


@pytest.mark.parametrize("people,per,asked,expect", [
    (10, 10, 3000, 450),   # ORL's held-out people: 450 matched pairs exist, so 450 of each
    (10, 10, 300, 300),    # more than half of them: chosen from every pair
    (100, 10, 3000, 3000), # the demo's: drawn and redrawn
    (10, 2, 50, 10),       # 10 matched exist
])
def test_pairs_are_distinct_and_capped_at_what_exists(people, per, asked, expect):
  """Drawn with replacement, copies of a pair fell in both the scored fold and the folds that
  chose its threshold (an audit: 10 people of 2 images, random embeddings, accuracy 0.58)."""
  labels = np.repeat(np.arange(people), per)
  i, j, s = V.make_pairs(labels, asked, seed=1)
  assert s.sum() == expect and (~s).sum() == expect
  np.testing.assert_array_equal(labels[i] == labels[j], s)
  keys = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
  assert len(keys) == 2 * expect and np.all(i != j)
  again = V.make_pairs(labels, asked, seed=1)
  assert all(np.array_equal(x, y) for x, y in zip((i, j, s), again))


def test_bad_inputs():
  with pytest.raises(ValueError, match="NaN"):
    V.kfold_accuracy(np.array([0.1, np.nan]), np.array([True, False]), 2)
  with pytest.raises(ValueError, match="identities"):
    V.make_pairs(np.zeros(5, int), 10, 0)


def _plain_kfold_val(d, s, fold_id, far_target):
  """VAL@FAR the plain way: per test fold, try every threshold (-inf and each training-fold
  distance), keep the largest whose FAR on the training folds is <= the target, count the
  test fold's same pairs at or below it; average over folds. Also the mean test FAR."""
  vals, fars = [], []
  for f in np.unique(fold_id):
    tr, te = fold_id != f, fold_id == f
    ok = [t for t in np.r_[-np.inf, d[tr]] if np.mean(d[tr][~s[tr]] <= t) <= far_target]
    t = max(ok)
    vals.append(np.mean(d[te][s[te]] <= t))
    fars.append(np.mean(d[te][~s[te]] <= t))
  return float(np.mean(vals)), float(np.mean(fars))


@pytest.mark.parametrize("far_target", [1e-3, 0.02])
def test_summarize_val_is_fold_based_against_a_plain_reference(far_target):
  """val_at_far_1e-3 is chosen on the other folds (like the accuracy), not on the pairs it
  scores: it equals the plain loop (and is not the in-sample value it replaced)."""
  rng = np.random.default_rng(3)
  s = np.r_[np.ones(1500, bool), np.zeros(1500, bool)]
  d = rng.normal(size=s.size) + np.where(s, 0.0, 2.0)
  fold_id = rng.permutation(s.size) % 10
  want_val, want_far = _plain_kfold_val(d, s, fold_id, far_target)
  kf = V.kfold_accuracy(d, s, fold_id, far_target=far_target)
  assert kf["val"] == pytest.approx(want_val, abs=1e-12)
  assert kf["far"] == pytest.approx(want_far, abs=1e-12)
  if far_target == 1e-3:
    m = V.summarize(d, s, fold_id)
    assert m["val_at_far_1e-3"] == pytest.approx(want_val, abs=1e-12)
    assert m["far_reached_1e-3"] == pytest.approx(want_far, abs=1e-12)
    assert m["val_at_far_1e-3"] != V.val_at_far(d, s, 1e-3)   # not the in-sample value


def test_summarize_saves_impostor_thresholds_for_recognition():
  """threshold_at_far_<f>: at most a fraction f of all impostor pairs at or below it, and
  the next impostor above (the largest such threshold, up to the midpoint)."""
  rng = np.random.default_rng(4)
  s = np.r_[np.ones(400, bool), np.zeros(2000, bool)]
  d = rng.normal(size=s.size) + np.where(s, 0.0, 2.0)
  m = V.summarize(d, s, 10)
  imp = np.sort(d[~s])
  assert m["impostor_pairs"] == 2000
  for far in open_set.THRESHOLD_FARS:
    t = m[open_set.far_key(far)]
    k = int(np.floor(far * imp.size + 1e-9))
    assert np.sum(imp <= t) == k and t < imp[k]
    assert (k == 0 and t == np.nextafter(imp[0], -np.inf)) or t == pytest.approx(0.5 * (imp[k - 1] + imp[k]))


def test_nan_distances_are_refused_on_every_lfw_path():
  """A NaN fails every d <= t and sorts last: fold_metrics (lfw_view2, select_per_fold,
  threshold costs) scored it as a rejected pair and printed accuracy 0.485 instead of 0.73,
  AUC 0.44 instead of 0.87, with no word; kfold_accuracy alone refused it."""
  from facenet_jax import lfw_runs
  rng = np.random.default_rng(0)
  s = np.r_[np.ones(600, bool), np.zeros(600, bool)]
  d = rng.random(1200) + (~s) * 0.5
  fold = np.arange(1200) % 2
  lfw_runs.fold_metrics(d, s, fold == 0, fold == 1, 1e-3)   # finite: fine
  for where in (fold == 0, fold == 1):   # a NaN among the fitting or the test pairs
    bad = d.copy()
    bad[np.flatnonzero(s & where)[:150]] = np.nan
    with pytest.raises(V.NonFiniteDistancesError, match=r"pair distances: 150 of 600 are NaN or Inf"):
      lfw_runs.fold_metrics(bad, s, fold == 0, fold == 1, 1e-3)
  for fn in (V.roc_auc, V.eer, V.val_at_far, V.best_threshold):
    with pytest.raises(V.NonFiniteDistancesError):
      fn(np.array([0.1, np.inf, 0.3]), np.array([True, False, False]))


@pytest.mark.parametrize("same", [True, False])
def test_one_class_pairs_have_no_auc_eer_or_val(same):
  """AUC, EER and VAL over pairs of one class are undefined: they were 0.0 (AUC), 0.0 or
  1.0 (EER) and 0.0 (VAL), numbers that look measured."""
  d = np.random.default_rng(1).random(50)
  s = np.full(50, same)
  assert np.isnan(V.roc_auc(d, s)) and np.isnan(V.eer(d, s)) and np.isnan(V.val_at_far(d, s))
  far, tar, _ = V.roc(d, s)
  assert np.isnan(far if same else tar).all() and not np.isnan(tar if same else far).any()


def test_thresholds_between_adjacent_floats_keep_the_accuracy_they_report():
  """The midpoint of two adjacent float64 distances rounds onto the upper one: the threshold
  then accepted the pair it was to reject (reported accuracy 1.0, realized 0.5)."""
  lo = 1.0 + 2.0 ** -52
  d = np.array([lo, np.nextafter(lo, 2.0)])
  s = np.array([True, False])
  t, acc = V.best_threshold(d, s)
  assert acc == 1.0 and np.mean((d <= t) == s) == 1.0
  imp = np.array([lo, d[1], 3.0])   # open set: 1 of 3 impostors allowed, the cut at d[1]
  t = open_set.calibrate_threshold(imp, 1 / 3)
  assert np.sum(imp <= t) == 1
