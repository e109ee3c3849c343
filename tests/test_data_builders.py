"""tfds builders and loaders of the real datasets: tiny fixtures written here, errors that
name the bad file, and (when ../shared is present) the real ORL / LFW / Omniglot files."""

import io
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs.facenet import get_config
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import prepare, raw, real, sources
from facenet_jax.data.images import Fit, fit_image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED_DATA),
                                  reason=f"no shared data at {SHARED_DATA} (a fresh clone has none)")


def _config(tmp_path, variant="tiny", **data):
  c = get_config(variant)
  c.unlock()
  c.data.tfds_dir = str(tmp_path / "tfds")
  for k, v in data.items():
    c.data[k] = v
  c.lock()
  return c


def _rng_image(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(a, mode=None):
  buf = io.BytesIO()
  Image.fromarray(a, mode).save(buf, format="PNG")
  return buf.getvalue()


# -- fixtures -----------------------------------------------------------------------------

def _write_orl(root, people=3, per=4):
  for p in range(1, people + 1):
    os.makedirs(root / f"s{p}")
    for k in range(1, per + 1):
      Image.fromarray(_rng_image((112, 92), p * 100 + k)).save(root / f"s{p}" / f"{k}.pgm")
  (root / "README").write_text("not an identity folder")
  return root


# fold 0: Ann (3 images), Bob (1); fold 1: Cid (2), Dee (1), Eve (1). 2 folds x (2 + 2).
_LFW_PEOPLE = {"Ann": 3, "Bob": 1, "Cid": 2, "Dee": 1, "Eve": 1}
_LFW_PAIRS = """2\t2
Ann\t1\t2
Ann\t2\t3
Ann\t1\tBob\t1
Bob\t1\tAnn\t3
Cid\t1\t2
Cid\t2\t1
Cid\t1\tDee\t1
Eve\t1\tDee\t1
"""


def _write_lfw(root, pairs=_LFW_PAIRS):
  for k, (name, n) in enumerate(_LFW_PEOPLE.items()):
    os.makedirs(root / "images" / name)
    for i in range(1, n + 1):
      Image.fromarray(_rng_image((40, 40, 3), 10 * k + i)).save(
          root / "images" / name / f"{name}_{i:04d}.jpg", quality=95)
  (root / "pairs.txt").write_text(pairs)
  return root


def _char(seed):
  return Image.fromarray(_rng_image((105, 105), seed) > 128)   # mode "1", like Omniglot


def _write_zip(path, members):
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)


def _png1(seed):
  buf = io.BytesIO()
  _char(seed).save(buf, format="PNG")
  return buf.getvalue()


def _write_omniglot(root, runs=2, ways=3):
  os.makedirs(root)
  shared = {f"Greek/character0{c}/g{c}_{d:02d}.png": _png1(10 * c + d) for c in (1, 2) for d in (1, 2)}
  only1 = {f"Korean/character01/k1_{d:02d}.png": _png1(100 + d) for d in (1, 2, 3)}
  only2 = {f"Tagalog/character0{c}/t{c}_{d:02d}.png": _png1(200 + 10 * c + d)
           for c in (1, 2) for d in (1, 2)}
  _write_zip(root / "images_background_small1.zip",
             {f"images_background_small1/{k}": v for k, v in {**shared, **only1}.items()})
  _write_zip(root / "images_background_small2.zip",
             {f"images_background_small2/{k}": v for k, v in {**shared, **only2}.items()})
  members, answers = {}, {}
  for r in range(1, runs + 1):
    perm = np.random.default_rng(r).permutation(ways) + 1
    key = []
    for c in range(1, ways + 1):
      members[f"run{r:02d}/training/class{c:02d}.png"] = _png1(1000 * r + c)
      members[f"run{r:02d}/test/item{c:02d}.png"] = _png1(1000 * r + 50 + c)
      key.append(f"run{r:02d}/test/item{c:02d}.png run{r:02d}/training/class{perm[c - 1]:02d}.png")
    members[f"run{r:02d}/class_labels.txt"] = "\n".join(key) + "\n"
    answers[r] = perm
  _write_zip(root / "all_runs.zip", members)
  return root, answers


