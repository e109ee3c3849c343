"""Training batches: this process's rows of the global batch of step s, through grain.

The one input path of training. A *rows-provider* maps a step to the dataset rows of that
step's global batch (a :class:`facenet_jax.sampler.Batch`): the P x K sampler (online
mining), the triplets of an offline re-score period (``offline.TripletRows``), or the
chunks of rows a re-score embeds (:class:`RowChunks`). The P x K sampler is a pure function
of (seed, step) over the labels alone, so a step's batch never depends on an earlier one:
**the step is the whole position of the input pipeline**. A run resumed from a checkpoint of
step s asks for step s next and gets the batch an uninterrupted run got there; nothing else
needs saving (offline selection saves its pool and selection beside it: ``offline.py``).

Images are read with ``images[rows]`` (an in-memory ``np.ndarray``: ORL, LFW, Omniglot,
synthetic, ekg, volume) or ``images.read(rows)`` (``records.RecordImages``: a prepared
dataset decoded on demand). With ``workers`` > 0 the steps are produced by grain: a
``MapDataset`` over step numbers, mapped to decoded rows, spread over ``workers`` worker
processes (``mp_prefetch``, which keeps step order), each prefetching ``prefetch`` steps
ahead; on-device augmentation happens after, as before (``preprocess.py``). A new
rows-provider (:meth:`TrainBatches.use`) starts the workers afresh: what they prepared
ahead was the old provider's.

grain hands worker outputs over in shared memory, unlinked when the array is garbage
collected, on a background thread; pending unlinks at exit are reported by Python as
``leaked shared_memory objects``. So each batch is copied out of shared memory on arrival
(the arrays given out are ordinary, private ones) and :meth:`TrainBatches.close` (also run
at exit) waits for the unlinks still pending.

A record that does not decode stops training with an error naming it and its source file,
or, with ``skip_bad``, becomes a masked-out row (excluded from every triplet) counted in
:attr:`TrainBatches.skipped`.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
from typing import Any, Callable

import numpy as np

from facenet_jax.sampler import Batch

RowsProvider = Callable[[int], Batch]   # step (or chunk) number -> rows of its global batch


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
class RowChunks:
  """``k -> Batch``: chunk k of ``rows`` (R,) in chunks of ``size``, the last one padded with
  repeats of its last row (``mask`` False), as ``steps.embed_all`` pads; ``labels`` (R,) are
  the rows' labels. ``len()`` chunks."""
  rows: np.ndarray
  labels: np.ndarray
  size: int

  def __len__(self) -> int:
    return -(-self.rows.size // self.size)

  def __call__(self, k: int) -> Batch:
    sl = slice(int(k) * self.size, (int(k) + 1) * self.size)
    idx, lab = self.rows[sl], self.labels[sl]
    pad = self.size - idx.size
    return Batch(indices=np.r_[idx, np.repeat(idx[-1:], pad)].astype(np.int64),
                 labels=np.r_[lab, np.repeat(lab[-1:], pad)],
                 mask=np.r_[np.ones(idx.size, bool), np.zeros(pad, bool)])


@dataclasses.dataclass(frozen=True)
class StepRows:
  """``step -> {images, labels, mask, skipped}``: ``rows`` of the step's global batch as
  ``sampler`` (any rows-provider) gives it, read and decoded. Picklable (it runs in grain's
  worker processes)."""
  images: Any
  sampler: RowsProvider
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


def private_copy(x: Any) -> Any:
  """``x`` itself, or for an array in grain's shared memory an ordinary copy (the shared
  block is then unlinked when grain's array is collected, at the latest in
  :func:`wait_for_shm_unlinks`)."""
  return np.array(x) if getattr(x, "shm", None) is not None else x


def wait_for_shm_unlinks() -> None:
  """Blocks until grain's background thread has unlinked every shared-memory block whose
  array was collected so far (its one thread runs requests in order: a no-op queued now
  finishes after them). Without it, blocks still pending at exit are reported as leaked."""
  from grain._src.python.ipc import shared_memory_array   # grain 0.2.x: no public hook
  pool = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
  if pool is not None:
    try:
      pool.apply(int)
    except ValueError:   # the pool was already shut down (interpreter exit)
      pass


class TrainBatches:
  """``batches(step, rows)``: ``{images, labels, mask}`` host arrays of ``rows`` of step
  ``step``'s global batch (see the module doc).

  Args:
    images: (N, ...) array, or an object with ``read(rows, skip_bad) -> (images, ok)``.
    sampler: the rows-provider: the P x K sampler over the N labels, or another
      ``step -> Batch`` (:meth:`use` changes it).
    num_steps: the last step + 1 that will be asked for (grain's dataset length).
    workers: worker processes decoding ahead (0: read in the caller, on demand).
    prefetch: steps each worker prepares ahead.
    skip_bad: mask out undecodable records instead of raising.
  """

  def __init__(self, images: Any, sampler: RowsProvider, num_steps: int, *, workers: int = 0,
               prefetch: int = 2, skip_bad: bool = False):
    self.images, self.sampler, self.num_steps = images, sampler, int(num_steps)
    self.workers, self.prefetch, self.skip_bad = int(workers), int(prefetch), bool(skip_bad)
    self.skipped = 0          # training rows masked out so far (skip_bad)
    self._iter, self._next, self._rows = None, -1, None

  def use(self, sampler: RowsProvider, num_steps: int) -> None:
    """Reads steps 0..``num_steps``-1 of ``sampler`` from now on (stops the workers: they
    were preparing the previous provider's steps; the next call starts them)."""
    self.close()
    self.sampler, self.num_steps = sampler, int(num_steps)

  def __call__(self, step: int, rows: slice = slice(None)) -> dict:
    """The training batch of ``step`` (its masked-out records counted in :attr:`skipped`)."""
    out = self.read(step, rows)
    self.skipped += int(out.pop("skipped"))
    return out

  def read(self, step: int, rows: slice = slice(None)) -> dict:
    """``{images, labels, mask, skipped}`` of ``rows`` of the provider's ``step`` (nothing
    counted: re-scoring reads through here)."""
    step = int(step)
    if self.workers == 0 or step >= self.num_steps:
      return StepRows(self.images, self.sampler, rows, self.skip_bad)(step)
    if self._iter is None or step != self._next or rows != self._rows:
      self._open(step, rows)   # a new run, a resume, or a jump: restart at this step
    out = {k: private_copy(v) for k, v in next(self._iter).items()}
    self._next = step + 1
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
    atexit.register(self.close)   # before interpreter teardown, which cannot unlink

  def close(self) -> None:
    """Stops the worker processes and waits until the shared memory of every batch they
    made is unlinked (a later call starts them again)."""
    if self._iter is None:
      return
    it, self._iter = self._iter, None
    atexit.unregister(self.close)
    if hasattr(it, "close"):
      it.close()
    del it            # the batches buffered ahead go with it...
    gc.collect()      # (an iterator read to its end keeps its last batch in a reference cycle)
    wait_for_shm_unlinks()   # ...and their blocks are unlinked before we return
