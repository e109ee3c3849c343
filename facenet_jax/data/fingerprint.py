"""Content keys of source data: the ``<fingerprint>`` in a prepared dataset's folder name.

A key changes when the source's bytes change, and only then. A copy of the same files with
new modification times (a dataset staged again, ``cp`` without ``-p``, a node's local copy)
names the same prepared dataset, so its face detection and shards are reused instead of
made again (aligned LFW: about 3 min and 0.6 GB each time). Knowing that means reading every
byte, so the content key is memoized under a stat key (names, sizes, modification times,
inodes and status-change times: ``infra.files.stat_signature``): a source whose files were not
touched since its key was memoized is not read again.

The memo is a cache: ``<memo_dir>/fingerprints/<kind>_<hash of the path>.json``, written
atomically; one that is missing, unreadable or for other stat keys is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from infra.files import file_sha256, stat_signature, write_json_atomic
from infra.progress import Progress

KEY_CHARS = 16                 # hex characters of a key in a folder name
MEMO_DIR = "fingerprints"

Listing = list[tuple[str, list[str]]]   # raw.list_identity_folder: (identity, file names)


def folder_stat_key(root: str, listing: Listing) -> str:
  """A hash of ``root``'s path and every listed file's name and stat signature."""
  h = hashlib.sha1(os.path.abspath(root).encode())
  for ident, names in listing:
    for n in names:
      st = os.stat(os.path.join(root, ident, n))
      h.update(f"{ident}/{n}\0{stat_signature(st)}\n".encode())
  return h.hexdigest()[:KEY_CHARS]


def folder_content_key(root: str, listing: Listing, with_path: bool = True) -> str:
  """SHA-256 of ``root``'s path (unless not ``with_path``) and, per listed file in order, its
  name, size and SHA-256."""
  h = hashlib.sha256((os.path.abspath(root) if with_path else "").encode() + b"\0")
  total = sum(len(names) for _, names in listing)
  progress, last, done = _progress(total, f"files of {root}"), time.monotonic(), 0
  first: dict[str, str] = {}   # digest -> identity/file that had it first
  shared = []                  # the same bytes under two identities
  for ident, names in listing:
    for n in names:
      with open(os.path.join(root, ident, n), "rb") as f:
        size, digest = os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()
      h.update(f"{ident}/{n}\0{size}\0{digest}\n".encode())
      other = first.setdefault(digest, f"{ident}/{n}")
      if other.rsplit("/", 1)[0] != ident:   # ident may be a path (tree_listing: images/Ann)
        shared.append((f"{ident}/{n}", other))
      done += 1
      if time.monotonic() - last > 10.0:
        last = time.monotonic()
        progress.report(done)
  if shared:   # label noise no error would show; large face sets have some, so a note
    print(f"note: {len(shared)} file(s) of {root} hold the same bytes as a file of another "
          f"identity (e.g. {shared[0][0]} = {shared[0][1]}); each is trained under its own label",
          file=sys.stderr, flush=True)
  return h.hexdigest()[:KEY_CHARS]


def file_stat_key(path: str) -> str:
  """A hash of ``path`` and its stat signature."""
  return hashlib.sha1(f"{os.path.abspath(path)}\0{stat_signature(os.stat(path))}".encode()
                      ).hexdigest()[:KEY_CHARS]


def file_content_key(path: str) -> str:
  """SHA-256 of ``path``'s absolute path, size and SHA-256."""
  size = os.stat(path).st_size
  print(f"fingerprinting {path} by content ({size / 2**30:.1f} GiB)", file=sys.stderr, flush=True)
  return hashlib.sha256(f"{os.path.abspath(path)}\0{size}\0{file_sha256(path)}".encode()
                        ).hexdigest()[:KEY_CHARS]


def memoized(kind: str, source: str, stat_key: str, content_key, memo_dir: str | None) -> str:
  """``content_key()``, or the key memoized in ``memo_dir`` for ``source`` at ``stat_key``;
  a newly computed key is memoized. ``memo_dir`` None: computed every time."""
  if memo_dir is None:
    return content_key()
  source = os.path.abspath(source)
  name = f"{kind}_{hashlib.sha1(source.encode()).hexdigest()[:KEY_CHARS]}.json"
  path = os.path.join(memo_dir, MEMO_DIR, name)
  try:
    with open(path, encoding="utf-8") as f:
      memo = json.load(f)
    if memo["source"] == source and memo["stat"] == stat_key:
      return str(memo["content"])
  except (OSError, ValueError, KeyError, TypeError):
    pass   # none yet, or unreadable: a cache, recomputed
  key = content_key()
  write_json_atomic(path, {"source": source, "stat": stat_key, "content": key})
  return key


def folder_key(root: str, listing: Listing, memo_dir: str | None) -> str:
  """The content key of the identity folder ``root`` (``listing`` its files)."""
  return memoized("folder", root, folder_stat_key(root, listing),
                  lambda: folder_content_key(root, listing), memo_dir)


def tree_listing(root: str) -> Listing:
  """Every file under ``root`` as (folder relative to ``root``, sorted file names), sorted.
  Linked folders are followed (``lfw/images -> /other/disk/lfw``, a common layout: not
  following it left every photo out of the key), each real folder once, so a link back up
  the tree does not loop."""
  out, seen = [], set()
  for d, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(d)
    if real in seen:
      dirs[:] = []
      continue
    seen.add(real)
    dirs.sort()
    if files:
      out.append((os.path.relpath(d, root), sorted(files)))
  return sorted(out)


def tree_key(root: str, memo_dir: str | None) -> str:
  """The content key of every file under ``root``, without ``root``'s own path: the same
  files copied elsewhere give the same key (a raw-file folder a prepared dataset came from)."""
  listing = tree_listing(root)
  return memoized("tree", root, folder_stat_key(root, listing),
                  lambda: folder_content_key(root, listing, with_path=False), memo_dir)


def file_key(path: str, memo_dir: str | None) -> str:
  """The content key of the single file ``path`` (a RecordIO ``.rec`` or ``.idx``)."""
  return memoized("file", path, file_stat_key(path), lambda: file_content_key(path), memo_dir)


def combined(keys: list[str]) -> str:
  """One key of several sources' keys, in order (a RecordIO ``.rec`` and its ``.idx``)."""
  return hashlib.sha256("\0".join(keys).encode()).hexdigest()[:KEY_CHARS]


def _progress(total: int, what: str) -> Progress:
  print(f"fingerprinting {total} {what} by content", file=sys.stderr, flush=True)
  p = Progress(total, 0, unit="files", what="fingerprinted", stream=sys.stderr)
  p.mark_compiled(0)
  return p
