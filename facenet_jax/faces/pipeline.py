"""Photos in, faces out: MTCNN detection, then each face warped onto an alignment template.

  detector = detect.MTCNN("../shared/weights/mtcnn_weights.npz")
  per_photo = detect_and_align([rgb_a, rgb_b], detector, "arcface112", which="largest")
  for faces in per_photo:            # [] where no face was found
    for f in faces:                  # Face: box, score, landmarks, crop (112, 112, 3)
      ...

This is glue only: detection is ``detect.MTCNN.detect`` (one batch through the cascade for
the whole list) and alignment ``align.align_faces``; nothing here re-implements either.
``which="largest"`` keeps the face with the largest box per photo, counting only the part of
the box inside the photo (the subject of a portrait, where a higher-scoring face in the
background would be the wrong person; a face cut off at the photo's edge has a box that
reaches outside it and counted whole, it won over the subject); ``"central"`` the face whose
box centre is nearest the photo's centre (how LFW's labelled person is found: its photos are
centred on them); ``"all"`` keeps every face, highest score first, as the detector orders them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from facenet_jax import align
from facenet_jax.faces import detect

WHICH = ("largest", "central", "all")


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face.

  box_4: (x1, y1, x2, y2) px in the photo, not clipped to it. score: O-Net face probability.
  landmarks_5x2: (x, y) in ``detect.LANDMARK_NAMES`` order. crop: (S, S, 3) float32 in
  0..255, the face warped onto the template (S its size), or None when no template was asked.
  """
  box_4: np.ndarray
  score: float
  landmarks_5x2: np.ndarray
  crop: np.ndarray | None

  def to_json(self) -> dict:
    """``{"box": [...], "score": p, "landmarks": {name: [x, y]}}`` as in detections.json."""
    one = detect.Faces(self.box_4[None], np.array([self.score], np.float32),
                       self.landmarks_5x2[None])
    return one.to_json()[0]


def pick(boxes_Mx4: np.ndarray, width: int, height: int, which: str) -> int | None:
  """Index of the one face ``which`` ("largest" | "central") keeps among a ``width`` x
  ``height`` photo's boxes, or None when there is none (ties: the first, the higher score)."""
  if len(boxes_Mx4) == 0:
    return None
  b = np.asarray(boxes_Mx4, np.float64)
  if which == "largest":   # the area inside the photo
    w = np.clip(b[:, 2], 0, width) - np.clip(b[:, 0], 0, width)
    h = np.clip(b[:, 3], 0, height) - np.clip(b[:, 1], 0, height)
    return int(np.argmax(w * h))
  c = (b[:, :2] + b[:, 2:]) / 2 - np.array([width / 2, height / 2])
  return int(np.argmin(np.hypot(c[:, 0], c[:, 1])))


def select(faces: detect.Faces, which: str, width: int, height: int) -> np.ndarray:
  """Indices into ``faces`` (of a ``width`` x ``height`` photo) that ``which`` keeps (see the
  module docstring)."""
  if which not in WHICH:
    raise detect.FaceInputError(f"which must be one of {WHICH}, got {which!r}")
  if len(faces) == 0 or which == "all":
    return np.arange(len(faces))
  return np.array([pick(faces.boxes_Nx4, width, height, which)])


def faces_of(rgb_HxWx3, faces: detect.Faces, template: str | None,
             which: str = "all") -> list[Face]:
  """The detected ``faces`` of one photo that ``which`` keeps, each aligned onto
  ``template`` (an ``align.TEMPLATES`` key) or with ``crop=None`` when it is None."""
  if template is not None and template not in align.TEMPLATES:
    raise detect.FaceInputError(f"template must be one of {sorted(align.TEMPLATES)} or None, "
                                f"got {template!r}")
  rgb = detect.to_rgb(rgb_HxWx3)
  keep = select(faces, which, rgb.shape[1], rgb.shape[0])
  lms = faces.landmarks_Nx5x2[keep]
  crops = (align.align_faces(rgb, lms, template) if template and len(keep)
           else [None] * len(keep))
  return [Face(faces.boxes_Nx4[k].copy(), float(faces.scores_N[k]), lms[j].copy(), crop)
          for j, (k, crop) in enumerate(zip(keep, crops))]


def detect_and_align(rgb_list: Sequence, detector: detect.MTCNN, template: str | None = "arcface112",
                     which: str = "largest") -> list[list[Face]]:
  """Faces of each photo (``[]`` where none was found), aligned onto ``template``.

  Args:
    rgb_list: images as ``detect.to_rgb`` takes them (uint8 or float 0..255; grey, RGB, RGBA;
      PIL images), detected in one batch.
    detector: a ``detect.MTCNN``.
    template: ``"arcface112"``, ``"facenet160"`` or None (boxes and landmarks only).
    which: ``"largest"`` or ``"central"`` (at most one face per photo) or ``"all"``.
  """
  if which not in WHICH:   # checked before the (slow) detection
    raise detect.FaceInputError(f"which must be one of {WHICH}, got {which!r}")
  rgbs = [detect.to_rgb(im) for im in rgb_list]
  return [faces_of(rgb, faces, template, which) for rgb, faces in zip(rgbs, detector.detect(rgbs))]

