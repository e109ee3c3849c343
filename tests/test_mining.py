"""Losses and miners against the plain NumPy references in reference.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from facenet_jax import losses, mining


def _batch(P=6, K=4, D=8, seed=0, pad=0):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(P * K, D))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  labels = np.repeat(np.arange(P), K).astype(np.int32)
  mask = np.ones(P * K, bool)
  if pad:
    mask[rng.choice(P * K, pad, replace=False)] = False
  return emb.astype(np.float32), labels, mask


@functools.lru_cache(maxsize=None)
def _jitted(miner, loss, fallback):
  # one compilation per (miner, loss, fallback); margin, key and shapes are arguments
  return jax.jit(lambda e, l, m, margin, key: mining.MINERS[miner](
      losses.pairwise_sq_distances(e), l, m, margin, loss=loss, fallback=fallback, key=key))


def _run(miner, emb, labels, mask, margin, *, loss="triplet", fallback="easiest", key=None):
  key = jax.random.key(0) if key is None else key
  loss_, stats = _jitted(miner, loss, fallback)(jnp.asarray(emb), jnp.asarray(labels),
                                                jnp.asarray(mask), jnp.float32(margin), key)
  loss = loss_
  return float(loss), {k: float(v) for k, v in stats.items()}


def _assert_matches(got, want):
  loss, stats = got
  want_loss, want_stats = want
  np.testing.assert_allclose(loss, want_loss, rtol=1e-4, atol=1e-5)
  for k, v in want_stats.items():
    np.testing.assert_allclose(stats[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_pairwise_distances_match_numpy():
  emb, _, _ = _batch(D=16)
  got = np.asarray(losses.pairwise_sq_distances(jnp.asarray(emb)))
  np.testing.assert_allclose(got, ref.sq_dist(emb), atol=1e-5)
  assert np.all(np.diag(got) == 0) and np.all(got >= 0)


CASES = {
    "random": _batch(),
    "padded": _batch(seed=1, pad=5),
    "big_margin": _batch(seed=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fallback", mining.FALLBACKS)
@pytest.mark.parametrize("loss", ["triplet", "soft_margin"])
@pytest.mark.parametrize("margin", [0.05, 0.3, 2.0])
def test_semi_hard_matches_reference(case, fallback, loss, margin):
  emb, labels, mask = CASES[case]
  _assert_matches(_run("semi_hard", emb, labels, mask, margin, fallback=fallback, loss=loss),
                  ref.semi_hard(emb, labels, mask, margin, fallback, loss))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("loss", ["triplet", "soft_margin"])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_hard_matches_reference(case, loss, margin):
  emb, labels, mask = CASES[case]
  _assert_matches(_run("batch_hard", emb, labels, mask, margin, loss=loss),
                  ref.batch_hard(emb, labels, mask, margin, loss))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("margin", [0.05, 0.3, 1.5])
def test_batch_all_matches_reference(case, margin):
  emb, labels, mask = CASES[case]
  _assert_matches(_run("batch_all", emb, labels, mask, margin),
                  ref.batch_all(emb, labels, mask, margin))


def test_batch_all_gradient_matches_brute_force():
  emb, labels, mask = _batch(P=4, K=3, D=5, seed=3)
  margin = 0.4

  def brute(e):
    d = losses.pairwise_sq_distances(e)
    pos, neg = mining.pair_masks(jnp.asarray(labels), jnp.asarray(mask))
    l3 = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin) * (pos[:, :, None] & neg[:, None, :])
    return l3.sum() / jnp.maximum((l3 > 0).sum(), 1)

  fast = lambda e: mining.batch_all(losses.pairwise_sq_distances(e), jnp.asarray(labels),
                                    jnp.asarray(mask), margin)[0]
  np.testing.assert_allclose(jax.grad(fast)(jnp.asarray(emb)), jax.grad(brute)(jnp.asarray(emb)),
                             rtol=1e-4, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _semi_hard_grad(loss, fallback):
  # the miner's hand-written custom-VJP backward pass, jitted once per (loss, fallback)
  return jax.jit(jax.grad(lambda e, l, m, margin: mining.semi_hard(
      losses.pairwise_sq_distances(e), l, m, margin, fallback=fallback, loss=loss)[0]))


def _autodiff_grad_over(trips, emb, margin, loss):
  """d/d emb of the mean loss over the fixed (a, p, n) triplets, by jax.grad in float64.

  Distances are taken directly as sum((e_a - e_p)^2), not through pairwise_sq_distances,
  so nothing is shared with the miner but the triplet loss formulas themselves.
  """
  with jax.enable_x64(True):
    a, p, n = (jnp.asarray([t[k] for t in trips], jnp.int32) for k in range(3))

    def mean_loss(e):
      d_ap = jnp.sum((e[a] - e[p]) ** 2, axis=1)
      d_an = jnp.sum((e[a] - e[n]) ** 2, axis=1)
      if loss == "triplet":
        each = jnp.maximum(d_ap - d_an + margin, 0.0)
      else:
        each = jnp.log1p(jnp.exp(d_ap - d_an))
      return jnp.mean(each)
    e64 = jnp.asarray(emb, jnp.float64)
    assert e64.dtype == jnp.float64   # x64 really is on: the reference is not float32
    return np.asarray(jax.grad(mean_loss)(e64))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fallback", mining.FALLBACKS)
@pytest.mark.parametrize("loss", ["triplet", "soft_margin"])
@pytest.mark.parametrize("margin", [0.3, 2.0])
def test_semi_hard_gradient_matches_autodiff_over_reference_triplets(case, fallback, loss, margin):
  """The custom VJP's gradient w.r.t. the embeddings equals autodiff of the mean loss over
  the triplets the NumPy reference selects: a wrong negative index in the backward pass, a
  missing fallback gradient, a wrong sign or a wrong 1/num_valid scale would all show."""
  emb, labels, mask = CASES[case]
  trips = ref.semi_hard_triplets(emb, labels, mask, margin, fallback)
  assert trips   # every case has triplets to differentiate (drop keeps some at these margins)
  want = _autodiff_grad_over(trips, emb, margin, loss)
  got = np.asarray(_semi_hard_grad(loss, fallback)(jnp.asarray(emb), jnp.asarray(labels),
                                                    jnp.asarray(mask), jnp.float32(margin)))
  assert np.abs(want).max() > 1e-3   # a gradient worth comparing
  # float32 forward against float64 autodiff: they agree to ~2e-8 (gradient entries ~0.1)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)
  np.testing.assert_array_equal(got[~mask], 0.0)   # padding rows get no gradient


@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_contrastive_matches_reference(margin):
  emb, labels, mask = _batch(seed=4, pad=3)
  got = jax.jit(lambda e: mining.contrastive_pairs(
      losses.pairwise_sq_distances(e), jnp.asarray(labels), jnp.asarray(mask), margin))(emb)
  _assert_matches((float(got[0]), {k: float(v) for k, v in got[1].items()}),
                  ref.contrastive(emb, labels, mask, margin))


# --- edge cases -------------------------------------------------------------------


@pytest.mark.parametrize("miner", sorted(mining.MINERS))
def test_one_identity_has_no_triplets(miner):
  emb, _, mask = _batch(P=1, K=6)
  labels = np.zeros(6, np.int32)
  loss, stats = _run(miner, emb, labels, mask, 0.2, key=jax.random.key(0))
  assert loss == 0.0 and stats["num_valid"] == 0 and stats["num_active"] == 0


@pytest.mark.parametrize("miner", sorted(mining.MINERS))
def test_singleton_identities_have_no_positives(miner):
  emb, _, mask = _batch(P=4, K=2)
  labels = np.arange(8, dtype=np.int32)   # every image its own identity
  loss, stats = _run(miner, emb, labels, mask, 0.2, key=jax.random.key(0))
  assert loss == 0.0 and stats["num_valid"] == 0


@pytest.mark.parametrize("miner", ["semi_hard", "batch_hard", "batch_all"])
def test_duplicate_embeddings_match_reference_and_have_finite_gradients(miner):
  emb, labels, mask = _batch(P=3, K=3, seed=5)
  emb[1] = emb[0]          # a duplicate positive: d(a,p) = 0
  emb[4] = emb[0]          # a duplicate negative: d(a,n) = 0
  want = {"semi_hard": lambda: ref.semi_hard(emb, labels, mask, 0.2),
          "batch_hard": lambda: ref.batch_hard(emb, labels, mask, 0.2),
          "batch_all": lambda: ref.batch_all(emb, labels, mask, 0.2)}[miner]()
  _assert_matches(_run(miner, emb, labels, mask, 0.2), want)
  g = jax.grad(lambda e: mining.batch_loss(e, labels, mask, loss="triplet", miner=miner,
                                           margin=0.2)[0])(jnp.asarray(emb))
  assert np.all(np.isfinite(np.asarray(g)))


def test_contrastive_gradient_finite_on_duplicates():
  emb, labels, mask = _batch(P=2, K=2, seed=6)
  emb[2] = emb[0]   # identical embeddings of different identities: sqrt(0)
  g = jax.grad(lambda e: mining.batch_loss(e, labels, mask, loss="contrastive", miner="semi_hard",
                                           margin=0.5)[0])(jnp.asarray(emb))
  assert np.all(np.isfinite(np.asarray(g)))


def test_no_semi_hard_negative_uses_fallback():
  # two tight identities far apart: every negative is beyond d(a,p) + margin
  emb = np.array([[1, 0], [0.999, 0.0447], [-1, 0], [-0.999, 0.0447]], np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  labels = np.array([0, 0, 1, 1], np.int32)
  mask = np.ones(4, bool)
  for fb in mining.FALLBACKS:
    got = _run("semi_hard", emb, labels, mask, 0.2, fallback=fb)
    _assert_matches(got, ref.semi_hard(emb, labels, mask, 0.2, fb))
  assert _run("semi_hard", emb, labels, mask, 0.2, fallback="drop")[1]["num_valid"] == 0
  easiest = _run("semi_hard", emb, labels, mask, 0.2, fallback="easiest")
  assert easiest[1]["num_valid"] == 4 and easiest[1]["num_active"] == 0


def test_random_miner_picks_real_negatives():
  emb, labels, mask = _batch(P=3, K=3, seed=7, pad=2)
  lab, msk = jnp.asarray(labels), jnp.asarray(mask)
  D = ref.sq_dist(emb)
  real_neg = (labels[:, None] != labels[None, :]) & mask[:, None] & mask[None, :]
  n_pos = np.array([sum(1 for p in range(9) if p != a and mask[a] and mask[p]
                        and labels[p] == labels[a]) for a in range(9)])
  # margin 10 makes every triplet active, so d loss / d dist(a, n) = -(times n was drawn for
  # a) / num_valid exactly: the gradient w.r.t. the distance matrix shows every draw
  f = jax.jit(lambda d, key: mining.random_triplets(d, lab, msk, 10.0, key=key))
  results = set()
  for s in range(5):
    key = jax.random.key(s)
    (loss, stats), vjp = jax.vjp(lambda d: f(d, key), jnp.asarray(D, jnp.float32))
    n = stats["num_valid"]
    assert n == n_pos.sum() and stats["num_active"] == n
    G = np.asarray(vjp((jnp.float32(1.0), jax.tree.map(jnp.zeros_like, stats)))[0], np.float64)
    draws = np.round(-np.minimum(G, 0.0) * float(n)).astype(int)
    # every drawn negative is a real (unpadded, other-identity) one, one per anchor-positive pair
    assert draws[~real_neg].sum() == 0, np.argwhere(draws * ~real_neg)
    np.testing.assert_array_equal(draws.sum(axis=1), n_pos)
    # the loss is the mean over (a, p) of d_ap - d_an(drawn) + 10, from the draws above
    want = (sum(D[a, p] for a in range(9) for p in range(9)
                if p != a and real_neg[a].any() and mask[p] and labels[p] == labels[a])
            - (draws * D).sum()) / n_pos.sum() + 10.0
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    results.add(tuple(draws.ravel()))
  assert len(results) > 1   # different keys, different negatives


def test_explicit_triplets_match_reference():
  rng = np.random.default_rng(8)
  a, p, n = (rng.normal(size=(10, 4)).astype(np.float32) for _ in range(3))
  valid = np.ones(10, bool); valid[3] = False
  loss, stats = mining.explicit_triplet_loss(a, p, n, valid, 0.5)
  d_ap = ((a - p) ** 2).sum(1); d_an = ((a - n) ** 2).sum(1)
  want = np.maximum(d_ap - d_an + 0.5, 0)[valid].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(stats["num_valid"]) == 9


def test_bad_names_are_errors():
  emb, labels, mask = _batch()
  with pytest.raises(ValueError, match="miner"):
    mining.batch_loss(emb, labels, mask, loss="triplet", miner="hardest", margin=0.2)
  with pytest.raises(ValueError, match="loss"):
    mining.batch_loss(emb, labels, mask, loss="arcface", miner="semi_hard", margin=0.2)
  with pytest.raises(ValueError, match="fallback"):
    mining.batch_loss(emb, labels, mask, loss="triplet", miner="semi_hard", margin=0.2,
                      fallback="closest")
  with pytest.raises(ValueError, match="batch_all"):
    mining.batch_loss(emb, labels, mask, loss="soft_margin", miner="batch_all", margin=0.2)


def _near_collapse(P=16, K=4, D=64, spread=1e-5, seed=0, whole_batch=False):
  """Unit embeddings whose K images per identity lie within ~``spread`` of each other
  (squared distances ~1e-8); with ``whole_batch`` every identity too. float32, labels."""
  rng = np.random.default_rng(seed)
  centre = rng.normal(size=(1 if whole_batch else P, D))
  emb = np.repeat(centre, K * P if whole_batch else K, axis=0)
  emb = emb + spread * rng.normal(size=emb.shape)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return emb.astype(np.float32), np.repeat(np.arange(P), K).astype(np.int32)


@pytest.mark.parametrize("whole_batch", [False, True])
def test_distances_and_gradient_at_near_collapse_match_float64(whole_batch):
  """The float32 matmul form's ~3e-7 error exceeds distances of 1e-8 (most clip to 0 and
  lose their gradient); pairwise_sq_distances must match float64 there, in value and in
  the gradient of a weighted sum of the positive-pair distances."""
  emb, labels = _near_collapse(whole_batch=whole_batch)
  e64 = emb.astype(np.float64)
  want = ref.sq_dist(e64)
  pos = (labels[:, None] == labels[None, :]) & ~np.eye(labels.size, dtype=bool)
  assert want[pos].max() < 1e-7
  got = np.asarray(losses.pairwise_sq_distances(jnp.asarray(emb)))
  np.testing.assert_allclose(got[pos], want[pos], rtol=1e-5)
  np.testing.assert_allclose(got, got.T, rtol=0, atol=0)
  off = ~np.eye(labels.size, dtype=bool)
  np.testing.assert_allclose(got[off], want[off], rtol=1e-5 if whole_batch else 1e-6, atol=1e-12)
  W = np.where(pos, np.random.default_rng(1).uniform(0.5, 1.5, pos.shape), 0.0)
  grad = jax.grad(lambda e: jnp.sum(jnp.asarray(W, jnp.float32) * losses.pairwise_sq_distances(e)))
  Ws = W + W.T   # d/de_i sum_ij W_ij |e_i - e_j|^2 = 2 sum_j (W_ij + W_ji)(e_i - e_j)
  want_g = 2.0 * (Ws.sum(1)[:, None] * e64 - Ws @ e64)
  np.testing.assert_allclose(np.asarray(grad(jnp.asarray(emb))), want_g, rtol=1e-4,
                             atol=1e-4 * np.abs(want_g).max())
  # the plain float32 matmul form (refine=0, no centring benefit for spread identities) fails
  if not whole_batch:
    plain = np.asarray(losses.pairwise_sq_distances(jnp.asarray(emb), refine=0))
    assert np.sum(plain[pos] == 0) > pos.sum() // 4


def test_batch_hard_picks_the_float64_hardest_positives_at_near_collapse():
  """With positives ~1e-8 apart, batch-hard must choose each anchor's float64-farthest
  positive: checked on the distances, on batch_hard's mean d(a, p) and loss against the
  float64 reference, and on the gradient of its positive term (sum over anchors of the max
  over positives) against the float64 gradient of the float64 picks."""
  emb, labels = _near_collapse(seed=3)
  B, mask = labels.size, np.ones(labels.size, bool)
  e64 = emb.astype(np.float64)
  pos = (labels[:, None] == labels[None, :]) & ~np.eye(B, dtype=bool)
  hard_p = np.where(pos, ref.sq_dist(e64), -1).argmax(1)
  got_d = np.asarray(losses.pairwise_sq_distances(jnp.asarray(emb)))
  np.testing.assert_array_equal(np.where(pos, got_d, -1).argmax(1), hard_p)
  margin = 4.0   # every triplet active
  want_loss, want_stats = ref.batch_hard(e64, labels, mask, margin)
  loss, stats = _run("batch_hard", emb, labels, mask, margin)
  np.testing.assert_allclose(stats["mean_d_ap"], want_stats["mean_d_ap"], rtol=1e-5)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  pos_term = lambda e: jnp.sum(jnp.max(jnp.where(jnp.asarray(pos), losses.pairwise_sq_distances(e),
                                                 -jnp.inf), axis=1))
  grad = np.asarray(jax.grad(pos_term)(jnp.asarray(emb)), np.float64)
  want = np.zeros_like(e64)
  np.add.at(want, np.arange(B), 2 * (e64 - e64[hard_p]))
  np.add.at(want, hard_p, -2 * (e64 - e64[hard_p]))
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  plain = jax.grad(lambda e: jnp.sum(jnp.max(jnp.where(
      jnp.asarray(pos), losses.pairwise_sq_distances(e, refine=0), -jnp.inf), axis=1)))
  assert not np.allclose(np.asarray(plain(jnp.asarray(emb))), want, rtol=1e-2,
                         atol=1e-2 * np.abs(want).max())   # what the matmul form alone gave
