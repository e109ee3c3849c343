"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``), read without MXNet.

The documented binary layout (MXNet ``dmlc-core`` recordio and ``mx.recordio.pack``):

* ``train.idx``: text, one ``key<TAB>byte offset`` line per record.
* ``train.rec``: records, each ``uint32 magic 0xCED7230A``, ``uint32 lrec`` (upper 3 bits:
  continuation flag ``cflag``, lower 29: the part's length), the part's bytes, zero padding
  to a multiple of 4. A record whose bytes contain the magic number is split into parts
  (cflag 1 = first, 2 = middle, 3 = last), the magic number standing between them.
* a record's bytes: the ``IRHeader`` ``<IfQQ`` (flag uint32, label float32, id uint64, id2
  uint64); when flag > 0, ``flag`` float32 labels follow (label[0] is the identity) and the
  header's own label is unused; then the encoded image.

insightface datasets also hold records without an image (record 0 and one per identity,
giving index ranges); only records with image bytes are images here.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from facenet_jax.data.raw import DataError

MAGIC = 0xCED7230A
_HEAD = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")


def read_index(idx_path: str, rec_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(keys, offsets)`` int64 of ``train.idx``; DataError naming the line for a malformed
  line, an offset at or past the end of the ``.rec`` (``rec_size`` bytes), or a key or offset
  listed twice (it was accepted, and the doubled records made identical pairs)."""
  keys, offsets, seen_at, key_at = [], [], {}, {}
  with open(idx_path, encoding="ascii", errors="replace") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DataError(f"{idx_path}: line {lineno}: expected 'key<TAB>offset', got {line.rstrip()!r}")
      off = int(parts[1])
      if off + _HEAD.size > rec_size:
        raise DataError(f"{idx_path}: line {lineno}: offset {off} points past the end of the "
                        f".rec file ({rec_size} bytes); index and record file do not match")
      if off in seen_at or int(parts[0]) in key_at:   # one record twice: identical pairs
        was = seen_at.get(off) or key_at[int(parts[0])]
        what = f"offset {off}" if off in seen_at else f"key {parts[0]}"
        raise DataError(f"{idx_path}: line {lineno}: {what} is already on line {was}; each "
                        f"record must be listed once (a doubled image makes identical pairs)")
      seen_at[off], key_at[int(parts[0])] = lineno, lineno
      keys.append(int(parts[0]))
      offsets.append(off)
  if not keys:
    raise DataError(f"{idx_path}: empty index")
  return np.asarray(keys, np.int64), np.asarray(offsets, np.int64)


def _read_part(f, where: str) -> tuple[int, bytes]:
  head = f.read(_HEAD.size)
  if len(head) < _HEAD.size:
    raise DataError(f"{where}: record header cut short by the end of the file")
  magic, lrec = _HEAD.unpack(head)
  if magic != MAGIC:
    raise DataError(f"{where}: bad magic number 0x{magic:08X} (expected 0x{MAGIC:08X}); not a "
                    "RecordIO record (wrong offset in the .idx, or a damaged .rec)")
  cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
  data = f.read(length)
  if len(data) < length:
    raise DataError(f"{where}: record of {length} bytes cut short by the end of the file")
  f.seek((-length) % 4, os.SEEK_CUR)   # padding to 4 bytes
  return cflag, data


def read_record(f, offset: int, where: str) -> bytes:
  """The bytes of the record at ``offset`` of the open ``.rec`` file ``f`` (parts joined)."""
  f.seek(offset)
  cflag, data = _read_part(f, where)
  if cflag == 0:
    return data
  if cflag != 1:
    raise DataError(f"{where}: record starts with continuation flag {cflag} (expected 0 or 1)")
  parts = [data]
  while cflag != 3:
    cflag, data = _read_part(f, where)
    if cflag not in (2, 3):
      raise DataError(f"{where}: continuation flag {cflag} inside a split record")
    parts.append(data)
  return MAGIC.to_bytes(4, "little").join(parts)


def unpack(record: bytes, where: str) -> tuple[float, bytes]:
  """``(identity label, image bytes)`` of one record's bytes (IRHeader + image)."""
  if len(record) < _IR.size:
    raise DataError(f"{where}: record of {len(record)} bytes is shorter than its header")
  flag, label, _, _ = _IR.unpack_from(record)
  start = _IR.size + 4 * flag
  if start > len(record):
    raise DataError(f"{where}: header says {flag} labels, more than the record holds")
  if flag > 0:
    label = struct.unpack_from("<f", record, _IR.size)[0]
  return float(label), record[start:]


def read_image(f, offset: int, where: str) -> bytes:
  """The image bytes of the record at ``offset``."""
  return unpack(read_record(f, offset, where), where)[1]


def index_path(rec_path: str) -> str:
  """The ``.idx`` beside a ``.rec``: ``train.rec`` -> ``train.idx``."""
  return os.path.splitext(rec_path)[0] + ".idx"


def image_records(rec_path: str) -> tuple[np.ndarray, np.ndarray]:
  """``(offsets, labels)`` int64 of every record of ``rec_path`` that holds an image, in
  ``.idx`` key order (the ``.idx`` beside it: ``train.rec`` -> ``train.idx``). Reads each
  record's header, not its image."""
  idx_path = index_path(rec_path)
  for p in (rec_path, idx_path):
    if not os.path.isfile(p):
      raise DataError(f"{p}: no such file (RecordIO needs train.rec and train.idx side by side)")
  keys, offsets = read_index(idx_path, os.path.getsize(rec_path))
  order = np.argsort(keys, kind="stable")
  out_off, out_lab = [], []
  with open(rec_path, "rb") as f:
    for k in order:
      where = f"{rec_path}: record {keys[k]} (byte {offsets[k]})"
      label, image = unpack(read_record(f, int(offsets[k]), where), where)
      if image:
        if label != label or label < 0 or label != int(label):
          raise DataError(f"{where}: identity label {label} is not a whole number >= 0")
        out_off.append(offsets[k])
        out_lab.append(int(label))
  if not out_off:
    raise DataError(f"{rec_path}: no record holds an image")
  return np.asarray(out_off, np.int64), np.asarray(out_lab, np.int64)


def pack(label: float, image: bytes) -> bytes:
  """One record's bytes (flag 0): the inverse of :func:`unpack`, for writing test data."""
  return _IR.pack(0, float(label), 0, 0) + image


def write_rec(rec_path: str, payloads: list[bytes]) -> None:
  """Writes ``payloads`` as ``rec_path`` + its ``.idx`` (keys 0..n-1), each as one part
  (test data and benchmarks; a payload holding the magic number is refused)."""
  magic = MAGIC.to_bytes(4, "little")
  with open(rec_path, "wb") as rec, open(index_path(rec_path), "w") as idx:
    for key, data in enumerate(payloads):
      if magic in data:
        raise ValueError(f"payload {key} holds the magic number; write_rec does not split records")
      idx.write(f"{key}\t{rec.tell()}\n")
      rec.write(_HEAD.pack(MAGIC, len(data)) + data + b"\0" * ((-len(data)) % 4))
