"""Offline hard-triplet selection (FaceNet sec. 3.2, "generate triplets offline").

Every ``rescore_every`` steps a pool of candidate triplets is drawn and scored with the
current model; the ones that already satisfy the margin, d(a,n) >= d(a,p) + alpha, stop
being fed and training batches are drawn from the violating ones until the next
re-score.
"""

from __future__ import annotations

import numpy as np


def sample_pool(labels: np.ndarray, pool_size: int, seed: int, version: int) -> np.ndarray:
  """(pool_size, 3) dataset rows (anchor, positive, negative), deterministic from (seed, version).

  The anchor identity is uniform over identities with >= 2 images; anchor and positive
  are two distinct images of it; the negative is an image of another identity.
  """
  rng = np.random.default_rng([seed, 1_000_003, version])
  labels = np.asarray(labels)
  ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  multi = np.nonzero(counts >= 2)[0]
  if multi.size == 0 or ids.size < 2:
    raise ValueError("offline triplets need >= 2 identities and one with >= 2 images")
  order = np.argsort(inverse, kind="stable")
  starts = np.r_[0, np.cumsum(counts)]
  k = rng.choice(multi, pool_size)
  # two distinct offsets within the anchor identity
  off_a = (rng.random(pool_size) * counts[k]).astype(np.int64)
  off_p = (off_a + 1 + (rng.random(pool_size) * (counts[k] - 1)).astype(np.int64)) % counts[k]
  anchor, positive = order[starts[k] + off_a], order[starts[k] + off_p]
  # a negative row drawn uniformly from rows of other identities
  n = labels.size
  neg = (rng.random(pool_size) * (n - counts[k])).astype(np.int64)
  neg = np.where(neg >= starts[k], neg + counts[k], neg)   # skip the anchor's block
  negative = order[neg]
  return np.stack([anchor, positive, negative], axis=1)


def violating(pool_Tx3: np.ndarray, emb_NxD: np.ndarray, margin: float) -> np.ndarray:
  """The triplets of the pool with d(a,p) - d(a,n) + alpha > 0 under embeddings ``emb_NxD``.

  ``emb_NxD`` is indexed by dataset row (only rows in the pool need be filled).
  """
  a, p, n = (emb_NxD[pool_Tx3[:, i]] for i in range(3))
  d_ap = np.sum((a - p) ** 2, axis=1)
  d_an = np.sum((a - n) ** 2, axis=1)
  return pool_Tx3[d_ap - d_an + margin > 0]


def draw(selected_Sx3: np.ndarray, pool_Tx3: np.ndarray, count: int, seed: int,
         step: int) -> np.ndarray:
  """``count`` triplets for one step, from the violating ones (the whole pool if none)."""
  source = selected_Sx3 if selected_Sx3.shape[0] else pool_Tx3
  rng = np.random.default_rng([seed, 2_000_003, step])
  return source[rng.choice(source.shape[0], count, replace=source.shape[0] < count)]
