"""Online triplet mining on a batch's B x B distance matrix, O(B^2) memory.

Every miner takes the pairwise squared distances ``dist_BxB``, integer identity
``labels_B`` and a ``mask_B`` of real (not padding) rows, and returns ``(loss, stats)``:

  stats = {num_valid, num_active, frac_active, mean_d_ap, mean_d_an}

``num_valid`` counts the triplets (or pairs) the loss is taken over, ``num_active``
those with a positive loss, and the means are over the valid ones.

No miner materializes a B x B x B tensor, so FaceNet's 1,800-image batches stay cheap:
semi-hard loops over the K - 1 positive slots of every anchor with one masked min per
slot, batch-all sorts each anchor's negatives once and answers every anchor-positive
query with a binary search and a prefix sum, batch-hard and random are single passes.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from facenet_jax import losses

Array = jax.Array
FALLBACKS = ("easiest", "hardest", "drop")


def pair_masks(labels_B: Array, mask_B: Array) -> tuple[Array, Array]:
  """(pos_BxB, neg_BxB): same identity and i != j; different identity. Padding excluded."""
  both = mask_B[:, None] & mask_B[None, :]
  same = labels_B[:, None] == labels_B[None, :]
  eye = jnp.eye(labels_B.shape[0], dtype=bool)
  return same & both & ~eye, ~same & both


def _sorted_negatives(dist_BxB: Array, neg_BxB: Array) -> tuple[Array, Array]:
  """Each anchor's negative distances ascending, +inf after the last; and their count."""
  return jnp.sort(jnp.where(neg_BxB, dist_BxB, jnp.inf), axis=1), neg_BxB.sum(axis=1)


def _stats(d_ap, d_an, valid, loss_each) -> dict[str, Array]:
  valid_f = valid.astype(jnp.float32)
  n = valid_f.sum()
  denom = jnp.maximum(n, 1.0)
  active = (valid & (loss_each > 0)).astype(jnp.float32).sum()
  return {
      "num_valid": n,
      "num_active": active,
      "frac_active": active / denom,
      "mean_d_ap": jnp.sum(jnp.where(valid, d_ap, 0.0)) / denom,
      "mean_d_an": jnp.sum(jnp.where(valid, d_an, 0.0)) / denom,
  }


def _reduce(d_ap, d_an, valid, margin, loss_name) -> tuple[Array, dict[str, Array]]:
  """Mean of the elementwise triplet loss over the valid selected triplets."""
  # Invalid entries may hold inf; zero them so no inf - inf reaches the gradient.
  d_ap = jnp.where(valid, d_ap, 0.0)
  d_an = jnp.where(valid, d_an, 0.0)
  loss_each = jnp.where(valid, losses.TRIPLET_LOSSES[loss_name](d_ap, d_an, margin), 0.0)
  stats = _stats(d_ap, d_an, valid, loss_each)
  return loss_each.sum() / jnp.maximum(stats["num_valid"], 1.0), stats


def positive_slots(labels_B: Array, mask_B: Array) -> tuple[Array, Array, Array, Array]:
  """``(order, start, rank, n_pos)``: anchor a's k-th positive (k < n_pos[a]) is ``order[j]``
  with ``j = start[a] + k``, plus one if ``j >= rank[a]`` (skipping a itself).

  ``order`` sorts the rows by (padding, label), so each identity's real rows are contiguous.
  """
  B = labels_B.shape[0]
  iota = jnp.arange(B, dtype=jnp.int32)
  pad_s, lab_s, order = lax.sort(((~mask_B).astype(jnp.int32), labels_B.astype(jnp.int32), iota),
                                 num_keys=2)
  first = jnp.concatenate([jnp.ones((1,), bool), (pad_s[1:] != pad_s[:-1]) | (lab_s[1:] != lab_s[:-1])])
  last = jnp.concatenate([first[1:], jnp.ones((1,), bool)])
  start_s = lax.cummax(jnp.where(first, iota, 0))
  end_s = lax.cummin(jnp.where(last, iota + 1, B), reverse=True)
  rank = jnp.zeros((B,), jnp.int32).at[order].set(iota)
  n_pos = jnp.where(mask_B, end_s[rank] - start_s[rank] - 1, 0)
  return order, start_s[rank], rank, n_pos


