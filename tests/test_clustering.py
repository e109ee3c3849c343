import numpy as np
import pytest

from facenet_jax import clustering as C
from reference import sq_dist


def _ref_agglomerative(emb, threshold, linkage):
  """Textbook agglomeration: merge the closest pair of clusters (linkage over point pairs,
  recomputed from scratch) while it is within the threshold. Returns sorted member tuples."""
  d = sq_dist(emb)
  agg = {"single": min, "complete": max, "average": lambda v: sum(v) / len(v)}[linkage]
  clusters = [[i] for i in range(len(emb))]
  while len(clusters) > 1:
    best = None
    for x in range(len(clusters)):
      for y in range(x + 1, len(clusters)):
        h = agg([d[a, b] for a in clusters[x] for b in clusters[y]])
        if best is None or h < best[0]:
          best = (h, x, y)
    if best[0] > threshold:
      break
    _, x, y = best
    clusters[x] = clusters[x] + clusters.pop(y)
  return sorted(tuple(sorted(c)) for c in clusters)


def _groups(labels):
  return sorted(tuple(np.nonzero(labels == k)[0]) for k in np.unique(labels))


def test_connected_components_hand_case():
  # edges 0-1, 1-2, 3-4; node 5 alone
  labels = C.connected_components(6, np.array([0, 3, 1]), np.array([1, 4, 2]))
  assert labels.tolist() == [0, 0, 0, 1, 1, 2]
  # a long path listed backwards needs many hooks and jumps; still one component
  rng = np.random.default_rng(0)
  perm = rng.permutation(300)
  comp = C.connected_components(300, perm[1:][::-1], perm[:-1][::-1])
  assert np.all(comp == 0)
  assert C.connected_components(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]


def test_single_linkage_hand_case():
  # 1-D points; squared gaps: 0-1: 1, 1-2.5: 2.25, 2.5-10: 56.25, 10-10.5: 0.25, 10.5-20: 90.25
  x = np.array([[0.0], [1.0], [2.5], [10.0], [10.5], [20.0]])
  assert C.cluster(x, 1.0).tolist() == [0, 0, 1, 2, 2, 3]
  assert C.cluster(x, 2.25).tolist() == [0, 0, 0, 1, 1, 2]
  assert C.cluster(x, 0.1).tolist() == [0, 1, 2, 3, 4, 5]
  assert C.cluster(x, 1e9).tolist() == [0] * 6


def test_linkage_heights_hand_case():
  # points 0, 1, 5: squared distances d01 = 1, d02 = 25, d12 = 16. {0,1} merge at 1, then
  # single min(25, 16) = 16, average (25 + 16) / 2 = 20.5, complete max(25, 16) = 25
  x = np.array([[0.0], [1.0], [5.0]])
  for linkage, second in (("single", 16.0), ("average", 20.5), ("complete", 25.0)):
    tree = C.dendrogram(x, linkage)
    np.testing.assert_allclose(np.sort(tree.height), [1.0, second])
    assert C.cut(tree, second - 0.01).tolist() == [0, 0, 1]
    assert C.cut(tree, second).tolist() == [0, 0, 0]


@pytest.mark.parametrize("linkage", C.LINKAGES)
def test_cuts_match_textbook_agglomeration(linkage):
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(14, 3)) + 3 * rng.normal(size=(4, 3))[rng.integers(0, 4, 14)]
  tree = C.dendrogram(emb, linkage)
  for t in np.quantile(tree.height, [0.1, 0.3, 0.5, 0.7, 0.9]) + 1e-9:
    assert _groups(C.cut(tree, t)) == _ref_agglomerative(emb, t, linkage), t
    assert _groups(C.cluster(emb, t, linkage)) == _ref_agglomerative(emb, t, linkage)


def test_single_linkage_graph_equals_dendrogram_cut():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(60, 4))
  tree = C.dendrogram(emb, "single")
  for t in np.quantile(tree.height, np.linspace(0, 1, 9)):
    np.testing.assert_array_equal(C.single_linkage_components(emb, t), C.cut(tree, t))


