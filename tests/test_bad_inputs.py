"""A corpus of bad inputs: each case asserts a specific, readable error (naming the file,
field or value and what was expected) or a documented correct handling, and that no
partial output or corrupted state is left behind.

Cases asserted elsewhere (not repeated here):
  pairs.txt naming a missing image .... test_data_builders::test_lfw_pairs_naming_a_missing_image_names_line_and_path
  pairs.txt bad header / fold overlap . test_data_builders::test_bad_pairs_files_are_named
  unknown / mistyped --config.KEY ..... test_train::test_unknown_and_mistyped_command_line_overrides_are_errors
  NaN in the input images ............. test_train::test_nan_in_input_data_is_named
  K > images of an identity (masked) .. test_train::test_more_images_per_identity_than_available_is_handled
  HDF5 missing layer / kernel shape ... test_vgg::test_loader_errors_name_the_layer
  gallery of another embedding size ... test_recognition::test_bad_gallery_files
  person not in the gallery ........... test_recognition::test_person_not_in_gallery_is_not_recognized_and_verify
  archive members escaping the folder . test_archives (absolute, '..', links, devices, > MAX_MEMBER_BYTES,
    a member inflating past it, a tar past MAX_TOTAL_BYTES, a truncated archive: 23 cases)
  checkpoint digest missing / malformed, test_checkpoint_integrity (arrays swapped between steps, a whole
    step copied over another, meta without its step, unverified sharded state: 14 cases)
The cases below are new, or extend those with the no-partial-output check.
"""

import io
import json
import os
import shutil
import re
import stat
import struct
import zipfile
import zlib

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib import format as npy_format
from PIL import Image

from configs.facenet import get_config as facenet_config
from configs.style import get_config as style_config
from facenet_jax import inference, members as members_lib, recognition as R, train, vgg_features, workdir as workdir_lib
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import fingerprint, images as fimages, raw, synthetic
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.sampler import PKSampler
from infra import checkpoints, files, metric_writer, overrides, vgg, vgg_weights
from style_jax import cost, images as simages, optimize

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------ helpers


def _encode(a, fmt, mode=None, **kw):
  buf = io.BytesIO()
  (a if isinstance(a, Image.Image) else Image.fromarray(a, mode)).save(buf, format=fmt, **kw)
  return buf.getvalue()


def _rgb(h=24, w=20):
  return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(w, h):
  """A PNG whose header claims w x h pixels, with one empty data chunk: a few bytes on disk."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
          + chunk(b"IEND", b""))


def _face_load(data, tmp_path, name, mode="RGB"):
  """The face-data path: file bytes -> raw.decode_image (what every tfds builder uses)."""
  path = tmp_path / name
  path.write_bytes(data)
  return np.asarray(raw.decode_image(raw.read_file(str(path)), str(path), mode))


def _style_load(data, tmp_path, name):
  path = tmp_path / name
  path.write_bytes(data)
  return simages.load_image(str(path), "config.style")


LOADERS = {
    "faces": (_face_load, raw.DataError),
    "style": (_style_load, simages.ImageError),
}


def _tiny_facenet(**overrides):
  c = facenet_config("tiny")
  c.unlock()
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    with target.ignore_type():
      target[last] = v
  c.lock()
  return c


def _leftovers(path):
  """Everything under ``path`` (an empty list when it does not exist)."""
  if not os.path.exists(path):
    return []
  return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# -------------------------------------------------------------- broken image files (both loaders)


_JPEG = _encode(_rgb(), "JPEG", quality=90)
_PNG = _encode(_rgb(), "PNG")
_PGM = _encode(RNG.integers(0, 256, (12, 10), dtype=np.uint8), "PPM")   # mode L -> P5 (PGM)

BROKEN = [
    ("zero_byte.jpg", b"", r"zero_byte\.jpg.*empty file \(0 bytes\)"),
    ("truncated.jpg", _JPEG[: len(_JPEG) // 2], r"truncated\.jpg.*JPEG .*corrupt or truncated"),
    ("corrupt.jpg", _JPEG[:200] + bytes(len(_JPEG) - 200), r"corrupt\.jpg.*corrupt or truncated"),
    ("truncated.png", _PNG[: len(_PNG) // 2], r"truncated\.png.*corrupt or truncated"),
    ("corrupt.png", _PNG[:40] + b"\x00" * 40 + _PNG[80:], r"corrupt\.png.*corrupt or truncated"),
    ("truncated.pgm", _PGM[: len(_PGM) // 3], r"truncated\.pgm.*corrupt or truncated"),
    ("corrupt_header.pgm", b"P5\n10 x12\n255\n" + bytes(120), r"corrupt_header\.pgm.*not an image"),
    ("notes.jpg", b"name,score\nann,1\n" * 20, r"notes\.jpg.*not an image file PIL can identify"),
]


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("name,data,match", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_image_files_are_named(tmp_path, loader, name, data, match):
  load, error = LOADERS[loader]
  with pytest.raises(error, match=match):
    load(data, tmp_path, name)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_image_larger_than_allowed_is_refused_from_its_header(tmp_path, loader, monkeypatch):
  load, error = LOADERS[loader]
  # 10,000 x 8,000 px claimed by a 60-byte file: refused before any pixel is allocated
  with pytest.raises(error, match=r"big\.png.*10000x8000 px \(80,000,000 px\) is more than the "
                                  r"67,108,864 px .*IMAGE_MAX_PIXELS"):
    load(_png_header_only(10000, 8000), tmp_path, "big.png")
  # a decompression bomb past PIL's own limit: still this loader's error, naming the file
  with pytest.raises(error, match=r"bomb\.png"):
    load(_png_header_only(100000, 100000), tmp_path, "bomb.png")
  # the limit is a setting: a real 24x20 image over a 400-pixel limit
  monkeypatch.setenv("IMAGE_MAX_PIXELS", "400")
  with pytest.raises(error, match=r"ok\.png.*20x24 px"):
    load(_PNG, tmp_path, "ok.png")
  monkeypatch.setenv("IMAGE_MAX_PIXELS", "lots")
  with pytest.raises(ValueError, match=r"IMAGE_MAX_PIXELS='lots'"):
    load(_PNG, tmp_path, "ok.png")


# -------------------------------------------------- unusual but valid images: documented handling


def test_16_bit_grey_png_and_pgm_are_scaled_to_8_bits(tmp_path):
  a8 = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
  a16 = a8.astype(np.uint16) * 257          # 0..65535
  png16 = _encode(Image.fromarray(a16), "PNG")
  pgm16 = b"P5\n5 6\n65535\n" + a16.astype(">u2").tobytes()
  for name, data in (("g16.png", png16), ("g16.pgm", pgm16)):
    np.testing.assert_array_equal(_face_load(data, tmp_path, name, "L"), a8, err_msg=name)
    rgb = _style_load(data, tmp_path, name)
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], a8, err_msg=name)


def test_16_bit_grey_is_scaled_by_its_range_and_float_grey_refused(tmp_path):
  """The range was guessed from the pixels: a dark 16-bit PNG (every value <= 255) came out
  257x too bright, a float TIFF in [0, 1] black, both exit 0. 16-bit grey is scaled by
  0..65535 whatever its pixels; float and 32-bit integer grey is refused, named."""
  dark = RNG.integers(0, 256, (6, 5)).astype(np.uint16)   # a dark 16-bit photo
  want = np.clip(dark / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)   # all 0 or 1
  np.testing.assert_array_equal(_face_load(_encode(Image.fromarray(dark), "PNG"), tmp_path,
                                           "dark16.png", "L"), want)
  for name, im in (("f.tiff", Image.fromarray(RNG.random((6, 5), dtype=np.float32))),
                   ("i.tiff", Image.fromarray(RNG.integers(0, 70000, (6, 5)).astype(np.int32)))):
    for load, error in LOADERS.values():
      with pytest.raises(error, match=r": 32-bit (float|integer) grey pixels .* have no "
                                      r"stated range .* save the image as 8- or 16-bit"):
        load(_encode(im, "TIFF"), tmp_path, name)


def test_a_pixel_limit_above_pils_own_is_honoured(tmp_path, monkeypatch):
  """$IMAGE_MAX_PIXELS above PIL's limit was still refused by PIL ("could be decompression
  bomb"), while the message said to raise $IMAGE_MAX_PIXELS."""
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # PIL's limit, small for a small file
  monkeypatch.setenv("IMAGE_MAX_PIXELS", "1000")
  assert _face_load(_encode(_rgb(20, 24), "PNG"), tmp_path, "ok.png").shape[:2] == (20, 24)


def test_rgba_drops_alpha_palette_and_cmyk_become_rgb(tmp_path):
  rgb = _rgb(8, 8)
  rgba = np.concatenate([rgb, RNG.integers(0, 256, (8, 8, 1), dtype=np.uint8)], -1)
  np.testing.assert_array_equal(_face_load(_encode(rgba, "PNG"), tmp_path, "a.png"), rgb)
  np.testing.assert_array_equal(_style_load(_encode(rgba, "PNG"), tmp_path, "a.png"), rgb)
  pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  pal.info["transparency"] = 0
  want = np.asarray(pal.convert("RGB"))
  np.testing.assert_array_equal(_face_load(_encode(pal, "PNG"), tmp_path, "p.png"), want)
  np.testing.assert_array_equal(_style_load(_encode(pal, "PNG"), tmp_path, "p.png"), want)
  cmyk = Image.fromarray(rgb).convert("CMYK")
  want = np.asarray(Image.open(io.BytesIO(_encode(cmyk, "JPEG", quality=95))).convert("RGB"))
  for load in (_face_load, _style_load):
    got = load(_encode(cmyk, "JPEG", quality=95), tmp_path, "cmyk.jpg")
    assert got.shape == (8, 8, 3)
    np.testing.assert_array_equal(got, want)


