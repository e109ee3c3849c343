"""Preparing a face dataset once: source images -> fitted array_record shards + index.

A *plan* lists every image of the source in record order (identities in natural order,
their images in natural order), with its label and where it comes from. Shard k holds
records [k * R, (k + 1) * R) of the plan; worker processes fit and encode one shard each
and rename it into place when it is whole, so

* a killed preparation resumes where it stopped: finished shards of the same plan are
  kept, the rest are written again (the bytes are a function of the plan: resuming gives
  the same shards as an uninterrupted run);
* a worker process that dies (killed, out of memory) stops the preparation with a
  RuntimeError; the parent never waits for it;
* two processes preparing the same dataset at once produce one dataset: an exclusive file
  lock beside the folder makes the second wait, then find it finished;
* a source file that cannot be used is a DataError naming it, and the half-written folder
  is removed (no later run reads a partial dataset).

``dataset.json`` is written last; a folder with it is finished (``records.is_prepared``).
"""

from __future__ import annotations

from concurrent import futures
import contextlib
import dataclasses
import fcntl
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Callable

import numpy as np

from facenet_jax.data import aligned, fingerprint, raw, records, recordio
from facenet_jax.data.images import Fit, fit_image
from infra.progress import Progress

PLAN = "plan.json"
RECORDS_PER_SHARD = 4096   # a killed preparation loses at most this many images per worker
# environment variable: the pid of the process whose preparation workers these are
WORKER_OF = "FACENET_JAX_PREPARING_PARENT"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every image of a source in record order.

  ``kind``: "folder" (``items`` are paths relative to ``root``) or "recordio" (``items``
  are byte offsets into ``root``, the ``.rec`` file). ``labels``: (N,) int32, contiguous
  and non-decreasing; ``identities``: the name of each label; ``fingerprint``: changes
  whenever the source's contents do.
  """
  kind: str
  root: str
  items: list
  labels: np.ndarray
  identities: list[str]
  fingerprint: str

  def __len__(self) -> int:
    return len(self.items)


def folder_plan(root: str, memo_dir: str | None = None) -> Plan:
  """The plan of ``root/<identity>/<image>`` (one listing; DataError for empty folders,
  links leading outside the root, see ``raw.list_identity_folder``). Its fingerprint is the
  files' content key, memoized in ``memo_dir`` (``fingerprint.folder_key``)."""
  root = os.path.abspath(root)
  listing = raw.list_identity_folder(root)
  items = [f"{ident}/{n}" for ident, names in listing for n in names]
  labels = np.repeat(np.arange(len(listing), dtype=np.int32), [len(n) for _, n in listing])
  return Plan("folder", root, items, labels, [ident for ident, _ in listing],
              fingerprint.folder_key(root, listing, memo_dir))


def recordio_plan(rec_path: str, memo_dir: str | None = None) -> Plan:
  """The plan of an insightface ``train.rec`` (+ ``train.idx`` beside it): image records
  grouped by their label, in key order within a label (``recordio.image_records``). Its
  fingerprint is the content key of the ``.rec`` and of the ``.idx`` together, memoized in
  ``memo_dir``: the ``.idx`` chooses which records are read and in what order, so an edited
  or reordered index is another dataset (its detections too) even with the ``.rec`` unchanged."""
  rec_path = os.path.abspath(rec_path)
  offsets, labels = recordio.image_records(rec_path)
  order = np.lexsort((np.arange(labels.size), labels))
  ids, dense = np.unique(labels[order], return_inverse=True)
  keys = [fingerprint.file_key(p, memo_dir) for p in (rec_path, recordio.index_path(rec_path))]
  return Plan("recordio", rec_path, [int(o) for o in offsets[order]], dense.astype(np.int32),
              [str(int(i)) for i in ids], fingerprint.combined(keys))


def shared_plan(make: Callable[[], Plan], timeout_s: float, what: str) -> Plan:
  """``make()``, run by process 0 first while the others wait (at most ``timeout_s``): the
  source's content key is read once and memoized, and the other processes find it in the
  memo (on a shared filesystem) instead of reading every byte again."""
  from infra import distributed   # lazy: shard workers import this module and need no jax
  plan = distributed.run_on_process_zero_then_barrier(make, timeout_s, what)
  return make() if plan is None else plan


