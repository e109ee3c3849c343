"""Load-time image preparation: decoded image -> a square, fixed-size uint8 array.

Only geometry and channel count happen here; scaling to [-1, 1] and augmentation happen
on device in ``facenet_jax/preprocess.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Fit:
  """``size``: output side (px); ``crop``: side of the centered square cut from the
  original before resizing (0: the largest centered square); ``channels``: 1 or 3."""
  size: int
  crop: int = 0
  channels: int = 3

  def __post_init__(self):
    if self.size < 1 or self.crop < 0 or self.channels not in (1, 3):
      raise ValueError(f"bad image fit {self}: size >= 1, crop >= 0, channels 1 or 3")


def fit_image(im: Image.Image, fit: Fit, where: str = "image") -> np.ndarray:
  """Center-crops ``im`` to a square, resizes it to ``fit.size`` and returns
  (size, size, channels) uint8. Grey becomes 3 equal channels and RGB becomes luma
  (ITU-R 601) as ``fit.channels`` asks.

  Resizing uses PIL's bilinear filter, which widens its support when shrinking (an
  area-weighted average), so thin strokes (Omniglot) do not alias away.
  """
  w, h = im.size
  side = fit.crop or min(w, h)
  if side > min(w, h):
    # a DataError (one line, and preparation removes its partial folder), not a ValueError
    from facenet_jax.data.raw import DataError
    raise DataError(f"{where}: center crop {side} px is larger than the image ({w}x{h}); "
                    "lower config.data.center_crop")
  left, top = (w - side) // 2, (h - side) // 2
  im = im.crop((left, top, left + side, top + side))
  im = im.convert("L" if fit.channels == 1 or im.mode == "L" else "RGB")
  if im.size != (fit.size, fit.size):
    im = im.resize((fit.size, fit.size), Image.Resampling.BILINEAR)
  a = np.asarray(im, np.uint8)
  if a.ndim == 2:
    a = a[:, :, None]
  if a.shape[-1] != fit.channels:
    a = np.repeat(a, fit.channels, axis=-1)
  return a