def test_grey_where_rgb_is_expected_and_rgb_where_grey_is(tmp_path):
  grey = RNG.integers(0, 256, (10, 10), dtype=np.uint8)
  data = _encode(grey, "PNG")
  for load in (_face_load, _style_load):
    rgb = load(data, tmp_path, "grey.png")
    assert rgb.shape == (10, 10, 3)
    for c in range(3):
      np.testing.assert_array_equal(rgb[..., c], grey)
  fitted = fimages.fit_image(raw.decode_image(data, "grey.png", "L"), fimages.Fit(8, channels=3))
  assert fitted.shape == (8, 8, 3) and np.all(fitted[..., 0] == fitted[..., 2])
  colour = _rgb(10, 10)
  luma = _face_load(_encode(colour, "PNG"), tmp_path, "c.png", "L")
  np.testing.assert_array_equal(luma, np.asarray(Image.fromarray(colour).convert("L")))


def test_one_pixel_image_is_resized_like_any_other(tmp_path):
  one = np.array([[[10, 200, 30]]], np.uint8)
  im = raw.decode_image(_encode(one, "PNG"), "one.png")
  out = fimages.fit_image(im, fimages.Fit(16, channels=3), "one.png")
  assert out.shape == (16, 16, 3) and np.all(out == one[0, 0])
  assert _style_load(_encode(one, "PNG"), tmp_path, "one.png").shape == (1, 1, 3)


def test_a_folder_given_as_an_image_is_named(tmp_path):
  os.makedirs(tmp_path / "photo.jpg")
  with pytest.raises(FileNotFoundError, match=r"config.content: .*photo\.jpg' is a directory"):
    simages.load_image(str(tmp_path / "photo.jpg"), "config.content")
  with pytest.raises(raw.DataError, match=r"photo\.jpg: cannot read"):
    raw.read_file(str(tmp_path / "photo.jpg"))


# ------------------------------------------------------------------ LFW pairs.txt, identity folders


_PAIRS = "1\t2\nAnn\t1\t2\nBob\t1\t3\nAnn\t1\tBob\t1\nCid\t1\tDee\t2\n"


@pytest.mark.parametrize("text,match", [
    ("", r"line 1: expected the View 2 header"),
    ("1\t3\n" + _PAIRS.split("\n", 1)[1], r"header says 1 folds x \(2 x 3\) pairs = 6 lines, but 4"),
    (_PAIRS.replace("Bob\t1\t3", "Ann\t1\t2"),
     r"line 3: duplicates the pair on line 2 \(Ann/Ann_0001.jpg, Ann/Ann_0002.jpg\)"),
    (_PAIRS.replace("Cid\t1\tDee\t2", "Ann 1 Bob 1"), r"line 5: duplicates the pair on line 4"),
    (_PAIRS.replace("Bob\t1\t3", "Bob\t3\t3"), r"line 3: pairs image Bob/Bob_0003.jpg with itself"),
])
def test_bad_pairs_txt(text, match):
  with pytest.raises(raw.DataError, match=match):
    raw.parse_lfw_pairs(text, "lfw/pairs.txt")


def test_empty_identity_folder_and_hidden_files(tmp_path):
  for ident in ("ann", "bob"):
    os.makedirs(tmp_path / ident)
    (tmp_path / ident / "1.png").write_bytes(_PNG)
  (tmp_path / "bob" / ".DS_Store").write_bytes(b"junk")   # hidden: ignored (documented)
  (tmp_path / "README.txt").write_text("root files are ignored")
  assert raw.list_identity_folder(str(tmp_path)) == [("ann", ["1.png"]), ("bob", ["1.png"])]
  os.makedirs(tmp_path / "cid")
  with pytest.raises(raw.DataError, match=r"cid: identity folder holds no images"):
    raw.list_identity_folder(str(tmp_path))


def test_a_text_file_in_an_identity_folder_fails_preparation_and_leaves_nothing(tmp_path):
  root = tmp_path / "people"
  for k, ident in enumerate(("ann", "bob", "cid")):
    os.makedirs(root / ident)
    for i in range(2):
      (root / ident / f"{i}.png").write_bytes(_encode(_rgb(12, 12), "PNG"))
  (root / "bob" / "notes.jpg").write_text("not a photo")
  c = _tiny_facenet(**{"data.source": "folder", "data.data_dir": str(root),
                       "data.tfds_dir": str(tmp_path / "tfds"), "data.train_identities": 2,
                       "data.eval_identities": 1, "identities_per_batch": 2})
  work = tmp_path / "run"
  with pytest.raises(raw.DataError, match=r"people/bob/notes\.jpg: not an image PIL can read: not an image file"):
    train.train_and_evaluate(c, str(work))
  assert _leftovers(work) == []
  prepared = [p for p in _leftovers(tmp_path / "tfds") if "array_record" in p or p.endswith(".json")]
  # no half-prepared dataset that a later run would read; the folder's content key is memoized
  assert prepared == [f"prepared/{fingerprint.MEMO_DIR}/{n}" for n in os.listdir(
      tmp_path / "tfds" / "prepared" / fingerprint.MEMO_DIR)], prepared


def _people(root, names=("ann", "bob", "cid"), per=2):
  for ident in names:
    os.makedirs(root / ident, exist_ok=True)
    for i in range(per):
      (root / ident / f"{i}.png").write_bytes(_encode(_rgb(12, 12), "PNG"))


def test_links_leading_outside_the_identity_root_are_refused(tmp_path):
  root, outside = tmp_path / "people", tmp_path / "elsewhere"
  _people(root)
  _people(outside, ("carl",))
  (root / "ann" / "2.png").symlink_to(outside / "carl" / "0.png")   # an image from elsewhere
  with pytest.raises(raw.DataError, match=r"people/ann/2\.png: a symbolic link to .*elsewhere/carl/"
                                          r"0\.png, outside the identity root"):
    raw.list_identity_folder(str(root))
  os.remove(root / "ann" / "2.png")
  (root / "carl").symlink_to(outside / "carl")                      # a whole identity from elsewhere
  with pytest.raises(raw.DataError, match=r"people/carl: a symbolic link to .*elsewhere/carl, outside"):
    raw.list_identity_folder(str(root))
  os.remove(root / "carl")
  # documented: links that stay under the root are followed, and the root may be a link
  os.makedirs(root / ".store")
  (root / ".store" / "x.png").write_bytes(_encode(_rgb(12, 12), "PNG"))
  (root / "ann" / "2.png").symlink_to(root / ".store" / "x.png")
  (tmp_path / "alias").symlink_to(root)
  assert raw.list_identity_folder(str(tmp_path / "alias"))[0] == ("ann", ["0.png", "1.png", "2.png"])


def test_one_file_twice_through_links_is_refused_and_subfolders_noted(tmp_path, capsys):
  """A photo linked into another identity, or a whole identity folder linked under a second
  name, made one person's photos two labels, exit 0; folders inside an identity folder were
  left out without a word; s1 and s01 took the file system's listing order."""
  root = tmp_path / "people"
  _people(root)
  (root / "ann" / "2.png").symlink_to(root / "bob" / "1.png")
  with pytest.raises(raw.DataError, match=r"people/bob/1\.png and \S+people/ann/2\.png are the same "
                                          r"file .*through a symbolic link"):
    raw.list_identity_folder(str(root))
  os.remove(root / "ann" / "2.png")
  (root / "ann_alias").symlink_to(root / "ann")
  with pytest.raises(raw.DataError, match=r"ann_alias/0\.png and \S+/ann/0\.png are the same file"):
    raw.list_identity_folder(str(root))
  os.remove(root / "ann_alias")
  os.makedirs(root / "bob" / "2019")
  (root / "bob" / "Thumbs.db").write_bytes(b"junk")   # what Windows leaves: skipped
  assert [i for i, _ in raw.list_identity_folder(str(root))] == ["ann", "bob", "cid"]
  assert "1 folder(s) inside identity folders are not read (e.g. " in capsys.readouterr().err
  assert sorted(["s1", "s01", "s2"], key=raw.natural_key) == ["s01", "s1", "s2"]
  assert sorted(["s01", "s1", "s2"], key=raw.natural_key) == ["s01", "s1", "s2"]
  assert sorted(["x²", "x1"], key=raw.natural_key) == ["x1", "x²"]   # was ValueError in int()