def _write_folder(root):
  for k, (name, n) in enumerate({"alice": 3, "bob": 2, "carol": 2, "dave": 4}.items()):
    os.makedirs(root / name)
    for i in range(n):
      a = _rng_image((30 + 5 * i, 50, 3), 10 * k + i)
      fmt = ("JPEG", "PNG", "BMP")[i % 3]
      Image.fromarray(a).save(root / name / f"{i}.{fmt.lower()}", format=fmt)
  (root / "LICENSE.txt").write_text("root-level files are ignored")
  return root


# -- image fitting ------------------------------------------------------------------------

def test_fit_image_crops_center_resizes_and_sets_channels():
  a = np.zeros((112, 92), np.uint8)
  a[10:102, :] = 200          # the central 92x92 square, bright; 10 rows above/below dark
  out = fit_image(Image.fromarray(a), Fit(size=46, crop=0, channels=3))
  assert out.shape == (46, 46, 3) and out.dtype == np.uint8
  assert np.all(out == 200) and np.array_equal(out[..., 0], out[..., 2])
  rgb = Image.fromarray(np.dstack([np.full((50, 50), v, np.uint8) for v in (255, 0, 0)]))
  grey = fit_image(rgb, Fit(size=10, crop=20, channels=1))
  # ITU-R 601 luma of pure red, 0.299 x 255 = 76.2, in every pixel (a flat image stays flat)
  assert grey.shape == (10, 10, 1) and np.all(grey == 76)
  with pytest.raises(ValueError, match="center crop 60 px is larger"):
    fit_image(rgb, Fit(size=10, crop=60), "x.jpg")


# -- ORL ----------------------------------------------------------------------------------

def test_orl_builder_records_and_identity_split(tmp_path):
  orl = _write_orl(tmp_path / "att_faces")
  b = real.prepare("orl_faces", str(tmp_path / "tfds"), str(orl))
  src = b.as_data_source(split="train")
  assert len(src) == 12
  recs = [src[i] for i in range(len(src))]
  by_file = {r["file_name"].decode(): r for r in recs}
  assert by_file["s2/3.pgm"]["label"] == 1 and by_file["s2/3.pgm"]["identity"] == b"s2"
  np.testing.assert_array_equal(by_file["s3/4.pgm"]["image"][..., 0], _rng_image((112, 92), 304))

  c = _config(tmp_path, source="orl", data_dir=str(orl), image_size=28, channels=3,
              train_identities=2, eval_identities=1, split_seed=3)
  train, held = sources.load(c)
  assert train.images.shape == (8, 28, 28, 3) and held.images.shape == (4, 28, 28, 3)
  assert train.num_identities == 2 and held.num_identities == 1
  assert list(train.labels) == [0] * 4 + [1] * 4
  train2, held2 = sources.load(c)   # prepared once, read again: same rows
  np.testing.assert_array_equal(train.images, train2.images)
  # identity sets are disjoint: no held-out image equals a training image
  flat = {img.tobytes() for img in train.images}
  assert not any(img.tobytes() in flat for img in held.images)


def test_builders_leave_no_temporary_folders(tmp_path, monkeypatch):
  """tfds made a tempfile.mkdtemp("tfds") folder, never removed, for every builder of an
  unprepared dataset (its GCS lookup of the dataset's info); these builders skip the lookup."""
  import tempfile

  from facenet_jax.data import tfds_builders
  made, mkdtemp = [], tempfile.mkdtemp
  monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append((a, k)) or mkdtemp(*a, **k))
  for name, builder in tfds_builders.BUILDERS.items():
    for config in builder.BUILDER_CONFIGS or [None]:
      b = builder(data_dir=str(tmp_path / "tfds"), config=config, file_format="array_record")
      assert not os.path.exists(b.data_dir) and b.info.full_name.startswith(name), name
  assert made == []
  orl = _write_orl(tmp_path / "att_faces")   # and a dataset still prepares and reads
  assert len(real.prepare("orl_faces", str(tmp_path / "tfds"), str(orl)).as_data_source("train")) == 12


