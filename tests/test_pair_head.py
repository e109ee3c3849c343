import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from facenet_jax import pair_head as H
from facenet_jax import verification as V


def _ref_feature(name, a, b):
  """Plain per-element loops."""
  P, D = a.shape
  if name == "concat":
    return np.array([[*a[p], *b[p]] for p in range(P)])
  out = np.zeros((P, D))
  for p in range(P):
    for d in range(D):
      if name == "abs_diff":
        out[p, d] = abs(a[p, d] - b[p, d])
      else:  # chi2 on u = (1 + f) / 2
        ua, ub = (1 + a[p, d]) / 2, (1 + b[p, d]) / 2
        out[p, d] = (ua - ub) ** 2 / (ua + ub + H.CHI2_EPS)
  return out


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _people(num_ids, per_id, dim, noise, seed):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_ids), per_id)
  centers = _unit(rng.normal(size=(num_ids, dim)))
  return _unit(centers[labels] + noise * rng.normal(size=(labels.size, dim))).astype(np.float32), labels


@pytest.mark.parametrize("name", sorted(H.FEATURES))
def test_features_match_numpy(name):
  rng = np.random.default_rng(0)
  a = _unit(rng.normal(size=(6, 5))).astype(np.float32)
  b = _unit(rng.normal(size=(6, 5))).astype(np.float32)
  got = H.pair_features(name, a, b)
  assert got.shape == (6, H.feature_dim(name, 5))
  np.testing.assert_allclose(got, _ref_feature(name, a.astype(np.float64), b.astype(np.float64)),
                             rtol=1e-5, atol=1e-6)


def test_chi2_properties():
  a = np.array([[-1.0, 0.0, 1.0]], np.float32)
  # both at -1: u = 0 twice, 0 / eps = 0 rather than NaN; symmetric; zero on equal inputs
  np.testing.assert_array_equal(H.pair_features("chi2", a, a), np.zeros((1, 3)))
  b = np.array([[-1.0, 1.0, -1.0]], np.float32)
  np.testing.assert_allclose(H.pair_features("chi2", a, b), H.pair_features("chi2", b, a))
  # the sign survives: f and -f differ (|f| would map them together)
  assert H.pair_features("chi2", np.array([[0.6, 0.8]]), np.array([[-0.6, -0.8]])).min() > 0
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    H.pair_features("chi2", 2 * a, a)


def _np_bce(x, y, w, b, wd):
  s = 1 / (1 + np.exp(-(x @ w + b)))
  return np.mean(-y * np.log(s) - (1 - y) * np.log(1 - s)) + 0.5 * wd * np.sum(w ** 2), s


