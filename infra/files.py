"""Small file helpers: atomic JSON writes, so a kill never leaves a half-written result, and
files' content hashes."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
import tempfile
from typing import Any, Iterator

from infra.errors import UserError


class InUseError(UserError, OSError):
  """A run directory another process is working in (:func:`hold_lock`)."""

  def __str__(self) -> str:   # the message, without OSError's "[Errno 16] " before it
    return self.strerror


@contextlib.contextmanager
def hold_lock(directory: str, what: str, enabled: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on ``directory/.lock`` inside the ``with`` (the process's death
  releases it too; ``enabled`` False: nothing, for the processes of a run that do not write).
  Raises InUseError naming ``what`` when another process holds it: two runs in one directory
  removed each other's checkpoints while they were being written (Orbax cleans up unfinished
  checkpoints when it opens them), and both appended to one log."""
  if not enabled:
    yield
    return
  import fcntl
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, LOCK_FILE), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise InUseError(errno.EBUSY, f"{what} {directory} is in use: another process is running "
                       f"there (it holds {os.path.join(directory, LOCK_FILE)}); wait for it to "
                       "end, or use another one") from None
    yield


LOCK_FILE = ".lock"


@contextlib.contextmanager
def waiting_lock(path: str) -> Iterator[None]:
  """Holds an exclusive lock on the file ``path`` inside the ``with``, waiting for any other
  holder (processes that read, change and write one shared file take turns). A file system
  without locks (ENOLCK, EOPNOTSUPP) runs the block unlocked, as before locks were taken."""
  import fcntl
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
        raise
    yield


class WriteError(UserError, OSError):
  """A result file that could not be written (names the file; the old version is kept)."""

  def __str__(self) -> str:
    return self.strerror


def check_directory(path: str, what: str) -> None:
  """Raises WriteError naming ``what`` (e.g. "workdir") when ``path`` exists but is not a
  directory (a file, a device), or is a directory this process cannot write to: checked
  before anything is created under it."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise WriteError(errno.ENOTDIR, f"{what} {path} is a file, not a directory; expected a new "
                     f"path or a folder this program wrote")
  if os.path.isdir(path):   # a probe file, not os.access: root without capabilities, ACLs
    try:
      fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
      os.close(fd)
      os.remove(probe)
    except OSError as e:
      raise WriteError(e.errno, f"{what} {path} is not writable ({e.strerror or e}); nothing "
                       f"in it was changed") from e


def temp_beside(path: str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
  """``(fd, name)`` of a new temporary file in ``path``'s folder, to be renamed onto ``path``,
  with the permissions ``path`` has, or for a new file those of ``open()`` (0o666 less the
  umask). mkstemp's own 0600 made results.json, config.json, galleries and the weights cache
  unreadable to the other users of a shared run or cache folder, unlike every other file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=prefix,
                             suffix=suffix)
  try:
    os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path)
             else 0o666 & ~_umask())
  except BaseException:
    os.close(fd)
    os.remove(tmp)
    raise
  return fd, tmp


@contextlib.contextmanager
def replacing(path: str, suffix: str = "", prefix: str = ".tmp-") -> Iterator[str]:
  """``with replacing(path, ".npz") as tmp:`` write the file ``tmp`` (beside ``path``, with
  :func:`temp_beside`'s permissions); on leaving the block it is synced and renamed onto
  ``path`` in one step, so a kill leaves the previous file or none, never a torn one. On an
  error ``tmp`` is removed and ``path`` left as it was."""
  fd, tmp = temp_beside(path, prefix=prefix, suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0o022)   # the only way to read it is to set it
  os.umask(mask)
  return mask


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` via a temporary file and an atomic rename."""
  # the text first, before touching disk: an object that cannot be written leaves no file
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_default))


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temporary file and an atomic rename: a kill leaves the
  previous file or none, never a torn one."""
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    with replacing(path, ".json") as tmp, open(tmp, "w") as f:
      f.write(text)
  except OSError as e:
    kept = "the previous version is unchanged" if os.path.exists(path) else "nothing was written"
    raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e} ({kept}); is "
                     f"{directory} writable and the disk not full?") from e


def _default(x):
  import numpy as np
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def stat_signature(st: os.stat_result) -> str:
  """What says a file was not touched since it was last read: size, modification time, and
  inode and status-change time. The last two because a file replaced with the old size and
  mtime kept (``cp -p``, ``rsync -a``, ``touch -r``) still gets a new ctime (no call sets
  it) and mostly a new inode; size and mtime alone kept the old file's hash."""
  return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}"


def file_sha256(path: str) -> str:
  """SHA-256 hex digest of a file's bytes, read in 4 MiB blocks; hashed once per process
  while its path and :func:`stat_signature` stay the same (a rewritten file is hashed again)."""
  return _sha256_of(os.path.abspath(path), stat_signature(os.stat(path)))


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, signature: str) -> str:
  del signature   # the cache key only
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()
