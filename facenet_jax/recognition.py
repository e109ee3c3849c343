"""Face recognition against a gallery of enrolled people.

A ``Gallery`` holds precomputed embeddings (never images), one or more rows per person.
A probe is compared with every enrolled person by squared L2 distance; the distance to a
person is the *minimum* over that person's enrolled embeddings (nearest-neighbour, so a
second enrolment photo can only bring a matching probe closer). A probe whose nearest
person is farther than the threshold is "not recognized" (``UNKNOWN``). Thresholds follow
``verification``: accept when ``distance <= threshold``; the thresholds themselves and the
open-set metrics (rank-k, DIR, FNIR, FAR) are in :mod:`facenet_jax.open_set`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from typing import Union

import numpy as np
from numpy.lib import format as npy_format

from infra import files
from infra.errors import UserError

Identity = Union[str, int]
UNKNOWN = None  # the id ``identify`` returns for a probe it does not recognize
# 2: the gallery records the fingerprint of the model that made its embeddings
# 3: and how its photos were made into the model's inputs (face_fit)
_FORMAT_VERSION = 3
_RECORDS = {1: (), 2: ("model_fingerprint", "model_source"),
            3: ("model_fingerprint", "model_source", "face_fit")}   # str scalars per format


class GalleryError(UserError, ValueError):
  """A gallery cannot answer: empty, wrong dimension, another model, unknown person,
  unreadable file (the message names it)."""


def sq_l2_distances(a_NxD: np.ndarray, b_MxD: np.ndarray) -> np.ndarray:
  """Squared L2 distances ``d[i, j] = ||a_i - b_j||^2`` as an (N, M) float64 array.

  Computed as ``|a|^2 + |b|^2 - 2 a.b`` in float64 and clipped at 0 (rounding can make
  it slightly negative), so memory is O(N M), not O(N M D).
  """
  a = np.asarray(a_NxD, np.float64)
  b = np.asarray(b_MxD, np.float64)
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d, 0.0)


def check_embeddings(emb: np.ndarray, dim: int | None, what: str) -> np.ndarray:
  """``emb`` as a finite (M, dim) float32 array; a single (dim,) vector becomes (1, dim)."""
  emb = np.asarray(emb, np.float32)
  if emb.ndim == 1:
    emb = emb[None, :]
  if emb.ndim != 2:
    raise GalleryError(f"{what}: expected embeddings of shape (D,) or (M, D), got {emb.shape}")
  if dim is not None and emb.shape[1] != dim:
    raise GalleryError(f"{what}: embedding dimension mismatch: expected {dim}, got {emb.shape[1]}")
  if not np.all(np.isfinite(emb)):
    raise GalleryError(f"{what}: embeddings contain NaN or Inf")
  return emb


def _check_identity(identity) -> Identity:
  # numpy scalars (labels read from arrays) become Python ones so equality and saving agree
  if isinstance(identity, np.generic):
    identity = identity.item()
  if isinstance(identity, bool) or not isinstance(identity, (str, int)):
    raise GalleryError(f"identities must be str or int, got {type(identity).__name__}: {identity!r}")
  return identity


def identity_distances(gallery_emb_NxD: np.ndarray, gallery_ids_N: Sequence,
                       query_emb_QxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each query's distance to each enrolled identity: ``(identities_K, dist_QxK)``.

  ``dist[q, k] = min_{n: id_n = identities_k} ||query_q - gallery_n||^2``; ``identities_K``
  are the distinct ``gallery_ids`` in order of first appearance.
  """
  ids = np.asarray(gallery_ids_N)
  if ids.shape != (np.shape(gallery_emb_NxD)[0],):
    raise ValueError(f"need one id per gallery row: {ids.shape} ids for "
                     f"{np.shape(gallery_emb_NxD)[0]} rows")
  if ids.size == 0:
    raise GalleryError("the gallery is empty: enrol at least one person before querying")
  _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
  # renumber identities by first appearance, so results follow enrolment order
  rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")
  code = rank[inverse]
  identities = ids[np.sort(first)]
  d = sq_l2_distances(query_emb_QxD, gallery_emb_NxD)
  order = np.argsort(code, kind="stable")
  starts = np.r_[0, np.nonzero(np.diff(code[order]))[0] + 1]
  return identities, np.minimum.reduceat(d[:, order], starts, axis=1)


