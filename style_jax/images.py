"""Image I/O for style transfer: load (EXIF-upright RGB), resize, save PNG, keep content colors.

Images are NumPy arrays (H, W, 3): uint8 after loading, float32 in 0..255 once resized.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from infra import imagefile
from infra.errors import MissingFileError, UserError


class ImageError(UserError, ValueError):
  """An input image that cannot be used; names the config field and the file."""


def load_image(path: str, field: str = "image") -> np.ndarray:
  """Reads ``path`` as upright RGB uint8 (H, W, 3).

  EXIF orientation is applied; grayscale (L, I;16, I), palette, CMYK and alpha images are
  converted to RGB (alpha is dropped). ``field`` (e.g. "config.style") names where the path
  came from in the errors: FileNotFoundError for a missing file (or a directory),
  ImageError for a file PIL cannot decode, an empty one, or one above
  ``infra.imagefile.max_pixels()`` (refused from its header, before decoding).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = "is a directory, not an image file" if os.path.isdir(path) else "does not exist"
    raise MissingFileError(f"{field}: image file {path!r} {what}")
  im = imagefile.decode(path, f"{field}: {path!r}", "RGB", error=ImageError)
  return np.asarray(im, np.uint8)


def size_for_longest(shape: tuple[int, ...], longest: int) -> tuple[int, int]:
  """(H, W) with the longer side ``longest`` and the aspect ratio of ``shape`` (>= 1 px)."""
  h, w = shape[:2]
  s = longest / max(h, w)
  return max(1, int(round(h * s))), max(1, int(round(w * s)))


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes an (H, W, 3) image to ``hw`` with PIL's bicubic filter; returns float32 0..255."""
  h, w = int(hw[0]), int(hw[1])
  a = np.asarray(img)
  if a.shape[:2] == (h, w):
    return a.astype(np.float32)
  if a.dtype == np.uint8:
    out = Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(out, np.float32)
  # float: resize each channel in 'F' mode (no rounding to 8 bits)
  chans = [np.asarray(Image.fromarray(a[..., c].astype(np.float32), "F").resize(
      (w, h), Image.Resampling.BICUBIC)) for c in range(a.shape[-1])]
  return np.clip(np.stack(chans, -1), 0.0, 255.0).astype(np.float32)


def resize_longest(img: np.ndarray, longest: int) -> np.ndarray:
  """Resizes so that the longer side is ``longest`` (0: keep the size); float32 0..255."""
  if not longest:
    return np.asarray(img, np.float32)
  return resize(img, size_for_longest(img.shape, longest))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
  """float 0..255 (any range: clipped) -> uint8 by rounding."""
  return np.clip(np.round(np.asarray(rgb, np.float64)), 0, 255).astype(np.uint8)


def save_png(path: str, rgb: np.ndarray) -> str:
  """Writes an (H, W, 3) image (uint8, or float in 0..255) as PNG, atomically; returns path."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
  Image.fromarray(to_uint8(rgb)).save(tmp, format="PNG")
  os.replace(tmp, path)
  return path


# NTSC YIQ (FCC): Y is luma, I and Q the chroma; the inverse is exact up to float rounding
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
  """(..., 3) RGB -> YIQ (same scale: 0..255 in gives Y in 0..255)."""
  return np.asarray(rgb, np.float64) @ _RGB_TO_YIQ.T


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
  """Inverse of :func:`rgb_to_yiq`."""
  return np.asarray(yiq, np.float64) @ _YIQ_TO_RGB.T


def preserve_colors(output_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
  """The output's luminance with the content's chroma (Gatys et al. 2016, "luminance-only").

  Both (H, W, 3) in 0..255; the content is resized to the output's size. Returns float32
  0..255: Y from ``output_rgb``, I and Q from ``content_rgb``, back to RGB and clipped.
  """
  out = np.asarray(output_rgb, np.float64)
  content = resize(np.asarray(content_rgb), out.shape[:2]).astype(np.float64)
  yiq = rgb_to_yiq(content)
  yiq[..., 0] = rgb_to_yiq(out)[..., 0]
  return np.clip(yiq_to_rgb(yiq), 0.0, 255.0).astype(np.float32)
