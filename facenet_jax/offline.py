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


class OfflineBatches:
  """The training batches of offline selection: the re-scored pool, the triplets still
  violating the margin, and the batch of each step (anchors, then positives, then negatives).

  ``embed_rows(state, rows) -> (len(rows), D)`` embeds training rows with the current model.
  The pool and the selection are saved with every checkpoint (:meth:`meta`) and restored from
  it, so a resumed run feeds the same batches.
  """

  def __init__(self, offline, labels: np.ndarray, images: np.ndarray, margin: float, seed: int,
               meta: dict):
    self.cfg, self.labels, self.images = offline, labels, images
    self.margin, self.seed = margin, seed
    self.pool = np.asarray(meta.get("offline_pool", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    self.selected = np.asarray(meta.get("offline_selected", np.zeros((0, 3))),
                               np.int64).reshape(-1, 3)

  def rescore(self, step: int, embed_rows, state) -> None:
    self.pool = sample_pool(self.labels, self.cfg.pool_size, self.seed,
                            step // self.cfg.rescore_every)
    rows = np.unique(self.pool)
    emb = embed_rows(state, rows)
    full = np.zeros((len(self.labels), emb.shape[1]), np.float32)
    full[rows] = emb
    self.selected = violating(self.pool, full, self.margin)

  def batch(self, step: int, embed_rows, state) -> dict:
    """``{images, labels, mask}`` of ``step`` (re-scoring first when it is due)."""
    if step % self.cfg.rescore_every == 0 or self.pool.shape[0] == 0:
      self.rescore(step, embed_rows, state)
    trip = draw(self.selected, self.pool, self.cfg.triplets_per_batch, self.seed, step)
    rows = trip.T.reshape(-1)
    return {"images": self.images[rows], "labels": self.labels[rows],
            "mask": np.ones(rows.shape[0], bool)}

  def meta(self) -> dict:
    return {"offline_pool": self.pool.tolist(), "offline_selected": self.selected.tolist()}
