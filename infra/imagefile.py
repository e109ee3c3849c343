"""Decoding image files, shared by the face datasets and style transfer.

One place decides what an image file is allowed to be:

* every pixel is decoded here, so truncated and corrupt files fail at load time with the
  file named, not later inside a resize or on device;
* the size is read from the header and checked against ``max_pixels`` *before* any pixel
  is decoded, so an image too large for memory (or a decompression bomb: a few KB of PNG
  that claims 100,000 x 100,000 px) is refused without allocating it;
* EXIF orientation is applied; 16-bit grey (PNG, PGM) is scaled to 8 bits by its 0..65535
  range; float or 32-bit integer grey (TIFF), whose range no file states, is refused; palette,
  CMYK, grey+alpha and RGBA images are converted (alpha is dropped, not blended); a file of
  several frames (animated GIF / PNG, multi-page TIFF) gives its first frame.

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


# what a folder of photos is searched for (recognize, detect_faces, visualize_units)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
  """An image file's name by its suffix, and not hidden (macOS leaves ``._photo.jpg`` files
  of metadata beside photos copied from it, which no image reader opens)."""
  return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def walk_images(root: str) -> list[str]:
  """Every image file under ``root`` (:func:`is_image_name`), hidden folders skipped, sorted."""
  out = []
  for d, dirs, names in os.walk(root):
    dirs[:] = [n for n in dirs if not n.startswith(".")]
    out += [os.path.join(d, n) for n in names if is_image_name(n)]
  return sorted(out)


class _Refused(Exception):
  """A valid file this loader does not take (too large; grey of no stated range): the whole
  message, not "corrupt or truncated"."""


def max_pixels() -> int:
  v = os.environ.get("IMAGE_MAX_PIXELS", "")
  try:
    return int(v) if v else DEFAULT_MAX_PIXELS
  except ValueError:
    raise ValueError(f"$IMAGE_MAX_PIXELS={v!r}: expected an integer number of pixels") from None


def _to_8bit_grey(im: Image.Image, fmt: str | None) -> Image.Image:
  """16-bit grey scaled by its container's range, 0..65535 -> 0..255. The range was guessed
  from the pixels (65535 only if one exceeded 255): a dark 16-bit photo came out 257x too
  bright, a float image in [0, 1] black, with exit 0. Pixels whose range no file states (32-bit
  float, 32-bit integers outside 16-bit PNG / PGM) are refused."""
  sixteen = im.mode.startswith("I;16") or (im.mode == "I" and fmt in ("PNG", "PPM"))
  if not sixteen:   # PIL opens 16-bit PNG (older versions) and PGM with maxval > 255 as "I"
    kind = "32-bit float" if im.mode == "F" else "32-bit integer"
    raise _Refused(f"{kind} grey pixels (PIL mode {im.mode}) have no stated range ([0, 1]? "
                     f"[0, 255]? [0, 65535]?), so they cannot be scaled to 8 bits without a "
                     f"guess; save the image as 8- or 16-bit")
  a = np.asarray(im, np.float64)
  return Image.fromarray(np.clip(a / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


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
  if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
    # PIL refuses more than 2x its own limit on open: a $IMAGE_MAX_PIXELS above it was told
    # to raise a limit that could not be raised
    Image.MAX_IMAGE_PIXELS = limit
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our limit decides
      warnings.simplefilter("ignore", UserWarning)   # palette-with-transparency notices
      with Image.open(fp) as im:
        w, h = im.size
        if w * h > limit:
          raise _Refused(f"{where}: {w}x{h} px ({w * h:,} px) is more than the {limit:,} px "
                         f"this loader decodes (set $IMAGE_MAX_PIXELS to allow more, or "
                         f"downscale the file); nothing was decoded")
        im.load()
        fmt = im.format   # the transposed copy below has none
        im = ImageOps.exif_transpose(im)
        if im.mode in _WIDE_GREY:
          try:
            im = _to_8bit_grey(im, fmt)
          except _Refused as e:
            raise _Refused(f"{where}: {e}") from None
        if im.mode != mode:   # mode "1" (Omniglot) becomes 0/255, not 0/1
          im = im.convert(mode)
  except _Refused as e:
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