def test_pure_step_gradient_matches_closed_form_and_descends():
  # One jitted SGD step moves the params by -lr * grad, so the step itself exposes the BCE
  # gradient: dL/dw = mean_p (sigmoid(z_p) - y_p) x_p + wd w,  dL/db = mean_p (sigmoid(z_p) - y_p)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  y = (x[:, 0] + 0.5 * rng.normal(size=32) > 0).astype(np.float32)
  wd, lr = 0.3, 0.5
  head = H.PairHead("abs_diff", 5, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(head, nnx.Param)  # split once, outside the jitted step
  tx = optax.sgd(lr)
  step = jax.jit(H.make_train_step(graphdef, tx, wd))
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  new, loss = step(state, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
  w = np.asarray(params["linear"]["kernel"][...], np.float64)[:, 0]
  b = float(np.asarray(params["linear"]["bias"][...])[0])
  ref_loss, s = _np_bce(x.astype(np.float64), y, w, b, wd)
  assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
  grad_w = (w - np.asarray(new["params"]["linear"]["kernel"][...])[:, 0]) / lr
  grad_b = (b - float(np.asarray(new["params"]["linear"]["bias"][...])[0])) / lr
  np.testing.assert_allclose(grad_w, x.T @ (s - y) / 32 + wd * w, rtol=1e-4, atol=1e-5)
  assert grad_b == pytest.approx(np.mean(s - y), rel=1e-4, abs=1e-5)
  # and a central finite difference of the NumPy loss in one weight
  e2 = np.eye(5)[2] * 1e-4
  fd = (_np_bce(x, y, w + e2, b, wd)[0] - _np_bce(x, y, w - e2, b, wd)[0]) / 2e-4
  assert grad_w[2] == pytest.approx(fd, rel=1e-3)
  losses = [float(loss)]
  for _ in range(20):
    new, loss = step(new, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0] and int(new["step"]) == 21


def _learns_held_out_pairs(name, **fit_args):
  emb, labels = _people(num_ids=30, per_id=4, dim=16, noise=0.15, seed=3)
  a, b, s = H.training_pairs(emb, labels, num_pairs=300, seed=0)
  head, losses = H.fit_pair_head(name, a, b, s, seed=0, **fit_args)
  assert losses[-1] < 0.5 * losses[0]
  # held-out pairs of held-out people
  emb_t, labels_t = _people(num_ids=20, per_id=4, dim=16, noise=0.15, seed=4)
  ta, tb, ts = H.training_pairs(emb_t, labels_t, num_pairs=200, seed=1)   # 120 matched exist
  logits = H.pair_scores(head, name, ta, tb)
  assert logits.shape == (240,)
  assert np.mean((logits > 0) == ts) > 0.95
  assert V.kfold_accuracy(-logits, ts, 10)["accuracy"] > 0.95


def test_separable_pairs_are_learned_adam_abs_diff():
  _learns_held_out_pairs("abs_diff", steps=300, lr=0.05)


def test_separable_pairs_are_learned_lbfgs_chi2():
  _learns_held_out_pairs("chi2", steps=15, optimizer="lbfgs")


def test_minibatches_are_seeded_and_weight_decay_shrinks():
  emb, labels = _people(num_ids=20, per_id=4, dim=8, noise=0.15, seed=5)
  a, b, s = H.training_pairs(emb, labels, num_pairs=100, seed=0)
  fit = lambda **kw: H.fit_pair_head("abs_diff", a, b, s, steps=50, batch_size=32, seed=7, **kw)
  (h1, l1), (h2, l2) = fit(), fit()
  np.testing.assert_array_equal(l1, l2)
  np.testing.assert_array_equal(np.asarray(h1.linear.kernel[...]), np.asarray(h2.linear.kernel[...]))
  assert l1[-10:].mean() < l1[:10].mean()
  strong, _ = fit(weight_decay=10.0)  # decay is a traced argument: no recompile
  assert np.linalg.norm(strong.linear.kernel[...]) < 0.5 * np.linalg.norm(h1.linear.kernel[...])


def test_bad_inputs():
  rng = np.random.default_rng(6)
  a = _unit(rng.normal(size=(10, 4))).astype(np.float32)
  b = _unit(rng.normal(size=(10, 4))).astype(np.float32)
  s = np.arange(10) % 2 == 0
  bad = a.copy()
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match=r"emb_a contains NaN or Inf in pair\(s\) \[3\]"):
    H.fit_pair_head("abs_diff", bad, b, s, steps=1)
  with pytest.raises(ValueError, match="unknown pair feature 'l2'"):
    H.fit_pair_head("l2", a, b, s, steps=1)
  with pytest.raises(ValueError, match="both same and different"):
    H.fit_pair_head("abs_diff", a, b, np.ones(10, bool), steps=1)
  with pytest.raises(ValueError, match="full batch"):
    H.fit_pair_head("abs_diff", a, b, s, steps=1, optimizer="lbfgs", batch_size=4)
  with pytest.raises(ValueError, match="equal"):
    H.fit_pair_head("abs_diff", a, b[:5], s, steps=1)
  with pytest.raises(ValueError, match="unknown optimizer"):
    H.fit_pair_head("abs_diff", a, b, s, steps=1, optimizer="sgd")
  head = H.PairHead("abs_diff", 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="trained on 'abs_diff'"):
    H.pair_scores(head, "chi2", a, b)
  with pytest.raises(ValueError, match="emb_b contains NaN"):
    H.pair_scores(head, "abs_diff", a, np.where(bad, np.inf, b))
