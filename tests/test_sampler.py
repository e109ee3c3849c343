import numpy as np
import pytest

from facenet_jax import offline
from facenet_jax.sampler import PKSampler


def _labels():
  # identities with 1, 2, 3, 5 and 8 images, shuffled rows
  labels = np.repeat(np.arange(5), [1, 2, 3, 5, 8]).astype(np.int32)
  return np.random.default_rng(0).permutation(labels)


def test_batches_are_identity_balanced_and_deterministic():
  labels = _labels()
  s = PKSampler(labels, identities_per_batch=3, images_per_identity=4, seed=3)
  for step in range(20):
    b = s(step)
    assert b.indices.shape == (12,) and b.labels.shape == (12,) and b.mask.shape == (12,)
    np.testing.assert_array_equal(labels[b.indices], b.labels)   # labels are the rows' labels
    ids, counts = np.unique(b.labels, return_counts=True)
    assert ids.size == 3 and np.all(counts == 4)
    assert 1 not in [int(np.sum(labels == i)) for i in ids]       # singletons never drawn
    for i in ids:
      real = b.indices[(b.labels == i) & b.mask]
      assert np.unique(real).size == real.size                   # no repeats among real rows
      assert real.size == min(4, int(np.sum(labels == i)))        # short identities: all images
    again = PKSampler(labels, 3, 4, seed=3)(step)
    np.testing.assert_array_equal(again.indices, b.indices)
    np.testing.assert_array_equal(again.mask, b.mask)
  assert not np.array_equal(s(0).indices, PKSampler(labels, 3, 4, seed=4)(0).indices) or \
      not np.array_equal(s(1).indices, PKSampler(labels, 3, 4, seed=4)(1).indices)


def test_identities_are_covered_uniformly():
  labels = np.repeat(np.arange(10), 6)
  s = PKSampler(labels, 2, 3, seed=0)
  seen = np.zeros(10)
  for step in range(2000):
    seen += np.bincount(s(step).labels, minlength=10) / 3
  # binomial sd of each share is 0.0045 at 2000 steps; 5 sd tolerance
  assert np.all(np.abs(seen / seen.sum() - 0.1) < 0.0225)


def test_sampler_errors_name_the_field():
  labels = _labels()
  with pytest.raises(ValueError, match="identities_per_batch"):
    PKSampler(labels, 5, 2, seed=0)      # only 4 identities have >= 2 images
  with pytest.raises(ValueError, match="images_per_identity"):
    PKSampler(labels, 2, 1, seed=0)
  with pytest.raises(ValueError, match="identities_per_batch"):
    PKSampler(labels, 1, 2, seed=0)


def test_offline_pool_triplets_are_valid_and_deterministic():
  labels = _labels()
  pool = offline.sample_pool(labels, 500, seed=1, version=0)
  a, p, n = labels[pool[:, 0]], labels[pool[:, 1]], labels[pool[:, 2]]
  assert np.all(a == p) and np.all(a != n) and np.all(pool[:, 0] != pool[:, 1])
  np.testing.assert_array_equal(pool, offline.sample_pool(labels, 500, seed=1, version=0))
  assert not np.array_equal(pool, offline.sample_pool(labels, 500, seed=1, version=1))


def test_offline_selection_keeps_only_violating_triplets():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(19, 4))
  labels = _labels()
  pool = offline.sample_pool(labels, 300, seed=0, version=0)
  sel = offline.violating(pool, emb, margin=0.5)
  d = lambda i, j: ((emb[i] - emb[j]) ** 2).sum(1)
  loss_all = d(pool[:, 0], pool[:, 1]) - d(pool[:, 0], pool[:, 2]) + 0.5
  assert sel.shape[0] == int((loss_all > 0).sum()) > 0
  assert np.all(d(sel[:, 0], sel[:, 1]) - d(sel[:, 0], sel[:, 2]) + 0.5 > 0)
  drawn = offline.draw(sel, pool, 16, seed=0, step=3)
  assert drawn.shape == (16, 3)
  assert {tuple(t) for t in drawn} <= {tuple(t) for t in sel}
