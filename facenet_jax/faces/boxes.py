"""Box arithmetic of the MTCNN cascade, in NumPy on the host (a few hundred boxes per image).

Boxes are ``(x1, y1, x2, y2)`` in pixel coordinates of the original image, width
``x2 - x1``. Greedy NMS as in Zhang et al.'s ``nms.m``: keep the highest score, drop every
box overlapping it by more than ``threshold``, repeat; overlap is intersection over union
("union") or over the smaller box ("min", used after O-Net so a box inside a bigger face
box is dropped).
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


def calibrate(boxes_Nx4: np.ndarray, offsets_Nx4: np.ndarray) -> np.ndarray:
  """Box regression: each side moves by its offset times the box width (x) or height (y)."""
  w = boxes_Nx4[:, 2] - boxes_Nx4[:, 0]
  h = boxes_Nx4[:, 3] - boxes_Nx4[:, 1]
  return boxes_Nx4 + offsets_Nx4 * np.stack([w, h, w, h], axis=1)


def square(boxes_Nx4: np.ndarray) -> np.ndarray:
  """The square of side max(w, h) with the same centre (R-Net and O-Net take square crops)."""
  w = boxes_Nx4[:, 2] - boxes_Nx4[:, 0]
  h = boxes_Nx4[:, 3] - boxes_Nx4[:, 1]
  side = np.maximum(w, h)
  x1 = boxes_Nx4[:, 0] + (w - side) / 2
  y1 = boxes_Nx4[:, 1] + (h - side) / 2
  return np.stack([x1, y1, x1 + side, y1 + side], axis=1)