def _semi_hard_impl(dist_BxB, labels_B, mask_B, margin, fallback, loss, with_grad):
  """(loss, stats, G) with G = d loss / d dist_BxB (zeros unless ``with_grad``)."""
  B = dist_BxB.shape[0]
  rows = jnp.arange(B, dtype=jnp.int32)
  dist = lax.stop_gradient(dist_BxB)
  _, neg = pair_masks(labels_B, mask_B)
  neg_d = jnp.where(neg, dist, jnp.inf)
  # without gradients only values are needed: min/max reductions, cheaper than arg-reductions
  if fallback == "easiest":
    fb_in = jnp.where(neg, dist, -jnp.inf)
    fb_idx = jnp.argmax(fb_in, axis=1).astype(jnp.int32) if with_grad else None
    fb_val = dist[rows, fb_idx] if with_grad else jnp.max(fb_in, axis=1)
  else:
    fb_idx = jnp.argmin(neg_d, axis=1).astype(jnp.int32) if with_grad else None
    fb_val = neg_d[rows, fb_idx] if with_grad else jnp.min(neg_d, axis=1)
  has_neg = neg[rows, fb_idx] if with_grad else jnp.isfinite(fb_val)
  order, start, rank, n_pos = positive_slots(labels_B, mask_B)
  loss_fn = losses.TRIPLET_LOSSES[loss]

  def body(carry):
    k, acc, G = carry
    j = start + k
    p = order[jnp.minimum(j + (j >= rank), B - 1)]
    has_p = k < n_pos
    d_ap = dist[rows, p]
    above = jnp.where(neg_d > d_ap[:, None], neg_d, jnp.inf)
    if with_grad:
      n = jnp.argmin(above, axis=1).astype(jnp.int32)
      d_n = neg_d[rows, n]
    else:
      d_n = jnp.min(above, axis=1)
    is_semi = (d_n > d_ap) & (d_n < d_ap + margin)   # d_n is inf when no negative is above
    d_an = jnp.where(is_semi, d_n, fb_val)
    valid = has_p & has_neg & (is_semi if fallback == "drop" else True)
    d_ap = jnp.where(valid, d_ap, 0.0)
    d_an = jnp.where(valid, d_an, 0.0)
    each, vjp = jax.vjp(lambda x, y: loss_fn(x, y, margin), d_ap, d_an)
    each = jnp.where(valid, each, 0.0)
    vf = valid.astype(jnp.float32)
    acc = acc + jnp.stack([each.sum(), vf.sum(), (valid & (each > 0)).astype(jnp.float32).sum(),
                           d_ap.sum(), d_an.sum()])
    if with_grad:
      g_ap, g_an = vjp(vf)
      n_idx = jnp.where(is_semi, n, fb_idx)
      G = G.at[rows, p].add(g_ap * vf).at[rows, n_idx].add(g_an * vf)
    return k + 1, acc, G

  G0 = jnp.zeros((B, B) if with_grad else (1, 1), jnp.float32)
  _, acc, G = lax.while_loop(lambda c: c[0] < n_pos.max(), body,
                             (jnp.int32(0), jnp.zeros((5,), jnp.float32), G0))
  loss_sum, n_valid, n_active, sum_ap, sum_an = (acc[i] for i in range(5))
  denom = jnp.maximum(n_valid, 1.0)
  stats = {"num_valid": n_valid, "num_active": n_active, "frac_active": n_active / denom,
           "mean_d_ap": sum_ap / denom, "mean_d_an": sum_an / denom}
  return loss_sum / denom, stats, G / denom


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _semi_hard(dist_BxB, labels_B, mask_B, margin, fallback, loss):
  out_loss, stats, _ = _semi_hard_impl(dist_BxB, labels_B, mask_B, margin, fallback, loss, False)
  return out_loss, stats


