import os

import numpy as np
import pytest

from facenet_jax import recognition as R

# A hand-worked open-set example in 2-D, squared L2 distances, threshold t = 1.5.
#
#   gallery: alice (0, 0) and (0, 2); bob (4, 0); carol (4, 4)
#
#   probe            alice                 bob            carol         nearest  rank  outcome
#   p1 alice (0, 3)  min(9, 1)   = 1       16+9 = 25      16+1 = 17     alice 1  1     accepted, right
#   p2 bob   (3, 0)  min(9, 13)  = 9       1              1+16 = 17     bob   1  1     accepted, right
#   p3 carol (4,2.5) min(22.25,16.25)=16.25  6.25         2.25          carol 2.25 1   rejected (> t)
#   p4 bob   (1,2.5) min(7.25, 1.25) = 1.25  9+6.25=15.25 9+2.25=11.25  alice 1.25 3   accepted, wrong
#   u1 ?     (2, 2)  min(8, 4)   = 4       4+4 = 8        4+4 = 8       alice 4        rejected
#   u2 ?     (4, -1) min(17, 25) = 17      1              25            bob   1        accepted (false)
#
#   rank-1 = 3/4 (p1, p2, p3), rank-2 = 3/4, rank-3 = 1
#   DIR = 2/4 (p1, p2), FNIR = 1/2, known rejection = 1/4 (p3), misidentification = 1/4 (p4)
#   FAR = 1/2 (u2), unknown rejection = 1/2
T = 1.5
GALLERY = [("alice", [[0, 0], [0, 2]]), ("bob", [[4, 0]]), ("carol", [[4, 4]])]
KNOWN = np.array([[0, 3], [3, 0], [4, 2.5], [1, 2.5]], np.float32)
KNOWN_IDS = np.array(["alice", "bob", "carol", "bob"])
UNKNOWN = np.array([[2, 2], [4, -1]], np.float32)


def _gallery():
  g = R.Gallery(2)
  for name, emb in GALLERY:
    g.enrol(name, np.array(emb, np.float32))
  return g


def _ref_identity_distances(gallery_emb, gallery_ids, queries):
  """Plain loops: per identity, the min squared distance over its rows."""
  identities = list(dict.fromkeys(np.asarray(gallery_ids).tolist()))
  out = np.zeros((len(queries), len(identities)))
  for q, x in enumerate(np.asarray(queries, np.float64)):
    for k, ident in enumerate(identities):
      out[q, k] = min(float(((x - np.asarray(e, np.float64)) ** 2).sum())
                      for e, i in zip(gallery_emb, gallery_ids) if i == ident)
  return identities, out


def test_hand_worked_identify():
  ids, dist = R.identify(_gallery(), np.r_[KNOWN, UNKNOWN], T)
  assert ids == ["alice", "bob", R.UNKNOWN, "alice", R.UNKNOWN, "bob"]
  np.testing.assert_allclose(dist, [1, 1, 2.25, 1.25, 4, 1], atol=1e-5)


def test_hand_worked_open_set_report():
  g = _gallery()
  r = R.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, UNKNOWN, T, ranks=(1, 2, 3))
  expect = dict(rank1_accuracy=0.75, rank2_accuracy=0.75, rank3_accuracy=1.0, dir=0.5, fnir=0.5,
                known_rejection_rate=0.25, misidentification_rate=0.25, far=0.5,
                unknown_rejection_rate=0.5, threshold=1.5, num_identities=3.0,
                num_gallery_embeddings=4.0, num_known_probes=4.0, num_unknown_probes=2.0)
  assert r.keys() == expect.keys()
  for k, v in expect.items():
    assert r[k] == pytest.approx(v), k
  assert all(isinstance(v, float) for v in r.values())
  # closed-set identification accepts everything: DIR becomes rank-1, every unknown is a false accept
  r_inf = R.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, UNKNOWN, np.inf)
  assert r_inf["dir"] == pytest.approx(r_inf["rank1_accuracy"]) and r_inf["far"] == 1.0
  assert "rank5_accuracy" not in r_inf  # only 3 people enrolled