def prepared_name(plan: Plan, fit: Fit, encoding: str,
                  alignment: aligned.Alignment | None = None) -> str:
  """The folder name of ``plan`` prepared at ``fit``: a new name for new contents or fit, and
  for every alignment setting (``_align-<key>``; nothing is added without alignment)."""
  name = f"{plan.kind}_{plan.fingerprint}_{fit.size}px_crop{fit.crop}_{fit.channels}ch_{encoding}"
  return name if alignment is None else f"{name}_align-{alignment.key()}"


def load_rgb(plan: Plan, k: int, rec_file=None) -> np.ndarray:
  """Item ``k`` of ``plan`` decoded as (H, W, 3) uint8 RGB (DataError naming a bad file)."""
  data, where = _source_bytes(plan.kind, plan.root, plan.items[k], rec_file)
  return np.asarray(raw.decode_image(data, where, "RGB").convert("RGB"), np.uint8)


def source_names(plan: Plan) -> list[str]:
  """Where each item of ``plan`` comes from, as ``sources.txt`` lists them."""
  return [f"{plan.root}/{i}" if plan.kind == "folder" else f"{plan.root}@{i}" for i in plan.items]


def detections(plan: Plan, out_dir: str, alignment: aligned.Alignment) -> aligned.Detections:
  """Every face of every image of ``plan`` (``aligned.detect_all``), cached under
  ``out_dir/detections/<kind>_<fingerprint>_mtcnn-<detection key>``."""
  folder = os.path.join(out_dir, "detections",
                        f"{plan.kind}_{plan.fingerprint}_mtcnn-{alignment.detection_key()}")
  with contextlib.ExitStack() as stack:
    rec_file = stack.enter_context(open(plan.root, "rb")) if plan.kind == "recordio" else None
    return aligned.detect_all(len(plan), lambda k: load_rgb(plan, k, rec_file), alignment, folder,
                              what=f"images of {plan.root}")


# ---------------------------------------------------------------------------- one shard

def _source_bytes(kind: str, root: str, item, rec_file) -> tuple[bytes, str]:
  if kind == "folder":
    path = os.path.join(root, item)
    return raw.read_file(path), path
  where = f"{root} at byte {item}"
  return recordio.read_image(rec_file, int(item), where), where


def write_shard(task: tuple) -> int:
  """Fits and encodes one shard's images and renames the shard into place when whole.
  ``task``: (kind, root, items, fit, encoding, quality, final path[, alignment]), where
  ``alignment`` is (template, landmarks per item: (5, 2) or None for no face). Runs in a
  worker process; returns the number of images written.

  Aligned: an item's face is warped onto the template (``aligned.aligned_crop``) and that
  crop resized to ``fit.size`` (``aligned.fit_aligned``: no center crop); an item without
  landmarks is fitted as without alignment (``fit``, its center crop included)."""
  kind, root, items, fit, encoding, quality, final = task[:7]
  template, lms = task[7] if len(task) > 7 and task[7] is not None else (None, [None] * len(items))
  from array_record.python import array_record_module   # lazy: C++ extension
  tmp = f"{final}.tmp{os.getpid()}"
  mode = "L" if fit.channels == 1 else "RGB"
  # group_size:1: each record is its own chunk, so a random read decodes one record
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  with contextlib.ExitStack() as stack:
    rec_file = stack.enter_context(open(root, "rb")) if kind == "recordio" else None
    try:
      for item, lm in zip(items, lms):
        data, where = _source_bytes(kind, root, item, rec_file)
        if lm is None:
          image = fit_image(raw.decode_image(data, where, mode), fit, where)
        else:
          rgb = np.asarray(raw.decode_image(data, where, "RGB").convert("RGB"), np.uint8)
          image = aligned.fit_aligned(aligned.aligned_crop(rgb, lm, template), fit, where)
        writer.write(records.encode(image, encoding, quality))
    finally:
      writer.close()
  os.replace(tmp, final)
  return len(items)


# ------------------------------------------------------------------------- the folder

def plan_record(plan: Plan, fit: Fit, encoding: str, quality: int, per_shard: int,
                alignment: aligned.Alignment | None = None) -> dict:
  want = {"format_version": records.FORMAT_VERSION, "kind": plan.kind, "root": plan.root,
          "fingerprint": plan.fingerprint, "num_records": len(plan),
          "num_identities": len(plan.identities), "records_per_shard": per_shard,
          "fit": dataclasses.asdict(fit), "encoding": encoding, "quality": int(quality)}
  if alignment is not None:   # without alignment the record is exactly what it always was
    want["align"] = alignment.record()
  return want


