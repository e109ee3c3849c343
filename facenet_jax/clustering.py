"""Agglomerative clustering of face embeddings by a distance threshold, and its metrics.

FaceNet (Schroff et al. 2015, Sec. 5.6) groups a personal photo collection by
agglomerative clustering of the embeddings. Distances are squared L2, the same
quantity ``verification`` thresholds, so a verification threshold is a sensible cut.

  single linkage   -- d(A, B) = min over a in A, b in B of d(a, b); cutting at t gives the
                      connected components of the graph with an edge wherever d(a, b) <= t
  average linkage  -- d(A, B) = mean over a in A, b in B of d(a, b) (UPGMA)
  complete linkage -- d(A, B) = max over a in A, b in B of d(a, b)

The dendrogram is built by the nearest-neighbour-chain algorithm (Murtagh 1983): O(N^2)
time and one N x N matrix, exact for these three linkages because they are reducible.
Cutting at t applies every merge of height <= t. ``single_linkage_components`` gives the
single-linkage cut without an N x N float matrix, from the thresholded graph directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from facenet_jax.recognition import sq_l2_distances

LINKAGES = ("single", "average", "complete")
_BLOCK = 1024  # rows of the distance matrix materialized at a time by the graph method


class Dendrogram(NamedTuple):
  """N - 1 merges: the clusters holding points ``a[m]`` and ``b[m]`` merged at ``height[m]``."""
  a: np.ndarray
  b: np.ndarray
  height: np.ndarray
  num_points: int


def connected_components(num_points: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
  """(num_points,) component id of each node of the undirected graph with edges (i, j).

  Vectorised hook-and-compress: every edge hooks the larger of its two current roots onto
  the smaller, then pointers jump to their roots; a round changes nothing only when both
  ends of every edge share a root. Ids are 0..C-1, numbered by each component's smallest node.
  """
  i = np.asarray(i, np.int64)
  j = np.asarray(j, np.int64)
  parent = np.arange(num_points)
  while True:
    ri, rj = parent[i], parent[j]
    low = np.minimum(ri, rj)
    new = parent.copy()
    np.minimum.at(new, ri, low)
    np.minimum.at(new, rj, low)
    while True:  # pointers only go to smaller indices, so this terminates
      jumped = new[new]
      if np.array_equal(jumped, new):
        break
      new = jumped
    if np.array_equal(new, parent):
      break
    parent = new
  return np.unique(parent, return_inverse=True)[1].reshape(-1)


def single_linkage_components(emb_NxD: np.ndarray, threshold: float) -> np.ndarray:
  """Single-linkage clusters at ``threshold``: components of the graph ``d(a, b) <= t``."""
  emb = _check(emb_NxD)
  n = emb.shape[0]
  ii, jj = [], []
  for lo in range(0, n, _BLOCK):
    d = sq_l2_distances(emb[lo:lo + _BLOCK], emb)
    r, c = np.nonzero(d <= threshold)
    keep = r + lo < c  # each undirected edge once, no self loops
    ii.append(r[keep] + lo)
    jj.append(c[keep])
  if not ii:
    return np.zeros(0, np.int64)
  return connected_components(n, np.concatenate(ii), np.concatenate(jj))


def _check(emb_NxD: np.ndarray) -> np.ndarray:
  emb = np.asarray(emb_NxD, np.float64)
  if emb.ndim != 2:
    raise ValueError(f"embeddings must be (N, D), got {emb.shape}")
  if not np.all(np.isfinite(emb)):
    raise ValueError("embeddings contain NaN or Inf")
  return emb


def dendrogram(emb_NxD: np.ndarray, linkage: str = "average") -> Dendrogram:
  """All N - 1 merges of agglomerative clustering under ``linkage`` (see the module doc).

  Holds the N x N float64 distance matrix: 8 N^2 bytes, 800 MB at N = 10,000.
  """
  if linkage not in LINKAGES:
    raise ValueError(f"unknown linkage {linkage!r}; choose one of {LINKAGES}")
  emb = _check(emb_NxD)
  n = emb.shape[0]
  d = sq_l2_distances(emb, emb)
  np.fill_diagonal(d, np.inf)
  size = np.ones(n)
  active = np.ones(n, bool)
  chain: list[int] = []
  a_out, b_out, h_out = [], [], []
  for _ in range(n - 1):
    while True:
      if not chain:
        chain.append(int(np.argmax(active)))
      x = chain[-1]
      y = int(np.argmin(d[x]))
      # prefer the previous chain element on ties, or the chain can cycle forever
      if len(chain) > 1 and d[x, chain[-2]] <= d[x, y]:
        y = chain[-2]
      if len(chain) > 1 and y == chain[-2]:
        break
      chain.append(y)
    chain.pop()
    chain.pop()
    h = d[x, y]
    a_out.append(x)
    b_out.append(y)
    h_out.append(h)
    # Lance-Williams update: the merged cluster lives on in row x, row y is retired
    if linkage == "single":
      row = np.minimum(d[x], d[y])
    elif linkage == "complete":
      row = np.maximum(d[x], d[y])
    else:
      row = (size[x] * d[x] + size[y] * d[y]) / (size[x] + size[y])
    size[x] += size[y]
    active[y] = False
    row[~active] = np.inf
    row[x] = np.inf
    d[x, :] = row
    d[:, x] = row
    d[y, :] = np.inf
    d[:, y] = np.inf
  return Dendrogram(np.asarray(a_out, np.int64), np.asarray(b_out, np.int64),
                    np.asarray(h_out, np.float64), n)


def cut(tree: Dendrogram, threshold: float) -> np.ndarray:
  """(N,) cluster ids after applying every merge of height <= ``threshold``."""
  keep = tree.height <= threshold
  return connected_components(tree.num_points, tree.a[keep], tree.b[keep])


def cluster(emb_NxD: np.ndarray, threshold: float, linkage: str = "single") -> np.ndarray:
  """(N,) cluster ids 0..C-1 of agglomerative clustering cut at squared distance ``threshold``."""
  if linkage == "single":
    return single_linkage_components(emb_NxD, threshold)
  return cut(dendrogram(emb_NxD, linkage), threshold)


def _cells(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Non-empty cells of the (cluster, class) contingency table: ``(cluster, class, count)``.

  Sparse, since a fine clustering of N points has up to N clusters x C classes cells.
  """
  pred = np.asarray(pred).ravel()
  true = np.asarray(true).ravel()
  if pred.shape != true.shape:
    raise ValueError(f"pred and true must have equal length, got {pred.size} and {true.size}")
  if pred.size == 0:
    raise ValueError("clustering metrics need at least one point")
  p = np.unique(pred, return_inverse=True)[1].reshape(-1)
  t = np.unique(true, return_inverse=True)[1].reshape(-1)
  num_t = t.max() + 1
  cell, count = np.unique(p.astype(np.int64) * num_t + t, return_counts=True)
  return cell // num_t, cell % num_t, count


