"""Aligned datasets: each source image's face detected (MTCNN) and warped onto a template, once.

``config.data.align``:
  ``"none"``   (default) images are fitted as they are: the central ``data.center_crop`` px
               square, resized to ``data.image_size`` (``images.fit_image``). Nothing here runs.
  ``"mtcnn"``  before the images are fitted, MTCNN (``facenet_jax.faces``, pretrained weights
               ``data.mtcnn_weights``) finds the faces of every image; one face per image is
               picked (``data.align_pick``: ``"central"``, the face whose box centre is nearest
               the image centre, the labelled person of an LFW photo; or ``"largest"``) and
               warped by its five landmarks onto ``data.align_template`` (``arcface112``: the
               ArcFace 112 px crop; ``facenet160``: the same points inside a 160 px crop with
               32 px of margin), then resized to ``data.image_size``. ``data.center_crop``
               then applies only to the images without a face.

Images where no face is found follow ``data.no_face``: ``"center_crop"`` (the unaligned fit
above: every image stays, so LFW's pairs.txt stays complete) or ``"drop"`` (the image leaves
the dataset; a person left with no image leaves too). Either way they are listed, with their
paths, in ``no_face.json`` and ``no_face.csv`` in the prepared folder, and the count is printed.

Caching (``prepare.py`` stores the aligned crops as prepared shards):

* detections (every face's box, score and landmarks of every image, before any pick) are
  cached in ``<prepared>/detections/<kind>_<source fingerprint>_mtcnn-<key>/``, where the key
  hashes the detector weights' SHA-256 and the detector settings that change results; they
  are written in chunks of ``CHUNK`` images, so a killed detection resumes at its last chunk
  (the key does not cover the detector's code: after a change to ``facenet_jax/faces`` that
  moves detections, bump ``DETECTION_FORMAT`` or delete the folder), and a changed pick, template or policy re-crops without detecting again;
* the prepared folder's name carries ``align-<key>`` hashing the detection key, template,
  pick and policy: a changed setting prepares again instead of reusing the old crops.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from facenet_jax.data.images import Fit, fit_image
from infra.errors import UserError
from infra.files import file_sha256, write_json_atomic
from infra.progress import Progress

ALIGN = ("none", "mtcnn")
NO_FACE = ("center_crop", "drop")
PICK = ("central", "largest")
TEMPLATES = ("arcface112", "facenet160")   # facenet_jax.align.TEMPLATES (checked in tests)
CHUNK = 256          # images per detection cache file (a killed detection loses at most this)
# 2: the detector follows the mtcnn package step for step (f138b61); detections cached by 1 came
# from the earlier pipeline (IoU 0.83-1.0 against the package on some photos) and are not reused
DETECTION_FORMAT = 2
REPORT_JSON, REPORT_CSV = "no_face.json", "no_face.csv"


class AlignConfigError(UserError, ValueError):
  """A ``config.data`` alignment field with a value it does not accept (one line, naming it)."""


@dataclasses.dataclass(frozen=True)
class Alignment:
  """How a dataset is aligned (``alignment_of(config)``; None means ``data.align="none"``).

  weights: the MTCNN ``.npz``; min_face_size: the detector's smallest face (px);
  template, pick, no_face: as the module doc says; batch: images per detector call.
  """
  weights: str
  template: str = "arcface112"
  pick: str = "central"
  no_face: str = "center_crop"
  min_face_size: float = 20.0
  batch: int = 16

  def settings(self):
    from facenet_jax.faces import detect   # lazy: JAX
    return detect.Settings(min_face_size=float(self.min_face_size))

  def detection_key(self) -> str:
    """Changes with anything that changes a detection: the weights' bytes and the detector
    settings (``max_batch`` and ``workers`` only spread work, so they are left out)."""
    st = {k: v for k, v in dataclasses.asdict(self.settings()).items()
          if k not in ("max_batch", "workers")}
    blob = json.dumps({"format": DETECTION_FORMAT, "weights_sha256": file_sha256(self.weights),
                       "settings": st}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]

  def key(self) -> str:
    """The prepared folder's alignment tag: the detection key plus template, pick, policy."""
    # "largest" counts a box's area inside the image since a cut-off face won by its outside
    # part: a folder picked the old way is cropped again (the detections are reused)
    pick = "largest-inside" if self.pick == "largest" else self.pick
    blob = json.dumps({"detection": self.detection_key(), "template": self.template,
                       "pick": pick, "no_face": self.no_face}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]

  def record(self) -> dict:
    """What ``dataset.json`` / ``plan.json`` record about the alignment."""
    return {"detector": "mtcnn", "weights": os.path.abspath(self.weights),
            "weights_sha256": file_sha256(self.weights), "min_face_size": float(self.min_face_size),
            "detection_key": self.detection_key(), "template": self.template, "pick": self.pick,
            "no_face": self.no_face, "key": self.key()}