def test_a_prepared_dataset_refuses_raw_files_other_than_its_own(tmp_path):
  """tfds prepares orl_faces once per tfds_dir and then ignores its manual dir: pointing
  data.data_dir at another folder read the old data without a word. Now the content key of the
  raw files is recorded when it is prepared; an identical copy elsewhere passes, other files are
  a DataError naming both, and the prepared data is left as it was."""
  tfds = str(tmp_path / "tfds")
  orl = _write_orl(tmp_path / "att_faces")
  b = real.prepare("orl_faces", tfds, str(orl))
  record = os.path.join(b.data_dir, real.SOURCE_RECORD)
  assert os.path.exists(record)
  copy = shutil.copytree(orl, tmp_path / "copy")   # the same bytes at another path
  assert len(real.prepare("orl_faces", tfds, str(copy)).as_data_source(split="train")) == 12
  other = _write_orl(tmp_path / "other", people=2)
  with pytest.raises(raw.DataError, match=r"config.data.data_dir = .*other'.* was prepared from other "
                     r"files \(.*att_faces'"):
    real.prepare("orl_faces", tfds, str(other))
  Image.fromarray(_rng_image((112, 92), 7)).save(copy / "s1" / "1.pgm")   # one image changed
  with pytest.raises(raw.DataError, match="was prepared from other files"):
    real.prepare("orl_faces", tfds, str(copy))
  assert len(real.prepare("orl_faces", tfds, str(orl)).as_data_source(split="train")) == 12
  os.remove(record)   # prepared before records existed: cannot be checked, so refused
  for folder in (other, orl):   # (it read the old data for any folder, with a note)
    with pytest.raises(raw.DataError, match=rf"data_dir = .*{folder.name}'.* was prepared before the "
                       rf"project recorded .* delete {b.data_dir} to prepare it again"):
      real.prepare("orl_faces", tfds, str(folder))
  shutil.rmtree(b.data_dir)   # what the message says: prepared again, recorded
  assert len(real.prepare("orl_faces", tfds, str(orl)).as_data_source(split="train")) == 12
  assert os.path.exists(record)


def test_identity_split_sizes_and_errors():
  ids = [f"s{k}" for k in range(1, 11)]
  tr, ho = real.split_identities(ids, 7, 0, seed=0, what="x")
  assert len(tr) == 7 and len(ho) == 3 and not tr & ho
  assert real.split_identities(ids, 7, 0, 0, "x") == (tr, ho)
  assert real.split_identities(ids, 7, 0, 1, "x") != (tr, ho)
  tr, ho = real.split_identities(ids, 0, 2, 0, "x")
  assert len(tr) == 8 and len(ho) == 2
  with pytest.raises(raw.DataError, match="10 identities cannot give"):
    real.split_identities(ids, 8, 3, 0, "x")


# -- LFW ----------------------------------------------------------------------------------

