"""Face alignment: a similarity transform from five landmarks to a template, and the warp.

  M_2x3 = similarity_transform(landmarks_5x2, arcface_template())   # least squares
  crop = warp_affine(rgb_HxWx3, M_2x3, (112, 112))                  # aligned face

Landmark order everywhere is the detector's (``faces.detect.LANDMARK_NAMES``): eye, eye,
nose, mouth corner, mouth corner, left/right as seen in the image. Coordinates are pixel
indices (pixel (i, j) at x = j, y = i), the convention of OpenCV's ``warpAffine`` that the
ArcFace template was made for.

Similarity (Umeyama 1991, "Least-squares estimation of transformation parameters between
two point patterns"): the scale s, rotation R and translation t minimising
``sum_k || dst_k - (s R src_k + t) ||^2``. With the centred points ``a = src - mean(src)``,
``b = dst - mean(dst)``: ``U S V^T = svd(b^T a / K)``, ``D = diag(1, sign(det U det V))``,
``R = U D V^T``, ``s = trace(S D) / (sum ||a||^2 / K)``, ``t = mean(dst) - s R mean(src)``.
It is the same minimiser as linear least squares on the four parameters (a, b, tx, ty) of
``[[a, -b, tx], [b, a, ty]]``, which the tests use as the reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# insightface's 112x112 ArcFace template (arcface_torch / insightface.utils.face_align)
ARCFACE_112_5x2 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def arcface_template(size: int = 112) -> np.ndarray:
  """The ArcFace five-point template for a size x size crop (scaled from 112)."""
  return ARCFACE_112_5x2 * np.float32(size / 112.0)


def facenet_template(size: int = 160, margin: float = 32.0) -> np.ndarray:
  """The ArcFace points fitted into the central (size - margin) px of a size x size crop:
  a FaceNet-style 160x160 input with ``margin`` px of context in all (margin / 2 a side),
  as Schroff et al.'s / davidsandberg's crops keep 32 px of margin around the face box."""
  inner = size - margin
  return ARCFACE_112_5x2 * np.float32(inner / 112.0) + np.float32(margin / 2)


TEMPLATES = {"arcface112": (arcface_template, 112), "facenet160": (facenet_template, 160)}


@jax.jit
def similarity_transform(src_Kx2: jax.Array, dst_Kx2: jax.Array) -> jax.Array:
  """The 2x3 matrix ``[s R | t]`` mapping ``src`` onto ``dst`` in least squares (Umeyama,
  no reflection). Batched inputs (..., K, 2) give (..., 2, 3)."""
  src = jnp.asarray(src_Kx2, jnp.float32)
  dst = jnp.asarray(dst_Kx2, jnp.float32)
  mu_s, mu_d = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
  a, b = src - mu_s, dst - mu_d
  cov = jnp.swapaxes(b, -1, -2) @ a / src.shape[-2]
  U, S, Vt = jnp.linalg.svd(cov)
  d = jnp.sign(jnp.linalg.det(U) * jnp.linalg.det(Vt))
  D = jnp.stack([jnp.ones_like(d), d], -1)   # diag(1, d): no reflection
  R = (U * D[..., None, :]) @ Vt
  var_s = jnp.sum(a * a, axis=(-2, -1)) / src.shape[-2]
  s = jnp.sum(S * D, -1) / var_s
  t = mu_d[..., 0, :] - s[..., None] * jnp.einsum("...ij,...j->...i", R, mu_s[..., 0, :])
  return jnp.concatenate([s[..., None, None] * R, t[..., :, None]], -1)


def apply_transform(M_2x3, points_Kx2):
  """``M @ [x, y, 1]`` for each point: (K, 2)."""
  M = jnp.asarray(M_2x3)
  return jnp.asarray(points_Kx2) @ M[:, :2].T + M[:, 2]


@functools.partial(jax.jit, static_argnames=("size",))
def warp_affine(rgb_HxWx3: jax.Array, M_2x3: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Output pixel (x, y) = bilinear sample of the image at ``M^-1 (x, y)``, 0 outside the
  image (OpenCV ``warpAffine`` with BORDER_CONSTANT 0). ``M_2x3`` may be batched (F, 2, 3)
  -> (F, h, w, C). ``size`` = (h, w)."""
  img = jnp.asarray(rgb_HxWx3, jnp.float32)
  M = jnp.asarray(M_2x3, jnp.float32)
  batched = M.ndim == 3
  M = M if batched else M[None]
  h, w = size
  A, t = M[:, :, :2], M[:, :, 2]
  Ainv = jnp.linalg.inv(A)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  grid = jnp.stack([xs, ys], -1).reshape(-1, 2)                       # (h*w, 2) as (x, y)
  src = jnp.einsum("fij,fpj->fpi", Ainv, grid[None] - t[:, None, :])  # (F, h*w, 2)
  out = jax.vmap(lambda p: _bilinear(img, p[:, 0], p[:, 1]))(src)
  out = out.reshape(M.shape[0], h, w, img.shape[-1])
  return out if batched else out[0]


def _bilinear(img: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """Bilinear samples of (H, W, C) at float (x, y), zero outside the image: (P, C)."""
  H, W = img.shape[:2]
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]

  def at(yy, xx):
    inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    v = img[jnp.clip(yy, 0, H - 1).astype(jnp.int32), jnp.clip(xx, 0, W - 1).astype(jnp.int32)]
    return jnp.where(inside[:, None], v, 0.0)

  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
          + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def _pad_to_bucket(rgb_HxWx3: np.ndarray) -> np.ndarray:
  """Zero-pads bottom/right to multiples of 64 px: the warp reads zeros outside the image
  either way, so results are unchanged, and photos of nearby sizes share one compiled warp."""
  H, W = rgb_HxWx3.shape[:2]
  out = np.zeros((-(-H // 64) * 64, -(-W // 64) * 64, rgb_HxWx3.shape[2]), np.float32)
  out[:H, :W] = rgb_HxWx3
  return out


def to_uint8(crops: np.ndarray) -> np.ndarray:
  """Crops of :func:`align_faces` (float 0..255, any shape, e.g. (S, S, 3)) as uint8 pixels of
  the same shape, rounded to the nearest level: what is stored, written and embedded."""
  return np.clip(np.asarray(crops) + 0.5, 0, 255).astype(np.uint8)


def align_faces(rgb_HxWx3: np.ndarray, landmarks_Fx5x2: np.ndarray,
                template: str = "arcface112") -> np.ndarray:
  """(F, size, size, 3) float32 crops, each face's landmarks warped onto ``template``
  (a :data:`TEMPLATES` key)."""
  make, size = TEMPLATES[template]
  F = len(landmarks_Fx5x2)
  if F == 0:
    return np.zeros((0, size, size, 3), np.float32)
  dst = np.broadcast_to(make(size), (F, 5, 2))
  M = similarity_transform(np.asarray(landmarks_Fx5x2, np.float32), dst)
  return np.asarray(warp_affine(_pad_to_bucket(np.asarray(rgb_HxWx3, np.float32)), M, (size, size)))
