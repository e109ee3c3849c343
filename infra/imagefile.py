"""Decoding image files, shared by the face datasets and style transfer.

One place decides what an image file is allowed to be:

* every pixel is decoded here, so truncated and corrupt files fail at load time with the
  file named, not later inside a resize or on device;
* the size is read from the header and checked against ``max_pixels`` *before* any pixel
  is decoded, so an image too large for memory (or a decompression bomb: a few KB of PNG
  that claims 100,000 x 100,000 px) is refused without allocating it;
* EXIF orientation is applied; 16/32-bit grey (``I;16``, ``I``, ``F``) is scaled to 8 bits;
  palette, CMYK, grey+alpha and RGBA images are converted (alpha is dropped, not blended).

Errors are raised as the caller's exception class (``error``), with ``where`` (a path, a
config field, a record name) leading the message.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Largest image decoded (width x height). 64 Mpx is 192 MB as 8-bit RGB (768 MB once a
# loader makes it float32); raise it with $IMAGE_MAX_PIXELS for larger inputs.
DEFAULT_MAX_PIXELS = 64 * 2 ** 20

_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class _TooLarge(Exception):
  pass


def max_pixels() -> int:
  v = os.environ.get("IMAGE_MAX_PIXELS", "")
  try:
    return int(v) if v else DEFAULT_MAX_PIXELS
  except ValueError:
    raise ValueError(f"$IMAGE_MAX_PIXELS={v!r}: expected an integer number of pixels") from None


def _to_8bit_grey(im: Image.Image) -> Image.Image:
  a = np.asarray(im, np.float64)
  if not np.all(np.isfinite(a)):
    raise ValueError("float image with NaN or Inf pixels")
  hi = 65535.0 if a.max(initial=0) > 255 else 255.0
  return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"P5", "PGM"), (b"P2", "PGM"), (b"P6", "PPM"), (b"P3", "PPM"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(fp) -> str | None:
  """The format a file's first bytes announce, if any."""
  try:
    if isinstance(fp, io.BytesIO):
      head = fp.getvalue()[:8]
    else:
      with open(fp, "rb") as f:
        head = f.read(8)
  except OSError:
    return None
  return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def decode(source: bytes | str | os.PathLike, where: str, mode: str = "RGB", *,
           error: type[Exception] = ValueError, limit: int | None = None) -> Image.Image:
  """Decodes ``source`` (the file's bytes, or a path) into an upright ``mode`` image.

  Args:
    source: encoded bytes or a file path.
    where: what names the image in errors (e.g. "config.style: 'a.jpg'").
    mode: "RGB" or "L" (8-bit grey; RGB becomes ITU-R 601 luma).
    error: the exception class raised for an undecodable, empty or too-large image.
    limit: the most pixels accepted (default ``max_pixels()``).
  Raises:
    ``error`` naming ``where``: not an image, truncated/corrupt data, 0 pixels, more than
    ``limit`` pixels (with the size and how to raise the limit).
  """
  if mode not in ("RGB", "L"):
    raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
  limit = max_pixels() if limit is None else int(limit)
  fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
  empty = (not fp.getbuffer().nbytes) if isinstance(fp, io.BytesIO) else (
      os.path.isfile(fp) and os.path.getsize(fp) == 0)
  if empty:
    raise error(f"{where}: empty file (0 bytes), expected an image")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our limit decides
      warnings.simplefilter("ignore", UserWarning)   # palette-with-transparency notices
      with Image.open(fp) as im:
        w, h = im.size
        if w * h > limit:
          raise _TooLarge(f"{where}: {w}x{h} px ({w * h / 1e6:.1f} Mpx) is larger than the "
                          f"{limit / 1e6:.1f} Mpx this loader decodes (set $IMAGE_MAX_PIXELS "
                          f"to allow more, or downscale the file); nothing was decoded")
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in _WIDE_GREY:
          im = _to_8bit_grey(im)
        if im.mode != mode:   # mode "1" (Omniglot) becomes 0/255, not 0/1
          im = im.convert(mode)
  except _TooLarge as e:
    raise error(str(e)) from None
  except Image.DecompressionBombError as e:
    raise error(f"{where}: image too large to decode ({e})") from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
    fmt = _signature(fp)
    if isinstance(e, UnidentifiedImageError) and fmt:
      why = f"starts like a {fmt} file but its data is corrupt or truncated"
    elif isinstance(e, UnidentifiedImageError):
      why = "not an image file PIL can identify (JPEG, PNG, PGM, BMP, ...)"
    else:
      why = f"corrupt or truncated image data ({type(e).__name__}: {e})"
    raise error(f"{where}: not an image PIL can read: {why}") from e
  if im.width == 0 or im.height == 0:
    raise error(f"{where}: image has no pixels ({im.width}x{im.height})")
  return im


def check_decodes(paths, mode: str = "RGB", *, error: type[Exception] = ValueError) -> None:
  """Decodes every file of ``paths`` once, pixels discarded, so that a long pass over all of
  them (detection, a forward pass per image) does not stop at the first bad file after the
  work before it; raises ``error`` naming the first file that ``decode`` refuses."""
  for path in paths:
    decode(path, path, mode, error=error)