def _semi_hard_fwd(dist_BxB, labels_B, mask_B, margin, fallback, loss):
  out_loss, stats, G = _semi_hard_impl(dist_BxB, labels_B, mask_B, margin, fallback, loss, True)
  return (out_loss, stats), G


def _semi_hard_bwd(fallback, loss, G, cotangents):
  del fallback, loss
  g_loss, _ = cotangents   # stats carry no gradient
  return g_loss * G, None, None, None


_semi_hard.defvjp(_semi_hard_fwd, _semi_hard_bwd)


def semi_hard(dist_BxB: Array, labels_B: Array, mask_B: Array, margin: float | Array, *,
              fallback: str = "easiest", loss: str = "triplet", key: Array | None = None):
  """FaceNet's semi-hard triplets: every anchor-positive pair, one negative each.

  For each (a, p) with the same identity the negative is the closest one farther than
  the positive, min{d(a,n) : d(a,n) > d(a,p)}, if it lies inside the margin:
  d(a,p) < d(a,n) < d(a,p) + alpha (Schroff et al. 2015, eq. (4)). When no such
  negative exists, ``fallback`` picks: "easiest" the farthest negative, "hardest" the
  closest negative, "drop" no triplet. The loss is averaged over the selected triplets.
  "easiest" is close to TF-Addons' ``triplet_semihard_loss`` but not the same: where the
  closest negative beyond d(a,p) lies outside the margin, TF-Addons keeps that one and this
  takes the farthest. Under the hinge both triplets give 0 (same loss, same active count);
  the reported ``mean_d_an`` is larger here, and ``loss='soft_margin'`` (never 0) differs.

  Implementation: an anchor has few positives (K - 1 in a P x K batch), so a
  ``lax.while_loop`` visits "the k-th positive of every anchor" and finds each anchor's
  semi-hard negative with one masked min over its row: O(B^2) memory, O(B^2 K) time, no
  B x B sort (XLA:CPU's float sort dominated an earlier version: 0.9 s at B = 1,800).
  The loop accumulates d loss / d dist, returned by a ``jax.custom_vjp`` so reverse mode
  never differentiates through the loop. ``stats`` and a traced ``margin`` carry no
  gradient; with exactly tied negative distances the gradient may go to either one.

  Args:
    dist_BxB: squared distances. labels_B: int identities. mask_B: bool, real rows.
    margin: alpha. fallback: see above. loss: "triplet" or "soft_margin".
  """
  del key
  if fallback not in FALLBACKS:
    raise ValueError(f"semi-hard fallback must be one of {FALLBACKS}, got {fallback!r}")
  if loss not in losses.TRIPLET_LOSSES:
    raise ValueError(f"loss must be one of {sorted(losses.TRIPLET_LOSSES)}, got {loss!r}")
  return _semi_hard(dist_BxB, jnp.asarray(labels_B), jnp.asarray(mask_B, bool),
                    jnp.asarray(margin, jnp.float32), fallback, loss)