def test_lfw_images_pairs_folds_and_pair_indices(tmp_path):
  lfw = _write_lfw(tmp_path / "lfw")
  tfds_dir = str(tmp_path / "tfds")
  images = real.prepare("lfw", tfds_dir, str(lfw), "images").as_data_source(split="train")
  assert len(images) == 8
  pairs = real.prepare("lfw", tfds_dir, str(lfw), "pairs").as_data_source(split="view2")
  recs = sorted((pairs[i] for i in range(len(pairs))), key=lambda r: r["index"])
  assert [int(r["fold"]) for r in recs] == [0] * 4 + [1] * 4
  assert [bool(r["issame"]) for r in recs] == [True, True, False, False] * 2
  assert recs[3]["file_a"] == b"Bob/Bob_0001.jpg" and recs[3]["file_b"] == b"Ann/Ann_0003.jpg"

  c = _config(tmp_path, source="lfw", data_dir=str(lfw), image_size=16, center_crop=32, test_fold=1)
  train, held = sources.load(c)
  assert len(train) == 4 and train.num_identities == 2      # Ann, Bob
  assert len(held) == 4 and held.num_identities == 3        # Cid, Dee, Eve
  assert held.images.shape == (4, 16, 16, 3)
  p = real.lfw_pairs(c)
  assert len(p) == 4 and list(p.fold) == [1] * 4 and list(p.issame) == [True, True, False, False]
  # held-out rows are sorted by (person, file): Cid_1, Cid_2, Dee_1, Eve_1
  assert list(zip(p.i, p.j)) == [(0, 1), (1, 0), (0, 2), (3, 2)]
  assert np.array_equal(held.labels[p.i] == held.labels[p.j], p.issame)

  everything, allp = real.lfw_view2(c)
  assert len(everything) == 8 and len(allp) == 8 and list(allp.fold) == [0] * 4 + [1] * 4
  assert np.array_equal(everything.labels[allp.i] == everything.labels[allp.j], allp.issame)


def test_lfw_pairs_naming_a_missing_image_names_line_and_path(tmp_path):
  lfw = _write_lfw(tmp_path / "lfw", _LFW_PAIRS.replace("Cid\t1\tDee\t1", "Cid\t1\tDee\t7"))
  with pytest.raises(raw.DataError, match=r"pairs.txt: line 8: image .*Dee/Dee_0007.jpg does not exist"):
    real.prepare("lfw", str(tmp_path / "tfds"), str(lfw), "pairs")
  assert not os.path.exists(tmp_path / "tfds" / "lfw" / "pairs" / "1.0.0")


@pytest.mark.parametrize("text,match", [
    ("10 300\n" + _LFW_PAIRS.split("\n", 1)[1], "header says 10 folds"),
    ("View2\n" + _LFW_PAIRS.split("\n", 1)[1], "line 1: expected the View 2 header"),
    (_LFW_PAIRS.replace("Ann\t2\t3", "Ann\t2"), "line 3: expected a matched pair"),
    (_LFW_PAIRS.replace("Eve\t1\tDee\t1", "Ann\t1\tDee\t1"), "line 9: Ann is in fold 1 but also in fold 0"),
])
def test_bad_pairs_files_are_named(text, match):
  with pytest.raises(raw.DataError, match=match):
    raw.lfw_fold_of_person(raw.parse_lfw_pairs(text, "pairs.txt"), "pairs.txt")


def test_corrupt_jpeg_is_named(tmp_path):
  lfw = _write_lfw(tmp_path / "lfw")
  bad = lfw / "images" / "Cid" / "Cid_0002.jpg"
  bad.write_bytes(bad.read_bytes()[:300])          # truncated
  with pytest.raises(raw.DataError, match="Cid/Cid_0002.jpg: not an image PIL can read"):
    real.prepare("lfw", str(tmp_path / "tfds"), str(lfw), "images")


# -- image folder -------------------------------------------------------------------------

def test_image_folder_source_and_fingerprint(tmp_path):
  root = _write_folder(tmp_path / "people")
  c = _config(tmp_path, source="folder", data_dir=str(root), image_size=12, channels=1,
              train_identities=3, eval_identities=0)
  check_config(c)
  train, held = sources.load(c)
  assert len(train) + len(held) == 11 and train.num_identities == 3 and held.num_identities == 1
  assert train.images.shape[1:] == (12, 12, 1)
  before = prepare.folder_plan(str(root)).fingerprint
  Image.fromarray(_rng_image((20, 20, 3), 99)).save(root / "bob" / "new.png")
  assert prepare.folder_plan(str(root)).fingerprint != before   # a changed folder is prepared again
  train2, held2 = sources.load(c)
  assert len(train2) + len(held2) == 12


