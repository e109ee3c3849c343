"""facenet_jax.steps.make_optimizer: the learning-rate schedules, gradient clipping and the
three optimizers, each against a hand-written float64 NumPy reference."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from facenet_jax import steps


def _optim(**kw):
  base = dict(name="sgd", learning_rate=0.1, warmup_steps=0, weight_decay=0.0,
              schedule="constant", grad_clip_norm=0.0)
  return ml_collections.ConfigDict({**base, **kw})


def _lr_ref(t, peak, warmup_steps, num_steps, schedule):
  """Linear warmup from 0 to ``peak`` over the warmup steps (at most num_steps - 1), then
  ``peak`` (constant) or a half cosine from ``peak`` to 0 reached at step num_steps."""
  w = min(warmup_steps, max(num_steps - 1, 0))
  if t < w:
    return peak * t / w
  if schedule == "constant":
    return peak
  frac = min(t - w, num_steps - w) / (num_steps - w)
  return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


def _observed_lrs(optim, num_steps, n):
  """The learning rate of each of the first ``n`` steps, read off SGD's updates.

  The gradient is always 1, so SGD with momentum 0.9 moves by -lr_t * m_t with
  m_t = sum_{k <= t} 0.9^k: dividing by m_t recovers lr_t.
  """
  tx = steps.make_optimizer(_optim(name="sgd", **optim), num_steps)
  params = jnp.zeros((1,), jnp.float32)
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for t in range(n):
    u, state = update(jnp.ones((1,), jnp.float32), state, params)
    out.append(-float(u[0]) / sum(0.9 ** k for k in range(t + 1)))
  return np.asarray(out)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedule_warmup_peak_and_end(schedule):
  peak, warmup, num_steps = 0.1, 4, 12
  lrs = _observed_lrs(dict(learning_rate=peak, warmup_steps=warmup, schedule=schedule),
                      num_steps, num_steps + 3)
  want = [_lr_ref(t, peak, warmup, num_steps, schedule) for t in range(num_steps + 3)]
  np.testing.assert_allclose(lrs, want, rtol=1e-5, atol=1e-8)
  # the landmarks, spelled out: 0 at step 0, half way up mid-warmup, the peak when warmup ends
  assert lrs[0] == 0.0
  assert lrs[2] == pytest.approx(peak / 2, rel=1e-5)
  assert lrs[warmup] == pytest.approx(peak, rel=1e-5)
  if schedule == "cosine":
    # half way through the decay: half the peak; 0 at num_steps and after
    assert lrs[(warmup + num_steps) // 2] == pytest.approx(peak / 2, rel=1e-5)
    np.testing.assert_allclose(lrs[num_steps:], 0.0, atol=1e-9)
  else:
    np.testing.assert_allclose(lrs[warmup:], peak, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warmup_longer_than_the_run_is_cut_to_num_steps_minus_one(schedule):
  # 100 warmup steps in a 6-step run: warmup ends at step 5, so the last step gets the peak
  lrs = _observed_lrs(dict(learning_rate=0.2, warmup_steps=100, schedule=schedule), 6, 6)
  np.testing.assert_allclose(lrs, [0.2 * t / 5 for t in range(6)], rtol=1e-5, atol=1e-8)


def test_no_warmup_starts_at_the_peak():
  for schedule in ("cosine", "constant"):
    lrs = _observed_lrs(dict(learning_rate=0.3, warmup_steps=0, schedule=schedule), 10, 2)
    assert lrs[0] == pytest.approx(0.3, rel=1e-6), schedule


@pytest.mark.parametrize("clip,scale", [(6.5, 0.5), (26.0, 1.0), (0.0, 1.0)])
def test_gradient_clipping_by_global_norm(clip, scale):
  # a two-leaf gradient of global norm sqrt(3^2 + 4^2 + 12^2) = 13: clipped to norm 6.5 it
  # is halved; a larger limit, or none (0), leaves it alone
  g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}
  params = jax.tree.map(jnp.zeros_like, g)
  tx = steps.make_optimizer(_optim(learning_rate=0.1, grad_clip_norm=clip), 10)
  u, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(u["a"], -0.1 * scale * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(u["b"], -0.1 * scale * np.array([[12.0]]), rtol=1e-6)
  norm = float(optax.global_norm(u)) / 0.1
  assert norm == pytest.approx(13.0 * scale, rel=1e-6)


# ----------------------------------------------------------------- the optimizers


_A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 2.0]])
_B = np.array([1.0, -2.0, 0.5])


def _grad(p):
  """Gradient of the quadratic 1/2 p'Ap - b'p."""
  return _A @ p - _B


def _reference_run(name, optim, num_steps, n):
  """``n`` steps of ``name`` on the quadratic, in float64, written out from the papers:
  SGD with heavy-ball momentum 0.9 (m = g + 0.9 m), Adam (Kingma & Ba 2015, b1 0.9,
  b2 0.999, eps 1e-8, bias-corrected), AdamW (Loshchilov & Hutter 2019: the decay
  lr * wd * p added to Adam's step, not to the gradient)."""
  p = np.array([0.5, 0.5, -1.0])
  m, v = np.zeros(3), np.zeros(3)
  for t in range(n):
    g = _grad(p)
    if optim["grad_clip_norm"]:
      g = g * min(1.0, optim["grad_clip_norm"] / np.linalg.norm(g))
    lr = _lr_ref(t, optim["learning_rate"], optim["warmup_steps"], num_steps, optim["schedule"])
    if name == "sgd":
      m = g + 0.9 * m
      p = p - lr * m
    else:
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      step = (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
      if name == "adamw":
        step = step + optim["weight_decay"] * p
      p = p - lr * step
  return p


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule,clip", [("cosine", 0.0), ("constant", 1.5)])
def test_each_optimizer_matches_its_hand_written_update(name, schedule, clip):
  # weight decay 0.3 is set for all three: only adamw may use it
  optim = dict(name=name, learning_rate=0.05, warmup_steps=2, weight_decay=0.3,
               schedule=schedule, grad_clip_norm=clip)
  num_steps, n = 8, 10
  tx = steps.make_optimizer(_optim(**optim), num_steps)
  p = jnp.array([0.5, 0.5, -1.0], jnp.float32)
  state = tx.init(p)

  @jax.jit
  def step(p, state):
    g = jnp.asarray(_A, jnp.float32) @ p - jnp.asarray(_B, jnp.float32)
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state
  traj = []
  for _ in range(n):
    p, state = step(p, state)
    traj.append(np.asarray(p))
  want = [_reference_run(name, optim, num_steps, k + 1) for k in range(n)]
  # float32 against float64: ~3e-6 apart after 10 Adam steps; a wrong decay or moment is ~1e-3
  np.testing.assert_allclose(np.asarray(traj), np.asarray(want), rtol=0, atol=1e-5)
  # the run really moved (the first step has lr 0 under warmup, the rest do not)
  assert np.abs(traj[-1] - np.array([0.5, 0.5, -1.0])).max() > 0.05


def test_unknown_optimizer_or_schedule_is_named():
  with pytest.raises(ValueError, match=r"optim.name='lion'.*expected one of \('adamw', 'adam', 'sgd'\)"):
    steps.make_optimizer(_optim(name="lion"), 10)
  with pytest.raises(ValueError, match=r"optim.schedule='linear'.*\('cosine', 'constant'\)"):
    steps.make_optimizer(_optim(schedule="linear"), 10)
