"""Detected faces -> the input a trained embedding model takes (recognize.py --detect=mtcnn).

How a face becomes a model input follows how the run's training images were made:

* a run trained on aligned faces (``config.data.align="mtcnn"``): the face is warped onto
  the run's ``config.data.align_template`` (``arcface112``, ``facenet160``) and that crop
  resized to the run's ``config.data.image_size``, by the same functions the dataset
  preparation used for its training faces (``data.aligned.fit_aligned``);
* a run trained on unaligned photos (``data.align="none"``, the default): a warp would show
  it faces framed unlike anything it trained on, so the face is instead cut as a square of
  ``CENTRED_SCALE`` x its box's longer side, centred on the box, and fitted (resized, grey or
  RGB) exactly as the run fits its training photos. The scale frames a face as the ``lfw``
  variants' central 128 px frames LFW's: the central face's MTCNN box on 286 LFW photos (every
  15th person's first) has a median longer side of 121.8 px (interquartile 116-129), and
  128 / 121.8 = 1.05. It was 1.25 (from a guess of ~100-110 px boxes), which showed faces ~16%
  smaller than in training; measured geometry, not accuracy, sets it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from facenet_jax import align
from facenet_jax.data import aligned
from facenet_jax.data import images as data_images
from facenet_jax.faces import pipeline

CENTRED_SCALE = 1.05   # square side / box side for runs trained on unaligned photos


@dataclasses.dataclass(frozen=True)
class FaceInput:
  """template: an ``align.TEMPLATES`` key (aligned runs) or None (centred square).
  size, channels: the run's input. description: one line saying which, for the output."""
  template: str | None
  size: int
  channels: int
  description: str


def face_input(config) -> FaceInput:
  """How this run's config says detected faces are to be fitted (see the module doc). A bad
  ``data.align`` / ``data.align_template`` is ``aligned.AlignConfigError``, naming the field."""
  size, channels = int(config.data.image_size), int(config.data.channels)
  template = aligned.template_of(config)
  if template is not None:
    return FaceInput(template, size, channels,
                     f"aligned to the {template} template and resized to the run's {size} px "
                     f"input, as its training faces were (data.align={config.data.align}, "
                     f"data.align_template={template})")
  return FaceInput(None, size, channels,
                   f"not aligned: a square of {CENTRED_SCALE:g}x each face box, fitted to the "
                   f"run's {size} px input like its training photos (the run was trained on "
                   f"unaligned photos: data.align=none)")


def centred_square(box_4, scale: float = CENTRED_SCALE) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) px of the square of ``scale`` x the box's longer side,
  centred on the box (may reach outside the photo)."""
  x1, y1, x2, y2 = (float(v) for v in box_4)
  half = scale * max(x2 - x1, y2 - y1) / 2
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  left, top = round(cx - half), round(cy - half)
  side = max(1, round(2 * half))
  return left, top, left + side, top + side


def fit_face(photo: Image.Image, face: pipeline.Face, inp: FaceInput) -> np.ndarray:
  """(size, size, channels) uint8 model input of one detected ``face`` of ``photo``.

  Aligned: the face's template crop (``face.crop``, made by ``detect_and_align``), rounded and
  fitted as the dataset preparation fits its crops (``aligned.fit_aligned``). Centred: the
  square around the box, black where it leaves the photo (PIL's crop), then the run's fit.
  Both end in ``data.images.fit_image`` so grey/RGB and resizing match training.
  """
  fit = data_images.Fit(size=inp.size, crop=0, channels=inp.channels)
  if inp.template is not None:
    if face.crop is None:
      raise ValueError("an aligned FaceInput needs faces made with its template")
    return aligned.fit_aligned(align.to_uint8(face.crop), fit)
  return data_images.fit_image(photo.convert("RGB").crop(centred_square(face.box_4)), fit)