def batch_hard(dist_BxB: Array, labels_B: Array, mask_B: Array, margin: float | Array, *,
               loss: str = "triplet", key: Array | None = None, fallback: str | None = None):
  """Batch-hard triplets: per anchor, its farthest positive and its closest negative.

  One triplet per anchor that has at least one positive and one negative; loss averaged
  over those anchors. Hermans, Beyer & Leibe 2017, eq. (5).
  """
  del key, fallback
  pos, neg = pair_masks(labels_B, mask_B)
  # the chosen pairs by index, then their distances: the gradient reaches them through the
  # index, not through jnp.max's re-comparison of each row with its maximum by float equality
  # (the failure of the max-pool gradient in the multi-device step, layers.max_pool)
  dist = lax.stop_gradient(dist_BxB)
  rows = jnp.arange(dist_BxB.shape[0])
  d_ap_B = dist_BxB[rows, jnp.argmax(jnp.where(pos, dist, -jnp.inf), axis=1)]
  d_an_B = dist_BxB[rows, jnp.argmin(jnp.where(neg, dist, jnp.inf), axis=1)]
  valid_B = pos.any(axis=1) & neg.any(axis=1)
  return _reduce(d_ap_B, d_an_B, valid_B, margin, loss)


def batch_all(dist_BxB: Array, labels_B: Array, mask_B: Array, margin: float | Array, *,
              loss: str = "triplet", key: Array | None = None, fallback: str | None = None):
  """Batch-all triplets: every valid (a, p, n), loss averaged over the active ones.

  L = sum_{a,p,n} max(d(a,p) - d(a,n) + alpha, 0) / #{(a,p,n) : loss > 0}
  (Hermans et al. 2017, "BA != 0"). Evaluated without the B^3 tensor: for a pair (a, p)
  the active negatives are the k smallest of the anchor's sorted row with
  d(a,n) < d(a,p) + alpha, and their summed loss is k (d(a,p) + alpha) - prefix_sum_k.
  Hinge loss only (the soft margin has no such closed form).
  """
  del key, fallback
  if loss != "triplet":
    raise ValueError(f"batch_all supports loss='triplet' only, got {loss!r}")
  pos, neg = pair_masks(labels_B, mask_B)
  sorted_neg_BxB, n_neg_B = _sorted_negatives(dist_BxB, neg)
  finite = jnp.isfinite(sorted_neg_BxB)
  prefix_BxB1 = jnp.concatenate(
      [jnp.zeros_like(sorted_neg_BxB[:, :1]),
       jnp.cumsum(jnp.where(finite, sorted_neg_BxB, 0.0), axis=1)], axis=1)
  thresh_BxB = jnp.where(pos, dist_BxB, 0.0) + margin
  k_BxB = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left"))(sorted_neg_BxB, thresh_BxB)
  k_BxB = jnp.where(pos, k_BxB, 0)
  summed_BxB = k_BxB * thresh_BxB - jnp.take_along_axis(prefix_BxB1, k_BxB, axis=1)
  summed_BxB = jnp.where(pos, summed_BxB, 0.0)
  num_active = k_BxB.sum().astype(jnp.float32)
  pos_f = pos.astype(jnp.float32)
  n_neg_f = n_neg_B.astype(jnp.float32)
  num_valid = jnp.sum(pos_f * n_neg_f[:, None])
  denom = jnp.maximum(num_valid, 1.0)
  neg_sum_B = jnp.sum(jnp.where(neg, dist_BxB, 0.0), axis=1)
  stats = {
      "num_valid": num_valid,
      "num_active": num_active,
      "frac_active": num_active / denom,
      "mean_d_ap": jnp.sum(pos_f * dist_BxB * n_neg_f[:, None]) / denom,
      "mean_d_an": jnp.sum(pos_f.sum(axis=1) * neg_sum_B) / denom,
  }
  return summed_BxB.sum() / jnp.maximum(num_active, 1.0), stats


