"""Aligned dataset preparation (``data.align``, ``data.no_face``; facenet_jax/data/aligned.py).

Most tests run a stand-in detector (no weights, no shared data): it "finds" one face, with
landmarks at known points, in every image that is not a flat colour, and none in a flat one,
so what is tested is the preparation around the detector: the cache and its key, the pick,
the no-face report and policy, and that ``data.align="none"`` changes nothing. The last test
runs the real MTCNN on LFW photos and a drawn cup when ../shared is present.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from configs.facenet import get_config
from facenet_jax import align
from facenet_jax.data import aligned, prepare, raw, real, records, sources
from facenet_jax.data.images import Fit, fit_image
from facenet_jax.faces import detect

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
MTCNN_WEIGHTS = os.path.join(SHARED, "weights", "mtcnn_weights.npz")
needs_shared = pytest.mark.skipif(not os.path.isfile(MTCNN_WEIGHTS),
                                  reason=f"no MTCNN weights at {MTCNN_WEIGHTS} (a fresh clone has none)")


def _landmarks(h, w):
  """Where the stand-in detector puts a face's five points in an h x w image: the ArcFace
  points scaled to 70% of the image, shifted right by a tenth (so alignment moves pixels)."""
  s = 0.7 * min(h, w) / 112.0
  return (align.ARCFACE_112_5x2 * s + np.array([0.1 * w + 0.15 * min(h, w), 0.15 * min(h, w)])
          ).astype(np.float32)


class StandIn:
  """detect.MTCNN's interface; counts the images it was asked about."""
  calls = 0

  def __init__(self, weights, settings=detect.Settings()):
    self.settings = settings

  def detect(self, images):
    out = []
    for im in images:
      StandIn.calls += 1
      rgb = detect.to_rgb(im)
      if rgb.std() < 1:   # a flat image: no face
        out.append(detect.Faces.empty())
        continue
      h, w = rgb.shape[:2]
      lm = _landmarks(h, w)
      box = np.concatenate([lm.min(0) - 5, lm.max(0) + 5])
      out.append(detect.Faces(box[None].astype(np.float32), np.array([0.99], np.float32), lm[None]))
    return out


@pytest.fixture
def stand_in(monkeypatch):
  monkeypatch.setattr(detect, "MTCNN", StandIn)
  StandIn.calls = 0
  return StandIn


def _photo(seed, size=60):
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _folder(root):
  """a: 2 photos; b: 1 photo + 1 flat (face-less) image; c: 1 flat image only."""
  files = {"a/1.png": _photo(1), "a/2.png": _photo(2), "b/1.png": _photo(3),
           "b/2.png": np.full((60, 60, 3), 128, np.uint8), "c/1.png": np.full((60, 60, 3), 40, np.uint8)}
  for rel, a in files.items():
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    Image.fromarray(a).save(root / rel)
  return root, files


def _weights(tmp_path, content=b"not really weights"):
  p = tmp_path / "mtcnn.npz"
  p.write_bytes(content)
  return str(p)


def _alignment(tmp_path, **kw):
  return aligned.Alignment(weights=_weights(tmp_path), **kw)


def _read_all(path):
  ds = records.open_prepared(path)
  return records.RecordImages(ds)[np.arange(len(ds.labels))], ds


# ------------------------------------------------------------------------ config fields

@pytest.mark.parametrize("field,value", [("align", "mtcn"), ("no_face", "skip"),
                                         ("align_pick", "biggest"), ("align_template", "arcface96")])
def test_unknown_alignment_values_are_one_line_errors_naming_the_field(field, value):
  c = get_config("lfw")
  c.unlock()
  c.data[field] = value
  with pytest.raises(aligned.AlignConfigError) as e:
    aligned.check_config(c)
  msg = str(e.value)
  assert f"config.data.{field} = {value!r}: expected one of" in msg and "\n" not in msg


