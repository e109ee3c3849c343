"""LFW and Omniglot prepared from downloaded archives without TensorFlow, and hostile archives
refused (facenet_jax/data/tfds_builders/archives.py). The archives are tiny fixtures built
here; the download is faked (no network), everything after it is the builders' real path:
the pinned-SHA-256 check, the standard-library extraction and the tfds preparation."""

import hashlib
import importlib.util
import io
import os
import stat
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from facenet_jax.data import raw, real
from facenet_jax.data.tfds_builders import archives, lfw, omniglot

_PEOPLE = {"Ann": 2, "Bob": 1, "Cid": 1}
_PAIRS = "1\t1\nAnn\t1\t2\nBob\t1\tCid\t1\n"   # one fold: one matched, one mismatched pair


def _jpeg(seed: int) -> bytes:
  a = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _png105(seed: int) -> bytes:
  a = np.random.default_rng(seed).integers(0, 256, (105, 105), dtype=np.uint8) > 128
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


def _sha(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tar_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
  ti = tarfile.TarInfo(name)
  ti.size = len(data)
  tf.addfile(ti, io.BytesIO(data))


def _lfw_members() -> dict[str, bytes]:
  return {f"lfw/{p}/{p}_{k:04d}.jpg": _jpeg(10 * i + k)
          for i, (p, n) in enumerate(_PEOPLE.items()) for k in range(1, n + 1)}


def _write_lfw_tgz(path, extra=None) -> str:
  """lfw.tgz's layout, lfw/<person>/<person>_NNNN.jpg; ``extra(tf)`` adds hostile members."""
  with tarfile.open(path, "w:gz") as tf:
    for d in ["lfw"] + [f"lfw/{p}" for p in _PEOPLE]:
      ti = tarfile.TarInfo(d)
      ti.type, ti.mode = tarfile.DIRTYPE, 0o755
      tf.addfile(ti)
    for name, data in _lfw_members().items():
      _tar_file(tf, name, data)
    if extra is not None:
      extra(tf)
  return str(path)


def _omniglot_members(top: str, seed: int) -> dict[str, bytes]:
  return {f"{top}/{alpha}/character0{c}/{alpha[0]}{c}_{d:02d}.png": _png105(seed + 10 * c + d)
          for alpha in ("Greek", "Korean") for c in (1, 2) for d in (1, 2)}


def _write_zip(path, members: dict[str, bytes], extra=None) -> str:
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)
    if extra is not None:
      extra(zf)
  return str(path)


@pytest.fixture
def no_tensorflow():
  """These tests show preparing works without TensorFlow, so it must be absent (as in
  requirements.txt). Blocking it with an import hook is no substitute: tfds and etils probe
  for it (importlib.util.find_spec, "tensorflow" in sys.modules) and change their path."""
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed here; these tests need an environment without it")


def _fake_download(monkeypatch, files: dict[str, str]) -> None:
  """DownloadManager.download returns the local ``files[url]`` (no network)."""
  def download(self, urls):
    return {k: epath.Path(files[u]) for k, u in urls.items()}
  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)


def _serve_lfw(monkeypatch, tmp_path, tgz: str) -> None:
  pairs = tmp_path / "pairs.txt"
  pairs.write_text(_PAIRS)
  _fake_download(monkeypatch, {lfw._URLS["images"]: tgz, lfw._URLS["pairs"]: str(pairs)})
  # the fixtures' own hashes pinned: the SHA-256 check stays on the path
  monkeypatch.setitem(lfw._SHA256, "images", _sha(tgz))
  monkeypatch.setitem(lfw._SHA256, "pairs", _sha(pairs))


def _extracted(tfds_dir) -> str:
  return os.path.join(tfds_dir, "downloads", "extracted", f"lfw-{lfw._SHA256['images'][:16]}")


# -- the documented path works without TensorFlow -----------------------------------------

def test_lfw_downloads_extract_and_prepare_without_tensorflow(tmp_path, monkeypatch, no_tensorflow):
  _serve_lfw(monkeypatch, tmp_path, _write_lfw_tgz(tmp_path / "lfw.tgz"))
  tfds_dir = str(tmp_path / "tfds")
  images = real.prepare("lfw", tfds_dir, None, "images").as_data_source(split="train")
  recs = {images[i]["file_name"].decode(): images[i] for i in range(len(images))}
  assert sorted(recs) == sorted(n[len("lfw/"):] for n in _lfw_members())
  assert recs["Bob/Bob_0001.jpg"]["label"] == 1 and recs["Bob/Bob_0001.jpg"]["identity"] == b"Bob"
  assert os.path.isfile(os.path.join(_extracted(tfds_dir), "lfw", "Ann", "Ann_0002.jpg"))
  # the pairs config reuses the extraction instead of extracting again
  monkeypatch.setattr(archives, "_extract_tar_into", lambda *a: pytest.fail("extracted twice"))
  pairs = real.prepare("lfw", tfds_dir, None, "pairs").as_data_source(split="view2")
  recs = sorted((pairs[i] for i in range(len(pairs))), key=lambda r: r["index"])
  assert [(bool(r["issame"]), r["file_a"], r["file_b"]) for r in recs] == [
      (True, b"Ann/Ann_0001.jpg", b"Ann/Ann_0002.jpg"), (False, b"Bob/Bob_0001.jpg", b"Cid/Cid_0001.jpg")]


