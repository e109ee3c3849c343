import numpy as np
import pytest

from facenet_jax import episodes as E


def _ref_classify(support, query, method):
  """Plain loops over classes and shots."""
  support = np.asarray(support, np.float64)
  out = []
  for q in np.asarray(query, np.float64):
    if method == "nearest":
      d = [min(((q - s) ** 2).sum() for s in shots) for shots in support]
    else:
      d = [((q - shots.mean(0)) ** 2).sum() for shots in support]
    out.append(int(np.argmin(d)))
  return np.array(out)


def test_hand_worked_nearest_vs_prototype():
  # 1-D, class 0 supports {0, 10}, class 1 supports {4, 5}; query 1:
  #   nearest:   class 0 min(1, 81) = 1,    class 1 min(9, 16) = 9      -> class 0
  #   prototype: class 0 (1 - 5)^2 = 16,    class 1 (1 - 4.5)^2 = 12.25 -> class 1
  support = np.array([[[0.0], [10.0]], [[4.0], [5.0]]])
  query = np.array([[1.0], [9.0]])  # 9: nearest 0 (1 vs 16), prototype 0 (16 vs 20.25)
  assert E.classify(support, query, "nearest").tolist() == [0, 0]
  assert E.classify(support, query, "prototype").tolist() == [1, 0]
  assert E.episode_accuracy(support, query, np.array([0, 0]), "prototype") == 0.5


def test_classify_matches_loops():
  rng = np.random.default_rng(0)
  for method in E.METHODS:
    support = rng.normal(size=(5, 3, 4))
    query = rng.normal(size=(20, 4))
    np.testing.assert_array_equal(E.classify(support, query, method), _ref_classify(support, query, method))
  one_shot = rng.normal(size=(5, 1, 4))
  np.testing.assert_array_equal(E.classify(one_shot, query, "nearest"), E.classify(one_shot, query, "prototype"))
  with pytest.raises(ValueError, match="unknown method"):
    E.classify(support, query, "knn")


def test_sample_episodes_structure():
  labels = np.repeat(np.array([7, 3, 9, 4, 8, 5]), [6, 6, 6, 6, 6, 2])  # class 5 has too few
  ep = E.sample_episodes(labels, n_way=3, k_shot=2, n_query=3, num_episodes=40, seed=1)
  assert ep.support.shape == (40, 3, 2) and ep.query.shape == (40, 3, 3) and ep.classes.shape == (40, 3)
  for e in range(40):
    assert len(set(ep.classes[e])) == 3 and 5 not in ep.classes[e]
    for n in range(3):
      rows = np.r_[ep.support[e, n], ep.query[e, n]]
      assert len(set(rows)) == 5                           # supports and queries disjoint
      assert np.all(labels[rows] == ep.classes[e, n])      # all of the way's class
  again = E.sample_episodes(labels, 3, 2, 3, 40, seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(ep, again))
  other = E.sample_episodes(labels, 3, 2, 3, 40, seed=2)
  assert not np.array_equal(ep.support, other.support)


def test_sample_episodes_bad_requests():
  labels = np.repeat(np.arange(4), [5, 5, 5, 2])
  with pytest.raises(ValueError, match=r"5-way 1-shot .* need 5 classes with >= 4 images .* only 3 of 4"):
    E.sample_episodes(labels, n_way=5, k_shot=1, n_query=3, num_episodes=10, seed=0)
  with pytest.raises(ValueError, match="k_shot must be >= 1"):
    E.sample_episodes(labels, n_way=2, k_shot=0, n_query=3, num_episodes=10, seed=0)


def test_score_episodes_against_per_episode_loop():
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(8), 5)
  emb = rng.normal(size=(40, 6)) + 1.5 * rng.normal(size=(8, 6))[labels]
  ep = E.sample_episodes(labels, n_way=4, k_shot=2, n_query=2, num_episodes=300, seed=0)
  for method in E.METHODS:
    ref = []
    for e in range(300):
      s, q = emb[ep.support[e]], emb[ep.query[e]].reshape(-1, 6)
      ref.append(np.mean(_ref_classify(s, q, method) == np.repeat(np.arange(4), 2)))
    ref = np.asarray(ref)
    np.testing.assert_allclose(E.episode_accuracies(emb, ep, method), ref)  # spans two chunks
    r = E.score_episodes(emb, ep, method, prefix="5w_")
    assert r["5w_accuracy"] == pytest.approx(ref.mean())
    assert r["5w_ci95"] == pytest.approx(1.9679 * ref.std(ddof=1) / np.sqrt(300), rel=1e-4)   # t(0.975, 299)
    assert r["5w_num_episodes"] == 300.0
  assert 0.5 < r["5w_accuracy"] < 1.0


def test_mean_ci95_is_the_student_t_interval():
  """Omniglot's 20 runs: t(0.975, 19) = 2.0930, not the normal 1.96 (6.5% too narrow)."""
  v = np.random.default_rng(0).uniform(0.7, 1.0, 20)
  m, h = E.mean_ci95(v)
  assert m == pytest.approx(v.mean()) and h == pytest.approx(2.0930241 * v.std(ddof=1) / np.sqrt(20))


def test_mean_ci95_edge_cases():
  m, h = E.mean_ci95(np.array([0.5]))
  assert m == 0.5 and np.isnan(h)
  assert E.mean_ci95(np.array([1.0, 1.0, 1.0])) == (1.0, 0.0)
  with pytest.raises(ValueError, match="at least one value"):
    E.mean_ci95(np.array([]))
