"""The raw files of the real datasets, read without tfds or TensorFlow.

Images (decoded with PIL, errors naming the file), ``root/<identity>/<image>`` folders,
the LFW View 2 ``pairs.txt`` and the Omniglot one-shot answer keys. The tfds builders
(``tfds_builders/``) are thin generators over these functions; everything here raises
``DataError`` with the file (and line) that is wrong.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
import zipfile
from PIL import Image

from infra import imagefile
from infra.errors import UserError
from infra.files import file_sha256


class DataError(UserError, ValueError):
  """Input data that cannot be used; the message names the file (and line) at fault."""


def natural_key(s: str) -> tuple:
  """Sort key that orders embedded numbers numerically: s2 < s10, 2.pgm < 10.pgm. Names it
  ranks equal (s1 and s01) are ordered by the name itself: they took the file system's listing
  order, so one folder could give other labels (and another held-out split) on another disk.
  ASCII digits only ("²" passed isdigit() and then failed int())."""
  return [int(t) if t.isascii() and t.isdigit() else t for t in re.split(r"([0-9]+)", s)], s


# -- images -------------------------------------------------------------------------------

def decode_image(data: bytes, where: str, mode: str = "RGB") -> Image.Image:
  """Decodes every pixel of ``data`` (so truncated files fail here), EXIF-upright.

  ``mode``: "L" (8-bit grey) or "RGB". Raises DataError naming ``where`` for bytes PIL
  cannot decode, an empty file, an image without pixels, or one larger than
  ``infra.imagefile.max_pixels()`` (checked from the header, before decoding). See
  ``infra/imagefile.py`` for the conversions (16-bit, palette, CMYK, alpha).
  """
  return imagefile.decode(data, where, mode, error=DataError)


def encode_png(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def image_bytes_for_tfds(data: bytes, where: str, mode: str = "RGB") -> tuple[bytes, tuple[int, int]]:
  """Bytes to store in a tfds Image feature, and the image's (H, W).

  A JPEG already in ``mode`` and upright is kept byte for byte (no second lossy pass);
  anything else is decoded, converted and stored as PNG, lossless, so that tfds (which
  decodes with PIL or OpenCV on read and needs no TensorFlow when given bytes) returns
  exactly ``mode``'s channels.
  """
  im = decode_image(data, where, mode)
  with Image.open(io.BytesIO(data)) as raw:
    keep = (raw.format == "JPEG" and raw.mode == mode
            and raw.getexif().get(0x0112, 1) == 1)   # 0x0112: EXIF orientation
  return (data if keep else encode_png(im)), (im.height, im.width)


def check_download(path: str, url: str, sha256: str | None) -> str:
  """Raises DataError unless the downloaded ``path`` (from ``url``) has SHA-256 ``sha256``;
  None (no pinned hash) is refused too: nothing unverified is used. Returns ``path``."""
  if sha256 is None:
    raise DataError(f"{url}: no pinned SHA-256 for this file, so the download is not used; "
                    f"download it yourself and point config.data.data_dir at its folder")
  got = file_sha256(path)
  if got != sha256:
    raise DataError(f"{url}: downloaded file {path} has SHA-256 {got}, expected "
                    f"{sha256}; it was not used (delete it and retry, or download it yourself)")
  return path


def read_file(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e})") from e


# -- identity folders ---------------------------------------------------------------------

def _check_inside(path: str, real_root: str, root: str) -> None:
  """Raises DataError unless ``path``, symbolic links resolved, lies under ``real_root``."""
  real = os.path.realpath(path)
  if os.path.commonpath([real, real_root]) != real_root:
    raise DataError(f"{path}: a symbolic link to {real}, outside the identity root {root}; "
                    f"expected files under the root (copy them in, or point data_dir at the "
                    f"folder they are in)")


def list_identity_folder(root: str, suffixes: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
  """``root/<identity>/<file>`` -> [(identity, [file, ...]), ...], both naturally sorted.

  Hidden entries (".*"), the files systems leave (``OS_JUNK``: Thumbs.db, desktop.ini, @eaDir)
  and files directly in ``root`` (a README) are ignored; with ``suffixes``, so are files of
  other types inside identity folders. Folders inside an identity folder are not read (a note
  on stderr says so). Identity order: natural, ties by name (never the listing's order). A
  file reached twice through symbolic links is refused, and so is a name that is not UTF-8.
  Symbolic links are
  followed only while they stay under ``root`` (``root`` itself may be one): an identity
  folder or image that resolves outside it is refused, so a folder cannot pull files from
  elsewhere on the machine into a dataset. Raises DataError for a missing root, a root
  without identity folders, an identity folder without images, or a link leading outside.
  """
  if not os.path.isdir(root):
    raise DataError(f"{root}: identity root folder does not exist")
  real_root = os.path.realpath(root)
  out, seen, subfolders = [], {}, []
  for ident in sorted(os.listdir(root), key=natural_key):
    d = os.path.join(root, ident)
    if ident.startswith(".") or ident in OS_JUNK or not os.path.isdir(d):
      continue
    _check_utf8(d, ident)
    _check_inside(d, real_root, root)
    entries = [f for f in os.listdir(d) if not f.startswith(".") and f not in OS_JUNK]
    subfolders += [os.path.join(d, f) for f in entries if os.path.isdir(os.path.join(d, f))]
    names = sorted((f for f in entries if os.path.isfile(os.path.join(d, f))
                    and (not suffixes or f.lower().endswith(suffixes))), key=natural_key)
    for n in names:
      _check_utf8(os.path.join(d, n), n)
      # one file under two names (a linked file or identity folder): its photos were one
      # person's in two labels, or counted twice in one
      real = os.path.realpath(os.path.join(d, n))
      if real in seen:
        raise DataError(f"{os.path.join(d, n)} and {seen[real]} are the same file ({real}, "
                        f"through a symbolic link); expected each photo once under the root")
      seen[real] = os.path.join(d, n)
    if not names:
      want = f" (no {'/'.join(suffixes)} files)" if suffixes else ""
      raise DataError(f"{d}: identity folder holds no images{want}")
    for n in names:
      _check_inside(os.path.join(d, n), real_root, root)
    out.append((ident, names))
  if not out:
    raise DataError(f"{root}: no identity folders (expected {root}/<identity>/<image>)")
  if subfolders:   # they were left out without a word
    print(f"note: {len(subfolders)} folder(s) inside identity folders are not read (e.g. "
          f"{subfolders[0]}): images are read from {root}/<identity>/ only", file=sys.stderr,
          flush=True)
  return out


# files operating systems leave in photo folders (hidden ones, .DS_Store / ._*, are skipped too)
OS_JUNK = frozenset({"Thumbs.db", "desktop.ini", "ehthumbs.db", "@eaDir"})


def _check_utf8(path: str, name: str) -> None:
  """DataError for a name that is not UTF-8 (Latin-1 "Jos\xe9"): it failed as a traceback
  deep in the fingerprint, and cannot be written to the prepared data's JSON."""
  try:
    name.encode("utf-8")
  except UnicodeEncodeError:
    raise DataError(f"{os.fsencode(path)!r}: the name is not valid UTF-8; rename it (e.g. "
                    f"convmv -f latin1 -t utf8)") from None


# -- LFW View 2 ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LfwPair:
  """One line of pairs.txt: images are (name, number); ``line`` is 1-based."""
  line: int
  fold: int
  issame: bool
  name_a: str
  num_a: int
  name_b: str
  num_b: int


def lfw_image_path(name: str, num: int) -> str:
  """Path of an LFW image relative to the images folder: NAME/NAME_NNNN.jpg."""
  return f"{name}/{name}_{num:04d}.jpg"


def parse_lfw_pairs(text: str, where: str) -> list[LfwPair]:
  """Parses LFW View 2 pairs.txt: a header ``FOLDS<TAB>N``, then per fold N matched lines
  ``name i j`` and N mismatched lines ``name1 i name2 j``. Fields may be separated by
  tabs or spaces. Raises DataError naming ``where`` and the line, also for a line that
  repeats an earlier pair (same order) or pairs an image with itself."""
  lines = text.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  head = lines[0].split() if lines else []
  if len(head) != 2 or not all(h.isdigit() and int(h) > 0 for h in head):
    got = lines[0] if lines else ""
    raise DataError(f"{where}: line 1: expected the View 2 header 'FOLDS<TAB>PAIRS_PER_FOLD' "
                    f"(e.g. '10\\t300'), got {got!r}")
  folds, n = int(head[0]), int(head[1])
  if len(lines) - 1 != folds * 2 * n:
    raise DataError(f"{where}: header says {folds} folds x (2 x {n}) pairs = {folds * 2 * n} "
                    f"lines, but {len(lines) - 1} follow it")
  pairs, seen = [], {}
  for k, raw in enumerate(lines[1:]):
    lineno, fold, issame = k + 2, k // (2 * n), (k % (2 * n)) < n
    f = raw.split()
    want = 3 if issame else 4
    nums = (f[1], f[2]) if issame and len(f) == 3 else (f[1], f[3]) if len(f) == 4 else ()
    if len(f) != want or not all(x.isdigit() for x in nums):
      kind = "'name i j'" if issame else "'name1 i name2 j'"
      raise DataError(f"{where}: line {lineno}: expected a {'matched' if issame else 'mismatched'} "
                      f"pair {kind} (fold {fold}), got {raw!r}")
    if issame:
      p = LfwPair(lineno, fold, True, f[0], int(f[1]), f[0], int(f[2]))
    else:
      p = LfwPair(lineno, fold, False, f[0], int(f[1]), f[2], int(f[3]))
    a, b = (p.name_a, p.num_a), (p.name_b, p.num_b)
    if a == b:
      raise DataError(f"{where}: line {lineno}: pairs image {lfw_image_path(*a)} with itself")
    # a repeated line would count twice in the accuracy; the reversed pair (b, a) is allowed
    # (tiny fixtures need it; the official file has no repeat in either order)
    key = (a, b)
    if key in seen:
      raise DataError(f"{where}: line {lineno}: duplicates the pair on line {seen[key]} "
                      f"({lfw_image_path(*a)}, {lfw_image_path(*b)}); each pair may appear once")
    seen[key] = lineno
    pairs.append(p)
  return pairs


def parse_lfw_dev_pairs(text: str, where: str) -> list[LfwPair]:
  """Parses an LFW View 1 file (``pairsDevTrain.txt``, ``pairsDevTest.txt``): a header ``N``,
  then N matched lines ``name i j`` and N mismatched lines ``name1 i name2 j``; every pair is
  in fold 0. Raises DataError naming ``where`` and the line (as ``parse_lfw_pairs``)."""
  lines = text.splitlines()
  head = lines[0].split() if lines else []
  if len(head) != 1 or not head[0].isdigit() or int(head[0]) == 0:
    got = lines[0] if lines else ""
    raise DataError(f"{where}: line 1: expected the View 1 header 'PAIRS_PER_HALF' (e.g. "
                    f"'1100'), got {got!r}")
  # one fold of N + N pairs is View 2's layout with the header '1 N'; line numbers are kept
  return parse_lfw_pairs("\n".join([f"1\t{head[0]}"] + lines[1:]), where)


def lfw_fold_of_person(pairs: list[LfwPair], where: str) -> dict[str, int]:
  """name -> fold. View 2 folds hold disjoint people; a person in two folds is an error."""
  fold: dict[str, int] = {}
  for p in pairs:
    for name in (p.name_a, p.name_b):
      if fold.setdefault(name, p.fold) != p.fold:
        raise DataError(f"{where}: line {p.line}: {name} is in fold {p.fold} but also in fold "
                        f"{fold[name]}; View 2 folds must hold disjoint people")
  return fold


# -- Omniglot -----------------------------------------------------------------------------

def open_zip(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: cannot open as a zip file ({e})") from e


def zip_pngs(zf: zipfile.ZipFile) -> list[str]:
  """Names of every .png member, sorted naturally; macOS metadata (__MACOSX/) skipped."""
  names = [n for n in zf.namelist() if n.lower().endswith(".png") and "__MACOSX" not in n]
  return sorted(names, key=natural_key)


def parse_run_answer_key(text: str, where: str) -> dict[str, str]:
  """Omniglot class_labels.txt: lines ``runNN/test/itemNN.png runNN/training/classNN.png``
  -> {test file basename: training file basename}."""
  key = {}
  for k, raw in enumerate(text.splitlines()):
    if not raw.strip():
      continue
    f = raw.split()
    if len(f) != 2:
      raise DataError(f"{where}: line {k + 1}: expected 'runNN/test/itemNN.png "
                      f"runNN/training/classNN.png', got {raw!r}")
    key[os.path.basename(f[0])] = os.path.basename(f[1])
  if not key:
    raise DataError(f"{where}: empty answer key")
  return key


def number_in(name: str, where: str) -> int:
  """The number in a file name such as class07.png or item13.png."""
  m = re.search(r"(\d+)", name)
  if not m:
    raise DataError(f"{where}: expected a numbered file name (e.g. class07.png), got {name!r}")
  return int(m.group(1))
