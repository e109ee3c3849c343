"""Preparing a face dataset once: source images -> fitted array_record shards + index.

A *plan* lists every image of the source in record order (identities in natural order,
their images in natural order), with its label and where it comes from. Shard k holds
records [k * R, (k + 1) * R) of the plan; worker processes fit and encode one shard each
and rename it into place when it is whole, so

* a killed preparation resumes where it stopped: finished shards of the same plan are
  kept, the rest are written again (the bytes are a function of the plan: resuming gives
  the same shards as an uninterrupted run);
* two processes preparing the same dataset at once produce one dataset: an exclusive file
  lock beside the folder makes the second wait, then find it finished;
* a source file that cannot be used is a DataError naming it, and the half-written folder
  is removed (no later run reads a partial dataset).

``dataset.json`` is written last; a folder with it is finished (``records.is_prepared``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from facenet_jax.data import raw, records, recordio
from facenet_jax.data.images import Fit, fit_image
from infra.progress import Progress

PLAN = "plan.json"
RECORDS_PER_SHARD = 4096   # a killed preparation loses at most this many images per worker


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


def folder_plan(root: str) -> Plan:
  """The plan of ``root/<identity>/<image>`` (one listing; DataError for empty folders,
  links leading outside the root, see ``raw.list_identity_folder``)."""
  root = os.path.abspath(root)
  listing = raw.list_identity_folder(root)
  items = [f"{ident}/{n}" for ident, names in listing for n in names]
  labels = np.repeat(np.arange(len(listing), dtype=np.int32), [len(n) for _, n in listing])
  return Plan("folder", root, items, labels, [ident for ident, _ in listing],
              raw.folder_fingerprint(root, listing))


def recordio_plan(rec_path: str) -> Plan:
  """The plan of an insightface ``train.rec`` (+ ``train.idx`` beside it): image records
  grouped by their label, in key order within a label (``recordio.image_records``)."""
  rec_path = os.path.abspath(rec_path)
  offsets, labels = recordio.image_records(rec_path)
  order = np.lexsort((np.arange(labels.size), labels))
  ids, dense = np.unique(labels[order], return_inverse=True)
  st = os.stat(rec_path)
  fp = hashlib.sha1(f"{rec_path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
  return Plan("recordio", rec_path, [int(o) for o in offsets[order]], dense.astype(np.int32),
              [str(int(i)) for i in ids], fp)


def prepared_name(plan: Plan, fit: Fit, encoding: str) -> str:
  """The folder name of ``plan`` prepared at ``fit``: a new name for new contents or fit."""
  return (f"{plan.kind}_{plan.fingerprint}_{fit.size}px_crop{fit.crop}_{fit.channels}ch_"
          f"{encoding}")


# ---------------------------------------------------------------------------- one shard

def _source_bytes(kind: str, root: str, item, rec_file) -> tuple[bytes, str]:
  if kind == "folder":
    path = os.path.join(root, item)
    return raw.read_file(path), path
  where = f"{root} at byte {item}"
  return recordio.read_image(rec_file, int(item), where), where


def write_shard(task: tuple) -> int:
  """Fits and encodes one shard's images and renames the shard into place when whole.
  ``task``: (kind, root, items, fit, encoding, quality, final path). Runs in a worker
  process; returns the number of images written."""
  kind, root, items, fit, encoding, quality, final = task
  from array_record.python import array_record_module   # lazy: C++ extension
  tmp = f"{final}.tmp{os.getpid()}"
  mode = "L" if fit.channels == 1 else "RGB"
  # group_size:1: each record is its own chunk, so a random read decodes one record
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  with contextlib.ExitStack() as stack:
    rec_file = stack.enter_context(open(root, "rb")) if kind == "recordio" else None
    try:
      for item in items:
        data, where = _source_bytes(kind, root, item, rec_file)
        image = fit_image(raw.decode_image(data, where, mode), fit, where)
        writer.write(records.encode(image, encoding, quality))
    finally:
      writer.close()
  os.replace(tmp, final)
  return len(items)


# ------------------------------------------------------------------------- the folder

def plan_record(plan: Plan, fit: Fit, encoding: str, quality: int, per_shard: int) -> dict:
  return {"format_version": records.FORMAT_VERSION, "kind": plan.kind, "root": plan.root,
          "fingerprint": plan.fingerprint, "num_records": len(plan),
          "num_identities": len(plan.identities), "records_per_shard": per_shard,
          "fit": dataclasses.asdict(fit), "encoding": encoding, "quality": int(quality)}


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
    f.writelines(f"{plan.root}/{i}\n" if plan.kind == "folder" else f"{plan.root}@{i}\n"
                 for i in plan.items)
  tmp = os.path.join(path, records.META + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(path, records.META))   # last: the folder is now finished


def _run_shards(tasks: list[tuple], total: int, done: int, workers: int) -> None:
  """Writes the shards of ``tasks`` over ``workers`` processes with a progress line."""
  progress = Progress(total, done, unit="images", what="images", stream=sys.stderr)
  progress.mark_compiled(done)
  last = 0.0
  # spawn, not fork: the caller may hold JAX's threads, which a fork would copy mid-state
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
    results = pool.imap_unordered(write_shard, tasks) if pool else map(write_shard, tasks)
    for n in results:
      done += n
      if time.monotonic() - last > 2.0 or done == total:
        last = time.monotonic()
        progress.report(done)


def prepare(plan: Plan, out_dir: str, fit: Fit, *, encoding: str = "jpeg", quality: int = 95,
            workers: int = 0, records_per_shard: int = RECORDS_PER_SHARD) -> str:
  """Prepares ``plan`` into ``out_dir/prepared_name(...)`` unless it is there; returns
  that folder. Resumes a killed preparation; waits for another process preparing it.

  ``workers``: processes fitting and encoding (0: every CPU core).
  """
  if encoding not in records.ENCODINGS:
    raise ValueError(f"encoding {encoding!r}: expected one of {records.ENCODINGS}")
  if len(plan) == 0:
    raise raw.DataError(f"{plan.root}: no images to prepare")
  path = os.path.join(out_dir, prepared_name(plan, fit, encoding))
  os.makedirs(out_dir, exist_ok=True)
  with open(path + ".lock", "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process preparing {path}", file=sys.stderr, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)
    if records.is_prepared(path):
      return path
    want = plan_record(plan, fit, encoding, quality, records_per_shard)
    _start(path, want)
    n = -(-len(plan) // records_per_shard)
    shards = [records.shard_name(k, n) for k in range(n)]
    tasks, done = [], 0
    for k, name in enumerate(shards):
      lo, hi = k * records_per_shard, min(len(plan), (k + 1) * records_per_shard)
      if os.path.exists(os.path.join(path, name)):
        done += hi - lo
      else:
        tasks.append((plan.kind, plan.root, plan.items[lo:hi], fit, encoding, quality,
                      os.path.join(path, name)))
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    print(f"preparing {len(plan)} images of {len(plan.identities)} identities from {plan.root} "
          f"into {path} ({len(tasks)} of {n} shards to write, {workers} worker(s))",
          file=sys.stderr, flush=True)
    try:
      _run_shards(tasks, len(plan), done, workers)
    except raw.DataError:
      shutil.rmtree(path, ignore_errors=True)   # no partial dataset for a later run to read
      raise
    write_index(path, plan, {**want, "shards": shards})
  return path