def test_an_identity_folder_linking_outside_prepares_nothing(tmp_path):
  root = tmp_path / "people"
  _people(root)
  _people(tmp_path / "elsewhere", ("eve",))
  (root / "eve").symlink_to(tmp_path / "elsewhere" / "eve")
  c = _tiny_facenet(**{"data.source": "folder", "data.data_dir": str(root),
                       "data.tfds_dir": str(tmp_path / "tfds"), "data.train_identities": 2,
                       "data.eval_identities": 1})
  with pytest.raises(raw.DataError, match=r"people/eve: a symbolic link to .*outside the identity root"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert _leftovers(tmp_path / "run") == []
  assert [p for p in _leftovers(tmp_path / "tfds") if "array_record" in p] == []


# --------------------------------------------------------------------- datasets and the sampler


def test_one_identity_has_no_negatives_and_single_images_have_no_positives():
  with pytest.raises(ValueError, match=r"config\.identities_per_batch \(P\) = 2 but only 1 of 1 identities .*: lower it"):
    PKSampler(np.zeros(5, np.int32), 2, 2, seed=0)
  with pytest.raises(ValueError, match=r"only 0 of 6 identities have >= 2 images"):
    PKSampler(np.arange(6, dtype=np.int32), 2, 2, seed=0)


@pytest.mark.parametrize("overrides,error,match", [
    ({"data.train_identities": 1}, ValueError, r"num_identities .*must be >= 2, got 1"),
    ({"data.images_per_identity": (1, 1)}, ValueError, r"only 0 of 24 identities have >= 2 images"),
    ({"margin": -0.1}, ConfigError, r"config.margin = -0.1: expected a number >= 0"),
    ({"margin": "0.2"}, ConfigError, r"config.margin = '0.2': expected a number"),
    ({"data.channels": 2}, ConfigError, r"config.data.channels = 2: expected 1 or 3"),
    ({"identities_per_batch": 3, "images_per_identity": 3}, ValueError,
     r"global batch .* 9 is not divisible by the 8 devices"),
    ({"model.spatial_dims": 3}, ValueError, r"spatial_dims=3 expects 3 spatial axes"),
])
def test_bad_training_inputs_leave_no_workdir(tmp_path, overrides, error, match):
  work = tmp_path / "run"
  with pytest.raises(error, match=match):
    train.train_and_evaluate(_tiny_facenet(**overrides), str(work))
  assert _leftovers(work) == []   # no config.json, no checkpoints/, no events


def test_inf_in_float_inputs_is_named():
  c = _tiny_facenet()
  imgs = np.zeros((6, 16, 16, 3), np.float32)
  imgs[4, 3, 2, 1] = np.inf
  with pytest.raises(ValueError, match="infdata: example 4 contains NaN or Inf"):
    train.check_dataset(IdentityDataset(imgs, np.repeat(np.arange(3, dtype=np.int32), 2), "infdata"), c)


@pytest.mark.parametrize("variant", ["synthetic", "tiny", "inception", "orl", "orl_vgg", "lfw",
                                     "lfw_vgg", "lfw_vgg_aligned", "lfw_vgg_aligned224", "omniglot", "ekg",
                                     "volume"])
def test_every_facenet_variant_passes_its_own_checks(variant):
  check_config(facenet_config(variant))


def test_feature_pooling_fields_are_checked():
  c = facenet_config("lfw_vgg")
  for field, value, match in (("data.features_pool", "sum", "data.features_pool"),
                              ("data.features_power", 0.0, "data.features_power"),
                              ("model.whiten_eps", -1.0, "model.whiten_eps"),
                              ("model.head_init", "xavier", "model.head_init"),
                              ("data.features_grid", 0, "data.features_grid"),
                              ("data.features_grid", -1, "data.features_grid")):
    with pytest.raises(ConfigError, match=match):
      check_config(overrides.with_overrides(c, {field: value}))
  bad = overrides.with_overrides(c, {"data.features_pool": "", "data.features_flip": True,
                                     "model.head_init": "random"})
  with pytest.raises(ConfigError, match="data.features_flip"):
    check_config(bad)
  bad = overrides.with_overrides(c, {"data.features_pool": "", "data.features_flip": False,
                                     "data.features_grid": 2, "model.head_init": "random"})
  with pytest.raises(ConfigError, match="data.features_grid = 2: expected 1 unless"):
    check_config(bad)


def test_unknown_key_and_corrupt_config_json_in_a_workdir(tmp_path):
  saved = _tiny_facenet().to_dict()
  saved["marign"] = 0.3
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(workdir_lib.WorkdirError, match=r"config.json: field config.marign is not in"):
    workdir_lib.load_config(str(tmp_path))
  (tmp_path / "config.json").write_text('{"variant": "tiny", "margin": ')
  with pytest.raises(workdir_lib.WorkdirError, match=r"config.json: not a readable JSON config"):
    workdir_lib.load_config(str(tmp_path))


def _features_run(tmp_path, **paths):
  """A workdir holding only the config.json of a VGG-features run (no checkpoint): what
  inference.load does with it shows whether the paths are checked first."""
  c = _tiny_facenet(**{"data.features": "vgg19:pool1", "model.name": "feature_head",
                       "model.vgg_weights": "random", "data.tfds_dir": str(tmp_path / "tfds"),
                       "data.features_cache": str(tmp_path / "run" / "features"), **paths})
  os.makedirs(tmp_path / "run")
  workdir_lib.save_config(c, str(tmp_path / "run"))
  return str(tmp_path / "run")


@pytest.mark.parametrize("field,value,match", [
    ("data.features_cache", "{tmp}/elsewhere/cache",
     r"config.data.features_cache puts the feature cache in .*/elsewhere/cache, outside the workdir"),
    ("data.features_cache", "", r"config.data.tfds_dir \(its features/ folder\) puts the feature "
                                r"cache in .*/tfds/features, outside"),
    ("data.features_cache", "{tmp}/run/link/cache",
     r"config.data.features_cache puts the feature cache in .*/elsewhere/cache"),
    ("model.vgg_weights", "{tmp}", r"config.model.vgg_weights = .* is not a regular file; expected"),
    ("model.vgg_weights", os.devnull, r"config.model.vgg_weights = '/dev/null' is not a regular file"),
    ("model.vgg_weights", "{tmp}/nope.h5", r"config.model.vgg_weights = .*nope\.h5' does not exist"),
], ids=["cache elsewhere", "tfds_dir elsewhere", "cache through a link", "weights a folder",
        "weights a device", "weights missing"])
def test_a_runs_config_naming_paths_elsewhere_is_refused_before_anything(tmp_path, field, value, match):
  work = _features_run(tmp_path, **{field: value.replace("{tmp}", str(tmp_path))})
  if "link" in value:   # a folder inside the workdir that leads out of it
    os.makedirs(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(work, "link"))
  with pytest.raises(workdir_lib.WorkdirError, match=r"run/config\.json: " + match):
    inference.load(work)   # the path, not the missing checkpoint, is the error: checked first
  assert _leftovers(tmp_path) == ["run/config.json"]   # no cache folder, nothing elsewhere


def test_reading_a_run_restores_before_it_writes_a_feature_cache(tmp_path):
  work = _features_run(tmp_path)
  with pytest.raises(workdir_lib.WorkdirError, match=r"run/checkpoints holds no finished checkpoint"):
    inference.load(work)
  assert _leftovers(tmp_path) == ["run/config.json"]   # the cache folder was not created first
  # documented: the ORL / LFW VGG variants' default cache, <default tfds dir>/features, is
  # accepted (and may be created); elsewhere, the folder the run's training cached into is
  orl = overrides.with_overrides(facenet_config("orl_vgg"), {"model.vgg_weights": "random"})
  assert workdir_lib.check_paths(work, orl) == os.path.join(
      os.path.expanduser(orl.data.tfds_dir), "features")
  cfg = workdir_lib.load_config(work)
  cfg.data.features_cache = str(tmp_path / "trained_cache")
  with pytest.raises(workdir_lib.WorkdirError, match="no cache file of this run is there"):
    workdir_lib.check_paths(work, cfg)
  cache_file = vgg_features.cache_file_for(cfg, workdir_lib.input_shape(cfg))
  os.makedirs(os.path.dirname(cache_file))
  open(cache_file, "wb").close()
  assert workdir_lib.check_paths(work, cfg) == cfg.data.features_cache


def test_more_images_per_identity_than_any_identity_has_is_masked():
  labels = np.repeat(np.arange(4, dtype=np.int32), [2, 3, 2, 5])
  b = PKSampler(labels, 2, 6, seed=1)(0)
  for lab in np.unique(b.labels):   # all real images once, the padding masked out
    rows = b.indices[(b.labels == lab) & b.mask]
    assert len(set(rows.tolist())) == len(rows) == min(6, (labels == lab).sum())
    assert set(rows.tolist()) <= set(np.nonzero(labels == lab)[0].tolist())


# ------------------------------------------------------------------------------ style configs


def _style_inputs(tmp_path, **overrides):
  c = style_config("tiny")
  c.unlock()
  c.content = str(tmp_path / "c.png")
  c.style = str(tmp_path / "s.png")
  Image.fromarray(_rgb(32, 32)).save(c.content)
  Image.fromarray(_rgb(32, 32)).save(c.style)
  for k, v in overrides.items():
    with c.ignore_type():
      c[k] = v
  c.lock()
  return c


@pytest.mark.parametrize("overrides,error,match", [
    ({"style_blend_weights": "1,-1"}, cost.StyleConfigError, r"style_blend_weights=.*values, expected 1|finite and >= 0"),
    ({"image_size": -5}, cost.StyleConfigError, r"config.image_size=-5: must be >= 0"),
    ({"content_weight": -1.0}, cost.StyleConfigError, r"config.content_weight=-1.0: must be a finite number >= 0"),
    ({"style_weight": float("nan")}, cost.StyleConfigError, r"config.style_weight=nan: must be a finite"),
    ({"optimizer": "lbfgs", "lbfgs_memory": 0}, cost.StyleConfigError, r"config.lbfgs_memory=0: must be >= 1"),
    # a repeated layer summed its style target twice under the last lambda (no error before)
    ({"style_layers": "conv1_1,conv2_1,conv1_1", "style_layer_weights": "1,2,3"}, cost.StyleConfigError,
     r"config.style_layers=.*\['conv1_1'\] listed more than once"),
    ({"content_layers": "conv4_2, conv4_2"}, cost.StyleConfigError,
     r"config.content_layers=.*\['conv4_2'\] listed more than once"),
    ({"style": "{missing}"}, FileNotFoundError, r"config.style: image file .*nope.png' does not exist"),
    ({"weights": "{truncated}"}, vgg_weights.WeightsError, r"w\.h5 is not a readable HDF5 weights file"),
])
def test_bad_style_inputs_leave_no_workdir(tmp_path, overrides, error, match):
  if overrides.get("style") == "{missing}":
    overrides = {"style": str(tmp_path / "nope.png")}
  if overrides.get("weights") == "{truncated}":
    params = {f"block1_conv{i}": (np.zeros((3, 3, 3 if i == 1 else 64, 64), np.float32),
                                  np.zeros(64, np.float32)) for i in (1, 2)}
    vgg_weights.save_keras_weights(params, str(tmp_path / "w.h5"))
    data = (tmp_path / "w.h5").read_bytes()
    (tmp_path / "w.h5").write_bytes(data[: len(data) // 2])
    overrides = {"weights": str(tmp_path / "w.h5")}
  work = tmp_path / "run"
  with pytest.raises(error, match=match):
    optimize.stylize(_style_inputs(tmp_path, **overrides), str(work))
  assert _leftovers(work) == []


# ----------------------------------------------------------------------------- VGG weights files


def _vgg16_params(fill=0.0):
  out = {}
  cin = 3
  for b, block in enumerate(vgg._CONFIGS[16], start=1):
    for c, cout in enumerate(block, start=1):
      out[f"block{b}_conv{c}"] = (np.full((3, 3, cin, cout), fill, np.float32),
                                  np.zeros(cout, np.float32))
      cin = cout
  return out


def test_truncated_hdf5_weights_and_nan_kernels_are_named(tmp_path):
  path = str(tmp_path / "vgg16.h5")
  vgg_weights.save_keras_weights(_vgg16_params(), path)
  data = open(path, "rb").read()
  for frac, name in ((0.5, "half.h5"), (0.999, "tail.h5")):
    bad = str(tmp_path / name)
    with open(bad, "wb") as f:
      f.write(data[: int(len(data) * frac)])
    with pytest.raises(vgg_weights.WeightsError, match=rf"{name}.*(not a readable HDF5|truncated or corrupt)"):
      vgg.load_vgg(bad, depth=16)
  params = _vgg16_params()
  params["block2_conv1"][0][0, 0, 0, 0] = np.nan
  vgg_weights.save_keras_weights(params, path)
  with pytest.raises(vgg_weights.WeightsError, match=r"layer block2_conv1 kernel contains NaN or Inf"):
    vgg.load_vgg(path, depth=16)
  with h5py.File(path, "a") as f:   # a layer whose weight_names point at nothing
    f["block1_conv1"].attrs["weight_names"] = np.array([b"gone:0", b"gone_b:0"])
  with pytest.raises(vgg_weights.WeightsError, match=r"layer block1_conv1: its weights cannot be read"):
    vgg.load_vgg(path, depth=16)


def _block1_file(path):
  """A VGG16 weights file holding only block1_conv1: its first layer is where each hostile
  construct below sits, so the loader meets it before it misses block1_conv2."""
  vgg_weights.save_keras_weights({"block1_conv1": (np.zeros((3, 3, 3, 64), np.float32),
                                                   np.zeros(64, np.float32))}, str(path))
  return str(path)


_BIAS = "block1_conv1/block1_conv1_b_1:0"


def _other_file(tmp_path):
  """Another HDF5 file (standing in for a system file) whose values must never be read."""
  other = str(tmp_path / "other.h5")
  with h5py.File(other, "w") as o:
    o["block1_conv1/block1_conv1_W_1:0"] = np.ones((3, 3, 3, 64), np.float32)
    o["block1_conv1/block1_conv1_b_1:0"] = np.arange(64, dtype=np.float32)
  return other


def _external_raw(f, tmp_path):
  secret = tmp_path / "system_file"
  secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
  del f[_BIAS]
  f["block1_conv1"].create_dataset("block1_conv1_b_1:0", (64,), "f4",
                                   external=[(str(secret), 0, 256)])


def _virtual(f, tmp_path):
  layout = h5py.VirtualLayout((64,), "f4")
  layout[:] = h5py.VirtualSource(_other_file(tmp_path), "block1_conv1/block1_conv1_b_1:0", (64,))
  del f[_BIAS]
  f["block1_conv1"].create_virtual_dataset("block1_conv1_b_1:0", layout)


def _relink(name, link):
  def edit(f, tmp_path):
    del f[name]
    f[name] = link(_other_file(tmp_path), name)
  return edit


HOSTILE_H5 = {
    "external link (dataset)": (_relink(_BIAS, h5py.ExternalLink),
                                r"'block1_conv1_b_1:0' is an external link, expected a plain"),
    "external link (layer)": (_relink("block1_conv1", h5py.ExternalLink),
                              r"'block1_conv1' is an external link"),
    "soft link": (_relink(_BIAS, lambda _, name: h5py.SoftLink("/" + name + "_elsewhere")),
                  r"'block1_conv1_b_1:0' is a soft link"),
    "external raw storage": (_external_raw, r"dataset 'block1_conv1_b_1:0' is external raw storage"),
    "virtual dataset": (_virtual, r"dataset 'block1_conv1_b_1:0' is a virtual dataset"),
    "string dtype": (lambda f, _: [f.__delitem__(_BIAS), f.create_dataset(_BIAS, data=[b"x"] * 64)],
                     r"dataset 'block1_conv1_b_1:0' has dtype object, expected floating point"),
}


@pytest.mark.parametrize("how", sorted(HOSTILE_H5))
def test_hdf5_weights_reaching_outside_the_file_are_refused(tmp_path, how):
  edit, match = HOSTILE_H5[how]
  path = _block1_file(tmp_path / "w.h5")
  with h5py.File(path, "a") as f:
    if how == "soft link":   # a link inside the file can still be re-pointed: refused too
      f.create_dataset(_BIAS + "_elsewhere", data=np.ones(64, np.float32))
    edit(f, tmp_path)
  with pytest.raises(vgg_weights.WeightsError, match=rf"w\.h5: layer block1_conv1: {match}"):
    vgg.load_vgg(path, depth=16)


def test_hdf5_declaring_a_huge_dataset_is_refused_before_reading(tmp_path, monkeypatch):
  path = _block1_file(tmp_path / "huge.h5")
  with h5py.File(path, "a") as f:   # 7 GB declared, nothing stored: chunks are never written
    del f[_BIAS]
    f.create_dataset(_BIAS, (1_750_000_000,), "f4", chunks=(1 << 20,))
  assert os.path.getsize(path) < 1 << 20
  reads = []
  real = h5py.Dataset.__getitem__
  monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda d, k: reads.append(d.shape) or real(d, k))
  monkeypatch.setattr(h5py.Dataset, "read_direct", lambda *a, **k: reads.append("read_direct"))
  with pytest.raises(vgg_weights.WeightsError, match=r"huge\.h5: layer block1_conv1 bias has shape "
                                             r"\(1750000000,\), expected \(64,\)"):
    vgg.load_vgg(path, depth=16)
  assert reads == []   # shapes and dtypes come from the metadata: not a value was read
  with pytest.raises(FileNotFoundError, match=r"VGG weights file .* is not a regular file"):
    vgg.load_vgg(str(tmp_path), depth=16)


# -------------------------------------------------------------------------- checkpoint directories


_STATE = {"params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)},
          "step": jnp.zeros((), jnp.int32)}


def _two_checkpoints(directory):
  ck = checkpoints.Checkpointer(directory, every=1, keep=5)
  ck.save(1, _STATE, {"note": "first"})
  ck.save(2, jax_tree_plus(_STATE, 1.0), {"note": "second"})
  return ck


def jax_tree_plus(tree, x):
  import jax
  return jax.tree.map(lambda a: a + jnp.asarray(x, a.dtype), tree)


def _flip_tail(path):
  b = bytearray(open(path, "rb").read())
  for i in range(len(b) // 2, len(b)):
    b[i] ^= 0x5A
  open(path, "wb").write(bytes(b))


def _corrupt_arrays(d):
  for root, _, fs in os.walk(os.path.join(d, "state")):
    for f in fs:
      if os.path.basename(root) == "d":
        _flip_tail(os.path.join(root, f))


def _corrupt_digest(d):
  p = os.path.join(d, "meta", "metadata")
  meta = json.load(open(p))
  meta[checkpoints.DIGEST_KEY] = "0" * 64
  json.dump(meta, open(p, "w"))


CORRUPTIONS = {
    "array data garbled": _corrupt_arrays,
    "arrays silently changed (digest)": _corrupt_digest,
    "meta json cut": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write('{"step": '),
    "state metadata deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "step folder emptied": lambda d: [__import__("shutil").rmtree(d), os.makedirs(d)],
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_named_and_the_earlier_one_restores(tmp_path, how):
  d = str(tmp_path / "ckpt")
  _two_checkpoints(d).close()
  CORRUPTIONS[how](os.path.join(d, "2"))
  ck = checkpoints.Checkpointer(d, every=1)
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint .*ckpt/2.*corrupt"):
    ck.restore(_STATE)
  step, state, meta = ck.restore(_STATE, step=1)   # nothing saved earlier is lost
  assert step == 1 and meta["note"] == "first"
  np.testing.assert_array_equal(state["params"]["w"], _STATE["params"]["w"])
  ck.close()


# ------------------------------------------------------------------------------------ galleries


def test_corrupt_and_pickled_gallery_files_are_refused(tmp_path):
  (tmp_path / "noise.npz").write_bytes(os.urandom(300))
  with pytest.raises(R.GalleryError, match=r"noise\.npz' is not a readable gallery"):
    R.Gallery.load(str(tmp_path / "noise.npz"))
  # ids stored as a Python-object array: loading it would unpickle, so it is refused
  np.savez(tmp_path / "pickled.npz", emb_NxD=np.zeros((1, 2), np.float32),
           ids=np.array([{"name": "x"}], dtype=object), format_version=np.int64(1))
  with pytest.raises(R.GalleryError, match=r"pickled\.npz.*(pickle|Object arrays)"):
    R.Gallery.load(str(tmp_path / "pickled.npz"))
  np.savez(tmp_path / "nan.npz", emb_NxD=np.full((1, 2), np.nan, np.float32),
           ids=np.array(["ann"]), format_version=np.int64(1))
  with pytest.raises(R.GalleryError, match=r"nan\.npz.*NaN or Inf"):
    R.Gallery.load(str(tmp_path / "nan.npz"))


def _npy(shape, dtype, data=b""):
  """A .npy member whose header declares ``shape`` of ``dtype``, followed by ``data``."""
  buf = io.BytesIO()
  npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                          "fortran_order": False, "shape": shape})
  return buf.getvalue() + data


def test_gallery_declaring_a_huge_array_is_refused_from_its_header(tmp_path, monkeypatch):
  path = str(tmp_path / "huge.npz")
  with zipfile.ZipFile(path, "w") as z:   # 2 GB of embeddings declared, 8 bytes stored
    z.writestr("emb_NxD.npy", _npy((1, 500_000_000), np.float32, bytes(8)))
    buf = io.BytesIO()
    np.save(buf, np.array(["ann"]))
    z.writestr("ids.npy", buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.int64(1))
    z.writestr("format_version.npy", buf.getvalue())

  def no_read(*a, **k):
    raise AssertionError("an array was read before its header was checked")
  with monkeypatch.context() as m:
    m.setattr(R.npy_format, "read_array", no_read)
    with pytest.raises(R.GalleryError, match=r"huge\.npz' holds 500000000-D embeddings, expected 128-D"):
      R.Gallery.load(path, dim=128)
    with pytest.raises(R.GalleryError, match=r"huge\.npz': array emb_NxD declares \(1, 500000000\) "
                                             r"of float32 \(2000000000 bytes\) but its zip member "
                                             r"holds 136; the file is corrupt"):
      R.Gallery.load(path)
  # an honest gallery larger than the limit (a zip can compress zeros 1000:1): a setting
  g = R.Gallery(4)
  g.enrol("ann", np.ones((10, 4)))
  g.save(str(tmp_path / "big.npz"))
  monkeypatch.setenv("GALLERY_MAX_BYTES", "100")
  with pytest.raises(R.GalleryError, match=r"big\.npz' declares 300 bytes of arrays .*more than "
                                           r"the 100 allowed; raise \$GALLERY_MAX_BYTES"):
    R.Gallery.load(str(tmp_path / "big.npz"))
  monkeypatch.setenv("GALLERY_MAX_BYTES", "lots")
  with pytest.raises(ValueError, match=r"\$GALLERY_MAX_BYTES='lots'"):
    R.Gallery.load(str(tmp_path / "big.npz"))


def test_enrolling_a_name_twice_adds_embeddings_and_nan_probes_are_named():
  g = R.Gallery(2)
  g.enrol("ann", np.array([0.0, 0.0]))
  g.enrol("ann", np.array([10.0, 0.0]))   # documented: a second photo, not a replacement
  assert len(g) == 1 and g.num_embeddings == 2
  ids, dist = R.identify(g, np.array([[9.0, 0.0]]), threshold=2.0)
  assert ids == ["ann"] and dist[0] == pytest.approx(1.0)   # min over ann's two rows
  with pytest.raises(R.GalleryError, match=r"query: embeddings contain NaN or Inf"):
    R.identify(g, np.array([np.nan, 0.0]), threshold=2.0)
  ids, _ = R.identify(g, np.array([50.0, 50.0]), threshold=2.0)
  assert ids == [R.UNKNOWN]   # not recognized, not an error


# ---------------------------------------------------------------------- files written by runs


def test_metrics_jsonl_cut_mid_line_is_repaired_on_resume(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
  w = metric_writer.MetricWriter(str(tmp_path))
  w.write_scalars(2, {"loss": 0.25})
  w.close()
  assert metric_writer.read_metrics(str(tmp_path)) == [{"step": 1, "loss": 0.5},
                                                       {"step": 2, "loss": 0.25}]


def test_metrics_jsonl_readers_skip_a_cut_last_row_and_name_a_bad_line(tmp_path):
  """compare_runs on a run killed inside a row (or with a damaged line) ended in a
  JSONDecodeError traceback."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')   # killed inside row 2
  assert metric_writer.read_metrics(str(tmp_path)) == [{"step": 1, "loss": 0.5}]
  for bad in ('{"step": 2, "lo\n{"step": 3}\n', '[1, 2]\n', '{"step": 1}\n{"step": 2, "lo\n'):
    path.write_text(bad)
    with pytest.raises(metric_writer.MetricsFileError, match=r"metrics.jsonl: line \d is not a "
                                                           r"JSON object of metrics"):
      metric_writer.read_metrics(str(tmp_path))


def test_results_json_that_cannot_be_written_is_named_and_the_old_one_kept(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  files.write_json_atomic(str(path), {"v": 1})

  def full(*a, **k):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(files.os, "fsync", full)
  with pytest.raises(files.WriteError, match=r"cannot write .*results\.json: No space left on "
                                             r"device \(the previous version is unchanged\)"):
    files.write_json_atomic(str(path), {"v": 2})
  assert json.loads(path.read_text()) == {"v": 1}
  assert sorted(os.listdir(tmp_path)) == ["results.json"]   # no temporary file left
  with pytest.raises(TypeError, match="not JSON serializable: object"):
    files.write_json_atomic(str(path), {"v": object()})
  assert json.loads(path.read_text()) == {"v": 1}


def test_atomic_writes_give_the_permissions_of_open_or_of_the_file_replaced(tmp_path):
  """results.json, config.json, galleries and the weights cache were written 0600 (mkstemp's
  mode) beside 0644 logs: other users of a shared run folder could not read them. New files
  now get 0o666 less the umask, as open() gives, and a replaced file keeps its mode."""
  old = os.umask(0o027)
  try:
    files.write_json_atomic(str(tmp_path / "results.json"), {"v": 1})
    g = R.Gallery(2, model_fingerprint="m")
    g.enrol("a", np.ones((1, 2), np.float32) / np.sqrt(2))
    g.save(str(tmp_path / "gallery.npz"))
    with open(tmp_path / "plain.txt", "w"):
      pass
    (tmp_path / "kept.json").write_text("{}")
    os.chmod(tmp_path / "kept.json", 0o604)
    files.write_json_atomic(str(tmp_path / "kept.json"), {"v": 2})
  finally:
    os.umask(old)
  mode = lambda n: stat.S_IMODE(os.stat(tmp_path / n).st_mode)
  assert mode("plain.txt") == 0o640
  assert mode("results.json") == mode("gallery.npz") == 0o640
  assert mode("kept.json") == 0o604


# ------------------------------------------------- runs, splits and sizes (issue 18, part A)


def _snapshot(path):
  """``{file: (bytes, mtime_ns)}`` of everything under ``path``: unchanged means untouched."""
  out = {}
  for rel in _leftovers(path):
    p = os.path.join(path, rel)
    with open(p, "rb") as f:
      out[rel] = (f.read(), os.stat(p).st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (2 steps, one checkpoint) and its config."""
  work = str(tmp_path_factory.mktemp("finished") / "run")
  # a constant schedule: under the default cosine more num_steps is refused (next test)
  c = _tiny_facenet(num_steps=2, checkpoint_every=2, evals="pairs,one_shot",
                    **{"evaluation.one_shot.repeats": 1, "optim.schedule": "constant",
                       "optim.warmup_steps": 0})
  train.train_and_evaluate(c, work)
  return work, c


@pytest.mark.parametrize("schedule,warmup,allowed", [
    ("cosine", 0, False), ("constant", 100, False), ("constant", 1, True), ("constant", 0, True)])
def test_more_num_steps_continue_only_a_schedule_that_does_not_depend_on_them(
    tmp_path, schedule, warmup, allowed):
  """The cosine decays to 0 at num_steps (and a warmup longer than the run is cut there), so
  continuing 800 -> 1600 steps took the rate at step 800 from 0 back up and wrote results
  under num_steps=1600 that a fresh 1,600-step run does not give; it was allowed."""
  c = _tiny_facenet(num_steps=2, **{"optim.schedule": schedule, "optim.warmup_steps": warmup})
  work = str(tmp_path / "run")
  os.makedirs(work)
  workdir_lib.save_config(c, work)
  more = overrides.with_overrides(c, {"num_steps": 4})
  if allowed:
    assert workdir_lib.check_continuation(more, work) == [
        f"num_steps: 2 -> 4 ({workdir_lib.CONTINUABLE['num_steps']})"]
  else:
    with pytest.raises(workdir_lib.WorkdirError, match=rf"num_steps: 2 in the run, 4 now \(its "
                       rf"optim.schedule='{schedule}' with optim.warmup_steps={warmup} sets the "
                       r"learning rate from num_steps"):
      workdir_lib.check_continuation(more, work)
  assert workdir_lib.check_continuation(c, work) == []


@pytest.mark.parametrize("field,value,match", [
    ("margin", 0.5, r"margin: 0.2 in the run, 0.5 now"),
    ("model.embedding_dim", 128, r"model.embedding_dim: 16 in the run, 128 now"),
    ("num_steps", 1, r"num_steps: 2 in the run, 1 now"),
    # fewer kept checkpoints deleted the run's older ones, its last step too, at the next save
    ("keep_checkpoints", 1, r"keep_checkpoints: 3 in the run, 1 now"),
])
def test_training_again_with_another_config_changes_nothing(finished, field, value, match):
  work, c = finished
  before = _snapshot(work)
  with pytest.raises(workdir_lib.WorkdirError, match=r"workdir .*/run holds a run of another "
                                                     r"config \(.*config\.json\): " + match):
    train.train_and_evaluate(overrides.with_overrides(c, {field: value}), work)
  assert _snapshot(work) == before   # config.json, results.json, checkpoints: same bytes and times
  assert inference.load(work).config.to_dict() == c.to_dict()   # evaluate / recognize still load it


def test_continuing_a_run_may_change_steps_evaluation_and_periods(finished, tmp_path, capsys):
  src, c = finished
  work = str(tmp_path / "run")
  shutil.copytree(src, work)
  more = overrides.with_overrides(c, {"num_steps": 4, "log_every": 1, "evals": "pairs",
                                      "evaluation.one_shot.repeats": 2})
  r = train.train_and_evaluate(more, work)
  log = capsys.readouterr().out
  assert "num_steps: 2 -> 4 (more steps continue the run" in log
  assert "evaluation.one_shot.repeats: 1 -> 2 (evaluation settings" in log
  assert r["step"] == 4 and list(r["evals"]) == ["pairs"]
  assert workdir_lib.load_config(work).to_dict() == more.to_dict()   # config.json follows the run


def test_a_continuation_stopped_before_its_end_leaves_no_results_that_look_final(
    finished, tmp_path, monkeypatch):
  """A finished run continued with more steps and stopped before the new end kept its old
  results.json beside a config.json of the new num_steps: sweeps and cross-validations took
  the old step's numbers as the new config's finished run and never trained it further."""
  from facenet_jax import sweep
  src, c = finished
  work = str(tmp_path / "run")
  shutil.copytree(src, work)
  old = open(os.path.join(work, "results.json")).read()
  more = overrides.with_overrides(c, {"num_steps": 4})

  def stopped(*a, **k):
    raise KeyboardInterrupt   # the stop comes after the steps, before results are written
  monkeypatch.setattr(train, "finish", stopped)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(more, work)
  assert not os.path.exists(os.path.join(work, "results.json"))
  assert open(os.path.join(work, "results.step2.json")).read() == old   # kept, not lost
  assert workdir_lib.finished_results(more, work) is None
  assert sweep.point_status(work)["status"] == "partial"
  monkeypatch.undo()
  assert train.train_and_evaluate(more, work)["step"] == 4
  assert workdir_lib.finished_results(more, work)["step"] == 4
  assert open(os.path.join(work, "results.step2.json")).read() == old
  # a run left that way by older code: its results of 2 steps are not this config's
  workdir_lib.save_config(overrides.with_overrides(c, {"num_steps": 6}), work)
  assert workdir_lib.finished_results(overrides.with_overrides(c, {"num_steps": 6}), work) is None
  assert sweep.point_status(work)["status"] == "partial"


def test_a_second_process_on_a_workdir_in_use_is_refused(finished, tmp_path):
  """A second run on the same workdir removed the first's checkpoint while it was being
  written (Orbax cleans up unfinished ones when it opens them), and both appended to one
  metrics.jsonl. The process training there holds workdir/.lock."""
  import fcntl
  src, c = finished
  work = str(tmp_path / "run")
  shutil.copytree(src, work)
  with open(os.path.join(work, files.LOCK_FILE), "a+") as held:   # another trainer
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = _snapshot(work)
    with pytest.raises(files.InUseError, match=r"^workdir .*/run is in use: another process "
                                               r"is running there"):   # no "[Errno 16] " first
      train.train_and_evaluate(c, work)
    assert _snapshot(work) == before
  assert train.train_and_evaluate(c, work)["step"] == 2   # released: it runs


def test_resuming_on_changed_training_files_is_refused(tmp_path):
  """The config names the folder, not its bytes: a run resumed after files under data_dir
  changed trained its later steps on a new prepared dataset without a word (audit: params
  0.010 off the uninterrupted run, accuracy 0.795 against 0.815)."""
  rng = np.random.default_rng(0)
  root = tmp_path / "people"
  for k in range(8):
    os.makedirs(root / f"p{k}")
    for i in range(4):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"p{k}" / f"{i}.png")
  c = _tiny_facenet(num_steps=2, checkpoint_every=1, evals="pairs", **{
      "data.source": "folder", "data.data_dir": str(root), "data.tfds_dir": str(tmp_path / "tfds"),
      "data.image_size": 12, "data.prepare_workers": 1, "data.record_encoding": "png",
      "data.train_identities": 6, "data.eval_identities": 2, "optim.schedule": "constant",
      "optim.warmup_steps": 0})
  work = str(tmp_path / "run")
  train.train_and_evaluate(c, work)
  key = json.load(open(os.path.join(work, workdir_lib.DATA_FILE)))["train"]
  assert key.startswith("folder_")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "p1" / "2.png")   # one photo changed
  before = _snapshot(work)
  more = overrides.with_overrides(c, {"num_steps": 4})
  with pytest.raises(workdir_lib.WorkdirError, match=rf"data.json: the run trained up to step 2 on "
                                                     rf"{key}, and the data read now is folder_"):
    train.train_and_evaluate(more, work)
  assert _snapshot(work) == before
  Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "p1" / "2.png")
  os.remove(os.path.join(work, workdir_lib.DATA_FILE))   # a run from before the record: noted, continued
  assert train.train_and_evaluate(more, work)["step"] == 4
  assert json.load(open(os.path.join(work, workdir_lib.DATA_FILE)))["train"] != key