def test_omniglot_downloads_prepare_without_tensorflow(tmp_path, monkeypatch, no_tensorflow):
  zips = {}
  for k, seed in (("small1", 0), ("small2", 1000)):
    top = f"images_background_{k}"
    zips[k] = _write_zip(tmp_path / f"{top}.zip", _omniglot_members(top, seed))
    monkeypatch.setitem(omniglot._SHA256, k, _sha(zips[k]))
  _fake_download(monkeypatch, {omniglot._URLS[k]: p for k, p in zips.items()})
  b = real.prepare("omniglot", str(tmp_path / "tfds"), None, "background")
  s1, s2 = b.as_data_source(split="small1"), b.as_data_source(split="small2")
  assert (len(s1), len(s2)) == (8, 8)
  r = s1[0]
  assert r["image"].shape == (105, 105, 1) and set(np.unique(r["image"])) <= {0, 255}
  assert {s1[i]["identity"] for i in range(8)} == {b"Greek/character01", b"Greek/character02",
                                                   b"Korean/character01", b"Korean/character02"}


# -- hostile tar members (LFW's download path) --------------------------------------------

def _tar_entry(name: str, type_: bytes, linkname: str = "", size: int = 0):
  def add(tf):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size = type_, linkname, size
    tf.addfile(ti, io.BytesIO(b"x" * size) if size else None)
  return add


def _huge_declared(tf: tarfile.TarFile) -> None:
  """A header declaring 1 TiB with no data after it: reading it would fail differently."""
  ti = tarfile.TarInfo("lfw/Ann/Ann_0009.jpg")
  ti.size = 1 << 40
  tf.fileobj.write(ti.tobuf(tf.format, tf.encoding, tf.errors))
  tf.offset += tarfile.BLOCKSIZE


