"""On-device preprocessing: uint8 -> float, and training augmentation, for any conv rank.

Runs inside the jitted step on the global batch with a key derived from (seed, step),
so augmentation is the same on 1 device or 8 and after a resume.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

Array = jax.Array


def to_float(x: Array) -> Array:
  """uint8 0..255 -> float32 in [-1, 1]; float inputs pass through unchanged."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.float32) / 127.5 - 1.0
  return x.astype(jnp.float32)


def augment(x_BxSxC: Array, key: Array, *, flip: bool, crop_pad: int, scale: float = 0.0,
            rotate: float = 0.0, brightness: float = 0.0, contrast: float = 0.0) -> Array:
  """Random training augmentation of a float batch (B, *spatial, C) in [-1, 1].

  In order: horizontal flip (last spatial axis, p = 0.5); translation by up to ``crop_pad``
  (edge-pad every spatial axis by ``crop_pad`` and crop a random window of the original
  size: the classic pad-and-random-crop); a zoom by a factor in [1/(1+scale), 1+scale]
  (log-uniform) and, for 2-D images, a rotation by up to ``rotate`` degrees, both about the
  centre with bilinear resampling and edge values outside; then per image contrast
  (deviation from the image mean times a factor in [1-contrast, 1+contrast]) and brightness
  (plus an offset in [-brightness, brightness], in the [-1, 1] units). Zero turns each off;
  the flip and crop draws do not depend on the others, so enabling one leaves them as
  they were.
  """
  B = x_BxSxC.shape[0]
  spatial = x_BxSxC.shape[1:-1]
  k_flip, k_crop, k_warp, k_colour = augment_keys(key)
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (B,))
    flipped = jnp.flip(x_BxSxC, axis=len(spatial))
    x_BxSxC = jnp.where(do.reshape((B,) + (1,) * (x_BxSxC.ndim - 1)), flipped, x_BxSxC)
  if crop_pad > 0:
    pad = [(0, 0)] + [(crop_pad, crop_pad)] * len(spatial) + [(0, 0)]
    padded = jnp.pad(x_BxSxC, pad, mode="edge")
    offsets = jax.random.randint(k_crop, (B, len(spatial)), 0, 2 * crop_pad + 1)

    def crop(img, off):
      return jax.lax.dynamic_slice(img, tuple(off) + (0,), spatial + (img.shape[-1],))

    x_BxSxC = jax.vmap(crop)(padded, offsets)
  if scale > 0 or rotate > 0:
    x_BxSxC = _random_zoom_rotate(x_BxSxC, k_warp, scale, rotate)
  if contrast > 0 or brightness > 0:
    k_c, k_b = jax.random.split(k_colour)
    shape = (B,) + (1,) * (x_BxSxC.ndim - 1)
    c = jax.random.uniform(k_c, shape, minval=1 - contrast, maxval=1 + contrast)
    b = jax.random.uniform(k_b, shape, minval=-brightness, maxval=brightness)
    mean = jnp.mean(x_BxSxC, axis=tuple(range(1, x_BxSxC.ndim)), keepdims=True)
    x_BxSxC = (x_BxSxC - mean) * c + mean + b
  return x_BxSxC


def augment_keys(key: Array) -> tuple[Array, Array, Array, Array]:
  """The flip, crop, zoom/rotate and colour keys of one augmentation key, all distinct. The
  warp key was ``fold_in(key, 1)``, which under JAX's partitionable threefry *is*
  ``split(key)[1]``, the crop key: zoom and rotation were drawn from the bits of the crop
  offsets (no measurable correlation, since the offset is taken modulo an odd number, but
  one change to the crop draw away from it). Tag 3 is no index of ``split(key)``; flip, crop
  and colour keep their draws."""
  k_flip, k_crop = jax.random.split(key)
  return k_flip, k_crop, jax.random.fold_in(key, 3), jax.random.fold_in(key, 2)


def _random_zoom_rotate(x_BxSxC: Array, key: Array, scale: float, rotate: float) -> Array:
  """Each image zoomed by a log-uniform factor in [1/(1+scale), 1+scale] and, in 2-D, rotated
  by a uniform angle in [-rotate, rotate] degrees, about its centre."""
  B, R = x_BxSxC.shape[0], x_BxSxC.ndim - 2
  k_s, k_r = jax.random.split(key)
  log_s = math.log1p(scale)
  zoom_B = jnp.exp(jax.random.uniform(k_s, (B,), minval=-log_s, maxval=log_s))
  A_BxRxR = jnp.eye(R)[None] / zoom_B[:, None, None]
  if R == 2 and rotate > 0:
    t = jnp.deg2rad(jax.random.uniform(k_r, (B,), minval=-rotate, maxval=rotate))
    rot = jnp.stack([jnp.stack([jnp.cos(t), -jnp.sin(t)], -1),
                     jnp.stack([jnp.sin(t), jnp.cos(t)], -1)], -2)
    A_BxRxR = rot @ A_BxRxR
  return affine_resample(x_BxSxC, A_BxRxR)


def affine_resample(x_BxSxC: Array, A_BxRxR: Array) -> Array:
  """out[b, o] = x[b, A_b (o - centre) + centre]: bilinear (multilinear in R-D), edge values
  outside, centre = (size - 1) / 2 per axis; the same as
  ``scipy.ndimage.affine_transform(x, A, offset=centre - A centre, order=1, mode="nearest")``
  per channel."""
  spatial, R = x_BxSxC.shape[1:-1], x_BxSxC.ndim - 2
  centre_R1 = ((jnp.asarray(spatial, jnp.float32) - 1) / 2).reshape((R,) + (1,) * R)
  grid_RxS = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in spatial),
                                    indexing="ij"))

  def warp(img_SxC, A_RxR):
    src_RxS = jnp.tensordot(A_RxR, grid_RxS - centre_R1, axes=1) + centre_R1
    return jnp.stack([ndimage.map_coordinates(img_SxC[..., c], list(src_RxS), order=1,
                                              mode="nearest")
                      for c in range(img_SxC.shape[-1])], axis=-1)

  return jax.vmap(warp)(x_BxSxC, A_BxRxR)