def without(plan: Plan, drop: list[int]) -> Plan:
  """``plan`` less the items ``drop``; a person left with no image leaves too (labels are
  made contiguous again). The fingerprint stays the source's."""
  if not drop:
    return plan
  keep = np.setdiff1d(np.arange(len(plan)), np.asarray(drop, np.int64))
  old = plan.labels[keep]
  ids, dense = np.unique(old, return_inverse=True)
  return Plan(plan.kind, plan.root, [plan.items[k] for k in keep], dense.astype(np.int32),
              [plan.identities[i] for i in ids], plan.fingerprint)


def _start(path: str, want: dict) -> None:
  """Keeps ``path``'s finished shards when they were written for the same plan; otherwise
  (a new plan, or no folder) starts it empty."""
  try:
    with open(os.path.join(path, PLAN), encoding="utf-8") as f:
      same = json.load(f) == want
  except (OSError, ValueError):
    same = False
  if not same:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    with open(os.path.join(path, PLAN), "w", encoding="utf-8") as f:
      json.dump(want, f)
  for name in os.listdir(path):   # shards a killed worker left half-written
    if ".tmp" in name:
      os.remove(os.path.join(path, name))


def write_index(path: str, plan: Plan, meta: dict) -> None:
  """Writes the index of ``plan`` into ``path`` (labels, identities, sources), then
  ``dataset.json`` = ``meta``, last: the folder is finished from then on."""
  np.save(os.path.join(path, records.LABELS), plan.labels.astype(np.int32), allow_pickle=False)
  with open(os.path.join(path, records.IDENTITIES), "w", encoding="utf-8") as f:
    f.writelines(f"{i}\n" for i in plan.identities)
  with open(os.path.join(path, records.SOURCES), "w", encoding="utf-8") as f:
    f.writelines(f"{src}\n" for src in source_names(plan))
  tmp = os.path.join(path, records.META + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(path, records.META))   # last: the folder is now finished


def _run_shards(tasks: list[tuple], total: int, done: int, workers: int) -> None:
  """Writes the shards of ``tasks`` over ``workers`` processes with a progress line. A worker
  that dies (killed, out of memory, or failing as it starts) is a RuntimeError here, not a
  wait without end; the shards already renamed into place are kept for the next run."""
  progress = Progress(total, done, unit="images", what="images", stream=sys.stderr)
  progress.mark_compiled(done)
  last = 0.0
  with contextlib.ExitStack() as stack:
    if workers > 1:
      stack.enter_context(_workers_know_their_parent())
      # spawn, not fork: the caller may hold JAX's threads, which a fork would copy mid-state;
      # an executor, not multiprocessing.Pool: a Pool replaces a dead worker and waits
      # forever for its shard, an executor breaks with BrokenProcessPool
      pool = stack.enter_context(futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_exit_with_parent, initargs=(os.getpid(),)))
      jobs = [pool.submit(write_shard, t) for t in tasks]
      stack.callback(lambda: [j.cancel() for j in jobs])   # an error: start no more shards
      results = (j.result() for j in futures.as_completed(jobs))
    else:
      results = map(write_shard, tasks)
    try:
      for n in results:
        done += n
        if time.monotonic() - last > 2.0 or done == total:
          last = time.monotonic()
          progress.report(done)
    except futures.BrokenExecutor:   # BrokenProcessPool
      raise RuntimeError(
          f"a preparation worker process died (its finished shards, at least {done} of "
          f"{total} images, are kept: run again to resume). Killed (out of memory?), or it failed as it "
          "started: spawned workers import the calling script, so its work must be under "
          "`if __name__ == '__main__':`") from None


def _exit_with_parent(parent: int) -> None:
  """A preparation worker's start: a thread that ends the worker once ``parent`` is gone. A
  parent killed outright (the OOM killer, kill -9) left its workers blocked for ever, and
  still writing queued shards into the folder a resumed run was preparing."""
  import threading

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)
  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


@contextlib.contextmanager
def _workers_know_their_parent():
  """Marks the processes started meanwhile as this process's preparation workers, so that a
  worker which re-runs an unguarded calling script refuses :func:`prepare` (see there)."""
  before = os.environ.get(WORKER_OF)
  os.environ[WORKER_OF] = str(os.getpid())
  try:
    yield
  finally:
    if before is None:
      os.environ.pop(WORKER_OF, None)
    else:
      os.environ[WORKER_OF] = before


