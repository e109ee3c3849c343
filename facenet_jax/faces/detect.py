"""The MTCNN cascade: P-Net over an image pyramid, R-Net and O-Net refinement, five landmarks.

  detector = MTCNN("../shared/weights/mtcnn_weights.npz")
  faces = detector(rgb_HxWx3)          # Faces: boxes_Nx4, scores_N, landmarks_Nx5x2
  faces_per_image = detector.detect([rgb_a, rgb_b, ...])   # one batch

Stages (Zhang et al. 2016, and the order of their MATLAB ``detect_face.m``):

1. Pyramid: scales ``m * f**k`` with ``m = 12 / min_face_size``, ``f = scale_factor``, for
   every k whose scaled short side is still >= 12 px (P-Net's window). Each level is an
   area (box-filter) downscale of the image, as OpenCV's INTER_AREA in the original.
2. P-Net on every level: an output position (ox, oy) is the 12x12 window at (2 ox, 2 oy)
   of the level, i.e. ``[2 ox, 2 oy, 2 ox + 12, 2 oy + 12] / scale`` in the image. Windows
   scoring > thresholds[0] go through NMS per level (IoU 0.5), then per image (IoU 0.7);
   the survivors are moved by their box offsets (:func:`boxes.calibrate`) and squared.
3. R-Net on a 24x24 area-resampled crop of each box (zero = black outside the image):
   score > thresholds[1], NMS (IoU 0.7) on the boxes *before* regression, then regression
   and squaring.
4. O-Net on 48x48 crops: score > thresholds[2]; landmarks ``x1 + w * p`` on the box O-Net
   saw; regression, then NMS with overlap over the smaller box ("min", 0.7).

Compilation: pyramid levels are padded (bottom/right) to a few bucket sizes
(:func:`bucket`: multiples of 32 px up to 256, coarser above) and stacked into batches of a
power-of-two count, across all images of a call, so photos of mixed sizes reuse a handful of
compiled P-Net programs; only windows lying fully inside a level are read back, so the
padding changes no result. R-Net and O-Net batches are padded to powers of two as well.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

from facenet_jax.faces import boxes as box_ops
from facenet_jax.faces import nets
from infra.errors import UserError

PNET_WINDOW = 12   # px: P-Net's receptive field; its output stride is 2
PNET_STRIDE = 2


class FaceInputError(UserError, ValueError):
  """An image or a detector setting that cannot be used: says what was expected."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """Detector settings; the defaults are those of Zhang et al. / facenet-pytorch.

  min_face_size: smallest face (px) searched for; sets the first pyramid scale 12 / it.
  scale_factor: ratio between successive pyramid levels (0 < f < 1).
  thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
  nms_level, nms_pnet, nms_rnet: IoU thresholds of the per-level, per-image P-Net and
    the R-Net NMS; nms_onet: overlap-over-the-smaller-box threshold after O-Net.
  max_batch: most pyramid levels (P-Net) or crops / 16 (R/O-Net) per network call.
  """
  min_face_size: float = 20.0
  scale_factor: float = 0.709
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  nms_level: float = 0.5
  nms_pnet: float = 0.7
  nms_rnet: float = 0.7
  nms_onet: float = 0.7
  max_batch: int = 32

  def __post_init__(self):
    if not self.min_face_size > 0:
      raise FaceInputError(f"min_face_size must be > 0 px, got {self.min_face_size!r}")
    if not 0 < self.scale_factor < 1:
      raise FaceInputError(f"scale_factor must be in (0, 1), got {self.scale_factor!r}")
    if len(self.thresholds) != 3 or not all(0 <= t <= 1 for t in self.thresholds):
      raise FaceInputError(f"thresholds must be 3 probabilities, got {self.thresholds!r}")
    if self.max_batch < 1:
      raise FaceInputError(f"max_batch must be >= 1, got {self.max_batch!r}")


LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # image left/right


@dataclasses.dataclass
class Faces:
  """The faces found in one image, highest score first.

  boxes_Nx4: (x1, y1, x2, y2) px, not clipped to the image. scores_N: O-Net face
  probability. landmarks_Nx5x2: (x, y) of the eye, eye, nose, mouth corner, mouth corner,
  in :data:`LANDMARK_NAMES` order (left/right as seen in the image). note: why nothing
  could be searched (an image smaller than the minimum face size), else None.
  """
  boxes_Nx4: np.ndarray
  scores_N: np.ndarray
  landmarks_Nx5x2: np.ndarray
  note: str | None = None

  def __len__(self) -> int:
    return len(self.scores_N)

  @staticmethod
  def empty(note: str | None = None) -> "Faces":
    return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                 np.zeros((0, 5, 2), np.float32), note)

  def to_json(self) -> list[dict]:
    """``[{"box": [x1, y1, x2, y2], "score": p, "landmarks": {name: [x, y]}}, ...]``."""
    return [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 5),
             "landmarks": {n: [round(float(v), 2) for v in p] for n, p in zip(LANDMARK_NAMES, lm)}}
            for b, s, lm in zip(self.boxes_Nx4, self.scores_N, self.landmarks_Nx5x2)]


# ----------------------------------------------------------------------------- images


def to_rgb(image) -> np.ndarray:
  """An image as float32 (H, W, 3) RGB in 0..255: grey (H, W) or (H, W, 1) is repeated,
  RGBA drops its alpha (as infra.imagefile does); a PIL image is converted to RGB."""
  if isinstance(image, Image.Image):
    image = np.asarray(image.convert("RGB"))
  a = np.asarray(image)
  if a.ndim == 3 and a.shape[2] == 1:
    a = a[:, :, 0]
  if a.ndim == 2:
    a = np.repeat(a[:, :, None], 3, axis=2)
  elif a.ndim == 3 and a.shape[2] == 4:
    a = a[:, :, :3]
  if a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
    raise FaceInputError(f"expected an image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got an array of shape {a.shape}")
  if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
    raise FaceInputError(f"expected numeric pixels, got dtype {a.dtype}")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise FaceInputError("image has NaN or Inf pixels")
  return a


def area_resize(rgb_HxWx3: np.ndarray, h: int, w: int) -> np.ndarray:
  """Area (box-filter) resampling to (h, w, 3), channel by channel in PIL's float mode."""
  if rgb_HxWx3.shape[:2] == (h, w):
    return rgb_HxWx3
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb_HxWx3[:, :, c]), "F")
                      .resize((w, h), Image.Resampling.BOX)) for c in range(3)]
  return np.stack(chans, axis=2)


