"""Orbax checkpointing shared by training (facenet_jax) and pixel optimization (style_jax).

A checkpoint holds one pytree of arrays (``state``) and a small JSON dict (``meta``).
Orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact and no half-written step
is ever listed. Old steps beyond ``keep`` are first *renamed* into ``.trash/`` and only
then deleted, so a kill during the deletion cannot leave a half-deleted step listed
either. A save that fails (disk full, permissions) removes its temporary directory and
raises CheckpointError; the earlier steps are untouched.

Every checkpoint's meta records ``state_sha256``, the SHA-256 of its arrays (``state_digest``),
and restore/verify recompute it, so changed array bytes, arrays copied in from another step,
or a meta entry that lost the digest are all CheckpointErrors. The one legitimate exception
is a state whose arrays no process holds whole (sharded across hosts): its meta records
``UNVERIFIED`` instead, and restoring it (or restoring any checkpoint into arrays this process
does not hold whole) warns with ``UnverifiedCheckpointWarning``; it is never skipped silently.

The meta decides what a resumed run does (offline mining restores its triplets from it), so it
records ``meta_sha256`` too (``meta_digest``: the SHA-256 of its canonical JSON, every entry
but that one, ``state_sha256`` and ``step`` included): an edited or cut meta is a CheckpointError
naming the step, like a changed array byte. Checkpoints saved before metas were digested have
no ``meta_sha256`` and still restore, with an ``UnverifiedCheckpointWarning`` that says their
meta was not checked when the run continues from it (so deleting that entry by hand does not
pass silently either; read-only restores, which use only the arrays, do not warn); the run's
next save records it.

Fault injection (tests and ``tests/soak.py`` only; off by default): with
``$INFRA_CHECKPOINT_WRITE_DELAY=SECONDS`` every save prints
``checkpoint-write-window step=N seconds=S`` and sleeps S seconds in the middle of the
write (arrays written to the temporary directory, metadata not yet, nothing renamed),
so that a SIGKILL can be aimed inside the write.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from infra.errors import UserError


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be written or restored, with the path and the reason."""


