"""Box arithmetic of the MTCNN cascade, in NumPy on the host (a few hundred boxes per image).

Boxes are ``(x1, y1, x2, y2)`` in pixel coordinates of the original image. Two NMS variants:

* :func:`nms_fast`, what the cascade uses, as the ``mtcnn`` 1.0.0 package does: boxes in
  descending score order (:func:`order_desc`), a box is dropped when any box before it, kept or
  not, overlaps it by more than ``threshold``;
* :func:`nms`, greedy NMS as in Zhang et al.'s ``nms.m`` (only kept boxes suppress).

Overlap is intersection over union ("union") or over the smaller box ("min", used after O-Net
so a box inside a bigger face box is dropped). Box regression (:func:`calibrate`) counts a
box's width as ``x2 - x1 + 1`` pixels, as Zhang et al.'s MATLAB code and the package do.
"""

from __future__ import annotations

import numpy as np


def overlap(box_4: np.ndarray, boxes_Nx4: np.ndarray, method: str = "union") -> np.ndarray:
  """Overlap of one box with each of ``boxes_Nx4``: inter / union, or inter / min(area)."""
  iw = np.maximum(0.0, np.minimum(box_4[2], boxes_Nx4[:, 2]) - np.maximum(box_4[0], boxes_Nx4[:, 0]))
  ih = np.maximum(0.0, np.minimum(box_4[3], boxes_Nx4[:, 3]) - np.maximum(box_4[1], boxes_Nx4[:, 1]))
  inter = iw * ih
  area = np.maximum(box_4[2] - box_4[0], 0) * np.maximum(box_4[3] - box_4[1], 0)
  areas = (np.maximum(boxes_Nx4[:, 2] - boxes_Nx4[:, 0], 0)
           * np.maximum(boxes_Nx4[:, 3] - boxes_Nx4[:, 1], 0))
  if method == "union":
    denom = area + areas - inter
  elif method == "min":
    denom = np.minimum(area, areas)
  else:
    raise ValueError(f"NMS method must be 'union' or 'min', got {method!r}")
  return inter / np.maximum(denom, 1e-12)


def nms(boxes_Nx4: np.ndarray, scores_N: np.ndarray, threshold: float,
        method: str = "union") -> np.ndarray:
  """Indices kept by greedy NMS, highest score first (ties: lower index first)."""
  order = np.argsort(-scores_N, kind="stable")
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    order = rest[overlap(boxes_Nx4[i], boxes_Nx4[rest], method) <= threshold]
  return np.asarray(keep, np.int64)


def nms_per_group(boxes_Nx4: np.ndarray, scores_N: np.ndarray, groups_N: np.ndarray,
                  threshold: float, method: str = "union") -> np.ndarray:
  """NMS within each group (image, or image and pyramid level): sorted kept indices."""
  keep = [np.flatnonzero(groups_N == g)[nms(boxes_Nx4[groups_N == g], scores_N[groups_N == g],
                                                threshold, method)]
          for g in np.unique(groups_N)]
  return np.sort(np.concatenate(keep)) if keep else np.zeros((0,), np.int64)


def overlap_matrix(boxes_Nx4: np.ndarray, method: str = "union") -> np.ndarray:
  """(N, N) overlap of every pair: inter / union, or inter / min(area)."""
  b = np.asarray(boxes_Nx4, np.float64)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  iw = np.maximum(0.0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]))
  ih = np.maximum(0.0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]))
  inter = iw * ih
  if method == "union":
    denom = area[:, None] + area[None, :] - inter
  elif method == "min":
    denom = np.minimum(area[:, None], area[None, :])
  else:
    raise ValueError(f"NMS method must be 'union' or 'min', got {method!r}")
  with np.errstate(divide="ignore", invalid="ignore"):
    return inter / denom   # NaN for empty boxes: compares False, suppresses nothing


def order_desc(scores_N: np.ndarray) -> np.ndarray:
  """Indices by descending score: ``np.argsort`` reversed (ties: the package's order)."""
  return np.argsort(scores_N)[::-1]


def nms_fast(boxes_Nx4: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
  """Indices kept of boxes already in descending score order: box i is dropped when any box
  j < i overlaps it by more than ``threshold``, whether j itself was kept or not."""
  n = len(boxes_Nx4)
  if n == 0:
    return np.zeros((0,), np.int64)
  o = np.triu(overlap_matrix(boxes_Nx4, method) > threshold, k=1)
  return np.flatnonzero(~o.any(axis=0))


def calibrate(boxes_Nx4: np.ndarray, offsets_Nx4: np.ndarray) -> np.ndarray:
  """Box regression: each side moves by its offset times the box width (x) or height (y),
  counted inclusively (``x2 - x1 + 1``)."""
  w = boxes_Nx4[:, 2] - boxes_Nx4[:, 0] + 1
  h = boxes_Nx4[:, 3] - boxes_Nx4[:, 1] + 1
  return boxes_Nx4 + offsets_Nx4 * np.stack([w, h, w, h], axis=1)


def square(boxes_Nx4: np.ndarray) -> np.ndarray:
  """The square of side max(w, h) with the same centre (R-Net and O-Net take square crops)."""
  w = boxes_Nx4[:, 2] - boxes_Nx4[:, 0]
  h = boxes_Nx4[:, 3] - boxes_Nx4[:, 1]
  side = np.maximum(w, h)
  x1 = boxes_Nx4[:, 0] + (w - side) / 2
  y1 = boxes_Nx4[:, 1] + (h - side) / 2
  return np.stack([x1, y1, x1 + side, y1 + side], axis=1)