def pyramid_scales(height: int, width: int, min_face_size: float = 20.0,
                   scale_factor: float = 0.709) -> list[float]:
  """``m * f**k`` (m = 12 / min_face_size) for each k with ``min(h, w) * m * f**k >= 12``."""
  scales, s = [], PNET_WINDOW / min_face_size
  while min(height, width) * s >= PNET_WINDOW:
    scales.append(s)
    s *= scale_factor
  return scales


def bucket(n: int) -> int:
  """``n`` rounded up to a multiple of 32 (<= 256), then of 1/8 of its power of two (<= 12.5%
  padding), so pyramid levels of any photo fall into a few compiled shapes."""
  step = max(32, 2 ** max(0, math.ceil(math.log2(max(n, 1))) - 3))
  return -(-n // step) * step


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def crop_patches(rgb_HxWx3: np.ndarray, boxes_Nx4: np.ndarray, size: int) -> np.ndarray:
  """(N, size, size, 3): each box rounded to whole pixels, black outside the image, area
  resampled (Zhang et al.'s ``pad`` + resize)."""
  H, W = rgb_HxWx3.shape[:2]
  out = np.zeros((len(boxes_Nx4), size, size, 3), np.float32)
  for n, (x1, y1, x2, y2) in enumerate(np.round(boxes_Nx4).astype(np.int64)):
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    patch = np.zeros((y2 - y1, x2 - x1, 3), np.float32)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    if sx2 > sx1 and sy2 > sy1:
      patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = rgb_HxWx3[sy1:sy2, sx1:sx2]
    out[n] = area_resize(patch, size, size)
  return out


# ----------------------------------------------------------------------------- detector


class MTCNN:
  """Face detector: ``MTCNN(weights_path)(rgb) -> Faces``; ``.detect([rgb, ...])`` batches.

  ``weights``: the path of the MTCNN ``.npz`` (see ``nets.load_weights``) or an already
  loaded ``{"pnet": PNet, "rnet": RNet, "onet": ONet}``.
  """

  def __init__(self, weights: str | os.PathLike | dict, settings: Settings = Settings()):
    loaded = weights if isinstance(weights, dict) else nets.load_weights(weights)
    self.settings = settings
    self.pnet, self.rnet, self.onet = (nets.Jitted(loaded[k]) for k in ("pnet", "rnet", "onet"))

  def __call__(self, image) -> Faces:
    return self.detect([image])[0]

  def detect(self, images: Sequence) -> list[Faces]:
    """Faces of each image, one batch through each network (see the module docstring)."""
    st = self.settings
    rgbs = [to_rgb(im) for im in images]
    img_N, boxes_Nx4, _ = self._proposals(rgbs)
    if len(img_N):
      off_Nx4, score_N = self._run(self.rnet, rgbs, img_N, boxes_Nx4, 24)[:2]
      ok = score_N > st.thresholds[1]
      img_N, boxes_Nx4, off_Nx4, score_N = img_N[ok], boxes_Nx4[ok], off_Nx4[ok], score_N[ok]
      keep = box_ops.nms_per_group(boxes_Nx4, score_N, img_N, st.nms_rnet)
      img_N = img_N[keep]
      boxes_Nx4 = box_ops.square(box_ops.calibrate(boxes_Nx4[keep], off_Nx4[keep]))
    lms_Nx5x2, score_N = np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32)
    if len(img_N):
      off_Nx4, lm_Nx10, score_N = self._run(self.onet, rgbs, img_N, boxes_Nx4, 48)
      ok = score_N > st.thresholds[2]
      img_N, boxes_Nx4, off_Nx4, lm_Nx10, score_N = (
          img_N[ok], boxes_Nx4[ok], off_Nx4[ok], lm_Nx10[ok], score_N[ok])
      wh_Nx1x2 = (boxes_Nx4[:, 2:] - boxes_Nx4[:, :2])[:, None, :]
      lms_Nx5x2 = boxes_Nx4[:, None, :2] + wh_Nx1x2 * np.stack([lm_Nx10[:, :5], lm_Nx10[:, 5:]], -1)
      boxes_Nx4 = box_ops.calibrate(boxes_Nx4, off_Nx4)
      keep = box_ops.nms_per_group(boxes_Nx4, score_N, img_N, st.nms_onet, "min")
      img_N, boxes_Nx4, score_N, lms_Nx5x2 = img_N[keep], boxes_Nx4[keep], score_N[keep], lms_Nx5x2[keep]
    out = []
    for i, rgb in enumerate(rgbs):
      sel = np.flatnonzero(img_N == i)
      sel = sel[np.argsort(-score_N[sel], kind="stable")]
      note = None
      if not pyramid_scales(*rgb.shape[:2], st.min_face_size, st.scale_factor):
        note = (f"{rgb.shape[1]}x{rgb.shape[0]} px image is smaller than min_face_size="
                f"{st.min_face_size:g} px: no face can be found in it")
      out.append(Faces(boxes_Nx4[sel].astype(np.float32), score_N[sel].astype(np.float32),
                       lms_Nx5x2[sel].astype(np.float32), note))
    return out

  def _proposals(self, rgbs: list[np.ndarray]):
    """Stage 1 over all images: (image index N, squared calibrated boxes Nx4, scores N)."""
    st = self.settings
    levels, arrays = [], []   # (image, sy, sx, h, w) and the resampled level
    for i, rgb in enumerate(rgbs):
      H, W = rgb.shape[:2]
      for s in pyramid_scales(H, W, st.min_face_size, st.scale_factor):
        h, w = max(PNET_WINDOW, math.ceil(H * s)), max(PNET_WINDOW, math.ceil(W * s))
        levels.append((i, h / H, w / W, h, w))
        arrays.append(area_resize(rgb, h, w))
    groups: dict[tuple[int, int], list[int]] = {}
    for li, (_, _, _, h, w) in enumerate(levels):
      groups.setdefault((bucket(h), bucket(w)), []).append(li)
    pending = []   # dispatch every batch before reading any back (the device runs ahead)
    for (hb, wb), idx in groups.items():
      for c in range(0, len(idx), st.max_batch):
        chunk = idx[c:c + st.max_batch]
        batch = np.zeros((_pow2(len(chunk)), hb, wb, 3), np.float32)
        for j, li in enumerate(chunk):
          batch[j, :levels[li][3], :levels[li][4]] = arrays[li]
        pending.append((chunk, self.pnet(batch)))
    img, boxes, scores, offs = [], [], [], []
    for chunk, (off, prob) in pending:
      off, prob = np.asarray(off), np.asarray(prob)
      for j, li in enumerate(chunk):
        i, sy, sx, h, w = levels[li]
        # only windows fully inside the level: padding never reaches a result
        p = prob[j, :(h - PNET_WINDOW) // PNET_STRIDE + 1, :(w - PNET_WINDOW) // PNET_STRIDE + 1]
        oy, ox = np.nonzero(p > st.thresholds[0])
        if not len(oy):
          continue
        b = np.stack([PNET_STRIDE * ox / sx, PNET_STRIDE * oy / sy,
                      (PNET_STRIDE * ox + PNET_WINDOW) / sx, (PNET_STRIDE * oy + PNET_WINDOW) / sy], 1)
        k = box_ops.nms(b, p[oy, ox], st.nms_level)
        img.append(np.full(len(k), i)), boxes.append(b[k]), scores.append(p[oy, ox][k])
        offs.append(off[j, oy[k], ox[k]])
    if not img:
      return np.zeros((0,), np.int64), np.zeros((0, 4)), np.zeros((0,))
    img_N, boxes_Nx4, score_N, off_Nx4 = (np.concatenate(a) for a in (img, boxes, scores, offs))
    keep = box_ops.nms_per_group(boxes_Nx4, score_N, img_N, st.nms_pnet)
    boxes_Nx4 = box_ops.square(box_ops.calibrate(boxes_Nx4[keep], off_Nx4[keep].astype(np.float64)))
    return img_N[keep], boxes_Nx4, score_N[keep]

  def _run(self, net: nets.Jitted, rgbs, img_N, boxes_Nx4, size: int):
    """``net`` on the size x size crops of every box, in power-of-two batches; NumPy outputs."""
    crops = np.concatenate([crop_patches(rgbs[i], boxes_Nx4[img_N == i], size)
                            for i in np.unique(img_N)])
    order = np.concatenate([np.flatnonzero(img_N == i) for i in np.unique(img_N)])
    chunk = 16 * self.settings.max_batch
    outs = []
    for c in range(0, len(crops), chunk):
      part = crops[c:c + chunk]
      batch = np.zeros((max(16, _pow2(len(part))), size, size, 3), np.float32)
      batch[:len(part)] = part
      outs.append((len(part), net(batch)))
    results = [np.concatenate([np.asarray(o[k])[:n] for n, o in outs]) for k in range(len(outs[0][1]))]
    unsorted = [np.empty_like(r) for r in results]
    for u, r in zip(unsorted, results):
      u[order] = r
    return [u.astype(np.float64) for u in unsorted]