class Gallery:
  """Enrolled people as embedding rows ``emb_NxD`` (float32) with one identity per row.

  ``len(gallery)`` is the number of people; ``num_embeddings`` the number of rows.
  Identities are all ``str`` or all ``int`` (so they survive a save without pickling).
  ``model_fingerprint`` names the model whose embeddings these are
  (``inference.model_fingerprint``; "" when not bound to one) and ``model_source`` says
  where that model came from, for messages: embeddings of two models are not comparable
  even at the same dimension, so ``check_model`` refuses another model. ``face_fit`` says
  how the enrolled photos were made into the model's inputs (``scripts/recognize.py``:
  "none", each photo fitted whole, or "mtcnn", the detected face; "" when not recorded):
  ``check_face_fit`` refuses probes fitted another way.
  """

  def __init__(self, dim: int, model_fingerprint: str = "", model_source: str = "",
               face_fit: str = ""):
    if int(dim) <= 0:
      raise GalleryError(f"embedding dimension must be positive, got {dim}")
    self.dim = int(dim)
    self.model_fingerprint, self.model_source = str(model_fingerprint), str(model_source)
    self.face_fit = str(face_fit)
    self._emb = np.zeros((0, self.dim), np.float32)
    self._ids: list[Identity] = []

  @property
  def emb_NxD(self) -> np.ndarray:
    return self._emb.copy()

  @property
  def ids(self) -> list[Identity]:
    """The identity of each embedding row."""
    return list(self._ids)

  @property
  def identities(self) -> list[Identity]:
    """Enrolled people, in order of first enrolment."""
    return list(dict.fromkeys(self._ids))

  @property
  def num_embeddings(self) -> int:
    return len(self._ids)

  def __len__(self) -> int:
    return len(set(self._ids))

  def __contains__(self, identity) -> bool:
    return identity in set(self._ids)

  def __repr__(self) -> str:
    return f"Gallery(dim={self.dim}, people={len(self)}, embeddings={self.num_embeddings})"

  def counts(self) -> dict[Identity, int]:
    """``{person: number of enrolled embeddings}``, in order of first enrolment."""
    out: dict[Identity, int] = {}
    for i in self._ids:
      out[i] = out.get(i, 0) + 1
    return out

  def check_model(self, fingerprint: str, source: str, path: str = "the gallery") -> None:
    """Raises ``GalleryError`` unless this gallery was enrolled by the model ``fingerprint``
    (``source`` names it in the message). A gallery without a fingerprint (format 1) cannot
    be checked and is refused too."""
    if not self.model_fingerprint:
      raise GalleryError(f"{path} records no model (written before galleries were bound to "
                         f"their model), so it cannot be checked against {source}; enrol the "
                         f"people again into a new gallery")
    if self.model_fingerprint != fingerprint:
      raise GalleryError(f"{path} was enrolled by another model ({self.model_source or 'unknown'}, "
                         f"fingerprint {self.model_fingerprint[:12]}) than {source} (fingerprint "
                         f"{fingerprint[:12]}): their embeddings cannot be compared; use that "
                         f"model's --workdir or enrol the people again")

  def check_face_fit(self, face_fit: str, path: str = "the gallery", override: str = "") -> None:
    """Raises ``GalleryError`` when this gallery records a ``face_fit`` other than ``face_fit``:
    a face cut out by a detector and the same face fitted whole as a photo embed far apart,
    so every probe would be rejected (or matched by chance). Galleries that record none
    (formats 1 and 2) are not checked. ``override`` names the flag that allows it anyway."""
    if self.face_fit and self.face_fit != face_fit:
      same_flag = self.face_fit.split("-")[0] == face_fit.split("-")[0]
      advice = ("the face square of --detect=mtcnn changed since it was enrolled: enrol again"
                if same_flag else f"use --detect={self.face_fit.split('-')[0]}, enrol again")
      raise GalleryError(f"{path} was enrolled from photos read as {self.face_fit!r}, these are "
                         f"read as {face_fit!r}: the model's inputs are fitted differently and "
                         f"their distances do not compare; {advice}"
                         + (f", or pass {override} if the enrolled photos already were face "
                            f"crops fitted as these will be" if override else ""))

  def enrol(self, identity: Identity, emb: np.ndarray) -> None:
    """Adds one (D,) or several (M, D) embeddings of ``identity`` (new or already enrolled)."""
    identity = _check_identity(identity)
    if self._ids and type(identity) is not type(self._ids[0]):
      raise GalleryError(f"identity {identity!r} is {type(identity).__name__}, but this gallery's "
                         f"identities are {type(self._ids[0]).__name__}")
    emb = check_embeddings(emb, self.dim, f"enrolling {identity!r}")
    if emb.shape[0] == 0:
      raise GalleryError(f"enrolling {identity!r}: no embeddings given")
    self._emb = np.concatenate([self._emb, emb])
    self._ids.extend([identity] * emb.shape[0])

  def remove(self, identity: Identity) -> int:
    """Removes every embedding of ``identity``; returns how many rows were removed."""
    keep = np.array([i != identity for i in self._ids], bool)
    if keep.all():
      raise GalleryError(f"{identity!r} is not enrolled in the gallery")
    self._emb = self._emb[keep]
    self._ids = [i for i, k in zip(self._ids, keep) if k]
    return int((~keep).sum())

  def distances(self, query_emb_QxD: np.ndarray) -> tuple[list[Identity], np.ndarray]:
    """``(identities_K, dist_QxK)``: each query's distance to each person (min over rows)."""
    if not self._ids:
      raise GalleryError("the gallery is empty: enrol at least one person before querying")
    query = check_embeddings(query_emb_QxD, self.dim, "query")
    identities, dist = identity_distances(self._emb, np.asarray(self._ids), query)
    return identities.tolist(), dist

  def save(self, path: str) -> None:
    """Writes the gallery to ``path`` as ``.npz``, atomically (temp file, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    ids = np.asarray(self._ids) if self._ids else np.zeros((0,), np.str_)
    with files.replacing(path, ".npz") as tmp:
      np.savez(tmp, emb_NxD=self._emb, ids=ids, format_version=np.int64(_FORMAT_VERSION),
               model_fingerprint=np.str_(self.model_fingerprint),
               model_source=np.str_(self.model_source), face_fit=np.str_(self.face_fit))

  @classmethod
  def load(cls, path: str, dim: int | None = None) -> "Gallery":
    """Reads a gallery written by ``save``; ``dim``, if given, must match the file's.

    Every array's ``.npy`` header is checked (shape, dtype, size against what the zip
    member holds and ``$GALLERY_MAX_BYTES``) before any array is read, so a file that
    declares a huge array allocates nothing; object arrays (pickles) are refused."""
    if not os.path.exists(path):
      raise GalleryError(f"gallery file {path!r} does not exist")
    if not os.path.isfile(path):   # a folder, a pipe or a device is not a gallery
      raise GalleryError(f"gallery file {path!r} is not a regular file")
    limit = max_gallery_bytes()
    try:
      with zipfile.ZipFile(path) as zf:
        members = _gallery_members(zf, path, dim, limit)
        arrays = {k: _read_member(zf, info) for k, info in members.items()}
      emb, ids = arrays["emb_NxD"], arrays["ids"]
      version = int(arrays["format_version"])
    except GalleryError:
      raise
    except Exception as e:  # zip, header and read errors all mean the same to a caller
      raise GalleryError(f"gallery file {path!r} is not a readable gallery "
                         f"({type(e).__name__}: {e})") from e
    records = sorted(k for k in arrays if k in _RECORDS[_FORMAT_VERSION])
    if version not in _RECORDS or records != sorted(_RECORDS[version]):
      raise GalleryError(f"gallery file {path!r} has format version {version} with arrays "
                         f"{sorted(arrays)}, expected a version of {sorted(_RECORDS)} with "
                         f"its arrays")
    g = cls(emb.shape[1], *(str(arrays.get(k, "")) for k in _RECORDS[_FORMAT_VERSION]))
    g._emb = check_embeddings(emb, g.dim, f"gallery file {path!r}")
    g._ids = ids.tolist()
    return g


DEFAULT_MAX_GALLERY_BYTES = 1 << 30   # 1 GiB: two million 128-D float32 embeddings


def max_gallery_bytes() -> int:
  """``$GALLERY_MAX_BYTES`` or 1 GiB: the most a gallery file's arrays may declare."""
  v = os.environ.get("GALLERY_MAX_BYTES", "")
  try:
    return int(v) if v else DEFAULT_MAX_GALLERY_BYTES
  except ValueError:
    raise ValueError(f"$GALLERY_MAX_BYTES={v!r}: expected an integer number of bytes") from None


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
  """``(shape, dtype, data offset)`` of a ``.npy`` member, from its header alone."""
  with zf.open(info) as f:
    version = npy_format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = npy_format.read_array_header_2_0(f)
    else:
      raise ValueError(f"{info.filename}: .npy format version {version}, expected 1.0 or 2.0")
    return tuple(shape), dtype, f.tell()