def purity(pred: np.ndarray, true: np.ndarray) -> float:
  """``(1/N) sum_c max_k |cluster_c intersect class_k|``: each cluster counted as its majority class.

  1 for any clustering into singletons, so read it together with NMI or the cluster count.
  """
  p, _, count = _cells(pred, true)
  best = np.zeros(p.max() + 1, np.int64)
  np.maximum.at(best, p, count)
  return float(best.sum() / count.sum())


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def nmi(pred: np.ndarray, true: np.ndarray) -> float:
  """Normalized mutual information ``I(P; T) / ((H(P) + H(T)) / 2)`` (arithmetic mean), natural log.

  ``I = sum_{c,k} p_ck log(p_ck / (p_c p_k))`` over the empirical joint of cluster and class.
  Equals sklearn's ``normalized_mutual_info_score`` default, its edge cases included: 1.0
  when both labelings have a single cluster (nothing to disagree on), 0.0 when I = 0 otherwise.
  """
  p, t, count = _cells(pred, true)
  n = count.sum()
  size_p = np.bincount(p, weights=count)
  size_t = np.bincount(t, weights=count)
  if size_p.size == size_t.size == 1:
    return 1.0
  mi = float(np.sum(count / n * np.log(count * n / (size_p[p] * size_t[t]))))
  if mi <= 0.0:
    return 0.0
  denom = 0.5 * (_entropy(size_p) + _entropy(size_t))
  return float(min(mi / max(denom, np.finfo(np.float64).eps), 1.0))


def threshold_sweep(emb_NxD: np.ndarray, true: np.ndarray, thresholds: Sequence[float] | None = None,
                    linkage: str = "single", max_candidates: int = 200) -> dict:
  """NMI, purity and cluster count of the cut at each threshold, and the best-NMI threshold.

  The dendrogram is built once. ``thresholds=None`` tries cuts at (up to ``max_candidates``
  quantiles of) the merge heights, which are the only places the partition changes, plus
  one below all of them (singletons). NMI ties go to the smallest threshold.
  Returns ``{"best_threshold", "best_nmi", "thresholds", "nmi", "purity", "num_clusters"}``
  (the last four are arrays over thresholds).
  """
  tree = dendrogram(emb_NxD, linkage)
  if thresholds is None:
    heights = np.unique(tree.height)
    if heights.size > max_candidates:
      heights = np.unique(np.quantile(heights, np.linspace(0, 1, max_candidates), method="nearest"))
    low = heights[0] - 1.0 if heights.size else 0.0
    thresholds = np.r_[low, heights]
  thresholds = np.sort(np.asarray(thresholds, np.float64))
  nmis, purities, counts = [], [], []
  for t in thresholds:
    pred = cut(tree, t)
    nmis.append(nmi(pred, true))
    purities.append(purity(pred, true))
    counts.append(pred.max() + 1)
  nmis = np.asarray(nmis)
  best = int(np.argmax(nmis))
  return {"best_threshold": float(thresholds[best]), "best_nmi": float(nmis[best]),
          "thresholds": thresholds, "nmi": nmis, "purity": np.asarray(purities),
          "num_clusters": np.asarray(counts)}