def test_alignment_config_defaults_missing_weights_and_sources(tmp_path):
  c = get_config("lfw_vgg")
  assert aligned.alignment_of(c) is None   # the default: none
  assert (c.data.align, c.data.no_face, c.data.align_template) == ("none", "center_crop", "arcface112")
  c.unlock()
  c.data.align = "mtcnn"
  c.data.mtcnn_weights = str(tmp_path / "missing.npz")
  with pytest.raises(aligned.AlignConfigError, match=r"config.data.mtcnn_weights = .*missing.npz.*: no such file"):
    aligned.check_config(c)
  c.data.mtcnn_weights = _weights(tmp_path)
  c.data.align_min_face = -3
  with pytest.raises(aligned.AlignConfigError, match=r"config.data.align_min_face = -3"):
    aligned.check_config(c)
  # a source that is not photos of faces: refused before any data work
  t = get_config("tiny")
  t.unlock()
  t.data.update(align="mtcnn", mtcnn_weights=_weights(tmp_path))
  with pytest.raises(aligned.AlignConfigError, match=r"data.source='synthetic' cannot be aligned"):
    sources.load(t)
  t.data.update(align="none", no_face="never")
  with pytest.raises(aligned.AlignConfigError, match=r"config.data.no_face = 'never'"):
    sources.load(t)
  # a config saved before the fields existed reads as unaligned
  old = get_config("lfw").to_dict()
  for k in ("align", "align_template", "align_pick", "align_min_face", "no_face", "mtcnn_weights"):
    del old["data"][k]
  import ml_collections
  assert aligned.alignment_of(ml_collections.ConfigDict(old)) is None
  assert sorted(aligned.TEMPLATES) == sorted(align.TEMPLATES)


def test_keys_change_with_every_setting(tmp_path):
  a = _alignment(tmp_path)
  assert a.key() == _alignment(tmp_path).key()
  assert len({a.key(), _alignment(tmp_path, template="facenet160").key(),
              _alignment(tmp_path, pick="largest").key(), _alignment(tmp_path, no_face="drop").key(),
              _alignment(tmp_path, min_face_size=40.0).key()}) == 5
  # template, pick and policy re-crop from the same detections; min face size and weights detect again
  assert _alignment(tmp_path, template="facenet160").detection_key() == a.detection_key()
  assert _alignment(tmp_path, min_face_size=40.0).detection_key() != a.detection_key()
  other = tmp_path / "other"
  other.mkdir()
  b = aligned.Alignment(weights=_weights(other, b"other weights"))
  assert b.detection_key() != a.detection_key() and b.key() != a.key()
  plan = prepare.Plan("folder", "/x", ["a/1.png"], np.zeros(1, np.int32), ["a"], "fp")
  fit = Fit(32, 0, 3)
  assert prepare.prepared_name(plan, fit, "png") == "folder_fp_32px_crop0_3ch_png"   # as before
  assert prepare.prepared_name(plan, fit, "png", a) == f"folder_fp_32px_crop0_3ch_png_align-{a.key()}"


# ------------------------------------------------------------------------ preparation

def test_aligned_folder_preparation_report_and_center_crop_policy(tmp_path, stand_in, capsys):
  root, files = _folder(tmp_path / "faces")
  plan = prepare.folder_plan(str(root))
  fit = Fit(size=32, crop=40, channels=3)
  a = _alignment(tmp_path, template="arcface112", no_face="center_crop")
  path = prepare.prepare(plan, str(tmp_path / "out"), fit, encoding="png", workers=1, alignment=a)
  err = capsys.readouterr().err
  assert "detected 5/5" in err and "images/s" in err and "eta" in err
  assert "a face in 3 of 5 images" in err and "2 without a face are fitted as the central crop" in err
  assert stand_in.calls == 5

  imgs, ds = _read_all(path)
  assert imgs.shape == (5, 32, 32, 3) and ds.labels.tolist() == [0, 0, 1, 1, 2]
  assert ds.meta["align"]["no_face"] == "center_crop" and ds.meta["align"]["found"]["with_face"] == 3
  for k, rel in enumerate(sorted(files)):
    a_img = files[rel]
    if a_img.std() < 1:   # the policy: the unaligned fit, center crop included
      want = fit_image(Image.fromarray(a_img), fit)
    else:
      crop = aligned.aligned_crop(a_img, _landmarks(60, 60), "arcface112")
      want = fit_image(Image.fromarray(crop), Fit(32, 0, 3))
      assert not np.array_equal(want, fit_image(Image.fromarray(a_img), fit))
    np.testing.assert_array_equal(imgs[k], want, err_msg=rel)

  report = json.load(open(os.path.join(path, aligned.REPORT_JSON)))
  assert report["policy"] == "data.no_face=center_crop"
  assert [r["path"] for r in report["no_face"]] == [f"{root}/b/2.png", f"{root}/c/1.png"]
  csv_lines = open(os.path.join(path, aligned.REPORT_CSV)).read().splitlines()
  assert csv_lines[0] == "index,path,action" and csv_lines[1].startswith(f"3,{root}/b/2.png,")

  # the same settings again: the finished folder, no detection
  assert prepare.prepare(plan, str(tmp_path / "out"), fit, encoding="png", workers=1, alignment=a) == path
  assert stand_in.calls == 5


