"""The in-memory identity dataset every source is turned into: images plus integer labels."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class IdentityDataset:
  """``images``: (N, *spatial, C) uint8 or float32; ``labels``: (N,) int32 identity ids."""
  images: np.ndarray
  labels: np.ndarray
  name: str = "dataset"

  def __post_init__(self):
    if self.images.shape[0] != self.labels.shape[0]:
      raise ValueError(f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels")
    if self.labels.ndim != 1:
      raise ValueError(f"{self.name}: labels must be 1-D, got shape {self.labels.shape}")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_identities(self) -> int:
    return int(np.unique(self.labels).size)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])
