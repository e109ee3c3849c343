"""The downloaded archives (LFW's lfw.tgz, Omniglot's zips) read with the standard library:
tfds's extractor needs TensorFlow, and preparing must not.

Archives are untrusted input even when their SHA-256 is pinned (a manual_dir copy is not
checked, and a pin only says the file is the one we looked at). So no member may leave its
destination: absolute paths, drive letters, backslashes, NULs and ``..`` components are
refused, tar links (symbolic and hard), devices and fifos are refused, zip members marked as
symlinks are refused. A member declaring more than ``MAX_MEMBER_BYTES`` is refused before
any of it is read, and the bytes actually read are bounded by the same limit; a tar whose
members add up to more than ``MAX_TOTAL_BYTES`` is refused too. Every refusal is an
``ArchiveError`` naming the archive and the member.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from typing import BinaryIO

from facenet_jax.data import raw

# per member: the largest LFW JPEG is ~30 kB, the largest Omniglot PNG ~1 kB
MAX_MEMBER_BYTES = 64 << 20
# per extracted archive: lfw.tgz unpacks to ~180 MB
MAX_TOTAL_BYTES = 2 << 30
_CHUNK = 1 << 20


class ArchiveError(raw.DataError):
  """An archive member that is refused; the message names the archive and the member."""


def member_path(name: str, archive: str) -> str:
  """``name`` as a relative POSIX path that stays inside any destination folder, with ``.``
  parts and a trailing ``/`` dropped ("" for the archive root itself)."""
  if "\0" in name or "\\" in name:
    raise ArchiveError(f"{archive}: member {name!r}: a NUL or backslash in a member path is "
                       f"refused")
  if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
    raise ArchiveError(f"{archive}: member {name!r}: an absolute path is refused (it would be "
                       f"written outside the destination folder)")
  parts = [p for p in name.split("/") if p not in ("", ".")]
  if ".." in parts:
    raise ArchiveError(f"{archive}: member {name!r}: a '..' component is refused (it would be "
                       f"written outside the destination folder)")
  return "/".join(parts)


def _check_size(declared: int, archive: str, name: str) -> None:
  if declared > MAX_MEMBER_BYTES:
    raise ArchiveError(f"{archive}: member {name!r} declares {declared:,} bytes, more than the "
                       f"{MAX_MEMBER_BYTES:,}-byte limit per member (MAX_MEMBER_BYTES); refused "
                       f"before reading it")


def copy_bounded(src: BinaryIO, dst: BinaryIO, limit: int, where: str) -> int:
  """Copies ``src`` to ``dst`` in chunks, at most ``limit`` bytes (ArchiveError past that,
  whatever the member declared); returns the bytes copied."""
  n = 0
  while True:
    chunk = src.read(min(_CHUNK, limit + 1 - n))
    if not chunk:
      return n
    n += len(chunk)
    if n > limit:
      raise ArchiveError(f"{where}: inflates past the {limit:,}-byte limit per member "
                         f"(MAX_MEMBER_BYTES); refused")
    dst.write(chunk)


def _inside(root: str, path: str, archive: str, name: str) -> str:
  """``path`` if its real location is under ``root`` (a second guard behind member_path)."""
  real_root = os.path.realpath(root)
  if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
    raise ArchiveError(f"{archive}: member {name!r} would be written outside {root}; refused")
  return path


def _tar_member(tf: tarfile.TarFile, m: tarfile.TarInfo, root: str, archive: str) -> int:
  """Writes one tar member under ``root``; returns its size in bytes."""
  rel = member_path(m.name, archive)
  if m.issym() or m.islnk():
    raise ArchiveError(f"{archive}: member {m.name!r} is a {'symbolic' if m.issym() else 'hard'} "
                       f"link (to {m.linkname!r}); links are refused")
  if not (m.isdir() or m.isfile()):
    raise ArchiveError(f"{archive}: member {m.name!r} is not a regular file or folder "
                       f"(device, fifo or other special file); refused")
  target = _inside(root, os.path.join(root, rel), archive, m.name)
  if m.isdir():
    os.makedirs(target, exist_ok=True)
    return 0
  _check_size(m.size, archive, m.name)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  src = tf.extractfile(m)
  with src, open(target, "wb") as dst:
    return copy_bounded(src, dst, MAX_MEMBER_BYTES, f"{archive}: member {m.name!r}")


def _extract_tar_into(archive: str, root: str) -> None:
  """Streams every member of ``archive`` into the existing folder ``root``."""
  total = 0
  try:
    with tarfile.open(archive, "r:*") as tf:
      for m in tf:   # one member at a time: the archive is never listed or held whole
        total += _tar_member(tf, m, root, archive)
        if total > MAX_TOTAL_BYTES:
          raise ArchiveError(f"{archive}: members add up to more than the {MAX_TOTAL_BYTES:,}-byte "
                             f"limit per archive (MAX_TOTAL_BYTES); refused")
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise ArchiveError(
        f"{archive}: cannot extract as a tar archive ({type(e).__name__}: {e})") from e


def extract_tar(archive: str, dest: str) -> str:
  """Extracts ``archive`` (tar, optionally gzip/bz2/xz) into the folder ``dest`` and returns
  it; a ``dest`` that exists is an earlier complete extraction and is returned as is.

  Members go to a temporary sibling folder that is renamed to ``dest`` only when all of
  them were accepted, so a refused or interrupted extraction leaves no ``dest`` behind.
  """
  if os.path.isdir(dest):
    return dest
  parent = os.path.dirname(os.path.abspath(dest))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(dest) + ".tmp-", dir=parent)
  try:
    _extract_tar_into(archive, tmp)
    os.chmod(tmp, 0o755)   # mkdtemp's 0o700 would hide the data from other users of data_dir
    try:
      os.rename(tmp, dest)
    except OSError as e:
      if not os.path.isdir(dest):   # else a concurrent extraction finished first: use it
        raise ArchiveError(f"{archive}: extracted, but cannot rename {tmp} to {dest} "
                           f"({e.strerror or e})") from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dest


def _check_zip_member(info: zipfile.ZipInfo, archive: str) -> None:
  member_path(info.filename, archive)
  kind = stat.S_IFMT(info.external_attr >> 16)   # Unix mode bits; 0 when the zip has none
  if kind == stat.S_IFLNK:
    raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; links are refused")
  if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
    raise ArchiveError(f"{archive}: member {info.filename!r} is not a regular file or folder; "
                       f"refused")
  if not info.is_dir():
    _check_size(info.file_size, archive, info.filename)


def open_zip(archive: str) -> zipfile.ZipFile:
  """Opens ``archive`` after checking every member's path, type and declared size (see the
  module doc); read members with ``read_member``."""
  try:
    zf = zipfile.ZipFile(archive)
  except (OSError, zipfile.BadZipFile) as e:
    raise raw.DataError(f"{archive}: cannot open as a zip file ({e})") from e
  try:
    for info in zf.infolist():
      _check_zip_member(info, archive)
  except ArchiveError:
    zf.close()
    raise
  return zf


def read_member(zf: zipfile.ZipFile, name: str, archive: str) -> bytes:
  """The bytes of member ``name``, reading at most ``MAX_MEMBER_BYTES`` of them."""
  where = f"{archive}: member {name!r}"
  try:
    info = zf.getinfo(name)
    _check_size(info.file_size, archive, name)
    with zf.open(info) as f:
      data = f.read(MAX_MEMBER_BYTES + 1)
  except (KeyError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
          zlib.error) as e:
    raise raw.DataError(f"{where}: cannot read ({type(e).__name__}: {e})") from e
  if len(data) > MAX_MEMBER_BYTES:
    raise ArchiveError(f"{where}: inflates past the {MAX_MEMBER_BYTES:,}-byte limit per member "
                       f"(MAX_MEMBER_BYTES); refused")
  return data