class UnverifiedCheckpointWarning(UserWarning):
  """A checkpoint restored without checking its arrays against a SHA-256 (see module doc)."""


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_paths(tree: Any) -> dict[str, Any]:
  """Leaves by a '/'-joined path that reads the same for live pytrees and Orbax metadata."""
  return {"/".join(_key_name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


WRITE_DELAY_ENV = "INFRA_CHECKPOINT_WRITE_DELAY"
TRASH = ".trash"


def _write_delay() -> float:
  v = os.environ.get(WRITE_DELAY_ENV, "")
  try:
    return float(v) if v else 0.0
  except ValueError:
    raise ValueError(f"${WRITE_DELAY_ENV}={v!r}: expected seconds (a number)") from None


def _meta_handler() -> ocp.JsonCheckpointHandler:
  """The JSON ``meta`` item's handler; under $INFRA_CHECKPOINT_WRITE_DELAY it widens the
  write window. (Orbax maps save args to handler *classes*, so the delay wraps this
  instance's method instead of subclassing.)"""
  handler = ocp.JsonCheckpointHandler()
  handler.fault_step = -1
  inner = handler.async_save

  async def async_save(directory, *args, **kwargs):
    delay = _write_delay()
    if delay > 0:   # the state arrays are in the temporary directory; nothing is renamed yet
      print(f"checkpoint-write-window step={handler.fault_step} seconds={delay}", flush=True)
      time.sleep(delay)
    return await inner(directory, *args, **kwargs)

  handler.async_save = async_save
  return handler


DIGEST_KEY = "state_sha256"
# recorded in place of a digest when state_digest cannot compute one at save time; a meta
# without DIGEST_KEY at all is an error, so deleting the key cannot turn verification off
UNVERIFIED = "unverified: arrays sharded across processes when saved"
_HEX64 = re.compile(r"[0-9a-f]{64}")
META_DIGEST_KEY = "meta_sha256"
_NONE = object()   # no META_DIGEST_KEY in a meta (a JSON null there is a wrong digest)


def meta_digest(meta: dict) -> str:
  """SHA-256 of ``meta`` without its META_DIGEST_KEY, as canonical JSON (sorted keys, no
  spaces) after one JSON round trip, so the dict a save hands to Orbax (tuples, int keys) and
  the one a restore reads back from its file give the same digest."""
  rest = json.loads(json.dumps({k: v for k, v in meta.items() if k != META_DIGEST_KEY}))
  return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
                        ).hexdigest()


def state_digest(tree: Any) -> str | None:
  """SHA-256 over every leaf's path, dtype, shape and bytes (None if some leaf is not held
  whole by this process, e.g. a sharded multi-host array)."""
  h = hashlib.sha256()
  for key, leaf in sorted(_leaf_paths(tree).items()):
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      if leaf.is_fully_addressable:
        leaf = np.asarray(leaf)
      elif leaf.is_fully_replicated:
        leaf = np.asarray(leaf.addressable_data(0))
      else:
        return None
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _read_only_notice(record: logging.LogRecord) -> bool:
  """Drops orbax's "Given directory is read only=..." warning, which it logs for every
  read-only manager: here that is the restore-only mode (evaluate, recognize), not a
  read-only folder on disk, and the line read as one to users."""
  return not str(record.msg).startswith("Given directory is read only")


class Checkpointer:
  """Saves every ``every`` steps (and on request), keeps the last ``keep``.

  Args:
    directory: where step subdirectories go (created if missing).
    every: save when ``step % every == 0`` (``force=True`` saves regardless).
    keep: how many of the most recent checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3,
               read_only: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    self.read_only = bool(read_only)
    if read_only:
      if not os.path.isdir(self.directory):
        raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
    else:
      try:
        os.makedirs(self.directory, exist_ok=True)
      except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {self.directory}: "
                              f"{e.strerror or e}") from e
      if not _writable(self.directory):
        raise CheckpointError(
            f"checkpoint directory {self.directory} is not writable; the checkpoints already "
            f"in it ({_listed_steps(self.directory)}) are untouched (to evaluate them, restore "
            f"read-only)")
    self.every = int(every)
    self._meta_handler = _meta_handler()
    absl_log = logging.getLogger("absl")
    absl_log.addFilter(_read_only_notice)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None if read_only else keep,   # orbax warns when read_only has
              save_interval_steps=0 if read_only else 1,   # either of these
              create=not read_only, cleanup_tmp_directories=not read_only,
              enable_async_checkpointing=False, read_only=read_only,
              todelete_subdir=None if read_only else TRASH),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": self._meta_handler})
    finally:
      absl_log.removeFilter(_read_only_notice)
    if not read_only:
      self._empty_trash()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict | None = None, *, force: bool = False) -> bool:
    """Writes ``state`` at ``step`` if due (or ``force``); returns whether it saved."""
    if not force and step % self.every:
      return False
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; step {step} not saved")
    if step in self._manager.all_steps():
      return False
    self._meta_handler.fault_step = int(step)
    meta = dict(meta or {}, step=int(step))
    digest = state_digest(state)   # restore checks it: bit rot inside array data is caught too
    meta[DIGEST_KEY] = UNVERIFIED if digest is None else digest
    meta[META_DIGEST_KEY] = meta_digest(meta)   # last: it covers every other entry
    try:
      saved = self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # disk full, permissions, ...: the older steps are untouched
      self._remove_partial(step)
      why = getattr(e, "strerror", None) or str(e)
      raise CheckpointError(
          f"saving step {step} to {self.directory} failed ({type(e).__name__}: {why}); "
          f"the partial write was removed and the earlier checkpoints {self.all_steps()} are "
          f"intact: free space / fix permissions and run again to resume from "
          f"{self.latest_step()}") from e
    self._empty_trash()
    return bool(saved)

  def _remove_partial(self, step: int) -> None:
    """Deletes the temporary directory of a failed save of ``step`` (never a finished step)."""
    try:
      self._manager.wait_until_finished()
    except Exception:   # the failure being reported
      pass
    pattern = os.path.join(glob.escape(self.directory), f"{step}.orbax-checkpoint-tmp*")
    # writes of the other items may still be in flight (tensorstore's own threads) and
    # recreate files for a moment: remove until the directory stays gone
    quiet = 0
    for _ in range(50):
      tmps = glob.glob(pattern)
      for tmp in tmps:
        shutil.rmtree(tmp, ignore_errors=True)
      quiet = 0 if tmps else quiet + 1
      if quiet >= 3:
        break
      time.sleep(0.1)
    self._manager.reload()

  def _empty_trash(self) -> None:
    shutil.rmtree(os.path.join(self.directory, TRASH), ignore_errors=True)

  def verify(self, step: int) -> None:
    """Reads every array of ``step`` back (no target structure needed); CheckpointError if not."""
    path = os.path.join(self.directory, str(step))
    self._check_files(step, path)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                        meta=ocp.args.JsonRestore()))
      meta = dict(restored.meta or {})
    except Exception as e:
      raise CheckpointError(f"checkpoint {path} is corrupt ({_reason(e)})") from e
    self._check_step(path, meta, step)
    self._check_digest(path, restored.state, meta, step)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores ``step`` (default latest) into the structure/shardings of ``abstract_state``.

    Returns ``(step, state, meta)``, or None when the directory holds no checkpoint.
    A checkpoint whose arrays do not match ``abstract_state`` raises CheckpointError
    naming the first differing leaf.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step))
    self._check_compatible(step, abstract_state, path)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {path} could not be restored ({_reason(e)}); it may be "
          f"corrupt: {self._earlier(step)}") from e
    meta = dict(restored.meta or {})
    self._check_step(path, meta, step)
    self._check_digest(path, restored.state, meta, step)
    return step, restored.state, meta

  def _check_files(self, step: int, path: str) -> None:
    """Every file the step's array database (OCDBT) points into exists and is long enough.

    Orbax reads the arrays concurrently; a missing or cut file fails one read while the
    others are still running, and those report "Event loop is closed" tracebacks at exit
    after an error message that quotes a whole tensorstore spec. Reading the tree nodes
    only (not the arrays) names the file first. Checkpoints without OCDBT are left to Orbax.
    """
    state = os.path.join(path, "state")
    if not os.path.isfile(os.path.join(state, "manifest.ocdbt")):
      return
    try:
      problem = _ocdbt_problem(state)
    except (ValueError, RuntimeError) as e:   # tensorstore's errors: a node that does not decode
      problem = f"its array index under {state} does not read ({str(e).split(':')[0]})"
    if problem:
      raise CheckpointError(f"checkpoint {path} is corrupt: {problem}; {self._earlier(step)}")

  def _earlier(self, step: int) -> str:
    """The advice every corrupt-checkpoint error ends with."""
    earlier = [s for s in self.all_steps() if s != step]
    if not earlier:   # nothing to fall back on: say so instead of "resume from ([])"
      return (f"it is this run's only checkpoint: move {self.directory} away to start the run "
              f"again (or restore the step from a copy)")
    return f"delete that step directory to resume from an earlier one ({earlier})"

  def _check_step(self, path: str, meta: dict, step: int) -> None:
    """A step folder whose meta names another step holds that step's files (copied over)."""
    said = meta.get("step")
    if type(said) is not int or said != step:   # bool is an int subclass; JSON true is no step
      raise CheckpointError(
          f"checkpoint {path} is corrupt: its meta (meta/metadata) says step {said!r}, expected "
          f"{step} (files copied in from another step?); {self._earlier(step)}")

  def _check_digest(self, path: str, state: Any, meta: dict, step: int) -> None:
    """Compares ``state`` with the SHA-256 in ``meta``, then ``meta`` with its own (both
    removed from ``meta``); a missing or malformed digest is an error, a recorded UNVERIFIED
    one or a meta saved before meta digests a warning (see module doc)."""
    recorded_meta = meta.pop(META_DIGEST_KEY, _NONE)
    if DIGEST_KEY not in meta:
      raise CheckpointError(
          f"checkpoint {path} is corrupt: its meta (meta/metadata) has no {DIGEST_KEY}, the "
          f"SHA-256 every save records, so its arrays cannot be verified (was the file edited?): "
          f"put the recorded digest back, or {self._earlier(step)}")
    want = meta[DIGEST_KEY]
    if want != UNVERIFIED and (not isinstance(want, str) or not _HEX64.fullmatch(want)):
      raise CheckpointError(
          f"checkpoint {path} is corrupt: its meta (meta/metadata) has {DIGEST_KEY} = "
          f"{str(want)[:80]!r}, expected 64 hex digits or {UNVERIFIED!r}; {self._earlier(step)}")
    if want == UNVERIFIED:
      warnings.warn(f"checkpoint {path}: restored unverified (no SHA-256: its arrays were "
                    f"sharded across processes when saved)", UnverifiedCheckpointWarning,
                    stacklevel=3)
    elif (got := state_digest(state)) is None:
      warnings.warn(f"checkpoint {path}: restored unverified (this process does not hold its "
                    f"arrays whole, so their SHA-256 cannot be recomputed here)",
                    UnverifiedCheckpointWarning, stacklevel=3)
    elif got != want:
      raise CheckpointError(
          f"checkpoint {path} is corrupt: its arrays do not match the SHA-256 recorded when "
          f"it was saved; {self._earlier(step)}")
    self._check_meta_digest(path, meta, recorded_meta, step)
    del meta[DIGEST_KEY]

  def _check_meta_digest(self, path: str, meta: dict, recorded: Any, step: int) -> None:
    """Compares ``meta`` (without its META_DIGEST_KEY, already removed as ``recorded``) with
    the SHA-256 recorded at save time. None recorded: a checkpoint saved before meta digests,
    accepted; a writable checkpointer (a run about to continue from this meta) warns, a
    read-only one (evaluate, recognize: they use the arrays, not the meta) does not, so
    reading a finished old run does not warn on every use."""
    if recorded is _NONE:
      if not self.read_only:
        warnings.warn(f"checkpoint {path}: its meta (meta/metadata) restored unverified (it has "
                      f"no {META_DIGEST_KEY}: saved before checkpoints recorded one)",
                      UnverifiedCheckpointWarning, stacklevel=4)
    elif recorded != meta_digest(meta):
      raise CheckpointError(
          f"checkpoint {path} is corrupt: its meta (meta/metadata) does not match the "
          f"{META_DIGEST_KEY} recorded when it was saved (was the file edited or cut?); "
          f"{self._earlier(step)}")

  def _check_compatible(self, step: int, abstract_state: Any, path: str) -> None:
    self._check_files(step, path)
    try:
      meta = self._manager.item_metadata(step)
      saved = meta["state"] if meta is not None else None
    except Exception as e:
      raise CheckpointError(f"checkpoint {path} has unreadable metadata ({_reason(e)}); it may "
                            f"be corrupt") from e
    if saved is None:
      raise CheckpointError(f"checkpoint {path} has no 'state' item; it may be corrupt")
    want, have = _leaf_paths(abstract_state), _leaf_paths(saved)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
      raise CheckpointError(
          f"checkpoint {path} does not match the model/state of this config: "
          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
          f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    for key, leaf in want.items():
      got = tuple(getattr(have[key], "shape", ()) or ())
      exp = tuple(np.shape(leaf))
      if got != exp:
        raise CheckpointError(
            f"checkpoint {path}: parameter {key} has shape {got} but this config expects {exp}")

  def close(self) -> None:
    self._manager.close()


def _reason(e: Exception) -> str:
  """``Type: message`` of an Orbax / tensorstore error, without the tensorstore spec or bound
  method dump they append (kilobytes of JSON on one line)."""
  text = re.split(r" See full TensorStore details| \[tensorstore_spec=", str(e))[0]
  text = " ".join(text.split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


_LOCATION = re.compile(r"(btreenode|value):([^:\s'\"]*):([^:\s'\"]+):(\d+):(\d+)")


def _location_strings(tree: Any):
  """The str leaves of a ``tensorstore.ocdbt.dump`` result, without the keys and inline values
  (array bytes and zarr metadata, which are data, not locations)."""
  if isinstance(tree, str):
    yield tree
  elif isinstance(tree, dict):
    for k, v in tree.items():
      if k not in ("key", "inline_value"):
        yield from _location_strings(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _location_strings(v)


def _ocdbt_problem(state_dir: str) -> str | None:
  """The first file that the OCDBT database in ``state_dir`` points into (``kind:base:file:
  offset:length`` locations of B-tree nodes and array values in ``tensorstore.ocdbt.dump``;
  a process's own database of a multi-process save is the base ``ocdbt.process_<i>/``) and that
  is missing or shorter than offset + length; None when all are there. Walks the tree from the
  manifest, checking each node's file before reading the node; array bytes are not read."""
  kv = ts.KvStore.open(f"file://{os.path.abspath(state_dir)}/").result()
  todo, seen = [ts.ocdbt.dump(kv).result()], set()
  while todo:
    found = (_LOCATION.fullmatch(t) for t in _location_strings(todo.pop()))
    for kind, base, rel, offset, length in (m.groups() for m in found if m):
      f, end = os.path.join(state_dir, base + rel), int(offset) + int(length)
      size = os.path.getsize(f) if os.path.isfile(f) else None
      if size is None or size < end:
        return (f"{f} is {'missing' if size is None else f'{size} bytes, expected >= {end}'} "
                f"(its arrays point into it)")
      node = f"{kind}:{base}:{rel}:{offset}:{length}"
      if kind == "btreenode" and node not in seen:
        seen.add(node)
        todo.append(ts.ocdbt.dump(kv, node).result())
  return None


def _listed_steps(directory: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _writable(directory: str) -> bool:
  """Whether a file can be created in ``directory`` (os.access is wrong for root and for
  read-only mounts, so try)."""
  probe = os.path.join(directory, f".write-probe-{os.getpid()}")
  try:
    with open(probe, "w"):
      pass
    os.remove(probe)
    return True
  except OSError:
    return False