def test_a_folder_where_no_face_is_found_is_refused_not_trained_unaligned(tmp_path, stand_in):
  """Every image without a face (flat images here; a data.align_min_face above every face in
  the probe) fell back to the central crop and trained, exit 0, as an unaligned run."""
  root = tmp_path / "flat"
  for rel in ("a/1.png", "b/1.png"):
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    Image.fromarray(np.full((60, 60, 3), 90, np.uint8)).save(root / rel)
  plan = prepare.folder_plan(str(root))
  a = _alignment(tmp_path, min_face_size=5000.0)
  with pytest.raises(raw.DataError, match=r"MTCNN found no face in any of the 2 images of \S+flat "
                                          r"\(data.align_min_face=5000 px\); the run would train on "
                                          r"unaligned crops"):
    prepare.prepare(plan, str(tmp_path / "out"), Fit(32, 40, 3), encoding="png", workers=1, alignment=a)
  out = tmp_path / "out"   # no prepared dataset left for a later run to read
  assert not out.exists() or not any(records.is_prepared(str(p)) for p in out.iterdir())


def test_drop_policy_and_detections_reused_across_settings(tmp_path, stand_in):
  root, files = _folder(tmp_path / "faces")
  plan = prepare.folder_plan(str(root))
  out = str(tmp_path / "out")
  fit = Fit(size=32, crop=40, channels=3)
  keep = prepare.prepare(plan, out, fit, encoding="png", workers=1,
                         alignment=_alignment(tmp_path, no_face="center_crop"))
  assert stand_in.calls == 5
  drop = prepare.prepare(plan, out, fit, encoding="png", workers=1,
                         alignment=_alignment(tmp_path, no_face="drop"))
  assert drop != keep and stand_in.calls == 5   # new crops from the cached detections
  imgs, ds = _read_all(drop)
  # b/2 dropped; c had only a face-less image, so person c is gone; labels contiguous
  assert imgs.shape[0] == 3 and ds.labels.tolist() == [0, 0, 1]
  assert open(os.path.join(drop, records.IDENTITIES)).read().split() == ["a", "b"]
  assert open(os.path.join(drop, records.SOURCES)).read().split() == [
      f"{root}/a/1.png", f"{root}/a/2.png", f"{root}/b/1.png"]
  report = json.load(open(os.path.join(drop, aligned.REPORT_JSON)))
  assert report["policy"] == "data.no_face=drop" and len(report["no_face"]) == 2
  assert {r["action"] for r in report["no_face"]} == {"dropped"}
  kept, _ = _read_all(keep)
  np.testing.assert_array_equal(imgs, kept[[0, 1, 2]])
  # another template: other crops, same detections; another min face size: detected again
  big = prepare.prepare(plan, out, Fit(48, 40, 3), encoding="png", workers=1,
                        alignment=_alignment(tmp_path, template="facenet160"))
  assert stand_in.calls == 5 and _read_all(big)[0].shape == (5, 48, 48, 3)
  prepare.prepare(plan, out, fit, encoding="png", workers=1,
                  alignment=_alignment(tmp_path, min_face_size=30.0))
  assert stand_in.calls == 10


