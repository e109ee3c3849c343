"""A prepared face dataset on disk, and its images read back lazily.

A dataset too big for RAM is prepared once (``prepare.py``) into one folder:

  shard-00000-of-00012.array_record ...   one record per image: the image's JPEG or PNG
                                          bytes, already cropped and resized to the
                                          training size (``images.Fit``)
  labels.npy                              (N,) int32 identity of every record, in order
  identities.txt                          identity names, one a line (label k = line k)
  sources.txt                             where each record came from, one a line
  dataset.json                            written last: sizes, fit, encoding, source

Records are numbered 0..N-1 over the shards in order (shard k holds records
[k * records_per_shard, ...)). Only ``labels.npy`` is loaded to train: the sampler needs
labels alone, and :class:`RecordImages` decodes the rows a batch asks for.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os

import numpy as np
from PIL import Image

from facenet_jax.data.images import Fit
from facenet_jax.data.raw import DataError

META = "dataset.json"
LABELS = "labels.npy"
IDENTITIES = "identities.txt"
SOURCES = "sources.txt"
FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "png")


def shard_name(k: int, num_shards: int) -> str:
  return f"shard-{k:05d}-of-{num_shards:05d}.array_record"


def is_prepared(path: str) -> bool:
  """Whether ``path`` holds a finished prepared dataset (its ``dataset.json`` is written
  last, so a killed preparation never looks finished)."""
  return os.path.isfile(os.path.join(path, META))


def encode(image_hwc: np.ndarray, encoding: str, quality: int) -> bytes:
  """(S, S, C) uint8 -> JPEG (``quality``, 4:4:4 chroma so colour edges of small faces
  survive) or PNG bytes. Deterministic: the same pixels always give the same bytes, which
  lets a resumed preparation write the same shards as an uninterrupted one."""
  im = Image.fromarray(image_hwc[:, :, 0] if image_hwc.shape[-1] == 1 else image_hwc)
  buf = io.BytesIO()
  if encoding == "jpeg":
    im.save(buf, format="JPEG", quality=int(quality), subsampling=0)
  else:
    im.save(buf, format="PNG", compress_level=1)   # fast: shards are read far more than written
  return buf.getvalue()


def decode(data: bytes, fit: Fit) -> np.ndarray:
  """Record bytes -> (S, S, C) uint8; raises ValueError when they are not an image of
  exactly the dataset's size and channels."""
  with Image.open(io.BytesIO(data)) as im:
    im.load()
    a = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"), np.uint8)
  if a.ndim == 2:
    a = a[:, :, None]
  if a.shape != (fit.size, fit.size, fit.channels):
    raise ValueError(f"decoded shape {a.shape}, expected {(fit.size, fit.size, fit.channels)}")
  return a


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """A finished prepared folder: its ``dataset.json`` and labels (no image is read)."""
  path: str
  meta: dict
  labels: np.ndarray

  @property
  def fit(self) -> Fit:
    f = self.meta["fit"]
    return Fit(size=int(f["size"]), crop=int(f["crop"]), channels=int(f["channels"]))

  @property
  def shard_paths(self) -> list[str]:
    return [os.path.join(self.path, s) for s in self.meta["shards"]]

  def identities(self) -> list[str]:
    with open(os.path.join(self.path, IDENTITIES), encoding="utf-8") as f:
      return f.read().splitlines()

  def source_of(self, record: int) -> str:
    """Where record ``record`` came from (reads ``sources.txt`` up to that line: only
    error messages need it, so the N paths are never held in memory)."""
    with open(os.path.join(self.path, SOURCES), encoding="utf-8") as f:
      line = next(itertools.islice(f, int(record), None), "?\n")
    return line.rstrip("\n")