def test_identity_distances_match_loops():
  rng = np.random.default_rng(0)
  g_ids = rng.integers(0, 5, size=20)
  g_emb = rng.normal(size=(20, 6)).astype(np.float32)
  q = rng.normal(size=(7, 6)).astype(np.float32)
  identities, dist = R.identity_distances(g_emb, g_ids, q)
  ref_ids, ref = _ref_identity_distances(g_emb, g_ids, q)
  assert identities.tolist() == ref_ids  # order of first appearance
  np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-6)


def test_rank_and_rates_against_loops():
  rng = np.random.default_rng(1)
  dist = rng.random((30, 6))
  identities = np.array([10, 11, 12, 13, 14, 15])
  truth = rng.choice(identities, 30)
  unknown = rng.random((9, 6))
  t = 0.2
  ref_rank = [sum(dist[q, k] <= dist[q, list(identities).index(truth[q])] for k in range(6))
              for q in range(30)]
  np.testing.assert_array_equal(R.true_rank(dist, identities, truth), ref_rank)
  for k in (1, 3):
    assert R.rank_k_accuracy(dist, identities, truth, k) == pytest.approx(np.mean(np.array(ref_rank) <= k))
  rates = R.open_set_rates(dist, identities, truth, unknown, t)
  hit = [identities[np.argmin(dist[q])] == truth[q] and dist[q].min() <= t for q in range(30)]
  assert rates["dir"] == pytest.approx(np.mean(hit))
  assert rates["far"] == pytest.approx(np.mean([u.min() <= t for u in unknown]))
  assert rates["dir"] + rates["known_rejection_rate"] + rates["misidentification_rate"] == pytest.approx(1.0)


def test_ties_count_against_rank_one():
  dist = np.array([[1.0, 1.0, 2.0]])
  assert R.true_rank(dist, np.array(["a", "b", "c"]), np.array(["a"])).tolist() == [2]


def test_calibrate_threshold_hand_cases():
  d = np.array([4, 1, 3, 3, 2], float)  # sorted 1 2 3 3 4
  # far -> allowed accepts m = floor(5 far) -> threshold, accepted
  cases = {0.0: (np.nextafter(1.0, -np.inf), 0), 0.2: (1.5, 1), 0.4: (2.5, 2),
           0.6: (2.5, 2),   # m = 3 would split the tie at 3: both 3s are rejected
           0.8: (3.5, 4), 1.0: (4.0, 5)}
  for far, (t, accepted) in cases.items():
    assert R.calibrate_threshold(d, far) == pytest.approx(t), far
    assert np.sum(d <= R.calibrate_threshold(d, far)) == accepted


def test_calibrate_threshold_is_the_largest_allowed_cut():
  rng = np.random.default_rng(2)
  for _ in range(50):
    d = np.round(rng.random(rng.integers(1, 40)), 1)  # many ties
    far = rng.random()
    t = R.calibrate_threshold(d, far)
    m = int(np.floor(far * d.size + 1e-9))
    best = max([0] + [int(np.sum(d <= v)) for v in np.unique(d) if np.sum(d <= v) <= m])
    assert np.sum(d <= t) == best
  with pytest.raises(ValueError, match="far"):
    R.calibrate_threshold(d, 1.5)
  with pytest.raises(ValueError, match="at least one"):
    R.calibrate_threshold(np.array([]), 0.1)


def test_person_not_in_gallery_is_not_recognized_and_verify():
  g = _gallery()
  ids, dist = R.identify(g, np.array([10.0, 10.0]), T)
  assert ids == [R.UNKNOWN] and dist[0] == pytest.approx(72.0)  # (10-4)^2 + (10-4)^2 to carol
  ok, d = R.verify(g, np.array([0.0, 2.5]), "alice", T)
  assert ok and d == pytest.approx(0.25)
  ok, d = R.verify(g, np.array([0.0, 2.5]), "bob", T)
  assert not ok and d == pytest.approx(22.25)
  with pytest.raises(R.GalleryError, match="'dave' is not enrolled"):
    R.verify(g, np.array([0.0, 2.5]), "dave", T)