def _gallery_members(zf: zipfile.ZipFile, path: str, dim: int | None,
                     limit: int) -> dict[str, zipfile.ZipInfo]:
  """The members of a gallery, each header checked against the expected layout:
  ``emb_NxD`` float (N, D), ``ids`` int or str (N,), ``format_version`` an int scalar, and
  (format 2) ``model_fingerprint`` and ``model_source`` and (format 3) ``face_fit`` str
  scalars; together at most
  ``limit`` bytes and each within what its zip member really holds."""
  infos = {i.filename: i for i in zf.infolist()}
  members, heads = {}, {}
  for key in ("emb_NxD", "ids", "format_version", *_RECORDS[_FORMAT_VERSION]):
    info = infos.get(key + ".npy")
    if info is None and key in _RECORDS[_FORMAT_VERSION]:   # which a format has: in load
      continue
    if info is None:
      raise GalleryError(f"gallery file {path!r} is not a readable gallery (no array {key!r})")
    members[key], heads[key] = info, _npy_header(zf, info)
  for key in _RECORDS[_FORMAT_VERSION]:
    if key in heads and (heads[key][0] != () or heads[key][1].kind != "U"):
      raise GalleryError(f"gallery file {path!r}: {key} is {heads[key][0]} of dtype "
                         f"{heads[key][1]}, expected a str scalar")
  (emb_shape, emb_dtype, _), (ids_shape, ids_dtype, _) = heads["emb_NxD"], heads["ids"]
  version_shape, version_dtype, _ = heads["format_version"]
  if any(h[1].hasobject for h in heads.values()):
    raise GalleryError(f"gallery file {path!r} holds a Python object array, which would need "
                       f"pickle to load; refused (ids must be int or str)")
  if (len(emb_shape) != 2 or emb_dtype.kind != "f" or ids_shape != emb_shape[:1]
      or ids_dtype.kind not in "iU" or version_shape != () or version_dtype.kind not in "iu"
      or any(n < 0 for n in emb_shape)):
    raise GalleryError(f"gallery file {path!r} is inconsistent: embeddings {emb_shape} of dtype "
                       f"{emb_dtype}, ids {ids_shape} of dtype {ids_dtype}, format_version "
                       f"{version_shape} of dtype {version_dtype}; expected float (N, D), int or "
                       f"str (N,) and an int scalar")
  if dim is not None and emb_shape[1] != dim:
    raise GalleryError(f"gallery file {path!r} holds {emb_shape[1]}-D embeddings, "
                       f"expected {dim}-D")
  total = 0
  for key, (shape, dtype, offset) in heads.items():
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    total += nbytes
    if offset + nbytes > members[key].file_size:
      raise GalleryError(f"gallery file {path!r}: array {key} declares {shape} of {dtype} "
                         f"({nbytes} bytes) but its zip member holds {members[key].file_size}; "
                         f"the file is corrupt")
  if total > limit:
    raise GalleryError(f"gallery file {path!r} declares {total} bytes of arrays (embeddings "
                       f"{emb_shape}), more than the {limit} allowed; raise $GALLERY_MAX_BYTES "
                       f"if it is really that large")
  return members


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
  with zf.open(info) as f:
    return npy_format.read_array(f, allow_pickle=False)