def test_detection_resumes_from_its_finished_chunks(tmp_path, stand_in, monkeypatch):
  monkeypatch.setattr(aligned, "CHUNK", 2)
  images = [_photo(k) for k in range(5)]
  folder = str(tmp_path / "det")
  a = _alignment(tmp_path)
  first = aligned.detect_all(5, lambda k: images[k], a, folder)
  assert stand_in.calls == 5 and len(first) == 5
  assert sorted(f for f in os.listdir(folder) if f.startswith("chunk-")) == [
      "chunk-00000.npz", "chunk-00001.npz", "chunk-00002.npz"]
  os.remove(os.path.join(folder, "chunk-00001.npz"))   # as if killed during that chunk
  again = aligned.detect_all(5, lambda k: images[k], a, folder)
  assert stand_in.calls == 7   # only the missing chunk's two images
  np.testing.assert_array_equal(again.landmarks, first.landmarks)
  np.testing.assert_array_equal(again.start, [0, 1, 2, 3, 4, 5])


def test_pick_central_or_largest():
  boxes = np.array([[0, 0, 120, 120], [100, 100, 160, 160]], np.float32)   # big corner, small centre
  assert aligned.pick_face(boxes, 250, 250, "central") == 1
  assert aligned.pick_face(boxes, 250, 250, "largest") == 0
  assert aligned.pick_face(np.zeros((0, 4)), 250, 250, "central") is None


# ------------------------------------------------------------------------ LFW and align=none

# fold 0: Ann (2), Bob (1); fold 1: Cid (2), Dee (1, a flat image: no face)
_PEOPLE = {"Ann": 2, "Bob": 1, "Cid": 2, "Dee": 1}
_PAIRS = "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t2\nCid\t1\tDee\t1\n"


def _lfw(root):
  for p, (name, n) in enumerate(_PEOPLE.items()):
    os.makedirs(root / "images" / name)
    for i in range(1, n + 1):
      a = np.full((60, 60, 3), 90, np.uint8) if name == "Dee" else _photo(10 * p + i)
      Image.fromarray(a).save(root / "images" / name / f"{name}_{i:04d}.jpg", quality=95)
  (root / "pairs.txt").write_text(_PAIRS)
  return root


def _lfw_config(tmp_path, lfw, **data):
  c = get_config("lfw")
  c.unlock()
  c.data.update(tfds_dir=str(tmp_path / "tfds"), data_dir=str(lfw), image_size=16, center_crop=40,
                prepare_workers=1, **data)
  return c


def test_lfw_aligned_keeps_every_pair_and_refuses_drop(tmp_path, stand_in):
  lfw = _lfw(tmp_path / "lfw")
  c = _lfw_config(tmp_path, lfw, align="mtcnn", mtcnn_weights=_weights(tmp_path))
  everything, pairs = real.lfw_view2(c)
  assert len(everything) == 6 and len(pairs) == 4 and stand_in.calls == 6
  prepared = [d for d in os.listdir(tmp_path / "tfds" / "prepared") if "_align-" in d and not d.endswith(".lock")]
  report = json.load(open(tmp_path / "tfds" / "prepared" / prepared[0] / aligned.REPORT_JSON))
  assert [os.path.basename(r["path"]) for r in report["no_face"]] == ["Dee_0001.jpg"]
  # rows in (person, file) order; Dee's face-less image is the central crop of the photo
  with Image.open(lfw / "images" / "Dee" / "Dee_0001.jpg") as im:
    np.testing.assert_array_equal(everything.images[5], fit_image(im.convert("RGB"), Fit(16, 40, 3)))
  with Image.open(lfw / "images" / "Ann" / "Ann_0001.jpg") as im:
    rgb = np.asarray(im.convert("RGB"))
  crop = aligned.aligned_crop(rgb, _landmarks(60, 60), "arcface112")
  np.testing.assert_array_equal(everything.images[0], fit_image(Image.fromarray(crop), Fit(16, 0, 3)))
  c.data.calibration_folds = 0   # two folds here: fold 1 trains, fold 0 is held out
  train, held = sources.load(c)
  assert len(train) == 3 and len(held) == 3 and stand_in.calls == 6   # prepared once
  c.data.no_face = "drop"
  with pytest.raises(real.raw.DataError, match=r"dropped 1 image\(s\) that View 2 pairs name .*Dee/Dee_0001.jpg"):
    real.lfw_view2(c)