@pytest.mark.parametrize("source", ["orl", "lfw", "omniglot"])
def test_an_empty_data_dir_of_a_tfds_source_is_named(tmp_path, source):
  """tfds took an empty manual dir for "no manual dir": ORL said it has no download, LFW and
  Omniglot started downloading instead of reading the folder the user named."""
  os.makedirs(tmp_path / "empty")
  c = _config(tmp_path, source=source, data_dir=str(tmp_path / "empty"))
  with pytest.raises(raw.DataError, match=rf"config.data.data_dir = '\S+/empty': the folder is "
                                          rf"empty, expected the raw files of data.source='{source}'"):
    sources.load(c)
  assert not os.path.exists(tmp_path / "tfds")


def test_a_folder_split_that_cannot_be_made_is_refused_before_preparing(tmp_path, monkeypatch):
  """4 people cannot give 5 training ones: refused from the plan, not after every image was
  decoded into shards (minutes on a large folder)."""
  root = _write_folder(tmp_path / "people")
  monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepared before the check"))
  c = _config(tmp_path, source="folder", data_dir=str(root), train_identities=5, eval_identities=1)
  with pytest.raises(raw.DataError, match=r"folder:people: 4 identities cannot give "
                                          r"config.data.train_identities = 5"):
    sources.load(c)


def test_too_few_training_people_for_the_batch_are_refused_before_preparing(tmp_path, monkeypatch):
  """3 training people cannot give P = 4 per batch: refused from the plan's labels (the
  sampler found it after every image had been prepared)."""
  root = _write_folder(tmp_path / "people")
  monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepared before the check"))
  c = _config(tmp_path, source="folder", data_dir=str(root), train_identities=3, eval_identities=1)
  with pytest.raises(raw.DataError, match=r"config.identities_per_batch \(P\) = 4 but only 3 of 3 "
                                          r"identities have >= 2 images"):
    sources.load(c, c.identities_per_batch)


def test_empty_identity_folder_and_empty_root_are_named(tmp_path):
  root = _write_folder(tmp_path / "people")
  os.makedirs(root / "zoe")
  c = _config(tmp_path, source="folder", data_dir=str(root), train_identities=1)
  with pytest.raises(raw.DataError, match=r"people/zoe: identity folder holds no images"):
    sources.load(c)
  os.makedirs(tmp_path / "empty")
  c = _config(tmp_path, source="folder", data_dir=str(tmp_path / "empty"), train_identities=1)
  with pytest.raises(raw.DataError, match="empty: no identity folders"):
    sources.load(c)
  c = _config(tmp_path, source="folder", data_dir=str(tmp_path / "nope"), train_identities=1)
  with pytest.raises(raw.DataError, match="data_dir = .*nope.*: no such folder"):
    sources.load(c)


# -- Omniglot -----------------------------------------------------------------------------

def test_omniglot_background_dedup_and_runs(tmp_path):
  root, answers = _write_omniglot(tmp_path / "omniglot")
  b = real.prepare("omniglot", str(tmp_path / "tfds"), str(root), "background")
  s1, s2 = b.as_data_source(split="small1"), b.as_data_source(split="small2")
  assert (len(s1), len(s2)) == (7, 8)
  labels = {}
  for src in (s1, s2):
    for i in range(len(src)):
      r = src[i]
      assert labels.setdefault(r["identity"], r["label"]) == r["label"]   # one label per character
      assert set(np.unique(r["image"])) <= {0, 255}
  assert len(labels) == 5       # Greek x2 (in both), Korean x1, Tagalog x2

  c = _config(tmp_path, source="omniglot", data_dir=str(root), image_size=16, channels=1,
              train_identities=0, eval_identities=2)
  train, held = sources.load(c)
  assert len(train) + len(held) == 11          # 15 records, the 4 shared Greek drawings once
  assert train.num_identities == 3 and held.num_identities == 2
  assert train.images.shape[1:] == (16, 16, 1)

  runs = real.omniglot_runs(c)
  assert runs.train_images.shape == (2, 3, 16, 16, 1) and runs.test_images.shape == (2, 3, 16, 16, 1)
  np.testing.assert_array_equal(runs.train_classes, [[1, 2, 3]] * 2)
  np.testing.assert_array_equal(runs.test_classes, np.stack([answers[1], answers[2]]))


