"""Training batches: this process's rows of the P x K global batch of step s, through grain.

The one input path of training. The sampler is a pure function of (seed, step) over the
labels alone, so a step's batch never depends on an earlier one: **the step is the whole
position of the input pipeline**. A run resumed from a checkpoint of step s asks for step
s next and gets the batch an uninterrupted run got there; nothing else needs saving.

Images are read with ``images[rows]`` (an in-memory ``np.ndarray``: ORL, LFW, Omniglot,
synthetic, ekg, volume) or ``images.read(rows)`` (``records.RecordImages``: a prepared
dataset decoded on demand). With ``workers`` > 0 the steps are produced by grain: a
``MapDataset`` over step numbers, mapped to decoded rows, spread over ``workers`` worker
processes (``mp_prefetch``, which keeps step order), each prefetching ``prefetch`` steps
ahead; on-device augmentation happens after, as before (``preprocess.py``).

A record that does not decode stops training with an error naming it and its source file,
or, with ``skip_bad``, becomes a masked-out row (excluded from every triplet) counted in
:attr:`TrainBatches.skipped`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from facenet_jax.sampler import PKSampler


def input_workers(requested: int, images: Any) -> int:
  """``config.data.workers``: -1 picks 0 for images already in memory (indexing them is
  cheaper than shipping them between processes) and min(4, cores - 1), at least 1, for
  images decoded on demand; other values are used as they are."""
  if requested >= 0:
    return int(requested)
  if isinstance(images, np.ndarray):
    return 0
  return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


@dataclasses.dataclass(frozen=True)
class StepRows:
  """``step -> {images, labels, mask, skipped}``: ``rows`` of the step's global batch, read
  and decoded. Picklable (it runs in grain's worker processes)."""
  images: Any
  sampler: PKSampler
  rows: slice
  skip_bad: bool = False

  def __call__(self, step: int) -> dict:
    b = self.sampler(int(step))
    idx = b.indices[self.rows]
    if hasattr(self.images, "read"):
      images, ok = self.images.read(idx, self.skip_bad)
    else:
      images, ok = self.images[idx], np.ones(idx.size, bool)
    return {"images": images, "labels": b.labels[self.rows], "mask": b.mask[self.rows] & ok,
            "skipped": np.int64(idx.size - ok.sum())}


class TrainBatches:
  """``batches(step, rows)``: ``{images, labels, mask}`` host arrays of ``rows`` of step
  ``step``'s global batch (see the module doc).

  Args:
    images: (N, ...) array, or an object with ``read(rows, skip_bad) -> (images, ok)``.
    sampler: the P x K sampler over the N labels.
    num_steps: the last step + 1 that will be asked for (grain's dataset length).
    workers: worker processes decoding ahead (0: read in the caller, on demand).
    prefetch: steps each worker prepares ahead.
    skip_bad: mask out undecodable records instead of raising.
  """

  def __init__(self, images: Any, sampler: PKSampler, num_steps: int, *, workers: int = 0,
               prefetch: int = 2, skip_bad: bool = False):
    self.images, self.sampler, self.num_steps = images, sampler, int(num_steps)
    self.workers, self.prefetch, self.skip_bad = int(workers), int(prefetch), bool(skip_bad)
    self.skipped = 0          # records masked out so far (skip_bad)
    self._iter, self._next, self._rows = None, -1, None

  def __call__(self, step: int, rows: slice = slice(None)) -> dict:
    step = int(step)
    if self.workers == 0 or step >= self.num_steps:
      out = StepRows(self.images, self.sampler, rows, self.skip_bad)(step)
    else:
      if self._iter is None or step != self._next or rows != self._rows:
        self._open(step, rows)   # a new run, a resume, or a jump: restart at this step
      out = next(self._iter)
      self._next = step + 1
    self.skipped += int(out.pop("skipped"))
    return out

  def _open(self, step: int, rows: slice) -> None:
    import grain   # lazy: in-memory sources never start worker processes
    from absl import flags

    # grain's worker start reads its own absl flags and raises when the program never
    # parsed any (pytest, a notebook): their defaults are what we want there. Under an
    # absl app (scripts/) flags are parsed and this does nothing.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    self.close()
    fn = StepRows(self.images, self.sampler, rows, self.skip_bad)
    ds = grain.MapDataset.range(step, self.num_steps).map(fn)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                     per_worker_buffer_size=self.prefetch))
    self._iter, self._next, self._rows = iter(it), step, rows

  def close(self) -> None:
    """Stops the worker processes (a later call starts them again)."""
    if self._iter is not None and hasattr(self._iter, "close"):
      self._iter.close()
    self._iter = None
