"""DeepFace-style verification head: logistic regression on features of an embedding pair.

DeepFace (Taigman et al. 2014, Sec. 4) verifies a pair by a learned weighting of
elementwise pair features, ``sigmoid(w . feat(f_i, f_j) + b)``, trained with binary
cross-entropy over *frozen* embeddings. Features, for (P, D) embeddings:

  concat   -- [f_i, f_j]                                   (P, 2D)  a linear head on it
              scores each side separately and cannot compare them; kept for nonlinear heads
  abs_diff -- |f_i - f_j|                                  (P, D)  DeepFace's weighted L1
  chi2     -- (u_i - u_j)^2 / (u_i + u_j + eps), u = (1 + f) / 2   (P, D)

The chi-squared distance is meant for non-negative histograms; DeepFace's features were
ReLU outputs scaled to [0, 1]. Our embeddings are L2-normalized and signed, but every
coordinate of a vector with norm <= 1 lies in [-1, 1], so ``u = (1 + f) / 2`` maps them
affinely and injectively onto DeepFace's [0, 1] range. Unlike ``|f|`` it keeps the sign
(f and -f stay different), and the denominator vanishes only where both u are 0 and the
numerator with them (eps then gives 0). ``pair_scores`` therefore rejects inputs with a
coordinate outside [-1, 1] for chi2.

The head's logit is a similarity: pass ``-pair_scores(...)`` as the distance to
``verification.kfold_accuracy`` / ``summarize``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from facenet_jax import verification

Array = jax.Array
State = dict[str, Any]
CHI2_EPS = 1e-6


def concat(f_i_PxD: Array, f_j_PxD: Array) -> Array:
  """[f_i, f_j] along the last axis: (P, 2D). Order-dependent, unlike the others."""
  return jnp.concatenate([f_i_PxD, f_j_PxD], axis=-1)


def abs_diff(f_i_PxD: Array, f_j_PxD: Array) -> Array:
  """|f_i - f_j| elementwise: (P, D)."""
  return jnp.abs(f_i_PxD - f_j_PxD)


def chi2(f_i_PxD: Array, f_j_PxD: Array) -> Array:
  """(u_i - u_j)^2 / (u_i + u_j + eps) with u = (1 + f) / 2 in [0, 1]: (P, D). See module doc."""
  u_i, u_j = 0.5 * (1.0 + f_i_PxD), 0.5 * (1.0 + f_j_PxD)
  return jnp.square(u_i - u_j) / (u_i + u_j + CHI2_EPS)


FEATURES: dict[str, Callable[[Array, Array], Array]] = {
    "concat": concat, "abs_diff": abs_diff, "chi2": chi2}


# one compile per input shape, rather than one per eager op
_JITTED_FEATURES = {name: jax.jit(fn) for name, fn in FEATURES.items()}


def feature_dim(feature_name: str, embedding_dim: int) -> int:
  _feature_fn(feature_name)
  return 2 * embedding_dim if feature_name == "concat" else embedding_dim


def _feature_fn(feature_name: str) -> Callable[[Array, Array], Array]:
  if feature_name not in FEATURES:
    raise ValueError(f"unknown pair feature {feature_name!r}; choose one of {sorted(FEATURES)}")
  return FEATURES[feature_name]


class PairHead(nnx.Module):
  """Logistic regression ``logit = w . x + b`` on pair features x of ``feature_name``.

  On ``abs_diff`` this is DeepFace's Siamese verification output, ``sum_k w_k |f_i - f_j|_k + b``.
  """

  def __init__(self, feature_name: str, feature_dim: int, *, rngs: nnx.Rngs):
    _feature_fn(feature_name)
    self.feature_name = feature_name
    self.linear = nnx.Linear(feature_dim, 1, rngs=rngs)

  def __call__(self, x_PxF: Array) -> Array:
    return self.linear(x_PxF)[:, 0]


def bce_loss(params: nnx.State, graphdef: nnx.GraphDef, x_PxF: Array, y_P: Array,
             weight_decay: float = 0.0) -> Array:
  """mean_p BCE(logit_p, y_p) + (weight_decay / 2) ||w||^2  (the bias is not decayed).

  BCE(z, y) = -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)); its gradient is
  ``dL/dw = mean_p (sigmoid(z_p) - y_p) x_p + weight_decay * w``, ``dL/db = mean_p (sigmoid(z_p) - y_p)``.
  """
  head = nnx.merge(graphdef, params)
  bce = optax.sigmoid_binary_cross_entropy(head(x_PxF), y_P).mean()
  return bce + 0.5 * weight_decay * jnp.sum(jnp.square(head.linear.kernel[...]))


def make_optimizer(optimizer: str, lr: float) -> optax.GradientTransformation:
  """``adam`` at ``lr``, or ``lbfgs`` (full batch only; ``lr`` unused, a zoom line search sets steps)."""
  if optimizer == "adam":
    return optax.adam(lr)
  if optimizer == "lbfgs":
    return optax.lbfgs()
  raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'lbfgs'")


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, weight_decay: float,
                    *, line_search: bool = False) -> Callable[[State, dict], tuple[State, Array]]:
  """The pure step ``(state, batch) -> (state, loss)``; ``batch``: ``x`` (B, F), ``y`` (B,) in {0, 1}.

  ``state``: ``params`` (the head's nnx.Param state from ``nnx.split(head, nnx.Param)``),
  ``opt_state``, ``step``; the head is merged inside. ``line_search``: ``tx`` is
  ``optax.lbfgs``, whose update also takes the loss value and function.
  """
  def step(state: State, batch: dict) -> tuple[State, Array]:
    loss_fn = lambda p: bce_loss(p, graphdef, batch["x"], batch["y"], weight_decay)
    if line_search:
      # the line search re-evaluates the loss, and reuses the value cached in opt_state
      loss, grads = optax.value_and_grad_from_state(loss_fn)(state["params"], state=state["opt_state"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"], value=loss,
                                     grad=grads, value_fn=loss_fn)
    else:
      loss, grads = jax.value_and_grad(loss_fn)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
            "step": state["step"] + 1}, loss
  return step


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer"))
def _train(graphdef: nnx.GraphDef, optimizer: str, params: nnx.State, x_PxF: Array, y_P: Array,
           idx: Array, lr: Array, weight_decay: Array) -> tuple[nnx.State, Array]:
  """All steps of ``make_train_step`` as one scan; ``idx``: (steps,) for full batch, or
  (steps, B) minibatch rows. Data, lr and decay are arguments, so refits with new values
  reuse the compiled loop (and jit does not bake the data in as constants)."""
  tx = make_optimizer(optimizer, lr)
  step = make_train_step(graphdef, tx, weight_decay, line_search=optimizer == "lbfgs")
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  def body(state, rows):
    batch = {"x": x_PxF, "y": y_P} if rows.ndim == 0 else {"x": x_PxF[rows], "y": y_P[rows]}
    return step(state, batch)

  state, losses = jax.lax.scan(body, state, idx)
  return state["params"], losses


def _check_pairs(emb_a: np.ndarray, emb_b: np.ndarray, feature_name: str) -> tuple[np.ndarray, np.ndarray]:
  a = np.asarray(emb_a, np.float32)
  b = np.asarray(emb_b, np.float32)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"emb_a and emb_b must be equal (P, D) shapes, got {a.shape} and {b.shape}")
  for name, e in (("emb_a", a), ("emb_b", b)):
    bad = ~np.isfinite(e).all(axis=1)
    if bad.any():
      raise ValueError(f"{name} contains NaN or Inf in pair(s) {np.nonzero(bad)[0][:10].tolist()}")
    if feature_name == "chi2" and np.abs(e).max(initial=0.0) > 1.0 + 1e-3:
      raise ValueError(f"chi2 features need coordinates in [-1, 1] (L2-normalized embeddings); "
                       f"{name} has |f| up to {np.abs(e).max():.3g}")
  return a, b


def pair_features(feature_name: str, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
  """(P, F) features of named kind for the pairs (emb_a[p], emb_b[p]), after input checks."""
  _feature_fn(feature_name)
  a, b = _check_pairs(emb_a, emb_b, feature_name)
  return np.asarray(_JITTED_FEATURES[feature_name](jnp.asarray(a), jnp.asarray(b)))


def fit_pair_head(feature_name: str, emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, *,
                  steps: int = 500, lr: float = 0.05, seed: int = 0, batch_size: int | None = None,
                  weight_decay: float = 0.0, optimizer: str = "adam") -> tuple[PairHead, np.ndarray]:
  """Trains a ``PairHead`` on frozen embedding pairs; returns ``(head, losses)``.

  Args:
    feature_name: a key of ``FEATURES``.
    emb_a, emb_b: (P, D) embeddings of the two sides of each pair.
    issame: (P,) bool, both values present.
    steps: optimizer steps; ``batch_size=None`` is full batch, else seeded minibatches
      drawn without replacement within each step.
    weight_decay: L2 penalty ``(weight_decay / 2) ||w||^2`` on the weights.
    optimizer: ``adam`` or ``lbfgs`` (full batch).
  Returns:
    the trained head and the (steps,) loss before each update.
  """
  x = pair_features(feature_name, emb_a, emb_b)
  y = np.asarray(issame)
  if y.shape != (x.shape[0],):
    raise ValueError(f"need one issame per pair: {y.shape} for {x.shape[0]} pairs")
  y = y.astype(bool)
  if y.all() or not y.any():
    raise ValueError(f"issame must contain both same and different pairs, got {int(y.sum())} same "
                     f"of {y.size}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  make_optimizer(optimizer, lr)  # an unknown name fails here, before any tracing
  if optimizer == "lbfgs" and batch_size is not None:
    raise ValueError("L-BFGS needs the full batch (batch_size=None): its line search and curvature "
                     "pairs assume one fixed objective")
  if batch_size is not None and not 1 <= batch_size <= x.shape[0]:
    raise ValueError(f"batch_size must be in [1, {x.shape[0]}], got {batch_size}")
  head = PairHead(feature_name, x.shape[1], rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(head, nnx.Param)
  if batch_size is None:
    idx = jnp.arange(steps)  # only its length matters: every step sees all pairs
  else:
    # all steps' minibatches drawn up front, so the whole loop is one compiled scan
    rng = np.random.default_rng(seed)
    idx = jnp.asarray(np.stack([rng.choice(x.shape[0], batch_size, replace=False)
                                for _ in range(steps)]).reshape(steps, batch_size))
  params, losses = _train(graphdef, optimizer, params, jnp.asarray(x), jnp.asarray(y, jnp.float32),
                          idx, jnp.float32(lr), jnp.float32(weight_decay))
  losses = np.asarray(losses)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"pair-head loss became NaN/Inf at step {int(np.argmin(np.isfinite(losses)))}")
  return nnx.merge(graphdef, params), losses


def pair_scores(head: PairHead, feature_name: str, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
  """(P,) logits, larger = more likely the same person; ``-logits`` is a verification distance."""
  if feature_name != head.feature_name:
    raise ValueError(f"head was trained on {head.feature_name!r} features, not {feature_name!r}")
  return np.asarray(head(jnp.asarray(pair_features(feature_name, emb_a, emb_b))), np.float32)


def training_pairs(emb_NxD: np.ndarray, labels: np.ndarray, num_pairs: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(emb_a, emb_b, issame)``: ``num_pairs`` matched and as many mismatched pairs of
  training identities' embeddings (fewer when fewer distinct ones exist), drawn by
  ``verification.make_pairs``."""
  emb = np.asarray(emb_NxD)
  if emb.shape[0] != np.shape(labels)[0]:
    raise ValueError(f"need one label per embedding: {np.shape(labels)[0]} for {emb.shape[0]}")
  i, j, issame = verification.make_pairs(labels, num_pairs, seed)
  return emb[i], emb[j], issame
