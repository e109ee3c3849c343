"""The MTCNN cascade: P-Net over an image pyramid, R-Net and O-Net refinement, five landmarks.

  detector = MTCNN("../shared/weights/mtcnn_weights.npz")
  faces = detector(rgb_HxWx3)          # Faces: boxes_Nx4, scores_N, landmarks_Nx5x2
  faces_per_image = detector.detect([rgb_a, rgb_b, ...])   # one batch

Stages, step for step as the ``mtcnn`` 1.0.0 package (whose weights these are) computes them,
so that its detections are reproduced (benchmarks/mtcnn_reference.py checks this on LFW):

1. Pyramid: scales ``m * f**k`` with ``m = 12 / min_face_size``, ``f = scale_factor``, for
   every k whose scaled short side is still >= 12 px (P-Net's window). Level k is an area
   (box-filter) resampling of the image to ``int(H * s), int(W * s)`` px (TensorFlow's AREA
   resize, truncated sizes), done as two matrix products (:func:`area_matrix`).
2. P-Net on every level: output position (ox, oy) is the 12x12 window at (2 ox, 2 oy) of the
   level, which the package writes as ``[2 ox + 1, 2 oy + 1, 2 ox + 12, 2 oy + 12]``; windows
   scoring > thresholds[0] are moved by their regression (times 11, that box's width) and
   mapped to the image by ``/ s``; NMS per level (IoU 0.5), then per image
   (IoU 0.7), then squared.
3. R-Net on a 24x24 bilinear crop of each box (TensorFlow's ``crop_and_resize`` with the box
   divided by the image size; 0, i.e. grey 127.5, outside the image): box regression
   (widths ``x2 - x1 + 1``), score > thresholds[1], NMS (IoU 0.7), squaring.
4. O-Net on 48x48 crops: landmarks ``x1 - 1 + (x2 - x1 + 1) * p`` on the box O-Net saw,
   regression, score > thresholds[2], NMS with overlap over the smaller box ("min", 0.7).

NMS is the package's (:func:`boxes.nms_fast`). The package's own default O-Net threshold is
0.8 (:meth:`Settings.reference`); this detector's default is Zhang et al.'s 0.7.

Compilation and batching: images are padded (bottom/right) to bucket sizes (:func:`bucket`:
multiples of 32 px up to 256, coarser above) and batched by bucket in power-of-two counts;
one jitted call per batch resamples every pyramid level (two matrix products) and runs P-Net
on all of them (a -inf
mask ends each level where its real size ends, so padding changes no result). R-Net and
O-Net each run once per call on the crops of all boxes of all images (cut on the device from
the padded images), their count padded to 1, 2, 4, 8, 12, 16, 24, 32, ... A handful of
programs serve photos of any size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from facenet_jax.faces import boxes as box_ops
from facenet_jax.faces import nets
from infra import convolution
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
  max_batch: most images (P-Net) or crops / 16 (R/O-Net) per network call; None:
    ``infra.convolution.detector_batch()``, 1 on a CPU (on the 2-core benchmark machine 32 cost
    about 20% more CPU per photo; benchmarks/RESULTS.md 8b), 32 on an accelerator (not measured).
  workers: host threads sharing a ``detect`` batch, each a contiguous part of its photos; None:
    ``infra.convolution.detector_workers()``, 2 on a CPU of 2 cores or more, 1 on an
    accelerator. Only how the work is spread: the faces found are the same.
  """
  min_face_size: float = 20.0
  scale_factor: float = 0.709
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  nms_level: float = 0.5
  nms_pnet: float = 0.7
  nms_rnet: float = 0.7
  nms_onet: float = 0.7
  max_batch: int | None = None
  workers: int | None = None

  def __post_init__(self):
    if not self.min_face_size > 0:
      raise FaceInputError(f"min_face_size must be > 0 px, got {self.min_face_size!r}")
    if not 0 < self.scale_factor < 1:
      raise FaceInputError(f"scale_factor must be in (0, 1), got {self.scale_factor!r}")
    if len(self.thresholds) != 3 or not all(0 <= t <= 1 for t in self.thresholds):
      raise FaceInputError(f"thresholds must be 3 probabilities, got {self.thresholds!r}")
    if self.max_batch is not None and self.max_batch < 1:
      raise FaceInputError(f"max_batch must be >= 1, got {self.max_batch!r}")
    if self.workers is not None and self.workers < 1:
      raise FaceInputError(f"workers must be >= 1, got {self.workers!r}")

  @staticmethod
  def reference() -> "Settings":
    """The ``mtcnn`` 1.0.0 package's defaults: as these, with the O-Net threshold at 0.8."""
    return Settings(thresholds=(0.6, 0.7, 0.8))


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