HOSTILE_TARS = {
    "dotdot": (lambda tf: _tar_file(tf, "lfw/../../evil.jpg", b"x"), r"'\.\.' component is refused"),
    "absolute": (lambda tf: _tar_file(tf, "/tmp/evil.jpg", b"x"), r"an absolute path is refused"),
    "symlink": (_tar_entry("lfw/Ann/Ann_0003.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                r"is a symbolic link \(to '/etc/passwd'\); links are refused"),
    "hardlink": (_tar_entry("lfw/Ann/Ann_0003.jpg", tarfile.LNKTYPE, "lfw/Ann/Ann_0001.jpg"),
                 r"is a hard link .*links are refused"),
    "fifo": (_tar_entry("lfw/Ann/pipe", tarfile.FIFOTYPE), r"not a regular file or folder"),
    "huge": (_huge_declared, r"declares 1,099,511,627,776 bytes, more than the 67,108,864-byte "
                             r"limit per member \(MAX_MEMBER_BYTES\); refused before reading it"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_members_are_refused_and_nothing_is_left(tmp_path, monkeypatch, case):
  extra, match = HOSTILE_TARS[case]
  _serve_lfw(monkeypatch, tmp_path, _write_lfw_tgz(tmp_path / "lfw.tgz", extra))
  tfds_dir = str(tmp_path / "tfds")
  with pytest.raises(archives.ArchiveError, match=r"lfw\.tgz: member .*" + match):
    real.prepare("lfw", tfds_dir, None, "images")
  extracted = os.path.dirname(_extracted(tfds_dir))
  assert os.listdir(extracted) == []   # the temporary folder is removed, no dest is left
  assert not os.path.exists(tmp_path / "evil.jpg") and not os.path.exists("/tmp/evil.jpg")


def test_a_tar_whose_members_add_up_past_the_total_limit_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 1000)   # the fixture's JPEGs hold more
  tgz = _write_lfw_tgz(tmp_path / "lfw.tgz")
  with pytest.raises(archives.ArchiveError, match=r"lfw\.tgz: members add up to more than the "
                                                  r"1,000-byte limit per archive"):
    archives.extract_tar(tgz, str(tmp_path / "out"))
  assert os.listdir(tmp_path) == ["lfw.tgz"]


def test_a_corrupt_tgz_is_named(tmp_path):
  tgz = tmp_path / "lfw.tgz"
  tgz.write_bytes(open(_write_lfw_tgz(tgz), "rb").read()[:600])
  with pytest.raises(archives.ArchiveError, match=r"lfw\.tgz: cannot extract as a tar archive"):
    archives.extract_tar(str(tgz), str(tmp_path / "out"))


def test_copy_bounded_stops_at_the_limit_whatever_was_declared():
  dst = io.BytesIO()
  with pytest.raises(archives.ArchiveError, match=r"x\.jpg: inflates past the 100-byte limit"):
    archives.copy_bounded(io.BytesIO(b"a" * 101), dst, 100, "x.jpg")
  assert len(dst.getvalue()) <= 100
  assert archives.copy_bounded(io.BytesIO(b"a" * 100), io.BytesIO(), 100, "x.jpg") == 100


# -- hostile zip members (Omniglot, downloaded or manual_dir) ------------------------------

def _zip_symlink(zf: zipfile.ZipFile) -> None:
  zi = zipfile.ZipInfo("images_background_small1/Greek/character01/link.png")
  zi.create_system = 3   # Unix: the high 16 bits of external_attr are st_mode
  zi.external_attr = (stat.S_IFLNK | 0o777) << 16
  zf.writestr(zi, "/etc/passwd")


HUGE_NAME = "images_background_small1/Greek/character01/huge.png"


def _declare_huge(path: str) -> None:
  """Rewrites HUGE_NAME's uncompressed size in the central directory to 2 GiB - 1."""
  data = bytearray(open(path, "rb").read())
  name = HUGE_NAME.encode()
  at = data.index(b"PK\x01\x02")   # a central directory entry: its file name is at +46
  while data[at + 46:at + 46 + len(name)] != name:
    at = data.index(b"PK\x01\x02", at + 4)
  data[at + 24:at + 28] = (0x7FFFFFFF).to_bytes(4, "little")   # uncompressed size
  open(path, "wb").write(bytes(data))


HOSTILE_ZIPS = {
    "dotdot": ({"images_background_small1/../../evil.png": b"x"}, None, r"'\.\.' component"),
    "absolute": ({"/tmp/evil.png": b"x"}, None, r"an absolute path is refused"),
    "backslash": ({"images_background_small1\\..\\evil.png": b"x"}, None, r"backslash"),
    "symlink": ({}, _zip_symlink, r"link\.png' is a symbolic link; links are refused"),
    "huge": ({HUGE_NAME: b"x" * 10}, None, r"huge\.png' declares 2,147,483,647 bytes, more than "
                                           r"the 67,108,864-byte limit per member"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
@pytest.mark.parametrize("route", ["download", "manual_dir"])
def test_hostile_zip_members_are_refused(tmp_path, monkeypatch, case, route):
  members, extra, match = HOSTILE_ZIPS[case]
  root = tmp_path / "omniglot"
  root.mkdir()
  zips = {k: str(root / f"images_background_{k}.zip") for k in ("small1", "small2")}
  _write_zip(zips["small1"], {**_omniglot_members("images_background_small1", 0), **members}, extra)
  _write_zip(zips["small2"], _omniglot_members("images_background_small2", 1000))
  if case == "huge":
    _declare_huge(zips["small1"])
  if route == "download":
    for k, p in zips.items():
      monkeypatch.setitem(omniglot._SHA256, k, _sha(p))
    _fake_download(monkeypatch, {omniglot._URLS[k]: p for k, p in zips.items()})
  manual = str(root) if route == "manual_dir" else None
  with pytest.raises(archives.ArchiveError, match=r"images_background_small1\.zip: member .*" + match):
    real.prepare("omniglot", str(tmp_path / "tfds"), manual, "background")


def test_zip_reads_are_bounded_even_when_the_declared_size_lies(tmp_path, monkeypatch):
  path = _write_zip(tmp_path / "a.zip", {"a/b.png": b"z" * 5000})
  monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 1000)
  monkeypatch.setattr(archives, "_check_size", lambda *a: None)   # as if it declared less
  with archives.open_zip(path) as zf:
    with pytest.raises(archives.ArchiveError, match=r"a\.zip: member 'a/b\.png': inflates past "
                                                    r"the 1,000-byte limit"):
      archives.read_member(zf, "a/b.png", path)


def test_member_paths_inside_the_destination_are_normalised():
  assert archives.member_path("./lfw//Ann/./Ann_0001.jpg", "a") == "lfw/Ann/Ann_0001.jpg"
  assert archives.member_path("lfw/", "a") == "lfw"
  for bad in ("C:/evil", "a/\0b", "a/../../b", ".."):
    with pytest.raises(archives.ArchiveError, match=r"^a: member "):
      archives.member_path(bad, "a")
  assert issubclass(archives.ArchiveError, raw.DataError)
