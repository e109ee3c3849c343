"""What units of a ConvNet respond to: receptive fields and streaming top-k activations.

Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks": for a
unit (layer, channel), the k dataset images that activate it most, each shown as the
patch of input the unit sees at its strongest position.

Receptive fields (Araujo et al. 2019, "Computing Receptive Fields of Convolutional
Neural Networks"). A layer is (kernel k, stride s, low padding p) per spatial axis;
output index i of one layer reads its input indices [i s - p, i s - p + k). Composed
from the input (size r_0 = 1, jump j_0 = 1, offset o_0 = 0):

  r_l = r_{l-1} + (k_l - 1) j_{l-1}      receptive-field size (input pixels)
  j_l = j_{l-1} s_l                      input pixels between neighbouring units
  o_l = o_{l-1} - p_l j_{l-1}            input index of unit 0's first pixel

so unit i of layer l sees input pixels [o_l + i j_l, o_l + i j_l + r_l) (clipped to the
image: padding contributes nothing). Everything works per axis on ints or (rank,) arrays.

Streaming top-k: one pass over the dataset keeps a fixed (channels, k) buffer per layer;
each batch contributes every image's per-channel maximum (and where it is), merged by
``lax.top_k`` over [buffer | batch], so memory does not grow with the dataset and each
image appears at most once per unit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

IntOrAxes = int | Sequence[int]


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
  """Per spatial axis (rank,) int arrays: ``size`` r, ``jump`` j and ``offset`` o."""
  size: np.ndarray
  jump: np.ndarray
  offset: np.ndarray

  def box(self, position: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Input index range [start, stop) per axis of the unit at ``position`` (not clipped)."""
    start = self.offset + np.asarray(position, np.int64) * self.jump
    return start, start + self.size


def receptive_fields(layers: Sequence[tuple[IntOrAxes, IntOrAxes, IntOrAxes]],
                     rank: int = 1) -> list[ReceptiveField]:
  """The receptive field after each of ``layers`` = [(kernel, stride, low padding), ...].

  Entries are ints (the same on every axis) or ``rank``-sequences. Returns one
  :class:`ReceptiveField` per layer (r, j, o as in the module docstring).
  """
  r = np.ones(rank, np.int64)
  j = np.ones(rank, np.int64)
  o = np.zeros(rank, np.int64)
  out = []
  for n, (k, s, p) in enumerate(layers):
    k, s, p = (np.broadcast_to(np.asarray(v, np.int64), (rank,)) for v in (k, s, p))
    if np.any(k < 1) or np.any(s < 1) or np.any(p < 0):
      raise ValueError(f"layer {n}: kernel {k.tolist()} and stride {s.tolist()} must be >= 1 "
                       f"and padding {p.tolist()} >= 0")
    r, o, j = r + (k - 1) * j, o - p * j, j * s
    out.append(ReceptiveField(size=r.copy(), jump=j.copy(), offset=o.copy()))
  return out


def same_padding_low(size: int, kernel: int, stride: int) -> int:
  """Low-side padding of a "SAME" conv/pool (XLA/TensorFlow): total = max((ceil(n / s) - 1) s
  + k - n, 0), of which the low side gets floor(total / 2)."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2


def crop_box(image: np.ndarray, start: Sequence[int], stop: Sequence[int],
             fill: float = 0) -> np.ndarray:
  """``image[start:stop]`` over its leading ``len(start)`` axes; the part outside the image
  (a receptive field over the padding) is ``fill``. Returns shape (*(stop - start), ...)."""
  start, stop = np.asarray(start), np.asarray(stop)
  shape = tuple((stop - start).tolist()) + image.shape[len(start):]
  out = np.full(shape, fill, image.dtype)
  lo = np.maximum(start, 0)
  hi = np.minimum(stop, image.shape[:len(start)])
  if np.any(hi <= lo):
    return out
  src = tuple(slice(a, b) for a, b in zip(lo, hi))
  dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
  out[dst] = image[src]
  return out


# ------------------------------------------------------------------- streaming top-k


def init_topk(channels: int, k: int, rank: int) -> dict[str, jax.Array]:
  """Empty buffer: ``value`` (C, k) -inf, ``image`` (C, k) -1, ``position`` (C, k, rank) 0."""
  return {"value": jnp.full((channels, k), -jnp.inf, jnp.float32),
          "image": jnp.full((channels, k), -1, jnp.int32),
          "position": jnp.zeros((channels, k, rank), jnp.int32)}


@jax.jit
def update_topk(buf: dict[str, jax.Array], acts_BxSxC: jax.Array, image_B: jax.Array,
                valid_B: jax.Array) -> dict[str, jax.Array]:
  """Merges a batch into the buffer: the k largest of (buffer, per-image channel maxima).

  ``acts_BxSxC``: (B, *spatial, C) activations; ``image_B``: (B,) int dataset indices;
  ``valid_B``: (B,) bool (False: a padding row, never kept). Each image contributes its
  maximum over positions per channel (the first position on ties). Buffer entries come
  first in the merge, so on equal values the earlier image wins.
  """
  b, c = acts_BxSxC.shape[0], acts_BxSxC.shape[-1]
  spatial = acts_BxSxC.shape[1:-1]
  k = buf["value"].shape[1]
  flat = acts_BxSxC.reshape(b, -1, c).astype(jnp.float32)
  where = jnp.argmax(flat, axis=1)                                     # (B, C)
  best = jnp.where(valid_B[:, None], jnp.max(flat, axis=1), -jnp.inf)  # (B, C)
  pos = jnp.stack(jnp.unravel_index(where, spatial), -1).astype(jnp.int32)   # (B, C, rank)
  value = jnp.concatenate([buf["value"], best.T], axis=1)              # (C, k + B)
  image = jnp.concatenate([buf["image"], jnp.broadcast_to(image_B[None].astype(jnp.int32), (c, b))], 1)
  position = jnp.concatenate([buf["position"], jnp.swapaxes(pos, 0, 1)], axis=1)
  top, idx = jax.lax.top_k(value, k)
  return {"value": top, "image": jnp.take_along_axis(image, idx, 1),
          "position": jnp.take_along_axis(position, idx[..., None], 1)}
