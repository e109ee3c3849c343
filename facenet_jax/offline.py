"""Offline hard-triplet selection (FaceNet sec. 3.2, "generate triplets offline").

Every ``rescore_every`` steps a pool of candidate triplets is drawn and scored with the
current model; the ones that already satisfy the margin, d(a,n) >= d(a,p) + alpha, stop
being fed and training batches are drawn from the violating ones until the next
re-score.

The images of both go through the one input path (``data/batches.py``): a re-score embeds
its pool rows chunk by chunk (``batches.RowChunks``) and the steps of a period read their
triplets' rows (:class:`TripletRows`), both with the run's ``TrainBatches`` (its grain
workers decode prepared records ahead, each process reading only its rows). The batch of a
step depends on the selection, which depends on the model at the re-score, so prefetching
runs within one period: each re-score starts the workers afresh.

A record that does not decode stops the run with its name and source file, whether the
re-score or a step reads it; with ``data.skip_corrupt`` the re-score embeds it as a black
image and the steps mask its row, which leaves its triplet out of the loss
(``steps.make_objective``); ``skipped_records`` counts the masked training rows.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from facenet_jax.sampler import Batch


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


@dataclasses.dataclass(frozen=True)
class TripletRows:
  """``step -> Batch``: the rows of the offline batch of ``step`` (its ``count`` triplets
  :func:`draw` n from ``selected`` (S, 3), or ``pool`` (T, 3) if none: anchors, then
  positives, then negatives), their ``labels`` (N,)[rows] and ``mask`` all True. A
  rows-provider of ``batches.TrainBatches`` like the P x K sampler; picklable."""
  selected: np.ndarray
  pool: np.ndarray
  labels: np.ndarray
  count: int
  seed: int

  def __call__(self, step: int) -> Batch:
    rows = draw(self.selected, self.pool, self.count, self.seed, int(step)).T.reshape(-1)
    return Batch(indices=rows, labels=self.labels[rows], mask=np.ones(rows.shape[0], bool))


class OfflineBatches:
  """The training batches of offline selection: the re-scored pool, the triplets still
  violating the margin, and the batch of each step (anchors, then positives, then negatives).

  ``embed_rows(state, rows) -> (len(rows), D)`` embeds training rows with the current model.
  Images are read by ``loader`` (the run's ``batches.TrainBatches``, whose rows-provider this
  switches to each period's :class:`TripletRows`; ``embed_rows`` may read through it too).
  The pool and the selection are saved with every checkpoint (:meth:`meta`) and restored from
  it, so a resumed run feeds the same batches.
  """

  def __init__(self, offline, labels: np.ndarray, loader, margin: float, seed: int,
               meta: dict, num_steps: int):
    self.cfg, self.labels, self.loader = offline, labels, loader
    self.margin, self.seed, self.num_steps = margin, seed, int(num_steps)
    self.pool = np.asarray(meta.get("offline_pool", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    self.selected = np.asarray(meta.get("offline_selected", np.zeros((0, 3))),
                               np.int64).reshape(-1, 3)
    self.rows = None   # the TripletRows of the current period

  def rescore(self, step: int, embed_rows, state) -> None:
    self.pool = sample_pool(self.labels, self.cfg.pool_size, self.seed,
                            step // self.cfg.rescore_every)
    rows = np.unique(self.pool)
    emb = embed_rows(state, rows)
    full = np.zeros((len(self.labels), emb.shape[1]), np.float32)
    full[rows] = emb
    self.selected = violating(self.pool, full, self.margin)
    self.rows = None
    if jax.process_index() == 0:   # what the next steps train on, said where it is decided
      n, k = self.pool.shape[0], self.selected.shape[0]
      fed = ("the whole pool: none violates" if not k else
             f"drawn with repeats: fewer than {self.cfg.triplets_per_batch} a step"
             if k < self.cfg.triplets_per_batch else "those")
      print(f"offline re-score at step {step}: {k} of {n} pool triplets violate the margin "
            f"{self.margin:g} (eval-mode embeddings); fed: {fed}", flush=True)

  def period(self, step: int, embed_rows, state) -> tuple[TripletRows, int]:
    """``(rows-provider, stop)``: the triplet rows of steps ``step``..``stop``-1, the rest of
    ``step``'s re-score period (re-scoring first when it is due)."""
    every = self.cfg.rescore_every
    if step % every == 0 or self.pool.shape[0] == 0:
      self.rescore(step, embed_rows, state)
    if self.rows is None:   # a new selection, or the one restored from a checkpoint
      self.rows = TripletRows(self.selected, self.pool, self.labels,
                              self.cfg.triplets_per_batch, self.seed)
    return self.rows, min((step // every + 1) * every, self.num_steps)

  def batch(self, step: int, embed_rows, state, rows: slice = slice(None)) -> dict:
    """``{images, labels, mask}``: ``rows`` (default all) of the batch of ``step``."""
    provider, stop = self.period(step, embed_rows, state)
    if self.loader.sampler is not provider:   # a new period, or the re-score read through it
      self.loader.use(provider, stop)
    return self.loader(step, rows)

  def meta(self) -> dict:
    return {"offline_pool": self.pool.tolist(), "offline_selected": self.selected.tolist()}