def test_align_none_is_exactly_the_old_data(tmp_path, stand_in):
  """``data.align="none"`` (and a config from before the field) loads the images it always
  did, bit for bit, and names the prepared folder as before; no detector runs."""
  lfw = _lfw(tmp_path / "lfw")
  c = _lfw_config(tmp_path, lfw)
  everything, pairs = real.lfw_view2(c)
  files = sorted((n, f) for n in _PEOPLE for f in os.listdir(lfw / "images" / n))
  for k, (n, f) in enumerate(files):
    with Image.open(lfw / "images" / n / f) as im:   # the unaligned fit of the photo itself
      np.testing.assert_array_equal(everything.images[k], fit_image(im.convert("RGB"), Fit(16, 40, 3)))
  old = c.to_dict()
  for k in ("align", "align_template", "align_pick", "align_min_face", "no_face", "mtcnn_weights"):
    del old["data"][k]
  import ml_collections
  np.testing.assert_array_equal(real.lfw_view2(ml_collections.ConfigDict(old))[0].images, everything.images)

  root, files = _folder(tmp_path / "faces")
  f = get_config("tiny")
  f.unlock()
  f.data.update(source="folder", data_dir=str(root), tfds_dir=str(tmp_path / "tfds2"), image_size=24,
                center_crop=50, prepare_workers=1, record_encoding="png",
                train_identities=0, eval_identities=0)
  train, _ = sources.load(f)
  path = train.images.prepared.path
  assert os.path.basename(path).endswith("_24px_crop50_3ch_png")   # no alignment tag
  assert "align" not in json.load(open(os.path.join(path, prepare.PLAN)))
  assert not os.path.exists(os.path.join(path, aligned.REPORT_JSON))
  imgs = train.images[np.arange(len(train))]
  for k, rel in enumerate(sorted(files)):
    np.testing.assert_array_equal(imgs[k], fit_image(Image.fromarray(files[rel]), Fit(24, 50, 3)))
  assert stand_in.calls == 0


# ------------------------------------------------------------------------ the real detector

def _cup(path):
  im = Image.new("RGB", (250, 250), (235, 230, 220))
  d = ImageDraw.Draw(im)
  d.rectangle([80, 60, 160, 160], fill=(120, 70, 40))
  d.ellipse([80, 48, 160, 72], fill=(60, 35, 20))
  d.ellipse([150, 80, 190, 130], outline=(120, 70, 40), width=9)
  im.save(path)


@needs_shared
def test_real_mtcnn_on_lfw_photos_and_a_cup(tmp_path):
  src = os.path.join(SHARED, "data", "lfw", "images")
  root = tmp_path / "faces"
  for name in ("Aaron_Peirsol", "Abdullah_Gul"):
    os.makedirs(root / name)
    for f in sorted(os.listdir(os.path.join(src, name)))[:2]:
      with open(os.path.join(src, name, f), "rb") as fin:
        (root / name / f).write_bytes(fin.read())
  os.makedirs(root / "cup")
  _cup(root / "cup" / "cup.jpg")
  plan = prepare.folder_plan(str(root))
  a = aligned.Alignment(weights=MTCNN_WEIGHTS, min_face_size=40.0, no_face="drop")
  path = prepare.prepare(plan, str(tmp_path / "out"), Fit(112, 128, 3), encoding="png", workers=1,
                         alignment=a)
  report = json.load(open(os.path.join(path, aligned.REPORT_JSON)))
  assert [os.path.basename(r["path"]) for r in report["no_face"]] == ["cup.jpg"]
  imgs, ds = _read_all(path)
  assert imgs.shape == (4, 112, 112, 3) and ds.labels.tolist() == [0, 0, 1, 1]   # cup dropped
  # the crop is the detector's face warped by align_faces
  with Image.open(root / "Aaron_Peirsol" / sorted(os.listdir(root / "Aaron_Peirsol"))[0]) as im:
    rgb = np.asarray(im.convert("RGB"))
  face = detect.MTCNN(MTCNN_WEIGHTS, detect.Settings(min_face_size=40.0))(rgb)
  assert len(face) >= 1
  j = aligned.pick_face(face.boxes_Nx4, 250, 250, "central")
  want = np.clip(align.align_faces(rgb, face.landmarks_Nx5x2[j:j + 1], "arcface112")[0] + 0.5, 0, 255)
  assert np.abs(imgs[0].astype(float) - want.astype(np.uint8)).max() <= 1