@pytest.mark.parametrize("linkage", C.LINKAGES)
def test_heights_match_scipy(linkage):
  hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
  rng = np.random.default_rng(3)
  emb = rng.normal(size=(40, 5))
  d = sq_dist(emb)
  condensed = d[np.triu_indices(40, 1)]
  ref = hierarchy.linkage(condensed, method=linkage)[:, 2]
  np.testing.assert_allclose(np.sort(C.dendrogram(emb, linkage).height), np.sort(ref), rtol=1e-9)


def test_purity_hand_case():
  # cluster 0 = classes {0, 0, 1} -> 2 right; cluster 1 = classes {1, 1, 2} -> 2 right; 4/6
  assert C.purity([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]) == pytest.approx(4 / 6)
  assert C.purity(np.arange(5), np.zeros(5)) == 1.0  # singletons are trivially pure


def test_nmi_hand_case():
  # pred [0,0,1,1], true [0,0,0,1]: p(pred) = (1/2, 1/2), p(true) = (3/4, 1/4), cells
  # (0,0) 1/2, (1,0) 1/4, (1,1) 1/4; I = 1/2 log(4/3) + 1/4 log(2/3) + 1/4 log 2
  mi = 0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3) + 0.25 * np.log(2)
  h_pred = np.log(2)
  h_true = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  assert C.nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(mi / ((h_pred + h_true) / 2))
  assert C.nmi([5, 5, 2, 2], ["a", "a", "b", "b"]) == pytest.approx(1.0)  # renamed labels
  assert C.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0                        # independent
  assert C.nmi([0, 0, 0], [1, 1, 1]) == 1.0                              # one cluster each
  assert C.nmi([0, 0, 0], [0, 1, 2]) == 0.0


def test_nmi_matches_direct_formula_and_sklearn():
  rng = np.random.default_rng(4)
  for _ in range(20):
    pred = rng.integers(0, rng.integers(2, 6), 50)
    true = rng.integers(0, rng.integers(2, 6), 50)
    # I = H(P) + H(T) - H(P, T), entropies from loops over label values
    def h(*cols):
      keys = list(zip(*cols))
      return -sum(keys.count(k) / 50 * np.log(keys.count(k) / 50) for k in set(keys))
    direct = (h(pred) + h(true) - h(pred, true)) / ((h(pred) + h(true)) / 2)
    assert C.nmi(pred, true) == pytest.approx(direct, abs=1e-12)
  metrics = pytest.importorskip("sklearn.metrics")
  assert C.nmi(pred, true) == pytest.approx(metrics.normalized_mutual_info_score(true, pred))


def test_threshold_sweep_finds_the_blobs():
  rng = np.random.default_rng(5)
  true = np.repeat(np.arange(5), 8)
  emb = 0.05 * rng.normal(size=(40, 8)) + rng.normal(size=(5, 8))[true]
  for linkage in ("single", "average"):
    r = C.threshold_sweep(emb, true, linkage=linkage)
    assert r["best_nmi"] == pytest.approx(1.0)
    assert r["num_clusters"][np.argmax(r["nmi"])] == 5
    assert r["nmi"].shape == r["thresholds"].shape == r["purity"].shape
    assert C.nmi(C.cluster(emb, r["best_threshold"], linkage), true) == pytest.approx(1.0)
  explicit = C.threshold_sweep(emb, true, thresholds=[1e-6, r["best_threshold"], 1e6])
  np.testing.assert_allclose(explicit["num_clusters"], [40, 5, 1])
  assert explicit["best_threshold"] == pytest.approx(r["best_threshold"])


def test_bad_inputs():
  with pytest.raises(ValueError, match="NaN"):
    C.cluster(np.array([[0.0], [np.nan]]), 1.0)
  with pytest.raises(ValueError, match="linkage"):
    C.dendrogram(np.zeros((3, 2)), "ward")
  with pytest.raises(ValueError, match="equal length"):
    C.nmi([0, 1], [0, 1, 2])
