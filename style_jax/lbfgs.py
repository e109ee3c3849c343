"""The L-BFGS of pixel optimization: one direction, the line search each use needs.

Both users take their direction from :func:`direction` (optax's two-loop recursion over the
last ``memory`` curvature pairs, ``optax.scale_by_lbfgs``); they differ in the line search:

* :func:`transform` + :func:`projected_step` (``style_jax.optimize.stylize``, one image):
  ``optax.lbfgs``'s chain (direction, sign flip, zoom line search for the strong Wolfe
  conditions), then a projection onto the box ``bounds``. The state is ``optax.lbfgs``'s, so
  the checkpoints of earlier runs restore into it.
* :func:`batched` (``scripts/reproduce_gatys.py``, many independent images at once): the
  same direction vmapped over the images, and a weak-Wolfe bisection whose step sizes are per
  image but whose loop is shared, so that the loss runs once per trial over the whole batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

State = dict[str, Any]


def direction(memory: int) -> optax.GradientTransformation:
  """The L-BFGS direction ``H g`` (not negated), from the last ``memory`` curvature pairs."""
  return optax.scale_by_lbfgs(memory_size=memory)


def transform(memory: int, linesearch_steps: int) -> optax.GradientTransformationExtraArgs:
  """``optax.lbfgs(memory_size=memory)`` with a zoom line search of <= ``linesearch_steps``
  evaluations starting from step 1: the same chain, hence the same state pytree."""
  return optax.chain(
      direction(memory), optax.scale(-1.0),
      optax.scale_by_zoom_linesearch(max_linesearch_steps=linesearch_steps,
                                     initial_guess_strategy="one"))


def projected_step(value_fn: Callable[..., jax.Array], tx: optax.GradientTransformationExtraArgs,
                   bounds: tuple[Any, Any] = (-math.inf, math.inf),
                   backtracks: int = 20) -> Callable:
  """Pure ``(x, opt_state, *args) -> (x, opt_state, value_fn(x_old, *args))``: one iteration
  of ``tx`` (a :func:`transform`) on ``value_fn(x, *args)``, then x clipped to ``bounds``
  (lo, hi: scalars or arrays that broadcast against x; the default clips nothing). The clip
  never raises the loss.

  The line search never sees the clip. When the clip moved a coordinate, f and its gradient
  are evaluated at the clipped point. The next iteration reuses them, as it reuses the line
  search's values otherwise, so this costs nothing extra. If f rose there, the step is
  replaced by projected gradient descent with Armijo backtracking along the projection arc,
  ``clip(x - t g)``, halving ``t`` at most ``backtracks`` times. The first ``t`` maps the
  L-BFGS step's length onto the gradient. If no trial decreases f, x is kept.

  Before this check, an audit measured the bare clip on a strictly convex 200-d quadratic with
  box bounds: 472 of the first 1,000 steps rose, and after 3,000 it stood at -74.94, where
  scipy's L-BFGS-B reaches -75.55 (tests/test_lbfgs.py). The curvature pairs come from the
  iterates actually taken (``optax.scale_by_lbfgs`` differences the params it is given).
  """
  lo, hi = bounds

  def step(x, opt_state, *args):
    f = lambda y: value_fn(y, *args)
    value, grad = optax.value_and_grad_from_state(f)(x, state=opt_state)
    updates, opt_state = tx.update(grad, opt_state, x, value=value, grad=grad, value_fn=f)
    moved = optax.apply_updates(x, updates)
    clipped = jnp.clip(moved, lo, hi)
    at_moved = (moved, optax.tree.get(opt_state, "value"), optax.tree.get(opt_state, "grad"))

    def check_clipped(_):
      v, g = jax.value_and_grad(f)(clipped)
      return jax.lax.cond(v <= value, lambda _: (clipped, v, g),
                          lambda _: _projected_gradient(f, x, value, grad, moved, lo, hi,
                                                        backtracks), None)
    x_new, v_new, g_new = jax.lax.cond(jnp.any(clipped != moved), check_clipped,
                                       lambda _: at_moved, None)
    opt_state = optax.tree.set(opt_state, value=v_new, grad=g_new)
    return x_new, opt_state, value
  return step


def _projected_gradient(f, x, value, grad, moved, lo, hi, backtracks: int):
  """(x', f(x'), grad f(x')) of Armijo backtracking along ``clip(x - t grad)``, or x's own when no
  trial decreases f (see :func:`projected_step`)."""
  g_norm = jnp.sqrt(jnp.sum(jnp.square(grad)))
  t0 = jnp.sqrt(jnp.sum(jnp.square(moved - x))) / jnp.maximum(g_norm, jnp.finfo(grad.dtype).tiny)

  def trial(t):
    y = jnp.clip(x - t * grad, lo, hi)
    return y, f(y)

  def not_done(c):
    k, _, ok = c
    return (~ok) & (k < backtracks)

  def body(c):
    k, t, _ = c
    y, v = trial(t)
    ok = v <= value + 1e-4 * jnp.vdot(grad, y - x)   # Armijo on the arc: vdot(g, y - x) <= 0
    return k + 1, jnp.where(ok, t, 0.5 * t), ok

  _, t, ok = jax.lax.while_loop(not_done, body, (0, t0, jnp.asarray(False)))

  def accept(_):
    y = jnp.clip(x - t * grad, lo, hi)
    v, g = jax.value_and_grad(f)(y)
    return y, v, g
  return jax.lax.cond(ok, accept, lambda _: (x, value, grad), None)


# ------------------------------------------------------------------- batched images


def _per_image(a: jax.Array) -> jax.Array:
  """Sum over all but the leading (image) axis."""
  return a.reshape(a.shape[0], -1).sum(1)


def _col(v: jax.Array) -> jax.Array:
  """(B,) -> (B, 1, 1, 1): a per-image scalar that broadcasts against (B, H, W, C) images."""
  return v.reshape((-1, 1, 1, 1))


def per_image_value_and_grad(values_fn: Callable[..., jax.Array]) -> Callable:
  """``(x, *args) -> (values (B,), grads like x)`` of ``values_fn(x, *args) -> (B,)``.

  The images' losses are independent, so the gradient of their sum is every image's own.
  """
  def value_and_grad(x, *args):
    def summed(x):
      v = values_fn(x, *args)
      return jnp.sum(v), v
    (_, values), grad = jax.value_and_grad(summed, has_aux=True)(x)
    return values, grad
  return value_and_grad


def batched_direction(lbfgs: optax.GradientTransformation, state: State,
                      first_step: float) -> tuple[jax.Array, jax.Array, Any]:
  """Per image: the descent direction d, the slope g.d along it, and the new L-BFGS memory.

  The first iteration (no curvature pairs yet) is steepest descent scaled so that the
  coordinate that moves most moves by ``first_step`` (instead of optax's unit-norm first
  step); an L-BFGS direction that is not a descent direction falls back to -g / |g|.
  """
  x, g = state["x"], state["g"]
  u, lstate = jax.vmap(lbfgs.update)(g, state["lbfgs"], x)
  gmax = jnp.max(jnp.abs(g).reshape(g.shape[0], -1), axis=1)
  d = jnp.where(state["lbfgs"].count[0] == 0, -g * _col(first_step / (gmax + 1e-30)), -u)
  slope = _per_image(g * d)
  descent = (slope < 0) & jnp.isfinite(slope)
  d = jnp.where(_col(descent), d, -g / _col(jnp.sqrt(_per_image(g * g)) + 1e-30))
  slope = jnp.where(descent, slope, -jnp.sqrt(_per_image(g * g)))
  return d, slope, lstate


def weak_wolfe_search(value_and_grad: Callable, state: State, d: jax.Array, slope: jax.Array,
                      max_steps: int, c1: float, c2: float) -> State:
  """Per image, a step size t along d meeting the weak Wolfe conditions (Lewis & Overton
  2013): x4 expansion until Armijo fails, then bisection. Returns ``{x, f, g}`` at the best
  acceptable point (the start if none), ``done`` and ``i`` (the batch's loss evaluations).

  One ``lax.while_loop`` for the batch, running while some image has not found its step: the
  loop is not vmapped (JAX batches the VGG weights of custom-VJP convolutions inside a
  vmapped while loop with a per-image condition, which makes every convolution a grouped one).
  """
  x, f = state["x"], state["f"]

  def cond(c):
    return (c["i"] < max_steps) & jnp.any(~c["done"])

  def body(c):
    # Armijo fails -> hi = t; Armijo holds but the slope is still steep -> keep the point,
    # lo = t; both hold -> done
    t = c["t"]
    xt = x + _col(t) * d
    ft, gt = value_and_grad(xt)
    active = ~c["done"]
    armijo = active & jnp.isfinite(ft) & (ft <= f + c1 * t * slope)
    flat = _per_image(gt * d) >= c2 * slope
    keep = armijo & (ft <= c["f"])   # best acceptable point so far
    hi = jnp.where(active & ~armijo, t, c["hi"])
    lo = jnp.where(armijo, t, c["lo"])
    t_next = jnp.where(jnp.isinf(hi), 4.0 * t, 0.5 * (lo + hi))
    return {"x": jnp.where(_col(keep), xt, c["x"]), "f": jnp.where(keep, ft, c["f"]),
            "g": jnp.where(_col(keep), gt, c["g"]), "done": c["done"] | (armijo & flat),
            "t": jnp.where(c["done"] | (armijo & flat), t, t_next), "lo": lo, "hi": hi,
            "i": c["i"] + 1}

  return jax.lax.while_loop(cond, body, {
      "x": x, "f": f, "g": state["g"], "done": jnp.zeros(f.shape, bool), "t": jnp.ones_like(f),
      "lo": jnp.zeros_like(f), "hi": jnp.full_like(f, jnp.inf), "i": jnp.zeros((), jnp.int32)})


def batched(values_fn: Callable[..., jax.Array], memory: int, max_linesearch: int,
            c1: float = 1e-4, c2: float = 0.9, first_step: float = 10.0
            ) -> tuple[Callable, Callable]:
  """Pure ``init(x, *args) -> state`` and ``step(state, *args) -> (state, values before the
  step)``: one L-BFGS iteration for every image of a batch x (B, H, W, C), minimizing
  ``values_fn(x, *args) -> (B,)`` (image i's loss may depend on image i only).

  ``state["x"]`` holds the images, ``state["f"]`` their losses, ``state["evals"]`` the loss
  evaluations (of the whole batch) so far. Directions: :func:`batched_direction` (per-image
  memory); step sizes: :func:`weak_wolfe_search`. Nothing is clipped. An image without an
  acceptable step stays put (its next memory pair is zero, which L-BFGS ignores).
  """
  lbfgs = direction(memory)
  value_and_grad = per_image_value_and_grad(values_fn)

  def init(x, *args):
    f, g = value_and_grad(x, *args)
    return {"x": x, "f": f, "g": g, "lbfgs": jax.vmap(lbfgs.init)(x),
            "evals": jnp.ones((), jnp.int32)}

  def step(state, *args):
    d, slope, lstate = batched_direction(lbfgs, state, first_step)
    c = weak_wolfe_search(lambda x: value_and_grad(x, *args), state, d, slope, max_linesearch,
                          c1, c2)
    return ({"x": c["x"], "f": c["f"], "g": c["g"], "lbfgs": lstate,
             "evals": state["evals"] + c["i"]}, state["f"])
  return init, step