def test_omniglot_answer_key_naming_a_missing_class_is_named(tmp_path):
  root, _ = _write_omniglot(tmp_path / "omniglot", runs=1)
  with zipfile.ZipFile(root / "all_runs.zip") as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  members["run01/class_labels.txt"] = members["run01/class_labels.txt"].replace(b"class02", b"class09")
  _write_zip(root / "all_runs.zip", members)
  with pytest.raises(raw.DataError, match=r"class_labels.txt: answer for run01/test/item\d+.png names "
                                          r"run01/training/class09.png"):
    real.prepare("omniglot", str(tmp_path / "tfds"), str(root), "runs")


# -- configs and import hygiene -----------------------------------------------------------

def test_real_variants_check_and_bad_data_fields_are_named():
  for v in ("orl", "lfw", "omniglot"):
    check_config(get_config(v))
  c = get_config("orl")
  c.unlock()
  c.data.source = "imagenet"
  with pytest.raises(ConfigError, match="config.data.source"):
    check_config(c)
  c = get_config("omniglot")
  c.unlock()
  c.data.channels = 2
  with pytest.raises(ConfigError, match="config.data.channels"):
    check_config(c)


def test_training_path_does_not_import_tfds():
  code = ("import sys, facenet_jax.train, facenet_jax.data.real; "
          "bad = [m for m in ('tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))


# -- the real files in ../shared ----------------------------------------------------------

@needs_shared
def test_real_orl(tmp_path):
  c = _config(tmp_path, "orl")
  train, held = sources.load(c)
  assert (len(train), len(held)) == (300, 100)
  assert (train.num_identities, held.num_identities) == (30, 10)
  assert train.images.shape[1:] == (64, 64, 1)
  b = real.prepare("orl_faces", c.data.tfds_dir, c.data.data_dir)
  assert len(b.as_data_source(split="train")) == 400


@needs_shared
def test_real_lfw_pairs_file_and_prepared_pairs(tmp_path):
  d = os.path.join(SHARED_DATA, "lfw")
  path = os.path.join(d, "pairs.txt")
  pairs = raw.parse_lfw_pairs(raw.read_file(path).decode(), path)
  fold_of = raw.lfw_fold_of_person(pairs, path)      # View 2 folds hold disjoint people
  assert len(pairs) == 6000 and len(fold_of) == 4281
  assert np.bincount([p.fold for p in pairs]).tolist() == [600] * 10
  assert sum(p.issame for p in pairs) == 3000
  files = {raw.lfw_image_path(p.name_a, p.num_a) for p in pairs} | {
      raw.lfw_image_path(p.name_b, p.num_b) for p in pairs}
  assert len(files) == 7701
  # preparing the pairs config checks that every image exists (images are not decoded)
  src = real.prepare("lfw", str(tmp_path / "tfds"), d, "pairs").as_data_source(split="view2")
  assert len(src) == 6000


def _lfw_subset(dst, folds, per_fold):
  """A View 2 pairs.txt of the first ``per_fold`` matched and mismatched lines of each of
  the real file's first ``folds`` folds, and copies of every image of their people.

  Returns ``{fold: set of people}``, read here with a plain split of the lines (not
  raw.parse_lfw_pairs) so the test's expectations do not come from the code under test.
  """
  src = os.path.join(SHARED_DATA, "lfw")
  lines = raw.read_file(os.path.join(src, "pairs.txt")).decode().splitlines()
  n = int(lines[0].split()[1])
  out, people = [f"{folds}\t{per_fold}"], {}
  for f in range(folds):
    block = lines[1 + 2 * n * f: 1 + 2 * n * (f + 1)]
    chosen = block[:per_fold] + block[n:n + per_fold]
    out += chosen
    people[f] = {w for line in chosen for w in line.split() if not w.isdigit()}
  os.makedirs(dst / "images")
  (dst / "pairs.txt").write_text("\n".join(out) + "\n")
  for name in set().union(*people.values()):
    # copies, not links: the builder refuses links that lead outside its folder
    shutil.copytree(os.path.join(src, "images", name), dst / "images" / name)
  return people


@needs_shared
def test_real_lfw_images_and_fold_split(tmp_path):
  """The real LFW JPEGs and pairs of four whole View 2 folds (2,400 pairs, ~3,100 images;
  all ten took too long for the suite) through the real tfds builder and the "lfw"
  config's loaders, in ~6 s.

  Test fold 3 and its calibration fold, cyclically the next one (0), are held out of
  training; train holds every image of the fold 1 and 2 people, held-out every image of
  fold 3's; the fold's 600 pairs index the held-out rows of exactly the files pairs.txt
  names (pixels compared with an independent PIL decode).
  """
  lfw = tmp_path / "lfw"
  per_fold = 300
  people = _lfw_subset(lfw, folds=4, per_fold=per_fold)
  for f in range(4):   # View 2 folds hold disjoint people
    assert all(people[f].isdisjoint(people[g]) for g in range(f))
  n_images = lambda names: sum(len(os.listdir(lfw / "images" / p)) for p in names)
  c = _config(tmp_path, "lfw", data_dir=str(lfw), test_fold=3)
  assert real.lfw_calibration_folds(c, 4) == (0,)
  train, held = sources.load(c)
  assert len(train) == n_images(people[1] | people[2]) and len(held) == n_images(people[3])
  assert train.num_identities == len(people[1] | people[2])
  assert held.num_identities == len(people[3])
  assert train.images.shape[1:] == held.images.shape[1:] == (64, 64, 3)
  assert train.images.dtype == np.uint8 and train.images.std() > 10   # decoded photos, not blanks

  p = real.lfw_pairs(c)
  assert p.issame.tolist() == [True] * per_fold + [False] * per_fold
  np.testing.assert_array_equal(p.fold, 3)
  np.testing.assert_array_equal(held.labels[p.i] == held.labels[p.j], p.issame)
  lines = (lfw / "pairs.txt").read_text().splitlines()[1 + 3 * 2 * per_fold:]
  assert len(lines) == len(p) == 2 * per_fold
  fit = real.fit_of(c)
  for k, line in enumerate(lines):
    w = line.split()
    files = [(w[0], w[1]), (w[0], w[2])] if len(w) == 3 else [(w[0], w[1]), (w[2], w[3])]
    for row, (name, num) in zip((p.i[k], p.j[k]), files):
      with Image.open(lfw / "images" / name / f"{name}_{int(num):04d}.jpg") as im:
        want = fit_image(im.convert("RGB"), fit)
      np.testing.assert_array_equal(held.images[row], want, err_msg=f"pair {k}: {name} {num}")


@needs_shared
def test_real_omniglot(tmp_path):
  c = _config(tmp_path, "omniglot")
  runs = real.omniglot_runs(c)
  assert runs.train_images.shape == (20, 20, 32, 32, 1) and runs.test_images.shape == (20, 20, 32, 32, 1)
  for r in range(20):   # each run: 20 classes, each the answer for exactly one test item
    assert sorted(runs.train_classes[r]) == list(range(1, 21))
    assert sorted(runs.test_classes[r]) == list(range(1, 21))
  train, held = sources.load(c)
  # 136 characters in small1 + 156 in small2, Greek (24) and Latin (26) in both: 242
  assert train.num_identities + held.num_identities == 242 and held.num_identities == 30
  assert len(train) + len(held) == 242 * 20
