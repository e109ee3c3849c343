"""Neural style transfer costs (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style").

Pure functions of activations ``a`` of shape (..., nC): the leading axes are positions
(nH, nW for images; any number of them: (L, nC) sequences, (D, H, W, nC) volumes), the
last axis is channels. M = prod(leading axes) = nH nW, N = nC.

  content   J_content(C, G) = 1/2 sum (a(C) - a(G))^2                  (Gatys eq. 1)
            normalized: 1/(4 nH nW nC) sum (a(C) - a(G))^2               (deeplearning.ai)
  Gram      G_kk' = sum_ij a_ijk a_ijk'                                  (nC x nC, eq. 3)
  style     J_style^l(S, G) = 1/(2 nH nW nC)^2 sum_kk' (G(S) - G(G))^2   (eq. 4)
  total     J_style = sum_l lambda_l J_style^l                          (eq. 5)
  TV        sum of squared differences of neighbouring pixels along each spatial axis

The total loss is ``alpha J_content + beta J_style + tv_weight TV`` (Gatys eq. 7).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def content_cost(a_C: jax.Array, a_G: jax.Array) -> jax.Array:
  """1/2 sum (a_C - a_G)^2 over all entries (Gatys et al. 2015, eq. 1). Shapes (..., nC)."""
  d = a_G.astype(jnp.float32) - a_C.astype(jnp.float32)
  return 0.5 * jnp.sum(d * d)


def content_cost_normalized(a_C: jax.Array, a_G: jax.Array) -> jax.Array:
  """1/(4 nH nW nC) sum (a_C - a_G)^2 (the deeplearning.ai formulation); nH nW nC = a.size."""
  d = a_G.astype(jnp.float32) - a_C.astype(jnp.float32)
  return jnp.sum(d * d) / (4.0 * d.size)


def gram_matrix(a: jax.Array) -> jax.Array:
  """G_kk' = sum over positions of a_k a_k'. a: (..., nC) -> (nC, nC)."""
  f = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
  return jnp.matmul(f.T, f, precision=jax.lax.Precision.HIGHEST)


def normalized_gram(a: jax.Array) -> jax.Array:
  """gram_matrix(a) / M with M = number of positions (nH nW): the per-position mean of a_k a_k'.

  The Gram matrix of an image of M positions grows with M; dividing by M makes the style
  target of a style image comparable with a generated image of another size (style scale,
  multi-scale) and lets several style images be blended by a weighted mean.
  """
  m = a.size // a.shape[-1]
  return gram_matrix(a) / m


def style_cost_from_gram(gram_S_normalized: jax.Array, a_G: jax.Array) -> jax.Array:
  """1/(4 nC^2) sum_kk' (G(S)/M_S - G(G)/M_G)^2 given the normalized style Gram (nC, nC).

  With M_S = M_G = nH nW this is exactly 1/(2 nH nW nC)^2 sum (G(S) - G(G))^2 (Gatys eq. 4),
  since (G(S) - G(G))^2 / (4 nC^2 M^2) = (G(S)/M - G(G)/M)^2 / (4 nC^2).
  """
  nc = a_G.shape[-1]
  d = normalized_gram(a_G) - gram_S_normalized.astype(jnp.float32)
  return jnp.sum(d * d) / (4.0 * nc * nc)


def layer_style_cost(a_S: jax.Array, a_G: jax.Array) -> jax.Array:
  """J_style^l = 1/(2 nH nW nC)^2 sum_kk' (G(S) - G(G))^2; a_S, a_G: (..., nC).

  Gatys et al. 2015 eq. 4 (E_l = 1/(4 N^2 M^2) sum (G - A)^2). When a_S has a different
  number of positions than a_G, each Gram is divided by its own M (see
  :func:`style_cost_from_gram`).
  """
  return style_cost_from_gram(normalized_gram(a_S), a_G)


def style_cost(grams_S: Mapping[str, jax.Array], acts_G: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float]) -> jax.Array:
  """J_style = sum_l lambda_l J_style^l over the layers in ``layer_weights`` (Gatys eq. 5).

  Args:
    grams_S: layer -> normalized style Gram (nC, nC) (:func:`normalized_gram`, or a
      weighted mean of several style images' for a blend).
    acts_G: layer -> activations of the generated image (..., nC).
    layer_weights: layer -> lambda_l.
  """
  total = jnp.zeros((), jnp.float32)
  for name, w in layer_weights.items():
    total = total + w * style_cost_from_gram(grams_S[name], acts_G[name])
  return total


def total_variation(x: jax.Array) -> jax.Array:
  """sum over spatial axes d of sum (x[i+1 along d] - x[i])^2; x: (..., C), all but C spatial.

  The squared (smooth) total-variation regularizer of Mahendran & Vedaldi (2015) and
  Johnson's neural-style, which suppresses high-frequency noise in the generated image.
  """
  x = x.astype(jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for axis in range(x.ndim - 1):
    d = jnp.diff(x, axis=axis)
    total = total + jnp.sum(d * d)
  return total
