"""Identity-balanced P x K batches, deterministic from (seed, step).

Each batch holds P distinct identities with K images each (FaceNet: "around 40 faces
per identity" in 1,800-image batches). The same (seed, step) always gives the same
batch on every process, which is what lets a resumed run continue the exact data order
and lets each process of a multi-host run take its own rows of one global batch.

An identity with fewer than K images contributes all of them, and the rest of its K
slots are filled with repeats of its images flagged ``mask=False``: they keep shapes
static for ``jax.jit`` and are excluded from every triplet. They still pass through the
network, so a BatchNorm model counts them in its batch statistics (not masked there).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facenet_jax.data.raw import DataError


@dataclasses.dataclass(frozen=True)
class Batch:
  """Indices into the dataset and per-row metadata; all arrays have length P * K."""
  indices: np.ndarray  # int64
  labels: np.ndarray   # int32
  mask: np.ndarray     # bool, False for padding rows


def check_enough_identities(counts: np.ndarray, identities_per_batch: int) -> np.ndarray:
  """The identities (indices into ``counts``, images per identity) a P x K batch can draw:
  those with >= 2 images; DataError when fewer than P. Also checked on a source's plan
  before its images are prepared (data/streamed.py)."""
  eligible = np.nonzero(np.asarray(counts) >= 2)[0]
  if eligible.size < identities_per_batch:
    raise DataError(   # named as the config field, as the other config errors are
        f"config.identities_per_batch (P) = {identities_per_batch} but only {eligible.size} of "
        f"{len(counts)} identities have >= 2 images: lower it, or train on more people")
  return eligible


class PKSampler:
  """Draws P identities (each with >= 2 images) x K images per step.

  Args:
    labels: (N,) identity of every dataset row.
    identities_per_batch: P (>= 2, so negatives exist).
    images_per_identity: K (>= 2, so positives exist).
    seed: the data-order seed.
  """

  def __init__(self, labels: np.ndarray, identities_per_batch: int, images_per_identity: int,
               seed: int):
    labels = np.asarray(labels)
    self.P, self.K, self.seed = int(identities_per_batch), int(images_per_identity), int(seed)
    if self.P < 2:
      raise ValueError(f"identities_per_batch (P) must be >= 2 to have negatives, got {self.P}")
    if self.K < 2:
      raise ValueError(f"images_per_identity (K) must be >= 2 to have positives, got {self.K}")
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = check_enough_identities(counts, self.P)
    # every identity's rows as one slice of one array (CSR): two flat arrays, not one array
    # object per identity, so millions of labels cost 16 bytes each and pickle cheaply to
    # the input pipeline's worker processes
    self._order = np.argsort(inverse, kind="stable")
    self._starts = np.r_[0, np.cumsum(counts)]
    self._ids, self._eligible = ids, eligible
    self.short_identities = int(np.sum(counts[eligible] < self.K))

  @property
  def batch_size(self) -> int:
    return self.P * self.K

  def __call__(self, step: int) -> Batch:
    rng = np.random.default_rng([self.seed, int(step)])
    chosen = rng.choice(self._eligible, self.P, replace=False)
    idx, mask = [], []
    for k in chosen:
      rows = self._order[self._starts[k]:self._starts[k + 1]]
      if rows.size >= self.K:
        idx.append(rng.choice(rows, self.K, replace=False))
        mask.append(np.ones(self.K, bool))
      else:
        pad = rng.choice(rows, self.K - rows.size, replace=True)
        idx.append(np.r_[rng.permutation(rows), pad])
        mask.append(np.r_[np.ones(rows.size, bool), np.zeros(pad.size, bool)])
    return Batch(indices=np.concatenate(idx).astype(np.int64),
                 labels=np.repeat(self._ids[chosen], self.K).astype(np.int32),
                 mask=np.concatenate(mask))
