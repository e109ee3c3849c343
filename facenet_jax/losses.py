"""Metric-learning losses on squared L2 distances: pure, elementwise, jittable.

Distances are squared Euclidean, d(x1, x2) = ||f(x1) - f(x2)||^2, of L2-normalized
embeddings (so 0 <= d <= 4). Reductions and triplet selection live in ``mining.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


# how many of each row's smallest distances pairwise_sq_distances recomputes exactly
REFINE_NEAREST = 16


def pairwise_sq_distances(emb_BxD: Array, refine: int = REFINE_NEAREST) -> Array:
  """All squared L2 distances within a batch, accurate where they are small.

  The bulk is the O(B^2 D) matmul form d_ij = |x_i|^2 + |x_j|^2 - 2 x_i . x_j on the
  centred x = e - mean(e) (any shared shift leaves distances unchanged). In float32 its
  absolute error is ~eps (|x_i|^2 + |x_j|^2) (~1e-6 for unit embeddings), more than a
  near-duplicate pair's whole distance: such pairs would clip to 0, get no gradient and
  be mis-ranked by the miners. Centring makes the error scale with the batch's spread
  (a whole batch near collapse becomes accurate); and each row's ``refine`` smallest
  off-diagonal entries (chosen on the matmul values) are recomputed as
  sum_k (e_ik - e_jk)^2, whose differences are exact for near-equal floats (Sterbenz), at
  O(B refine D) cost, in both (i, j) and (j, i) so the result stays symmetric. Gradients
  flow through whichever form an entry holds. Entries of a row beyond its ``refine``
  nearest keep the matmul form's ~1e-6 absolute error (relative error <= 1e-6 / d).

  Args:
    emb_BxD: embeddings, (B, D).
    refine: entries per row recomputed exactly (0: the plain matmul form).
  Returns:
    dist_BxB: (B, B) float32, symmetric, >= 0, diagonal exactly 0 (with zero gradient).
  """
  emb = emb_BxD.astype(jnp.float32)
  B = emb.shape[0]
  # distances do not depend on the shift, so its gradient is exactly 0: stopping it keeps
  # rounding noise (~1e-10) off rows, such as padding, that no distance uses
  x = emb - jax.lax.stop_gradient(jnp.mean(emb, axis=0, keepdims=True))
  sq_B = jnp.sum(x * x, axis=-1)
  dist = jnp.maximum(sq_B[:, None] + sq_B[None, :] - 2.0 * (x @ x.T), 0.0)
  eye = jnp.eye(B, dtype=bool)
  k = min(int(refine), B - 1)
  if k > 0:
    approx = jax.lax.stop_gradient(jnp.where(eye, jnp.inf, dist))
    _, near_BxK = jax.lax.top_k(-approx, k)
    exact_BxK = jnp.sum(jnp.square(emb[:, None, :] - emb[near_BxK]), axis=-1)
    rows_BxK = jnp.broadcast_to(jnp.arange(B)[:, None], near_BxK.shape)
    dist = dist.at[rows_BxK, near_BxK].set(exact_BxK).at[near_BxK, rows_BxK].set(exact_BxK)
  return jnp.where(eye, 0.0, dist)


def triplet_margin_loss(d_ap: Array, d_an: Array, margin: float | Array) -> Array:
  """FaceNet's triplet loss, elementwise: max(d(a,p) - d(a,n) + alpha, 0).

  Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015, eq. (2).
  """
  return jax.nn.relu(d_ap - d_an + margin)


def soft_margin_triplet_loss(d_ap: Array, d_an: Array, margin: float | Array = 0.0) -> Array:
  """Soft-margin triplet loss, elementwise: log(1 + exp(d(a,p) - d(a,n))).

  Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017, sec. 2. The margin is
  replaced by the softplus; ``margin`` is accepted for a uniform signature and ignored.
  """
  del margin
  return jax.nn.softplus(d_ap - d_an)


def _safe_sqrt(x: Array) -> Array:
  # sqrt has an infinite derivative at 0 (d(a, a) = 0 on duplicates): take it on a
  # floor and zero the gradient there.
  pos = x > 1e-12
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def contrastive_loss(d: Array, same: Array, margin: float | Array) -> Array:
  """Siamese contrastive loss on a pair, elementwise.

  same:      d
  different: max(alpha - sqrt(d), 0)^2
  Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
  CVPR 2006, eq. (4) (without the 1/2 factors), with d the squared distance.
  """
  return jnp.where(same, d, jnp.square(jax.nn.relu(margin - _safe_sqrt(d))))


TRIPLET_LOSSES = {
    "triplet": triplet_margin_loss,
    "soft_margin": soft_margin_triplet_loss,
}

# config.loss: a triplet loss (over the miner's triplets) or the pair loss (all pairs)
LOSSES = (*TRIPLET_LOSSES, "contrastive")