def identify(gallery: Gallery, query_emb_QxD: np.ndarray,
             threshold: float) -> tuple[list[Identity | None], np.ndarray]:
  """The nearest enrolled person of each query, or ``UNKNOWN`` when farther than ``threshold``.

  Args:
    gallery: a non-empty gallery.
    query_emb_QxD: (Q, D) or a single (D,) query embedding.
    threshold: accept when ``distance <= threshold``; ``np.inf`` gives closed-set identification.
  Returns:
    ``(ids, distances)``: Q identities (``UNKNOWN`` for rejected queries) and the (Q,) squared
    distance to the nearest person (reported for rejected queries too). Exact ties go to
    the person enrolled first.
  """
  identities, dist = gallery.distances(query_emb_QxD)
  best = np.argmin(dist, axis=1)
  best_dist = dist[np.arange(dist.shape[0]), best]
  ids = [identities[k] if d <= threshold else UNKNOWN for k, d in zip(best, best_dist)]
  return ids, best_dist


def verify(gallery: Gallery, emb: np.ndarray, claimed_id: Identity,
           threshold: float) -> tuple[bool, float]:
  """1:1 check of a claim: ``(distance <= threshold, distance)``, where distance is the min
  squared L2 distance from the (D,) ``emb`` to ``claimed_id``'s enrolled embeddings."""
  if claimed_id not in gallery:
    raise GalleryError(f"claimed identity {claimed_id!r} is not enrolled in the gallery "
                       f"({len(gallery)} people enrolled)")
  query = check_embeddings(emb, gallery.dim, "verify")
  if query.shape[0] != 1:
    raise GalleryError(f"verify takes one embedding, got {query.shape[0]}")
  rows = np.array([i == claimed_id for i in gallery.ids])
  d = float(sq_l2_distances(query, gallery.emb_NxD[rows]).min())
  return bool(d <= threshold), d
