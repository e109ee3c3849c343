"""style_jax.lbfgs: both L-BFGS forms minimize convex quadratics to the NumPy solution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from style_jax import lbfgs

RNG = np.random.default_rng(0)


def _spd(n: int, cond: float = 20.0) -> np.ndarray:
  """A random symmetric positive-definite (n, n) matrix with eigenvalues in [1, cond]."""
  q, _ = np.linalg.qr(RNG.normal(size=(n, n)))
  return (q * np.linspace(1.0, cond, n)) @ q.T


def _quadratic(a: np.ndarray, b: np.ndarray):
  """f(x) = 1/2 x.A x - b.x of a flattened x (minimum at A^-1 b)."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  def f(x):
    v = x.reshape(-1)
    return 0.5 * v @ (a @ v) - b @ v
  return f


def _minimize(step, x, opt_state, n_steps):
  step = jax.jit(step)
  for _ in range(n_steps):
    x, opt_state, _ = step(x, opt_state)
  return x


def test_transform_is_optax_lbfgs():
  """Same state pytree (old checkpoints restore into it) and the same iterates."""
  a, b = _spd(12), RNG.normal(size=12)
  f = _quadratic(a, b)
  ours = lbfgs.transform(5, 15)
  theirs = optax.lbfgs(memory_size=5, linesearch=optax.scale_by_zoom_linesearch(
      max_linesearch_steps=15, initial_guess_strategy="one"))
  x0 = jnp.zeros(12, jnp.float32)
  assert jax.tree.structure(ours.init(x0)) == jax.tree.structure(theirs.init(x0))
  xs = [_minimize(lbfgs.projected_step(f, tx), x0, tx.init(x0), 6) for tx in (ours, theirs)]
  np.testing.assert_array_equal(xs[0], xs[1])


def test_projected_step_reaches_the_numpy_minimum():
  a, b = _spd(20), RNG.normal(size=20)
  tx = lbfgs.transform(10, 20)
  x0 = jnp.zeros((4, 5), jnp.float32)   # any shape: the pixels of an image in stylize
  x = _minimize(lbfgs.projected_step(_quadratic(a, b), tx), x0, tx.init(x0), 40)
  np.testing.assert_allclose(np.asarray(x).reshape(-1), np.linalg.solve(a, b), atol=1e-3)


def test_projected_step_with_bounds_reaches_the_clipped_minimum():
  """A separable quadratic: the box-constrained minimum is the clipped unconstrained one."""
  d, b = np.linspace(1.0, 5.0, 10), RNG.normal(size=10) * 3
  lo, hi = np.full(10, -0.5, np.float32), np.full(10, 0.5, np.float32)
  tx = lbfgs.transform(10, 20)
  x0 = jnp.zeros(10, jnp.float32)
  step = lbfgs.projected_step(_quadratic(np.diag(d), b), tx, (lo, hi))
  x = _minimize(step, x0, tx.init(x0), 40)
  assert np.all(np.asarray(x) >= lo) and np.all(np.asarray(x) <= hi)
  np.testing.assert_allclose(x, np.clip(b / d, lo, hi), atol=1e-4)


def test_projected_step_passes_extra_arguments_to_the_loss():
  a, b = _spd(6), RNG.normal(size=6)
  f = _quadratic(a, b)
  tx = lbfgs.transform(5, 20)
  x0 = jnp.zeros(6, jnp.float32)
  step = jax.jit(lbfgs.projected_step(lambda x, scale: scale * f(x), tx))
  x, opt_state = x0, tx.init(x0)
  for _ in range(30):
    x, opt_state, value = step(x, opt_state, jnp.float32(3.0))
  np.testing.assert_allclose(x, np.linalg.solve(a, b), atol=1e-3)
  np.testing.assert_allclose(value, 3.0 * float(f(x)), rtol=1e-4)


def test_batched_reaches_every_images_numpy_minimum():
  """Independent quadratics, one per image of a (B, H, W, C) batch, minimized together."""
  shape, n, batch = (2, 3, 2), 12, 3
  mats = [_spd(n, cond) for cond in (5.0, 20.0, 50.0)]
  rhs = RNG.normal(size=(batch, n))
  a, b = jnp.asarray(np.stack(mats), jnp.float32), jnp.asarray(rhs, jnp.float32)

  def values(x, scale):
    v = x.reshape(batch, -1)
    return scale * (0.5 * jnp.einsum("bi,bij,bj->b", v, a, v) - jnp.sum(b * v, 1))

  init, step = lbfgs.batched(values, memory=10, max_linesearch=20, first_step=1.0)
  init, step = jax.jit(init), jax.jit(step)
  scale = jnp.float32(2.0)
  state = init(jnp.zeros((batch,) + shape, jnp.float32), scale)
  before = np.asarray(state["f"])
  for _ in range(60):
    state, previous = step(state, scale)
  x = np.asarray(state["x"]).reshape(batch, -1)
  for i in range(batch):
    np.testing.assert_allclose(x[i], np.linalg.solve(mats[i], rhs[i]), atol=2e-3)
  np.testing.assert_allclose(state["f"], values(state["x"], scale), rtol=1e-5)
  assert np.all(np.asarray(state["f"]) < before) and int(state["evals"]) > 60


def test_projected_step_with_active_bounds_does_not_raise_the_loss_and_reaches_l_bfgs_b():
  """A non-separable convex quadratic whose box bounds are active (an audit's case): the clip
  after the line search raised the loss on about half the steps and stalled the iterates at
  -74.94 where scipy's L-BFGS-B reaches -75.55. Now every clipped step that would raise f is
  replaced by a projected-gradient step, and the iterates reach L-BFGS-B's minimum."""
  import scipy.optimize
  rng = np.random.default_rng(0)
  n = 200
  m = rng.normal(size=(n, n))
  a, b = m @ m.T / n + 0.1 * np.eye(n), rng.normal(size=n)
  lo, hi = -0.5, 0.8
  x0 = np.clip(rng.uniform(-1.5, 1.5, n), lo, hi)
  ref = scipy.optimize.minimize(lambda v: 0.5 * v @ a @ v - b @ v, x0, jac=lambda v: a @ v - b,
                                method="L-BFGS-B", bounds=[(lo, hi)] * n,
                                options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
  f = _quadratic(a, b)
  tx = lbfgs.transform(10, 30)
  step = jax.jit(lbfgs.projected_step(f, tx, (lo, hi)))
  x = jnp.asarray(x0, jnp.float32)
  opt_state, values = tx.init(x), []
  for _ in range(300):
    x, opt_state, v = step(x, opt_state)
    values.append(float(v))
  rises = np.diff(values)
  assert rises.max() <= 1e-5 * abs(ref.fun), (int(np.argmax(rises)), rises.max())
  assert float(f(x)) == pytest.approx(ref.fun, rel=1e-5)
  assert np.all(np.asarray(x) >= lo) and np.all(np.asarray(x) <= hi)