def random_triplets(dist_BxB: Array, labels_B: Array, mask_B: Array, margin: float | Array, *,
                    key: Array, loss: str = "triplet", fallback: str | None = None):
  """Every anchor-positive pair with one negative drawn uniformly at random.

  The unmined baseline: loss averaged over all (a, p) pairs that have a negative.
  """
  del fallback
  pos, neg = pair_masks(labels_B, mask_B)
  n_neg_B = neg.sum(axis=1)
  # per row: indices of the negatives first (stable), then the rest
  neg_first_BxB = jnp.argsort(~neg, axis=1, stable=True)
  u_BxB = jax.random.uniform(key, dist_BxB.shape)
  r_BxB = jnp.minimum((u_BxB * n_neg_B[:, None]).astype(jnp.int32),
                      jnp.maximum(n_neg_B - 1, 0)[:, None])
  n_idx_BxB = jnp.take_along_axis(neg_first_BxB, r_BxB, axis=1)
  d_an = jnp.take_along_axis(dist_BxB, n_idx_BxB, axis=1)
  valid = pos & (n_neg_B > 0)[:, None]
  return _reduce(dist_BxB, d_an, valid, margin, loss)


MINERS: dict[str, Callable] = {
    "semi_hard": semi_hard,
    "batch_hard": batch_hard,
    "batch_all": batch_all,
    "random": random_triplets,
}


def contrastive_pairs(dist_BxB: Array, labels_B: Array, mask_B: Array, margin: float | Array, *,
                      key: Array | None = None, loss: str = "contrastive",
                      fallback: str | None = None):
  """Contrastive loss averaged over every distinct pair i < j of real rows."""
  del key, loss, fallback
  pos, neg = pair_masks(labels_B, mask_B)
  upper = jnp.triu(jnp.ones_like(pos), k=1)
  pos, neg = pos & upper, neg & upper
  valid = pos | neg
  loss_each = jnp.where(valid, losses.contrastive_loss(dist_BxB, pos, margin), 0.0)
  n = valid.astype(jnp.float32).sum()
  n_pos = jnp.maximum(pos.astype(jnp.float32).sum(), 1.0)
  n_neg = jnp.maximum(neg.astype(jnp.float32).sum(), 1.0)
  active = (valid & (loss_each > 0)).astype(jnp.float32).sum()
  stats = {
      "num_valid": n,
      "num_active": active,
      "frac_active": active / jnp.maximum(n, 1.0),
      "mean_d_ap": jnp.sum(jnp.where(pos, dist_BxB, 0.0)) / n_pos,
      "mean_d_an": jnp.sum(jnp.where(neg, dist_BxB, 0.0)) / n_neg,
  }
  return loss_each.sum() / jnp.maximum(n, 1.0), stats


def batch_loss(emb_BxD: Array, labels_B: Array, mask_B: Array, *, loss: str, miner: str,
               margin: float | Array, fallback: str = "easiest", key: Array | None = None):
  """The training objective on one (global) batch of embeddings: ``(loss, stats)``.

  ``loss`` is "triplet", "soft_margin" (with any ``miner``) or "contrastive" (all pairs;
  ``miner`` ignored).
  """
  dist_BxB = losses.pairwise_sq_distances(emb_BxD)
  if loss == "contrastive":
    return contrastive_pairs(dist_BxB, labels_B, mask_B, margin)
  if loss not in losses.TRIPLET_LOSSES:
    raise ValueError(f"loss must be one of {sorted(losses.TRIPLET_LOSSES) + ['contrastive']}, got {loss!r}")
  if miner not in MINERS:
    raise ValueError(f"miner must be one of {sorted(MINERS)}, got {miner!r}")
  if miner == "random" and key is None:
    raise ValueError("the random miner needs a PRNG key")
  return MINERS[miner](dist_BxB, labels_B, mask_B, margin, loss=loss, fallback=fallback, key=key)


def explicit_triplet_loss(emb_a: Array, emb_p: Array, emb_n: Array, valid_T: Array,
                          margin: float | Array, loss: str = "triplet"):
  """Loss on given (offline-selected) triplets: rows of the three (T, D) arrays."""
  d_ap = jnp.sum(jnp.square(emb_a - emb_p), axis=-1)
  d_an = jnp.sum(jnp.square(emb_a - emb_n), axis=-1)
  return _reduce(d_ap, d_an, valid_T, margin, loss)
