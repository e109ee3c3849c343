"""Metric-learning losses on squared L2 distances: pure, elementwise, jittable.

Distances are squared Euclidean, d(x1, x2) = ||f(x1) - f(x2)||^2, of L2-normalized
embeddings (so 0 <= d <= 4). Reductions and triplet selection live in ``mining.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def pairwise_sq_distances(emb_BxD: Array) -> Array:
  """All squared L2 distances within a batch.

  d_ij = ||e_i||^2 + ||e_j||^2 - 2 e_i . e_j, clipped at 0 (rounding), diagonal exactly 0.

  Args:
    emb_BxD: embeddings, (B, D).
  Returns:
    dist_BxB: (B, B) float32, symmetric.
  """
  emb = emb_BxD.astype(jnp.float32)
  sq_B = jnp.sum(emb * emb, axis=-1)
  dist = sq_B[:, None] + sq_B[None, :] - 2.0 * (emb @ emb.T)
  dist = jnp.maximum(dist, 0.0)
  return jnp.where(jnp.eye(emb.shape[0], dtype=bool), 0.0, dist)


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
