"""On-device preprocessing: uint8 -> float, and training augmentation, for any conv rank.

Runs inside the jitted step on the global batch with a key derived from (seed, step),
so augmentation is the same on 1 device or 8 and after a resume.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def to_float(x: Array) -> Array:
  """uint8 0..255 -> float32 in [-1, 1]; float inputs pass through unchanged."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.float32) / 127.5 - 1.0
  return x.astype(jnp.float32)


def augment(x_BxSxC: Array, key: Array, *, flip: bool, crop_pad: int) -> Array:
  """Random horizontal flip (last spatial axis) and random translation by up to ``crop_pad``.

  Translation pads every spatial axis by ``crop_pad`` (edge values) and crops a random
  window of the original size: the classic pad-and-random-crop.
  """
  B = x_BxSxC.shape[0]
  spatial = x_BxSxC.shape[1:-1]
  k_flip, k_crop = jax.random.split(key)
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
  return x_BxSxC