def prepare(plan: Plan, out_dir: str, fit: Fit, *, encoding: str = "jpeg", quality: int = 95,
            workers: int = 0, records_per_shard: int = RECORDS_PER_SHARD,
            alignment: aligned.Alignment | None = None) -> str:
  """Prepares ``plan`` into ``out_dir/prepared_name(...)`` unless it is there; returns
  that folder. Resumes a killed preparation; waits for another process preparing it.

  ``workers``: processes fitting and encoding (0: every CPU core). ``alignment`` (see
  ``aligned.py``): faces are detected once (cached under ``out_dir/detections``), the picked
  face of each image is warped onto the template and stored; images without a face follow
  ``alignment.no_face`` and are listed in ``no_face.json`` / ``no_face.csv`` in the folder.
  """
  if os.environ.get(WORKER_OF) == str(os.getppid()):
    # a spawned worker imports the calling script; unguarded, the script calls prepare again
    # here, which would wait for the lock its own parent holds, and the parent for it
    raise RuntimeError("prepare() called in one of its own worker processes: the calling "
                       "script runs its work at import; put it under "
                       "`if __name__ == '__main__':`")
  if encoding not in records.ENCODINGS:
    raise ValueError(f"encoding {encoding!r}: expected one of {records.ENCODINGS}")
  if len(plan) == 0:
    raise raw.DataError(f"{plan.root}: no images to prepare")
  path = os.path.join(out_dir, prepared_name(plan, fit, encoding, alignment))
  os.makedirs(out_dir, exist_ok=True)
  with open(path + ".lock", "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process preparing {path}", file=sys.stderr, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)
    if records.is_prepared(path):
      return path
    lms, located, sources = None, None, None
    if alignment is not None:
      located = aligned.locate(detections(plan, out_dir, alignment), alignment.pick)
      sources = source_names(plan)
      _say_no_face(plan, located, alignment, path)
      if alignment.no_face == "drop":
        keep = np.setdiff1d(np.arange(len(plan)), np.asarray(located.no_face, np.int64))
        lms = [located.landmarks[k] for k in keep]
        plan = without(plan, located.no_face)
        if len(plan) == 0:
          raise raw.DataError(f"{plan.root}: no face found in any image; data.no_face='drop' "
                              "leaves nothing to prepare")
      else:
        lms = located.landmarks
    want = plan_record(plan, fit, encoding, quality, records_per_shard, alignment)
    _start(path, want)
    if located is not None:
      aligned.write_report(path, sources, located, alignment)
    n = -(-len(plan) // records_per_shard)
    shards = [records.shard_name(k, n) for k in range(n)]
    tasks, done = [], 0
    for k, name in enumerate(shards):
      lo, hi = k * records_per_shard, min(len(plan), (k + 1) * records_per_shard)
      if os.path.exists(os.path.join(path, name)):
        done += hi - lo
      else:
        task = (plan.kind, plan.root, plan.items[lo:hi], fit, encoding, quality,
                os.path.join(path, name))
        if lms is not None:
          task += ((alignment.template, lms[lo:hi]),)
        tasks.append(task)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    print(f"preparing {len(plan)} images of {len(plan.identities)} identities from {plan.root} "
          f"into {path} ({len(tasks)} of {n} shards to write, {workers} worker(s))",
          file=sys.stderr, flush=True)
    try:
      _run_shards(tasks, len(plan), done, workers)
    except raw.DataError:
      shutil.rmtree(path, ignore_errors=True)   # no partial dataset for a later run to read
      raise
    meta = {**want, "shards": shards}
    if located is not None:
      meta["align"] = {**meta["align"], "found": located.stats}
    write_index(path, plan, meta)
  return path


def _say_no_face(plan: Plan, located: aligned.Located, alignment: aligned.Alignment,
                 path: str) -> None:
  st = located.stats
  if st["images"] and not st["with_face"]:   # every image fell back: an unaligned dataset, exit 0
    raise raw.DataError(
        f"data.align='mtcnn': MTCNN found no face in any of the {st['images']} images of "
        f"{plan.root} (data.align_min_face={alignment.min_face_size:g} px); the run would train "
        f"on unaligned crops: lower data.align_min_face, check the photos, or use data.align='none'")
  what = ("fitted as the central crop instead (data.no_face='center_crop')"
          if alignment.no_face == "center_crop" else "dropped (data.no_face='drop')")
  print(f"aligned: a face in {st['with_face']} of {st['images']} images of {plan.root} "
        f"(several faces in {st['several_faces']}, picked by data.align_pick="
        f"{alignment.pick!r}); {st['no_face']} without a face are {what}, listed in "
        f"{os.path.join(path, aligned.REPORT_JSON)}", file=sys.stderr, flush=True)