def test_recordio_source_aligns_through_the_same_path(tmp_path, stand_in):
  """insightface RecordIO: the detector reads each record's image; a face-less record follows the policy."""
  import io as _io
  from facenet_jax.data import recordio

  def jpeg(a):
    buf = _io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()

  arrays = [_photo(1), np.full((60, 60, 3), 70, np.uint8), _photo(2), _photo(3)]
  d = tmp_path / "ms1m"
  os.makedirs(d)
  recordio.write_rec(str(d / "train.rec"),
                     [recordio.pack(lab, jpeg(a)) for lab, a in zip([0, 0, 1, 1], arrays)])
  f = get_config("tiny")
  f.unlock()
  f.data.update(source="recordio", data_dir=str(d), tfds_dir=str(tmp_path / "tfds"), image_size=24,
                center_crop=40, prepare_workers=1, record_encoding="png", train_identities=0,
                eval_identities=0, align="mtcnn", no_face="drop", mtcnn_weights=_weights(tmp_path))
  train, _ = sources.load(f)
  assert stand_in.calls == 4 and len(train) == 3 and train.labels.tolist() == [0, 1, 1]
  path = train.images.prepared.path
  report = json.load(open(os.path.join(path, aligned.REPORT_JSON)))
  assert [r["index"] for r in report["no_face"]] == [1] and "train.rec@" in report["no_face"][0]["path"]
  decoded = np.asarray(Image.open(_io.BytesIO(jpeg(arrays[0]))).convert("RGB"))
  want = fit_image(Image.fromarray(aligned.aligned_crop(decoded, _landmarks(60, 60), "arcface112")),
                   Fit(24, 0, 3))
  np.testing.assert_array_equal(train.images[0], want)
  # the prepared folder itself as data_dir, with other alignment settings: refused, naming both
  g = get_config("tiny")
  g.unlock()
  g.data.update(source="folder", data_dir=path, tfds_dir=str(tmp_path / "tfds"), image_size=24,
                center_crop=40, train_identities=0, eval_identities=0)
  with pytest.raises(real.raw.DataError, match=r"holds images aligned \(arcface112, no_face=drop.*asks for unaligned"):
    sources.load(g)


def test_a_torn_detections_json_is_a_cache_miss_not_an_error(tmp_path, stand_in):
  """It was rewritten in place on every call; a kill during that write left a cut-off file
  that every later run failed to parse (JSONDecodeError) until deleted by hand."""
  images = [_photo(k) for k in range(3)]
  folder = str(tmp_path / "det")
  a = _alignment(tmp_path)
  first = aligned.detect_all(3, lambda k: images[k], a, folder)
  info = os.path.join(folder, "detections.json")
  made = os.stat(info).st_mtime_ns
  aligned.detect_all(3, lambda k: images[k], a, folder)
  assert os.stat(info).st_mtime_ns == made and stand_in.calls == 3   # reused, not rewritten
  text = open(info).read()
  open(info, "w").write(text[: len(text) // 2])
  again = aligned.detect_all(3, lambda k: images[k], a, folder)
  assert stand_in.calls == 6   # detected again: a torn header cannot vouch for its chunks
  np.testing.assert_array_equal(again.landmarks, first.landmarks)
  assert json.load(open(info))["num_images"] == 3