@functools.lru_cache(maxsize=512)
def area_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) weights of an area resampling from n_in to n_out pixels: output i averages
  input [i r, (i + 1) r), r = n_in / n_out, each input pixel weighted by the length of its
  overlap (TensorFlow's AREA resize)."""
  r = n_in / n_out
  i = np.arange(n_out, dtype=np.float64)[:, None]
  j = np.arange(n_in, dtype=np.float64)[None, :]
  w = np.clip(np.minimum((i + 1) * r, j + 1) - np.maximum(i * r, j), 0, None) / r
  w = w.astype(np.float32)
  w.flags.writeable = False
  return w


def area_resize(rgb_HxWx3: np.ndarray, h: int, w: int) -> np.ndarray:
  """Area (box-filter) resampling to (h, w, 3), as a pyramid level is made."""
  H, W = rgb_HxWx3.shape[:2]
  if (H, W) == (h, w):
    return rgb_HxWx3
  return np.einsum("ih,hwc,jw->ijc", area_matrix(h, H), np.asarray(rgb_HxWx3, np.float32),
                   area_matrix(w, W), optimize=True).astype(np.float32)


def pyramid_scales(height: int, width: int, min_face_size: float = 20.0,
                   scale_factor: float = 0.709) -> list[float]:
  """``m * f**k`` (m = 12 / min_face_size) for each k with ``min(h, w) * m * f**k >= 12``."""
  m, k = PNET_WINDOW / min_face_size, 0
  while min(height, width) * m * scale_factor ** k >= PNET_WINDOW:
    k += 1
  return [float(v) for v in m * scale_factor ** np.arange(k)]


def level_size(n: int, scale: float) -> int:
  """Pixels of a pyramid level: ``int(n * scale)`` (truncated, as TensorFlow sizes it)."""
  return int(n * scale)


def bucket(n: int) -> int:
  """``n`` rounded up to a multiple of 32 (<= 256), then of 1/8 of its power of two (<= 12.5%
  padding), so photos of any size fall into a few compiled shapes."""
  step = max(32, 2 ** max(0, math.ceil(math.log2(max(n, 1))) - 3))
  return -(-n // step) * step


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


# ----------------------------------------------------------------------------- device programs


def _pnet_pyramid(graphdef, treedef, leaves, images_BxHxWx3, mats, valid_BxKx2):
  """P-Net on every pyramid level of a batch of padded images: ((offsets, prob), ...) per level.
  mats: per level the (B, h, H) and (B, w, W) area matrices of each image (zero-padded)."""
  net = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
  x = nets.normalize(images_BxHxWx3)
  outs = []
  for k, (ay, ax) in enumerate(mats):
    lvl = jnp.einsum("bih,bhwc->biwc", ay, x, precision=jax.lax.Precision.HIGHEST)
    lvl = jnp.einsum("bjw,biwc->bijc", ax, lvl, precision=jax.lax.Precision.HIGHEST)
    outs.append(net(lvl, valid_BxKx2[:, k]))
  return tuple(outs)


def crop_and_resize(x_BxHxWxC: jax.Array, img_N: jax.Array, boxes_Nx4: jax.Array, hw_Nx2: jax.Array,
                    size: int) -> jax.Array:
  """(N, size, size, C) bilinear crops, as TensorFlow's ``crop_and_resize``: boxes are
  (y1, x1, y2, x2) as fractions of each image's real (H, W) (``hw_Nx2``); sample t of a crop
  reads ``y1 (H - 1) + t (y2 - y1) (H - 1) / (size - 1)``; samples outside [0, H - 1] are 0."""
  f32 = jnp.float32
  y1, x1, y2, x2 = (boxes_Nx4[:, i:i + 1].astype(f32) for i in range(4))
  hm1, wm1 = hw_Nx2[:, 0:1].astype(f32) - 1, hw_Nx2[:, 1:2].astype(f32) - 1
  t = jnp.arange(size, dtype=f32)[None]
  in_y = y1 * hm1 + t * ((y2 - y1) * hm1 / (size - 1))
  in_x = x1 * wm1 + t * ((x2 - x1) * wm1 / (size - 1))
  ok = (((in_y >= 0) & (in_y <= hm1))[:, :, None] & ((in_x >= 0) & (in_x <= wm1))[:, None, :])
  H, W = x_BxHxWxC.shape[1:3]
  y0, x0 = jnp.floor(in_y), jnp.floor(in_x)
  ly, lx = (in_y - y0)[:, :, None, None], (in_x - x0)[:, None, :, None]
  yt, yb = (jnp.clip(v, 0, H - 1).astype(jnp.int32) for v in (y0, jnp.ceil(in_y)))
  xl, xr = (jnp.clip(v, 0, W - 1).astype(jnp.int32) for v in (x0, jnp.ceil(in_x)))
  n = img_N[:, None, None]
  g = lambda yy, xx: x_BxHxWxC[n, yy[:, :, None], xx[:, None, :]]
  top_left, top_right, bottom_left, bottom_right = g(yt, xl), g(yt, xr), g(yb, xl), g(yb, xr)
  top = top_left + (top_right - top_left) * lx
  bottom = bottom_left + (bottom_right - bottom_left) * lx
  return jnp.where(ok[..., None], top + (bottom - top) * ly, 0.0)


def _crops_net(graphdef, treedef, size, leaves, images_BxHxWx3, img_N, boxes_Nx4, hw_Nx2):
  """R-Net or O-Net on size x size crops of normalized images (crops cut on the device)."""
  crops = crop_and_resize(nets.normalize(images_BxHxWx3), img_N, boxes_Nx4, hw_Nx2, size)
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(crops)


@functools.lru_cache(maxsize=64)
def _jitted(fn, graphdef, treedef, options: tuple[tuple[str, str], ...], *static):
  """``fn`` jitted with the network's structure bound: hashed once per detector, not per call
  (a flat list of arrays then flattens fast on every call; an NNX State is walked in Python).
  ``options``: XLA compiler options as sorted (name, value) pairs (hashable for the cache)."""
  return jax.jit(functools.partial(fn, graphdef, treedef, *static),
                 compiler_options=dict(options) or None)


def _split(net: nnx.Module):
  """(graphdef, treedef, leaves) of a network."""
  graphdef, state = nnx.split(net)
  leaves, treedef = jax.tree.flatten(state)
  return graphdef, treedef, leaves


def _count_bucket(n: int) -> int:
  """Crops per R-Net/O-Net call, padded: 1, 2, 4, 8, then 2^k or 1.5 * 2^k (<= 33% padding)."""
  if n <= 8:
    return _pow2(n)
  p = _pow2(n)
  return p * 3 // 4 if n <= p * 3 // 4 else p


# ----------------------------------------------------------------------------- detector


class MTCNN:
  """Face detector: ``MTCNN(weights_path)(rgb) -> Faces``; ``.detect([rgb, ...])`` batches.

  ``weights``: the path of the MTCNN ``.npz`` (see ``nets.load_weights``) or an already
  loaded ``{"pnet": PNet, "rnet": RNet, "onet": ONet}``.
  """

  def __init__(self, weights: str | os.PathLike | dict, settings: Settings = Settings()):
    loaded = weights if isinstance(weights, dict) else nets.load_weights(weights)
    self.settings = settings
    self.max_batch = settings.max_batch or convolution.detector_batch()
    self.workers = settings.workers or convolution.detector_workers()
    self._pool = None   # the workers' threads, started by the first batch that uses them
    self._levels_lock = threading.Lock()
    (pg, pt, self._pnet_leaves), (rg, rt, self._rnet_leaves), (og, ot, self._onet_leaves) = (
        _split(loaded[k]) for k in ("pnet", "rnet", "onet"))
    # on a CPU: convolutions by XLA's own emitter, not YNNPACK (faster on these small layers)
    options = tuple(sorted(convolution.detector_compiler_options().items()))
    self._pnet = _jitted(_pnet_pyramid, pg, pt, options)
    self._levels: dict = {}   # _level_inputs' device arrays by image shapes
    self._rnet = _jitted(_crops_net, rg, rt, options, 24)
    self._onet = _jitted(_crops_net, og, ot, options, 48)

  def __call__(self, image) -> Faces:
    return self.detect([image])[0]

  def detect(self, images: Sequence) -> list[Faces]:
    """Faces of each image, one batch through each network (see the module docstring); on a
    CPU the photos are split between ``workers`` threads, each running its part's cascade."""
    st = self.settings
    rgbs = [to_rgb(im) for im in images]
    # photos of one padded shape together: the crop networks' batch is padded to its largest
    # photo, so one 8000 x 6000 photo among 15 small ones made a 16 x 8000 x 6000 float array
    # (9 GB); each photo's faces do not depend on the others in its batch
    groups: dict[tuple[int, int], list[int]] = {}
    for i, rgb in enumerate(rgbs):
      groups.setdefault((bucket(rgb.shape[0]), bucket(rgb.shape[1])), []).append(i)
    out: list[Faces] = [Faces.empty()] * len(rgbs)
    for idx in groups.values():
      for i, faces in zip(idx, self._detect_group([rgbs[i] for i in idx])):
        out[i] = faces
    for rgb, faces in zip(rgbs, out):
      if not pyramid_scales(*rgb.shape[:2], st.min_face_size, st.scale_factor):
        faces.note = (f"{rgb.shape[1]}x{rgb.shape[0]} px image is smaller than min_face_size="
                      f"{st.min_face_size:g} px: no face can be found in it")
    return out

  def _detect_group(self, rgbs: list[np.ndarray]) -> list[Faces]:
    """Faces of photos of one padded shape; on a CPU split between the ``workers`` threads."""
    n = -(-len(rgbs) // self.workers)          # photos per worker
    parts = [rgbs[c:c + n] for c in range(0, len(rgbs), n)]
    if len(parts) <= 1:
      return self._faces(rgbs)
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, "mtcnn")
    return [f for part in self._pool.map(self._faces, parts) for f in part]

  def _faces(self, rgbs: list[np.ndarray]) -> list[Faces]:
    """One worker's part: the cascade over these photos, their Faces in order."""
    out = [Faces.empty() for _ in rgbs]
    if rgbs:
      self._cascade(rgbs, out)
    return out

  def _cascade(self, rgbs: list[np.ndarray], out: list[Faces]):
    st = self.settings
    img_N, boxes_Nx4 = self._proposals(rgbs)
    if not len(img_N):
      return
    # all images once on the device, padded to one shape, for the R-Net and O-Net crops
    Hb, Wb = bucket(max(r.shape[0] for r in rgbs)), bucket(max(r.shape[1] for r in rgbs))
    batch = np.zeros((_pow2(len(rgbs)), Hb, Wb, 3), np.float32)
    for i, r in enumerate(rgbs):
      batch[i, :r.shape[0], :r.shape[1]] = r
    images = jnp.asarray(batch)
    hw = np.array([r.shape[:2] for r in rgbs], np.float64)

    off_Nx4, score_N = self._refine(self._rnet, self._rnet_leaves, images, hw, img_N, boxes_Nx4)
    boxes_Nx4 = box_ops.calibrate(boxes_Nx4, off_Nx4)
    ok = score_N > st.thresholds[1]
    img_N, boxes_Nx4, score_N = img_N[ok], boxes_Nx4[ok], score_N[ok]
    keep = self._nms(img_N, boxes_Nx4, score_N, st.nms_rnet, "union")
    img_N, boxes_Nx4 = img_N[keep], box_ops.square(boxes_Nx4[keep])
    if not len(img_N):
      return

    off_Nx4, lm_Nx10, score_N = self._refine(self._onet, self._onet_leaves, images, hw, img_N,
                                             boxes_Nx4)
    wh_Nx1x2 = (boxes_Nx4[:, 2:] - boxes_Nx4[:, :2] + 1)[:, None, :]
    lms_Nx5x2 = boxes_Nx4[:, None, :2] - 1 + wh_Nx1x2 * np.stack([lm_Nx10[:, :5], lm_Nx10[:, 5:]], -1)
    boxes_Nx4 = box_ops.calibrate(boxes_Nx4, off_Nx4)
    ok = score_N > st.thresholds[2]
    img_N, boxes_Nx4, score_N, lms_Nx5x2 = img_N[ok], boxes_Nx4[ok], score_N[ok], lms_Nx5x2[ok]
    keep = self._nms(img_N, boxes_Nx4, score_N, st.nms_onet, "min")   # per image, by score
    for i in np.unique(img_N[keep]):
      sel = keep[img_N[keep] == i]
      out[i] = Faces(boxes_Nx4[sel].astype(np.float32), score_N[sel].astype(np.float32),
                     lms_Nx5x2[sel].astype(np.float32))

  @staticmethod
  def _nms(img_N, boxes_Nx4, score_N, threshold, method) -> np.ndarray:
    """Per image: indices by descending score that NMS keeps, images in order."""
    keep = []
    for i in np.unique(img_N):
      idx = np.flatnonzero(img_N == i)
      idx = idx[box_ops.order_desc(score_N[idx])]
      keep.append(idx[box_ops.nms_fast(boxes_Nx4[idx], threshold, method)])
    return np.concatenate(keep) if keep else np.zeros((0,), np.int64)

  def _proposals(self, rgbs: list[np.ndarray]):
    """Stage 1 over all images: (image index N, squared boxes Nx4)."""
    st = self.settings
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(rgbs):
      if pyramid_scales(*r.shape[:2], st.min_face_size, st.scale_factor):
        groups.setdefault((bucket(r.shape[0]), bucket(r.shape[1])), []).append(i)
    pending = []   # dispatch every batch before reading any back (the device runs ahead)
    for (Hb, Wb), idx in groups.items():
      for c in range(0, len(idx), self.max_batch):
        chunk = idx[c:c + self.max_batch]
        B = _pow2(len(chunk))
        batch = np.zeros((B, Hb, Wb, 3), np.float32)
        for j, i in enumerate(chunk):
          batch[j, :rgbs[i].shape[0], :rgbs[i].shape[1]] = rgbs[i]
        shapes = tuple(rgbs[i].shape[:2] for i in chunk)
        mats, valid, sizes = self._level_inputs(shapes, B, Hb, Wb)
        res = self._pnet(self._pnet_leaves, batch, mats, valid)
        pending.append((chunk, sizes, res))
    img, boxes = [], []
    for chunk, sizes, res in pending:
      res = [(np.asarray(o), np.asarray(p)) for o, p in res]
      for j, i in enumerate(chunk):
        b, sc = [], []
        for k, (s, h, w) in enumerate(sizes[j]):
          oh, ow = (h - 1) // 2 - 4, (w - 1) // 2 - 4   # P-Net outputs of an h x w level
          p = res[k][1][j, :oh, :ow]
          oy, ox = np.nonzero(p > st.thresholds[0])
          if not len(oy):
            continue
          r = res[k][0][j, oy, ox].astype(np.float64)
          # the package's window: pixels 2 o + 1 .. 2 o + 12, 11 px wide for the regression
          win = np.stack([PNET_STRIDE * ox + 1, PNET_STRIDE * oy + 1,
                          PNET_STRIDE * ox + PNET_WINDOW, PNET_STRIDE * oy + PNET_WINDOW], 1)
          bk = (win + r * (PNET_WINDOW - 1)) / s
          score = p[oy, ox]
          order = box_ops.order_desc(score)
          keep = order[box_ops.nms_fast(bk[order], st.nms_level)]
          b.append(bk[keep]), sc.append(score[keep])
        if not b:
          continue
        b, sc = np.concatenate(b), np.concatenate(sc)
        order = box_ops.order_desc(sc)
        keep = order[box_ops.nms_fast(b[order], st.nms_pnet)]
        img.append(np.full(len(keep), i)), boxes.append(box_ops.square(b[keep]))
    if not img:
      return np.zeros((0,), np.int64), np.zeros((0, 4))
    return np.concatenate(img), np.concatenate(boxes)

  def _level_inputs(self, shapes, B: int, Hb: int, Wb: int):
    """The pyramid's area matrices and real level sizes for a batch of images of these (H, W)
    shapes, padded to (Hb, Wb) and B images; kept on the device for the shapes last seen
    (photos of one size, as a dataset's, reuse them on every call)."""
    key = (shapes, B, Hb, Wb)
    with self._levels_lock:    # the workers share the cache
      if key not in self._levels:
        if len(self._levels) >= 16:
          self._levels.pop(next(iter(self._levels)))
        self._levels[key] = self._make_level_inputs(shapes, B, Hb, Wb)
      return self._levels[key]

  def _make_level_inputs(self, shapes, B: int, Hb: int, Wb: int):
    st = self.settings
    lv = [(level_size(Hb, s), level_size(Wb, s))
          for s in pyramid_scales(Hb, Wb, st.min_face_size, st.scale_factor)]
    mats = [(np.zeros((B, h, Hb), np.float32), np.zeros((B, w, Wb), np.float32)) for h, w in lv]
    valid = np.zeros((B, len(lv), 2), np.int32)
    sizes = []
    for j, (H, W) in enumerate(shapes):
      mine = []
      for k, s in enumerate(pyramid_scales(H, W, st.min_face_size, st.scale_factor)):
        h, w = level_size(H, s), level_size(W, s)
        mats[k][0][j, :h, :H] = area_matrix(h, H)
        mats[k][1][j, :w, :W] = area_matrix(w, W)
        valid[j, k] = (h - 2, w - 2)
        mine.append((s, h, w))
      sizes.append(mine)
    return jax.device_put(tuple(mats)), jax.device_put(valid), sizes

  def _refine(self, fn, leaves, images, hw_Bx2, img_N, boxes_Nx4):
    """R-Net or O-Net on the size x size crop of every box, in power-of-two batches."""
    H, W = hw_Bx2[img_N, 0:1], hw_Bx2[img_N, 1:2]
    norm = np.concatenate([boxes_Nx4[:, 1:2] / H, boxes_Nx4[:, 0:1] / W,
                           boxes_Nx4[:, 3:4] / H, boxes_Nx4[:, 2:3] / W], 1).astype(np.float32)
    hw_N = hw_Bx2[img_N].astype(np.float32)
    chunk = 16 * self.max_batch
    outs = []
    for c in range(0, len(norm), chunk):
      n = len(norm[c:c + chunk])
      B = _count_bucket(n)
      pad = lambda a: np.concatenate([a[c:c + chunk], np.zeros((B - n,) + a.shape[1:], a.dtype)])
      outs.append((n, fn(leaves, images, pad(img_N.astype(np.int32)), pad(norm), pad(hw_N))))
    return [np.concatenate([np.asarray(o[k])[:n] for n, o in outs]).astype(np.float64)
            for k in range(len(outs[0][1]))]