def open_prepared(path: str) -> PreparedDataset:
  """Reads ``path``'s ``dataset.json`` and ``labels.npy``; DataError if it is not a
  finished prepared dataset of this format or its files disagree."""
  if not is_prepared(path):
    raise DataError(f"{path}: not a prepared dataset (no {META}; preparation unfinished?)")
  with open(os.path.join(path, META), encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path}/{META}: format_version {meta.get('format_version')!r}, this code "
                    f"reads {FORMAT_VERSION}; prepare the dataset again")
  labels = np.load(os.path.join(path, LABELS), allow_pickle=False)
  if labels.shape != (int(meta["num_records"]),) or labels.dtype != np.int32:
    raise DataError(f"{path}/{LABELS}: shape {labels.shape} {labels.dtype}, expected "
                    f"({meta['num_records']},) int32 as {META} says")
  missing = [s for s in meta["shards"] if not os.path.isfile(os.path.join(path, s))]
  if missing:
    raise DataError(f"{path}: shard {missing[0]} is missing ({len(missing)} of "
                    f"{len(meta['shards'])} shards)")
  return PreparedDataset(path=path, meta=meta, labels=labels)


class RecordImages:
  """The images of a prepared dataset (or of its records ``rows``, e.g. the training
  people's) as a read-only (N, S, S, C) uint8 array: indexing with an int, a slice or an
  index array reads and decodes only those records.

  Stands where an in-memory ``np.ndarray`` of images stands (``IdentityDataset.images``),
  so evaluation embeds it chunk by chunk and training batches index it by row. Pickles
  cheaply (paths and labels, no open file) into the input pipeline's worker processes.
  """

  def __init__(self, prepared: PreparedDataset, rows: np.ndarray | None = None):
    self.prepared = prepared
    self.rows = None if rows is None else np.asarray(rows, np.int64)
    fit = prepared.fit
    n = int(prepared.meta["num_records"]) if rows is None else self.rows.size
    self.shape = (n, fit.size, fit.size, fit.channels)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4
    self._source = None   # opened on first read, in whichever process reads

  def __len__(self) -> int:
    return self.shape[0]

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def _records(self, rows: np.ndarray) -> list[bytes]:
    if self._source is None:
      from array_record.python import array_record_data_source   # lazy: C++ extension
      # group_size:1 shards: one record read per random access (prepare.py writes them so)
      self._source = array_record_data_source.ArrayRecordDataSource(self.prepared.shard_paths)
    return self._source.__getitems__([int(r) for r in rows])

  def where(self, row: int) -> str:
    """``record R of <folder> (shard S), from <source file>``: names bad record ``row``
    (a record number)."""
    per = int(self.prepared.meta["records_per_shard"])
    shard = self.prepared.meta["shards"][row // per]
    return (f"record {row} of {self.prepared.path} ({shard}), from "
            f"{self.prepared.source_of(row)}")

  def read(self, rows, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, S, S, C) uint8, ok (n,) bool)`` of ``rows``. A record that does not
    decode raises DataError naming it and its source file, or with ``skip_bad`` comes back
    as zeros with ``ok`` False."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"rows {rows.min()}..{rows.max()} out of range for {len(self)} records")
    if self.rows is not None:
      rows = self.rows[rows]   # -> record numbers
    out = np.zeros((rows.size,) + self.shape[1:], np.uint8)
    ok = np.ones(rows.size, bool)
    fit = self.prepared.fit
    for k, (row, data) in enumerate(zip(rows, self._records(rows))):
      try:
        out[k] = decode(data, fit)
      except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if not skip_bad:
          # evaluation reads with skip_bad False whatever the config: the message said to set
          # skip_corrupt=True to a run that had it
          raise DataError(f"{self.where(int(row))}: cannot decode ({e}); training skips such "
                          "records with config.data.skip_corrupt=True, evaluation never does "
                          "(it would change the held-out pairs): replace or remove the file") from e
        ok[k] = False
    return out, ok

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self.read([key])[0][0]
    if isinstance(key, slice):
      key = np.arange(*key.indices(len(self)))
    return self.read(key)[0]