def test_gallery_bookkeeping_and_errors():
  g = R.Gallery(3)
  with pytest.raises(R.GalleryError, match="empty"):
    R.identify(g, np.zeros((1, 3)), 1.0)
  with pytest.raises(R.GalleryError, match="expected 3, got 4"):
    g.enrol("a", np.zeros(4))
  with pytest.raises(R.GalleryError, match="NaN"):
    g.enrol("a", np.array([0.0, np.nan, 0.0]))
  g.enrol("a", np.eye(3)[:2])  # two shots
  g.enrol("b", np.eye(3)[2])   # one shot
  g.enrol("a", np.ones(3))     # a third shot of an enrolled person
  assert len(g) == 2 and g.num_embeddings == 4 and g.identities == ["a", "b"]
  assert g.ids == ["a", "a", "b", "a"]
  with pytest.raises(R.GalleryError, match="identities are str"):
    g.enrol(7, np.zeros(3))
  with pytest.raises(R.GalleryError, match="expected 3, got 2"):
    R.identify(g, np.zeros((1, 2)), 1.0)
  assert g.remove("a") == 3
  assert g.identities == ["b"] and g.emb_NxD.shape == (1, 3)
  with pytest.raises(R.GalleryError, match="not enrolled"):
    g.remove("a")
  g.remove("b")
  with pytest.raises(R.GalleryError, match="empty"):
    R.identify(g, np.zeros(3), 1.0)


@pytest.mark.parametrize("ids", [["ann", "bo", "ann"], [3, 5, 3]])
def test_save_load_round_trip(tmp_path, ids):
  rng = np.random.default_rng(3)
  g = R.Gallery(5)
  for i in ids:
    g.enrol(i, rng.normal(size=5))
  path = str(tmp_path / "sub" / "gallery.npz")
  g.save(path)
  assert os.listdir(tmp_path / "sub") == ["gallery.npz"]  # no temp file left behind
  h = R.Gallery.load(path, dim=5)
  assert h.ids == ids and all(type(a) is type(b) for a, b in zip(h.ids, ids))
  np.testing.assert_array_equal(h.emb_NxD, g.emb_NxD)
  q = rng.normal(size=(4, 5))
  assert R.identify(h, q, 10.0)[0] == R.identify(g, q, 10.0)[0]
  R.Gallery(5).save(path)  # an empty gallery round-trips too, replacing the file
  assert len(R.Gallery.load(path)) == 0


def test_bad_gallery_files(tmp_path):
  g = _gallery()
  path = str(tmp_path / "g.npz")
  g.save(path)
  with pytest.raises(R.GalleryError, match=r"g\.npz.*2-D embeddings, expected 128-D"):
    R.Gallery.load(path, dim=128)
  data = open(path, "rb").read()
  bad = str(tmp_path / "truncated.npz")
  with open(bad, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(R.GalleryError, match=r"truncated\.npz"):
    R.Gallery.load(bad)
  with pytest.raises(R.GalleryError, match=r"missing\.npz.*does not exist"):
    R.Gallery.load(str(tmp_path / "missing.npz"))
  other = str(tmp_path / "other.npz")
  np.savez(other, x=np.zeros(3))
  with pytest.raises(R.GalleryError, match=r"other\.npz"):
    R.Gallery.load(other)


def test_open_set_report_checks_known_ids():
  g = _gallery()
  with pytest.raises(ValueError, match="not enrolled.*dave"):
    R.open_set_report(g.emb_NxD, g.ids, KNOWN[:1], np.array(["dave"]), UNKNOWN, T)
  r = R.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, None, T)
  assert np.isnan(r["far"]) and r["dir"] == pytest.approx(0.5)


def test_open_set_split():
  labels = np.repeat(np.arange(12), [1, 2, 3, 4] * 3)
  s = R.open_set_split(labels, num_enrolled=4, shots=2, seed=0)
  enrolled = set(labels[s.gallery])
  assert len(enrolled) == 4 and all(np.sum(labels[s.gallery] == k) == 2 for k in enrolled)
  assert set(labels[s.known]) == enrolled
  assert not set(labels[s.unknown]) & enrolled and not set(labels[s.calibration]) & enrolled
  assert not set(labels[s.unknown]) & set(labels[s.calibration])
  everything = np.concatenate(list(s))
  assert np.array_equal(np.sort(everything), np.arange(labels.size))
  again = R.open_set_split(labels, num_enrolled=4, shots=2, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(s, again))
  with pytest.raises(ValueError, match="cannot enrol 7 .* 6 of 12 people have >= 3"):
    R.open_set_split(labels, num_enrolled=7, shots=2)