def test_a_workdir_that_is_a_file_is_named_and_left_alone(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  with pytest.raises(files.WriteError, match=r"workdir .*notes\.txt is a file, not a directory"):
    train.train_and_evaluate(_tiny_facenet(), str(path))
  with pytest.raises(files.WriteError, match=r"workdir .*notes\.txt is a file, not a directory"):
    optimize.stylize(_style_inputs(tmp_path), str(path))
  assert path.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["c.png", "notes.txt", "s.png"]


def test_evaluation_settings_are_checked_before_anything(finished):
  from conftest import load_script
  evaluate = load_script("evaluate_facenet").evaluate
  work, _ = finished
  before = _snapshot(work)
  for settings, error, match in (
      ({"evaluation.repeats": "-1"}, workdir_lib.WorkdirError,
       r"--set=evaluation.repeats=...: evaluator settings are under the evaluator's name: "
       r"--set=evaluation.one_shot.repeats=..."),
      ({"evaluation.one_shot.repeats": "-1"}, ConfigError,
       r"config.evaluation.one_shot.repeats = -1: expected a positive integer"),
      ({"evaluation.episodes.n_way": "1"}, ConfigError, r"evaluation.episodes.n_way = 1: expected"),
      ({"evaluation.lfw_view2.far": "2"}, ConfigError, r"evaluation.lfw_view2.far = 2.0: expected"),
      ({"data.image_size": "32"}, workdir_lib.WorkdirError,
       r"--set=data.image_size=...: only evaluation.\* settings and the data fields"),
  ):
    with pytest.raises(error, match=match):
      evaluate(work, "one_shot", settings=settings)
  assert _snapshot(work) == before   # no eval_*.json, nothing rewritten


def test_style_larger_than_memory_is_refused_with_the_size_that_fits(tmp_path, monkeypatch):
  from style_jax import memory
  work = tmp_path / "run"
  with pytest.raises(memory.TooLargeError,
                     match=r"config.image_size=100000: a 100000x100000 px image through VGG19 up "
                           r"to conv3_1 needs about .* GB of memory, but .* GB is available "
                           r"\(.*\$STYLE_MEMORY_BYTES overrides it\); the largest image_size that "
                           r"fits is \d+"):
    optimize.stylize(_style_inputs(tmp_path, image_size=100000), str(work))
  assert _leftovers(work) == []
  # the size named fits and one more pixel does not, under an overridden budget
  monkeypatch.setenv(memory.MEMORY_ENV, "1e9")
  layers = ("conv1_1", "conv2_1", "conv3_1")
  with pytest.raises(memory.TooLargeError, match=r"fits is (\d+)") as e:
    memory.check_fits(4096, (40, 30), (4096, 3072), layers, 19, 10)
  best = int(e.value.args[0].rsplit(" ", 1)[1])
  fits = lambda side: memory.estimate_bytes(simages.size_for_longest((40, 30), side), layers,
                                            19, 10) <= 1e9
  assert fits(best) and not fits(best + 1) and best > 100


def test_memory_estimate_bounds_xla_temp_memory():
  """The estimate's activation term against XLA's compiled temp memory of the loss gradient
  (benchmarks/style_memory.py's measurement) at 64 px: within [1, ACTIVATION_FACTOR] x the
  feature maps it counts."""
  from flax import nnx
  from style_jax import losses as style_losses, memory
  layers = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1")
  graphdef, state = nnx.split(vgg.VGG(19, "avg", rngs=nnx.Rngs(0)))

  def loss(x):
    f = nnx.merge(graphdef, state).features(x, layers)
    return sum(jnp.sum(style_losses.gram_matrix(f[n]) ** 2) for n in layers)

  temp = jax.jit(jax.grad(loss)).lower(jnp.zeros((64, 64, 3))).compile() \
      .memory_analysis().temp_size_in_bytes
  maps = 4 * memory.feature_elements((64, 64), layers, 19)
  assert maps <= temp <= memory.ACTIVATION_FACTOR * maps, (temp, maps)


def _folder(root, n, per=3):
  """An identity folder of ``n`` people with ``per`` random 12x12 images each."""
  _people(root, tuple(f"p{k:02d}" for k in range(n)), per)
  return str(root)


def _folder_run(tmp_path, root, **over):
  return _tiny_facenet(**{"data.source": "folder", "data.data_dir": root, "num_steps": 2,
                          "checkpoint_every": 2, "data.tfds_dir": str(tmp_path / "tfds"),
                          "evals": "pairs,one_shot,clustering", **over})


def test_training_on_every_identity_skips_the_held_out_evaluators_and_says_so(tmp_path, capsys):
  root = _folder(tmp_path / "people", 6)
  c = _folder_run(tmp_path, root, **{"data.train_identities": 6, "data.eval_identities": 0})
  r = train.train_and_evaluate(c, str(tmp_path / "run"))
  reason = "no held-out identities (config.data.eval_identities = 0 with every identity in training)"
  assert r["skipped"] == {"pairs": reason, "one_shot": reason, "clustering": reason}
  assert r["metrics"] == {} and r["evals"] == {} and r["step"] == 2
  assert json.loads((tmp_path / "run" / "results.json").read_text())["skipped"] == r["skipped"]
  assert f"one_shot: skipped, {reason}" in capsys.readouterr().out
  # robustness on it: named, before the model is restored (make_pairs' message came after it)
  from facenet_jax import inference, robustness
  real_load = inference.load
  inference.load = lambda *a, **k: pytest.fail("restored the model before the check")
  try:
    with pytest.raises(robustness.RobustnessError, match=r"holds out 0 identities \(config.data."
                                                         r"eval_identities = 0\)"):
      robustness.evaluate(str(tmp_path / "run"), resolutions=(4,))
  finally:
    inference.load = real_load
  # K margins in one program, every person trained: each member is trained and its evaluators
  # skipped, none crashes on the missing metrics
  k = train.train_and_evaluate(_folder_run(tmp_path, root, **{
      "data.train_identities": 6, "data.eval_identities": 0, "margins": (0.1, 0.3)}),
      str(tmp_path / "runk"))
  assert k["members"] == {members_lib.member_name(0.1): {}, members_lib.member_name(0.3): {}}
  # the same split with more people asked for than there are is still an error naming it
  with pytest.raises(raw.DataError, match=r"6 identities cannot give config.data.train_identities "
                                          r"= 7 training and config.data.eval_identities = 0"):
    train.train_and_evaluate(_folder_run(tmp_path, root, **{"data.train_identities": 7,
                                                            "data.eval_identities": 0}),
                             str(tmp_path / "run7"))
  assert _leftovers(tmp_path / "run7") == []


def test_evaluating_a_run_on_another_folder_uses_that_folders_own_split(tmp_path):
  from conftest import load_script
  evaluate = load_script("evaluate_facenet").evaluate
  c = _folder_run(tmp_path, _folder(tmp_path / "a", 6), **{"data.train_identities": 4,
                                                           "data.eval_identities": 2})
  work = str(tmp_path / "run")
  train.train_and_evaluate(c, work)
  config_before = _snapshot(work)["config.json"]
  other = _folder(tmp_path / "b", 5, per=4)
  with pytest.raises(raw.DataError, match=r"5 identities cannot give config.data.train_identities "
                                          r"= 4 training and config.data.eval_identities = 3"):
    evaluate(work, "one_shot", data_dir=other, settings={"data.eval_identities": "3"})
  out = evaluate(work, "pairs,one_shot", data_dir=other,
                 settings={"data.train_identities": "1", "data.eval_identities": "4"})
  assert out["results"]["one_shot"]["people"] == 4.0   # the other folder's 4 held-out people
  assert _snapshot(work)["config.json"] == config_before   # config.json never edited
  written = [f for f in os.listdir(work) if f.startswith("eval_one_shot@")]
  assert len(written) == 1 and "data.eval_identities=4" in written[0]


def test_settings_the_devices_or_data_cannot_take_are_one_line_user_errors():
  """A batch the devices cannot split, a batch_chunk that does not divide it, NaN pixels and
  examples of the wrong rank: user errors (infra.cli prints them as one line, exit 2), not
  ValueErrors that end in a traceback."""
  from infra import cli, mesh as mesh_lib
  from infra.errors import UserError
  m = mesh_lib.make_data_mesh()
  n = m.devices.size
  c = facenet_config("tiny")
  c.batch_chunk = 3
  nan = np.zeros((4, 8, 8, 1), np.float32)
  nan[2, 1, 1, 0] = np.nan
  cases = [
      (lambda: mesh_lib.check_divisible(n + 1, m), f"of {n + 1} is not divisible by the {n} devices"),
      (lambda: mesh_lib.process_slice(5, 0, 2), "global batch 5 is not divisible by 2 processes"),
      (lambda: train.check_chunking(c, 8, m), "config.batch_chunk=3 does not divide"),
      (lambda: train.check_dataset(IdentityDataset(nan, np.arange(4), "nanset"), c),
       "nanset: example 2 contains NaN"),
      (lambda: train.check_dataset(IdentityDataset(nan[..., 0], np.arange(4), "flat"), c),
       "flat: examples have shape (8, 8)"),
      (lambda: PKSampler(np.array([0, 0, 1, 2]), 2, 2, 0), "only 1 of 3 identities have >= 2"),
      (lambda: synthetic.make_synthetic_identities(synthetic.SyntheticSpec(num_identities=1), 0),
       "config.data.train_identities / eval_identities) must be >= 2, got 1"),
  ]
  for fn, words in cases:
    with pytest.raises(UserError) as e:
      fn()
    line = cli.user_message(e.value)
    assert words in line and "\n" not in line, line


def test_a_missing_input_file_is_a_one_line_user_error_and_a_file_not_found_error(tmp_path):
  """A style image, a VGG weights file or a sweep root that is not there: one line naming the
  field or path (infra.cli: exit 2, no traceback; they were bare FileNotFoundErrors without a
  filename, which the scripts printed as a bug's traceback), and still FileNotFoundError."""
  import subprocess
  import sys
  from facenet_jax import sweep
  from infra import cli
  missing = str(tmp_path / "nope.jpg")
  cases = [(lambda: simages.load_image(missing, "config.content"), "config.content: image file"),
           (lambda: simages.load_image(str(tmp_path), "config.style"), "is a directory"),
           (lambda: vgg_weights.read_conv_weights(missing, {}, "VGG19"), "VGG weights file"),
           (lambda: sweep.read_index(str(tmp_path)), "sweep.json not found")]
  for fn, words in cases:
    with pytest.raises(FileNotFoundError) as e:
      fn()
    line = cli.user_message(e.value)
    assert line is not None and words in line and "\n" not in line, (words, line)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  work = tmp_path / "run"
  r = subprocess.run([sys.executable, os.path.join(root, "scripts", "stylize.py"),
                      "--config=configs/style.py:tiny", f"--workdir={work}", f"--config.content={missing}"],
                     cwd=root, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip() == f"error: config.content: image file {missing!r} does not exist", r.stderr
  assert not work.exists()


@pytest.mark.parametrize("variant,size,shrunk", [("tiny", 3, "0x0"), ("ekg", 2, "0")])
def test_examples_the_network_pools_to_nothing_are_refused_before_the_run_writes(tmp_path, variant,
                                                                                 size, shrunk):
  """small_cnn's stages halve each size (VALID pools): 3 px -> 1 -> 0, and the global mean over
  no positions made the first loss NaN (a NonFiniteLossError traceback after the workdir was
  written, which then refused the corrected config as "another config")."""
  from facenet_jax import layers
  from infra import cli
  c = facenet_config(variant)
  c.data.image_size = size
  c.num_steps = 2
  with pytest.raises(layers.InputTooSmallError, match=rf"leave a {shrunk} map for the head") as e:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert "\n" not in cli.user_message(e.value)
  assert _leftovers(tmp_path / "run") == []


def test_scripts_keep_library_info_logs_off_the_terminal_unless_verbosity_asks(tmp_path):
  """infra.cli.run: absl INFO lines (JAX's TPU probe, Orbax's per-save lines) are not shown by
  default, and --verbosity=0 still shows them; warnings always are."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("from absl import logging\nfrom infra import cli\n"
          "def main(argv):\n  logging.info('an-info-line')\n  logging.warning('a-warning-line')\n"
          "cli.run(main)\n")
  script = tmp_path / "s.py"
  script.write_text(code)
  env = dict(os.environ, PYTHONPATH=root, FACENET_COMPILE_CACHE="off")
  for args, info in (([], False), (["--verbosity=0"], True)):
    r = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ("an-info-line" in r.stderr) == info and "a-warning-line" in r.stderr, r.stderr


def test_one_held_out_identity_is_a_named_data_error_before_the_run_writes(tmp_path):
  """Pairs need two held-out people: data.eval_identities=1 ended in make_pairs' ValueError
  traceback (exit 1); now a DataError naming the field, and no workdir."""
  from infra import cli
  _people(tmp_path / "people")
  c = _tiny_facenet(**{"data.source": "folder", "data.data_dir": str(tmp_path / "people"),
                       "data.tfds_dir": str(tmp_path / "tfds"), "data.train_identities": 2,
                       "data.eval_identities": 1, "identities_per_batch": 2})
  with pytest.raises(raw.DataError, match=r"config.data.eval_identities = 1\): verification pairs "
                     r"need >= 2 identities") as e:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert "\n" not in cli.user_message(e.value)
  assert _leftovers(tmp_path / "run") == []


def test_a_style_run_resumes_only_under_its_own_config(tmp_path):
  """Style checkpoints hold the image and the optimizer state only: resuming with another style
  image or loss weight continued the old image under the new objective (exit 0). The workdir
  now keeps config.json; other inputs or weights are refused, naming the field, and the run is
  untouched; more steps (one scale) and logging periods may change."""
  work = str(tmp_path / "run")
  c = _style_inputs(tmp_path, num_steps=2, checkpoint_every=1)
  optimize.stylize(c, work)
  images = {p: open(p, "rb").read() for p in (c.content, c.style)}   # the run's own files
  before = _snapshot(work)
  other = tmp_path / "s2.png"
  Image.fromarray(_rgb(32, 32)[::-1].copy()).save(other)
  for field, value in (("style", str(other)), ("style_weight", 5.0), ("keep_checkpoints", 1)):
    bad = _style_inputs(tmp_path, num_steps=4, checkpoint_every=1, **{field: value})
    with pytest.raises(cost.StyleConfigError, match=rf"holds a style run of another config .*{field}: "):
      optimize.stylize(bad, work)
    assert _snapshot(work) == before
  more = _style_inputs(tmp_path, num_steps=4, checkpoint_every=1, log_every=2)   # new pixels, same paths
  with pytest.raises(cost.StyleConfigError, match=r"config.content: the contents of .*c\.png changed"):
    optimize.stylize(more, work)
  assert _snapshot(work) == before
  for path, data in images.items():   # the run's own files back: it continues
    open(path, "wb").write(data)
  out = optimize.stylize(more, work)
  assert out["step"] == 4 and files.read_json(os.path.join(work, "config.json"))["num_steps"] == 4


def test_a_style_workdir_in_use_is_refused(tmp_path):
  """As for training: a second stylize on a workdir in use would remove the first's checkpoint
  while it is being written."""
  import fcntl
  work = str(tmp_path / "run")
  c = _style_inputs(tmp_path, num_steps=2, checkpoint_every=1)
  os.makedirs(work)
  with open(os.path.join(work, files.LOCK_FILE), "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(files.InUseError, match=r"workdir .*/run is in use"):
      optimize.stylize(c, work)
    assert sorted(os.listdir(work)) == [files.LOCK_FILE]
  assert optimize.stylize(c, work)["step"] == 2


def test_output_folders_are_told_apart_by_the_files_each_kind_writes(tmp_path):
  """infra.outdirs: train_facenet / stylize / reproduce_gatys / texture_1d each refuse a folder
  holding another kind's results.json (each used to replace it, exit 0)."""
  from infra import outdirs

  def folder(name, **files):
    d = tmp_path / name
    d.mkdir()
    for f, content in files.items():
      (d / f.replace("_jsonl", ".jsonl").replace("_json", ".json").replace("_png", ".png")).write_text(
          content if isinstance(content, str) else json.dumps(content))
    return str(d)
  cases = {
      "facenet": folder("f", config_json={"model": {"name": "small_cnn"}, "data": {}}, results_json={}),
      "style": folder("s", config_json={"content": "a.jpg", "style": "b.jpg"}),
      "gatys": folder("g", settings_json={}, results_json={"figures": {}}),
      "gatys_combined": folder("c", results_json={"figures": {"fig3": {"runs": {}}}}),
      "texture_1d": folder("t", results_json={"kind": "texture_1d"}),
      "unknown": folder("u", results_json={"accuracy": 1}),
  }
  assert outdirs.kind_of(str(tmp_path / "nope")) is None
  assert outdirs.kind_of(folder("notes", notes_txt="mine")) is None   # no run's files: free
  assert outdirs.kind_of(folder("old_texture", results_json={}, texture_1d_png="")) == "texture_1d"
  assert outdirs.kind_of(folder("bad", config_json="{not json")) == "unknown"
  assert outdirs.kind_of(folder("rows", metrics_jsonl='{"step": 0, "x": 1}\n')) == "logs"
  assert outdirs.kind_of(folder("empty_log", metrics_jsonl="")) is None
  for kind, path in cases.items():
    assert outdirs.kind_of(path) == kind
    outdirs.claim(path, kind, "--out")   # its own kind: left to the script's resume checks
    for other in set(cases) - {kind}:
      with pytest.raises(outdirs.OutputFolderError,
                         match=rf"--out {re.escape(path)} holds {re.escape(outdirs.KINDS[kind])}; "
                               rf"writing .* there would replace its results.json"):
        outdirs.claim(path, other, "--out")


def test_a_run_started_in_another_programs_log_folder_is_refused(tmp_path):
  """A folder with TensorBoard summaries and metrics.jsonl rows but no config.json (another
  program's logs): training there dropped every earlier row and summary (its logs restart at
  step 0), exit 0; stylize mixed its rows in. Both are refused, the folder untouched."""
  from infra import metric_writer
  from style_jax import workdir as style_workdir
  for only in ("events", "metrics.jsonl"):
    d = tmp_path / only
    w = metric_writer.MetricWriter(str(d))
    w.write_scalars(5, {"other/accuracy": 0.5})
    w.close()
    (d / ("metrics.jsonl" if only == "events" else next(
        n for n in os.listdir(d) if "tfevents" in n))).unlink()
    before = _snapshot(d)
    with pytest.raises(workdir_lib.outdirs.OutputFolderError,
                       match=rf"workdir {re.escape(str(d))} holds logged metrics .* but no run's "
                             r"config.json; .* would rewrite those logs"):
      workdir_lib.check_continuation(facenet_config("tiny"), str(d))
    with pytest.raises(workdir_lib.outdirs.OutputFolderError, match="would rewrite those logs"):
      style_workdir.check_continuation(style_config(), str(d))
    assert _snapshot(d) == before


@pytest.mark.parametrize("output, why", [
    ("../other/final.png", "must be a file name in the workdir"),
    ("sub/final.png", "must be a file name in the workdir"),
    ("iter_000004.png", "must not be named like the intermediate images"),
])
def test_a_style_output_outside_the_workdir_or_named_like_an_iteration_is_refused(output, why):
  from style_jax import cost
  c = style_config("tiny")
  c.output = output
  with pytest.raises(cost.StyleConfigError, match=rf"output.*{why}"):
    cost.check_config(c)


def test_gatys_ratios_repeating_a_value_are_refused():
  """The same fig3 column was optimized twice (and --combine refused such runs later)."""
  from style_jax import gatys_figures as gf
  with pytest.raises(gf.GatysSettingsError, match=r"--ratios: \[0.001, 0.01, 0.001\] repeats a value"):
    gf.Settings(content="c.jpg", style="s.jpg", weights="random", ratios=(1e-3, 1e-2, 1e-3))


def test_gatys_run_refused_for_fewer_steps_keeps_its_settings(tmp_path):
  """A rerun with --num_steps below a figure's checkpoint was refused only after settings.json
  had been rewritten with the new count (results.json and fig3.png still from the old one)."""
  from style_jax import gatys_figures as gf
  kw = dict(content="c.jpg", style="s.jpg", weights="random", figures=("fig3",))
  out = tmp_path / "g"
  os.makedirs(out / "fig3" / "checkpoints" / "2")
  saved = gf.Settings(num_steps=2, **kw).to_json()
  (out / gf.SETTINGS_FILE).write_text(json.dumps(saved))
  with pytest.raises(gf.GatysSettingsError, match=r"fig3/checkpoints holds iteration 2, beyond "
                                                  r"--num_steps 1; use a new --out"):
    gf.open_run(gf.Settings(num_steps=1, **kw), str(out))
  assert json.loads((out / gf.SETTINGS_FILE).read_text()) == saved


def test_same_bytes_under_two_identities_are_noted_and_mac_metadata_skipped(tmp_path, capsys):
  """The same photo copied under two people is label noise no error shows: the fingerprint,
  which hashes every file anyway, says so. detect_faces read macOS's ._photo.jpg metadata
  files (and hidden folders) as photos and stopped on them; every lister now skips them."""
  from conftest import load_script
  root = tmp_path / "people"
  _people(root)
  (root / "cid" / "9.png").write_bytes((root / "ann" / "0.png").read_bytes())
  fingerprint.folder_content_key(str(root), raw.list_identity_folder(str(root)))
  assert "1 file(s) of" in capsys.readouterr().err
  (root / "ann" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
  os.makedirs(root / ".Trash")
  (root / ".Trash" / "x.png").write_bytes(_encode(_rgb(12, 12), "PNG"))
  found = load_script("detect_faces").list_images([str(root)])
  assert len(found) == 7 and not any("/." in f for f in found)


def test_image_only_tools_refuse_a_1d_or_3d_run_before_loading_it(tmp_path):
  """robustness.py and recognize.py on an ekg / volume run failed with a shape traceback after
  the model (and for robustness the held-out data) had loaded."""
  from conftest import load_script
  from facenet_jax import robustness
  for variant in ("ekg", "volume"):
    d = tmp_path / variant
    d.mkdir()
    files.write_json_atomic(str(d / "config.json"), facenet_config(variant).to_dict())
    with pytest.raises(robustness.RobustnessError, match=r"-D run \(data.source='.*'\): the "
                                                         r"degradations .* are of 2-D images"):
      robustness.evaluate(str(d), resolutions=(4,))
    photo = tmp_path / "p.png"
    photo.write_bytes(_encode(_rgb(12, 12), "PNG"))
    with pytest.raises(R.GalleryError, match=r"recognize.py reads photos, for 2-D runs"):
      load_script("recognize").run(["enroll", "--name=a", str(photo), f"--workdir={d}",
                                    f"--gallery={tmp_path / 'g.npz'}"])
    assert not (tmp_path / "g.npz").exists()