def _one_of(d, field: str, allowed: Sequence[str]) -> str:
  v = d.get(field, allowed[0])
  if v not in allowed:
    raise AlignConfigError(f"config.data.{field} = {v!r}: expected one of {tuple(allowed)}")
  return v


def alignment_of(config) -> Alignment | None:
  """``config.data``'s alignment (None for ``align="none"``, and for configs saved before the
  field existed), every field checked: an unknown value is an AlignConfigError naming it."""
  d = config.data
  if _one_of(d, "align", ALIGN) == "none":
    # the other fields are checked even when unused: a typo is an error, not a no-op
    for field, allowed in (("no_face", NO_FACE), ("align_pick", PICK), ("align_template", TEMPLATES)):
      _one_of(d, field, allowed)
    return None
  template = _one_of(d, "align_template", TEMPLATES)
  pick = _one_of(d, "align_pick", PICK)
  no_face = _one_of(d, "no_face", NO_FACE)
  weights = os.path.expanduser(str(d.get("mtcnn_weights", "")))
  if not os.path.isfile(weights):
    raise AlignConfigError(f"config.data.mtcnn_weights = {weights!r}: no such file (data.align="
                           "'mtcnn' needs the MTCNN .npz; see scripts/convert_mtcnn_weights.py)")
  min_face = d.get("align_min_face", 20.0)
  if isinstance(min_face, bool) or not isinstance(min_face, (int, float)) or not min_face > 0:
    raise AlignConfigError(f"config.data.align_min_face = {min_face!r}: expected a number of px > 0")
  return Alignment(weights=weights, template=template, pick=pick, no_face=no_face,
                   min_face_size=float(min_face))


def template_of(config) -> str | None:
  """The ``align.TEMPLATES`` key that ``config.data`` warps faces onto (``align_template``),
  or None for ``align="none"``. Unlike ``alignment_of`` it needs no detector weights: a
  trained run's saved config tells recognition how its faces were made."""
  d = config.data
  template = _one_of(d, "align_template", TEMPLATES)
  return None if _one_of(d, "align", ALIGN) == "none" else template


def check_config(config) -> None:
  """Raises AlignConfigError for a bad alignment field (see ``alignment_of``)."""
  alignment_of(config)


# ------------------------------------------------------------------------ detection cache

@dataclasses.dataclass(frozen=True)
class Detections:
  """Every face of every image: image k's faces are rows ``start[k]:start[k + 1]`` of
  ``boxes`` (M, 4), ``scores`` (M,), ``landmarks`` (M, 5, 2), highest score first;
  ``sizes`` (N, 2) is each image's (width, height)."""
  start: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  landmarks: np.ndarray
  sizes: np.ndarray

  def __len__(self) -> int:
    return int(self.start.size - 1)

  def faces(self, k: int) -> slice:
    return slice(int(self.start[k]), int(self.start[k + 1]))


def pick_face(boxes_Mx4: np.ndarray, width: int, height: int, pick: str) -> int | None:
  """Index of the face ``pick`` keeps among one image's boxes, or None when there is none:
  ``faces.pipeline.pick`` (``central``: box centre nearest the image centre; ``largest``:
  largest box area inside the image), the one rule recognize.py uses too."""
  from facenet_jax.faces import pipeline
  return pipeline.pick(boxes_Mx4, width, height, pick)


def _chunk_path(folder: str, k: int) -> str:
  return os.path.join(folder, f"chunk-{k:05d}.npz")


def _save_chunk(path: str, faces_list, sizes) -> None:
  counts = np.array([len(f) for f in faces_list], np.int64)
  cat = lambda xs, shape: np.concatenate(xs).astype(np.float32) if xs else np.zeros(shape, np.float32)
  tmp = path + f".tmp{os.getpid()}.npz"
  np.savez(tmp, counts=counts, sizes=np.asarray(sizes, np.int64).reshape(-1, 2),
           boxes=cat([f.boxes_Nx4 for f in faces_list], (0, 4)),
           scores=cat([f.scores_N for f in faces_list], (0,)),
           landmarks=cat([f.landmarks_Nx5x2 for f in faces_list], (0, 5, 2)))
  os.replace(tmp, path)


def detect_all(n: int, load: Callable[[int], np.ndarray], alignment: Alignment, folder: str,
               what: str = "images", stream=None) -> Detections:
  """Every face of images 0..n-1 (``load(k)``: image k as (H, W, 3) uint8 RGB), detected once
  and cached in ``folder`` (chunks of ``CHUNK``; finished chunks are reused, so a killed run
  resumes; another process detecting into the same folder is waited for). Progress with
  images/s and ETA goes to ``stream`` (stderr)."""
  stream = stream or sys.stderr
  os.makedirs(folder, exist_ok=True)
  n_chunks = -(-n // CHUNK)
  with open(os.path.join(folder, "lock"), "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process detecting faces into {folder}", file=stream, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)
    info = {"format": DETECTION_FORMAT, "num_images": n, "chunk": CHUNK,
            **{k: v for k, v in alignment.record().items()
               if k in ("detector", "weights_sha256", "min_face_size", "detection_key")}}
    info_path = os.path.join(folder, "detections.json")
    if _read_info(info_path) != info:
      # same key, other contents (or none, or a torn file): never mix the two
      for name in os.listdir(folder):
        if name.startswith("chunk-"):
          os.remove(os.path.join(folder, name))
      # written whole or not at all, and only when it changes: a kill during a plain
      # rewrite on every call left a cut-off file that every later run failed to parse
      write_json_atomic(info_path, info)
    todo = [k for k in range(n_chunks) if not os.path.exists(_chunk_path(folder, k))]
    done = (n_chunks - len(todo)) * CHUNK
    if todo:
      _detect_chunks(todo, n, load, alignment, folder, min(done, n), what, stream)
  return _read_chunks(folder, n_chunks, n)


def _read_info(path: str) -> dict | None:
  """The cache's ``detections.json``, or None when it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _detect_chunks(todo, n, load, alignment, folder, done, what, stream) -> None:
  from facenet_jax.faces import detect   # lazy: JAX
  detector = detect.MTCNN(alignment.weights, alignment.settings())
  print(f"detecting faces (MTCNN, min face {alignment.min_face_size:g} px) in {n - done} of {n} "
        f"{what}, {len(todo)} chunk(s) of {CHUNK} to go; cache {folder}", file=stream, flush=True)
  progress = Progress(n, done, unit="images", what="detected", stream=stream)
  first, last = True, 0.0
  for k in todo:
    lo, hi = k * CHUNK, min(n, (k + 1) * CHUNK)
    faces, sizes = [], []
    for b in range(lo, hi, alignment.batch):
      rgbs = [load(i) for i in range(b, min(hi, b + alignment.batch))]
      faces += detector.detect(rgbs)
      sizes += [(r.shape[1], r.shape[0]) for r in rgbs]
      done += len(rgbs)
      if first:   # the first batch compiles: the rate starts after it
        progress.mark_compiled(done)
        first = False
      if time.monotonic() - last > 10.0:
        last = time.monotonic()
        progress.report(done)
    _save_chunk(_chunk_path(folder, k), faces, sizes)
  progress.report(done)


def _read_chunks(folder: str, n_chunks: int, n: int) -> Detections:
  counts, sizes, boxes, scores, lms = [], [], [], [], []
  for k in range(n_chunks):
    with np.load(_chunk_path(folder, k), allow_pickle=False) as z:
      counts.append(z["counts"]), sizes.append(z["sizes"]), boxes.append(z["boxes"])
      scores.append(z["scores"]), lms.append(z["landmarks"])
  counts = np.concatenate(counts) if counts else np.zeros((0,), np.int64)
  if counts.size != n:
    raise RuntimeError(f"{folder}: detection cache holds {counts.size} images, expected {n}")
  return Detections(start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
                    scores=np.concatenate(scores) if scores else np.zeros((0,), np.float32),
                    landmarks=np.concatenate(lms) if lms else np.zeros((0, 5, 2), np.float32),
                    sizes=np.concatenate(sizes) if sizes else np.zeros((0, 2), np.int64))


# ------------------------------------------------------------------------- pick and report

@dataclasses.dataclass(frozen=True)
class Located:
  """Per image: ``landmarks[k]`` (5, 2) of the picked face, or None when none was found;
  ``no_face``: the indices without a face; ``stats``: counts for the log and dataset.json."""
  landmarks: list
  no_face: list[int]
  stats: dict


def locate(det: Detections, pick: str) -> Located:
  """The face ``pick`` keeps in every image of ``det``."""
  out, none, multi, not_largest = [], [], 0, 0
  for k in range(len(det)):
    s = det.faces(k)
    w, h = det.sizes[k]
    j = pick_face(det.boxes[s], int(w), int(h), pick)
    if j is None:
      out.append(None)
      none.append(k)
      continue
    multi += det.boxes[s].shape[0] > 1
    not_largest += j != pick_face(det.boxes[s], int(w), int(h), "largest")
    out.append(det.landmarks[s][j].astype(np.float32))
  stats = {"images": len(det), "with_face": len(det) - len(none), "no_face": len(none),
           "several_faces": int(multi), "picked_not_largest": int(not_largest)}
  return Located(out, none, stats)


def write_report(folder: str, sources: Sequence[str], located: Located, alignment: Alignment) -> str:
  """``no_face.json`` (policy, counts, the paths) and ``no_face.csv`` (index, path, policy's
  action) in ``folder``; returns the JSON's path."""
  action = "fitted as the central crop (data.center_crop)" if alignment.no_face == "center_crop" \
      else "dropped"
  rows = [{"index": int(k), "path": sources[k], "action": action} for k in located.no_face]
  with open(os.path.join(folder, REPORT_JSON), "w", encoding="utf-8") as f:
    json.dump({"policy": f"data.no_face={alignment.no_face}", "stats": located.stats,
               "no_face": rows}, f, indent=1)
  with open(os.path.join(folder, REPORT_CSV), "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["index", "path", "action"])
    w.writeheader()
    w.writerows(rows)
  return os.path.join(folder, REPORT_JSON)


def aligned_crop(rgb_HxWx3: np.ndarray, landmarks_5x2: np.ndarray, template: str) -> np.ndarray:
  """The face warped onto ``template``: (S, S, 3) uint8 (``align.align_faces``, rounded)."""
  from facenet_jax import align   # lazy: JAX
  crop = align.align_faces(np.asarray(rgb_HxWx3), np.asarray(landmarks_5x2, np.float32)[None],
                           template)[0]
  return align.to_uint8(crop)


def fit_aligned(crop_SxSx3: np.ndarray, fit: Fit, where: str = "face") -> np.ndarray:
  """A template crop (uint8, (S, S, 3)) as the run's input, (fit.size, fit.size, fit.channels)
  uint8: resized and made grey or RGB by ``fit_image`` with no center crop (the template
  already frames the face; ``fit.crop`` is for unaligned images). The one fit of an aligned
  face, used by the dataset preparation and by recognition (``faces.inputs.fit_face``)."""
  return fit_image(Image.fromarray(crop_SxSx3), Fit(size=fit.size, crop=0, channels=fit.channels),
                   where)
