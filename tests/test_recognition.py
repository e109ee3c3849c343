import json
import os

import numpy as np
import pytest

from facenet_jax import open_set, recognition as R

# A hand-worked open-set example in 2-D, squared L2 distances, threshold t = 1.5.
#
#   gallery: alice (0, 0) and (0, 2); bob (4, 0); carol (4, 4)
#
#   probe            alice                 bob            carol         nearest  rank  outcome
#   p1 alice (0, 3)  min(9, 1)   = 1       16+9 = 25      16+1 = 17     alice 1  1     accepted, right
#   p2 bob   (3, 0)  min(9, 13)  = 9       1              1+16 = 17     bob   1  1     accepted, right
#   p3 carol (4,2.5) min(22.25,16.25)=16.25  6.25         2.25          carol 2.25 1   rejected (> t)
#   p4 bob   (1,2.5) min(7.25, 1.25) = 1.25  9+6.25=15.25 9+2.25=11.25  alice 1.25 3   accepted, wrong
#   u1 ?     (2, 2)  min(8, 4)   = 4       4+4 = 8        4+4 = 8       alice 4        rejected
#   u2 ?     (4, -1) min(17, 25) = 17      1              25            bob   1        accepted (false)
#
#   rank-1 = 3/4 (p1, p2, p3), rank-2 = 3/4, rank-3 = 1
#   DIR = 2/4 (p1, p2), FNIR = 1/2, known rejection = 1/4 (p3), misidentification = 1/4 (p4)
#   FAR = 1/2 (u2), unknown rejection = 1/2
T = 1.5
GALLERY = [("alice", [[0, 0], [0, 2]]), ("bob", [[4, 0]]), ("carol", [[4, 4]])]
KNOWN = np.array([[0, 3], [3, 0], [4, 2.5], [1, 2.5]], np.float32)
KNOWN_IDS = np.array(["alice", "bob", "carol", "bob"])
UNKNOWN = np.array([[2, 2], [4, -1]], np.float32)


def _gallery():
  g = R.Gallery(2)
  for name, emb in GALLERY:
    g.enrol(name, np.array(emb, np.float32))
  return g


def _ref_identity_distances(gallery_emb, gallery_ids, queries):
  """Plain loops: per identity, the min squared distance over its rows."""
  identities = list(dict.fromkeys(np.asarray(gallery_ids).tolist()))
  out = np.zeros((len(queries), len(identities)))
  for q, x in enumerate(np.asarray(queries, np.float64)):
    for k, ident in enumerate(identities):
      out[q, k] = min(float(((x - np.asarray(e, np.float64)) ** 2).sum())
                      for e, i in zip(gallery_emb, gallery_ids) if i == ident)
  return identities, out


def test_hand_worked_identify():
  ids, dist = R.identify(_gallery(), np.r_[KNOWN, UNKNOWN], T)
  assert ids == ["alice", "bob", R.UNKNOWN, "alice", R.UNKNOWN, "bob"]
  np.testing.assert_allclose(dist, [1, 1, 2.25, 1.25, 4, 1], atol=1e-5)


def test_hand_worked_open_set_report():
  g = _gallery()
  r = open_set.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, UNKNOWN, T, ranks=(1, 2, 3))
  # no rank3_accuracy: among 3 people every probe is within rank 3, whatever the embedding
  expect = dict(rank1_accuracy=0.75, rank2_accuracy=0.75, dir=0.5, fnir=0.5,
                known_rejection_rate=0.25, misidentification_rate=0.25, far=0.5,
                unknown_rejection_rate=0.5, threshold=1.5, num_identities=3.0,
                num_gallery_embeddings=4.0, num_known_probes=4.0, num_unknown_probes=2.0)
  assert r.keys() == expect.keys()
  for k, v in expect.items():
    assert r[k] == pytest.approx(v), k
  assert all(isinstance(v, float) for v in r.values())
  # closed-set identification accepts everything: DIR becomes rank-1, every unknown is a false accept
  r_inf = open_set.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, UNKNOWN, np.inf)
  assert r_inf["dir"] == pytest.approx(r_inf["rank1_accuracy"]) and r_inf["far"] == 1.0
  assert "rank5_accuracy" not in r_inf  # only 3 people enrolled


def test_identity_distances_match_loops():
  rng = np.random.default_rng(0)
  g_ids = rng.integers(0, 5, size=20)
  g_emb = rng.normal(size=(20, 6)).astype(np.float32)
  q = rng.normal(size=(7, 6)).astype(np.float32)
  identities, dist = R.identity_distances(g_emb, g_ids, q)
  ref_ids, ref = _ref_identity_distances(g_emb, g_ids, q)
  assert identities.tolist() == ref_ids  # order of first appearance
  np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-6)


def test_rank_and_rates_against_loops():
  rng = np.random.default_rng(1)
  dist = rng.random((30, 6))
  identities = np.array([10, 11, 12, 13, 14, 15])
  truth = rng.choice(identities, 30)
  unknown = rng.random((9, 6))
  t = 0.2
  ref_rank = [sum(dist[q, k] <= dist[q, list(identities).index(truth[q])] for k in range(6))
              for q in range(30)]
  np.testing.assert_array_equal(open_set.true_rank(dist, identities, truth), ref_rank)
  for k in (1, 3):
    assert open_set.rank_k_accuracy(dist, identities, truth, k) == pytest.approx(np.mean(np.array(ref_rank) <= k))
  rates = open_set.open_set_rates(dist, identities, truth, unknown, t)
  hit = [identities[np.argmin(dist[q])] == truth[q] and dist[q].min() <= t for q in range(30)]
  assert rates["dir"] == pytest.approx(np.mean(hit))
  assert rates["far"] == pytest.approx(np.mean([u.min() <= t for u in unknown]))
  assert rates["dir"] + rates["known_rejection_rate"] + rates["misidentification_rate"] == pytest.approx(1.0)


def test_ties_count_against_rank_one():
  dist = np.array([[1.0, 1.0, 2.0]])
  assert open_set.true_rank(dist, np.array(["a", "b", "c"]), np.array(["a"])).tolist() == [2]


def test_calibrate_threshold_hand_cases():
  d = np.array([4, 1, 3, 3, 2], float)  # sorted 1 2 3 3 4
  # far -> allowed accepts m = floor(5 far) -> threshold, accepted
  cases = {0.0: (np.nextafter(1.0, -np.inf), 0), 0.2: (1.5, 1), 0.4: (2.5, 2),
           0.6: (2.5, 2),   # m = 3 would split the tie at 3: both 3s are rejected
           0.8: (3.5, 4), 1.0: (4.0, 5)}
  for far, (t, accepted) in cases.items():
    assert open_set.calibrate_threshold(d, far) == pytest.approx(t), far
    assert np.sum(d <= open_set.calibrate_threshold(d, far)) == accepted


def test_calibrate_threshold_is_the_largest_allowed_cut():
  rng = np.random.default_rng(2)
  for _ in range(50):
    d = np.round(rng.random(rng.integers(1, 40)), 1)  # many ties
    far = rng.random()
    t = open_set.calibrate_threshold(d, far)
    m = int(np.floor(far * d.size + 1e-9))
    best = max([0] + [int(np.sum(d <= v)) for v in np.unique(d) if np.sum(d <= v) <= m])
    assert np.sum(d <= t) == best
  with pytest.raises(ValueError, match="far"):
    open_set.calibrate_threshold(d, 1.5)
  with pytest.raises(ValueError, match="at least one"):
    open_set.calibrate_threshold(np.array([]), 0.1)


def test_person_not_in_gallery_is_not_recognized_and_verify():
  g = _gallery()
  ids, dist = R.identify(g, np.array([10.0, 10.0]), T)
  assert ids == [R.UNKNOWN] and dist[0] == pytest.approx(72.0)  # (10-4)^2 + (10-4)^2 to carol
  ok, d = R.verify(g, np.array([0.0, 2.5]), "alice", T)
  assert ok and d == pytest.approx(0.25)
  ok, d = R.verify(g, np.array([0.0, 2.5]), "bob", T)
  assert not ok and d == pytest.approx(22.25)
  with pytest.raises(R.GalleryError, match="'dave' is not enrolled"):
    R.verify(g, np.array([0.0, 2.5]), "dave", T)


def test_gallery_bookkeeping_and_errors():
  g = R.Gallery(3)
  with pytest.raises(R.GalleryError, match="empty"):
    R.identify(g, np.zeros((1, 3)), 1.0)
  with pytest.raises(R.GalleryError, match="expected 3, got 4"):
    g.enrol("a", np.zeros(4))
  with pytest.raises(R.GalleryError, match="NaN"):
    g.enrol("a", np.array([0.0, np.nan, 0.0]))
  g.enrol("a", np.eye(3)[:2])  # two shots
  g.enrol("b", np.eye(3)[2])   # one shot
  g.enrol("a", np.ones(3))     # a third shot of an enrolled person
  assert len(g) == 2 and g.num_embeddings == 4 and g.identities == ["a", "b"]
  assert g.ids == ["a", "a", "b", "a"]
  with pytest.raises(R.GalleryError, match="identities are str"):
    g.enrol(7, np.zeros(3))
  with pytest.raises(R.GalleryError, match="expected 3, got 2"):
    R.identify(g, np.zeros((1, 2)), 1.0)
  assert g.remove("a") == 3
  assert g.identities == ["b"] and g.emb_NxD.shape == (1, 3)
  with pytest.raises(R.GalleryError, match="not enrolled"):
    g.remove("a")
  g.remove("b")
  with pytest.raises(R.GalleryError, match="empty"):
    R.identify(g, np.zeros(3), 1.0)


@pytest.mark.parametrize("ids", [["ann", "bo", "ann"], [3, 5, 3]])
def test_save_load_round_trip(tmp_path, ids):
  rng = np.random.default_rng(3)
  g = R.Gallery(5)
  for i in ids:
    g.enrol(i, rng.normal(size=5))
  path = str(tmp_path / "sub" / "gallery.npz")
  g.save(path)
  assert os.listdir(tmp_path / "sub") == ["gallery.npz"]  # no temp file left behind
  h = R.Gallery.load(path, dim=5)
  assert h.ids == ids and all(type(a) is type(b) for a, b in zip(h.ids, ids))
  np.testing.assert_array_equal(h.emb_NxD, g.emb_NxD)
  q = rng.normal(size=(4, 5))
  assert R.identify(h, q, 10.0)[0] == R.identify(g, q, 10.0)[0]
  R.Gallery(5).save(path)  # an empty gallery round-trips too, replacing the file
  assert len(R.Gallery.load(path)) == 0


def test_bad_gallery_files(tmp_path):
  g = _gallery()
  path = str(tmp_path / "g.npz")
  g.save(path)
  with pytest.raises(R.GalleryError, match=r"g\.npz.*2-D embeddings, expected 128-D"):
    R.Gallery.load(path, dim=128)
  data = open(path, "rb").read()
  bad = str(tmp_path / "truncated.npz")
  with open(bad, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(R.GalleryError, match=r"truncated\.npz"):
    R.Gallery.load(bad)
  with pytest.raises(R.GalleryError, match=r"missing\.npz.*does not exist"):
    R.Gallery.load(str(tmp_path / "missing.npz"))
  other = str(tmp_path / "other.npz")
  np.savez(other, x=np.zeros(3))
  with pytest.raises(R.GalleryError, match=r"other\.npz"):
    R.Gallery.load(other)


def test_open_set_report_checks_known_ids():
  g = _gallery()
  with pytest.raises(ValueError, match="not enrolled.*dave"):
    open_set.open_set_report(g.emb_NxD, g.ids, KNOWN[:1], np.array(["dave"]), UNKNOWN, T)
  r = open_set.open_set_report(g.emb_NxD, g.ids, KNOWN, KNOWN_IDS, None, T)
  assert np.isnan(r["far"]) and r["dir"] == pytest.approx(0.5)


def test_open_set_split():
  labels = np.repeat(np.arange(12), [1, 2, 3, 4] * 3)
  s = open_set.open_set_split(labels, num_enrolled=4, shots=2, seed=0)
  enrolled = set(labels[s.gallery])
  assert len(enrolled) == 4 and all(np.sum(labels[s.gallery] == k) == 2 for k in enrolled)
  assert set(labels[s.known]) == enrolled
  assert not set(labels[s.unknown]) & enrolled and not set(labels[s.calibration]) & enrolled
  assert not set(labels[s.unknown]) & set(labels[s.calibration])
  everything = np.concatenate(list(s))
  assert np.array_equal(np.sort(everything), np.arange(labels.size))
  again = open_set.open_set_split(labels, num_enrolled=4, shots=2, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(s, again))
  with pytest.raises(ValueError, match="cannot enrol 7 .* 6 of 12 people have >= 3"):
    open_set.open_set_split(labels, num_enrolled=7, shots=2)


# ------------------------------------------------------------ galleries bound to their model


def test_gallery_records_its_model_and_refuses_another(tmp_path):
  path = str(tmp_path / "g.npz")
  g = R.Gallery(2, model_fingerprint="a" * 64, model_source="runs/a step 800")
  g.enrol("alice", np.array([[0, 1]], np.float32))
  g.save(path)
  back = R.Gallery.load(path)
  assert (back.model_fingerprint, back.model_source) == ("a" * 64, "runs/a step 800")
  back.check_model("a" * 64, "runs/a step 800", path)   # the same model: fine
  with pytest.raises(R.GalleryError, match=r"g\.npz was enrolled by another model \(runs/a step "
                     r"800, fingerprint aaaaaaaaaaaa\) than runs/b step 10 \(fingerprint bbbbbbbbbbbb\)"):
    back.check_model("b" * 64, "runs/b step 10", path)
  # a gallery of format 1 (no model recorded) still loads, but cannot be checked: refused
  old = str(tmp_path / "old.npz")
  np.savez(old, emb_NxD=np.zeros((1, 2), np.float32), ids=np.array(["x"]),
           format_version=np.int64(1))
  with pytest.raises(R.GalleryError, match=r"old\.npz records no model"):
    R.Gallery.load(old).check_model("a" * 64, "runs/a step 800", old)


def test_gallery_records_how_its_photos_were_fitted_and_refuses_another_way(tmp_path):
  path = str(tmp_path / "g.npz")
  g = R.Gallery(2, "a" * 64, "runs/a step 800", face_fit="none")
  g.enrol("alice", np.array([[0, 1]], np.float32))
  g.save(path)
  back = R.Gallery.load(path)
  assert back.face_fit == "none"
  back.check_face_fit("none", path)
  with pytest.raises(R.GalleryError, match=r"g\.npz was enrolled from photos read as 'none', "
                     r"these are read as 'mtcnn': .* use --detect=none, "
                     r"enrol again, or pass --allow_other_fit if"):
    back.check_face_fit("mtcnn", path, "--allow_other_fit")
  # a gallery enrolled with the 1.25 square (recorded "mtcnn") against today's 1.05 square
  old = R.Gallery(2, "a" * 64, "runs/a step 800", face_fit="mtcnn")
  with pytest.raises(R.GalleryError, match=r"read as 'mtcnn', these are read as 'mtcnn-square1.05'"
                     r".* the face square of --detect=mtcnn changed since it was enrolled"):
    old.check_face_fit("mtcnn-square1.05", path)
  # format 2 (before the record): loads, records nothing, is not checked
  v2 = str(tmp_path / "v2.npz")
  np.savez(v2, emb_NxD=np.zeros((1, 2), np.float32), ids=np.array(["x"]),
           format_version=np.int64(2), model_fingerprint=np.str_("a"), model_source=np.str_(""))
  old = R.Gallery.load(v2)
  assert old.face_fit == "" and old.model_fingerprint == "a"
  old.check_face_fit("mtcnn", v2)
  # a format that does not hold its records: refused, named
  for version, extra in ((3, {}), (2, {"face_fit": np.str_("none")})):
    bad = str(tmp_path / f"bad{version}.npz")
    np.savez(bad, emb_NxD=np.zeros((1, 2), np.float32), ids=np.array(["x"]),
             format_version=np.int64(version), model_fingerprint=np.str_("a"),
             model_source=np.str_(""), **extra)
    with pytest.raises(R.GalleryError, match=rf"bad{version}\.npz' has format version {version}"):
      R.Gallery.load(bad)


@pytest.mark.parametrize("content", ["random", "zip_magic", "pickled"])
def test_corrupt_gallery_is_named_without_an_unsafe_hint(tmp_path, content):
  """Random bytes (also behind a zip signature) and a pickled object array: one GalleryError
  naming the file, never a hint to load it with pickle."""
  path = tmp_path / "people.npz"
  rng = np.random.default_rng(0)
  if content == "pickled":
    np.savez(path, emb_NxD=np.zeros((1, 2), np.float32), ids=np.array([{"a": 1}], object),
             format_version=np.int64(2), model_fingerprint=np.str_("a"), model_source=np.str_(""))
  else:
    path.write_bytes((b"PK\x03\x04" if content == "zip_magic" else b"") + rng.bytes(4096))
  with pytest.raises(R.GalleryError, match=r"people\.npz") as e:
    R.Gallery.load(str(path))
  assert "\n" not in str(e.value)
  assert not any(w in str(e.value).lower() for w in ("allow_pickle", "unsafe", "pickle.load"))


def test_model_fingerprint_follows_weights_and_embedding_config():
  from configs.facenet import get_config
  from facenet_jax import inference, steps
  c = get_config("tiny")
  _, _, state = steps.create_train_state(c, example_shape=(16, 16, 3))
  w = {"params": state["params"], "model_state": state["model_state"]}
  fp = inference.model_fingerprint(c, w)
  assert len(fp) == 64 and inference.model_fingerprint(c, w) == fp
  moved = c.copy_and_resolve_references()
  moved.model.vgg_weights = "/elsewhere/vgg.h5"   # where the backbone file lies: not the model
  assert inference.model_fingerprint(moved, w) == fp
  for field, value in (("model.embedding_dim", 8), ("data.image_size", 20),
                       ("data.channels", 1), ("evaluation.flip_tta", True),
                       ("data.features_grid", 2)):
    other = c.copy_and_resolve_references()
    group, key = field.split(".")
    other[group][key] = value
    assert inference.model_fingerprint(other, w) != fp, field
  # a field added later, at the value every earlier run had, leaves the fingerprint as it
  # was before the field existed (galleries saved then still match their run)
  older = c.copy_and_resolve_references()
  older.data.unlock()
  del older.data["features_grid"]
  assert inference.model_fingerprint(older, w) == fp
  import jax
  leaves, treedef = jax.tree.flatten(w)
  leaves[0] = np.asarray(leaves[0]).copy()
  leaves[0].flat[0] += 1e-6   # one weight, one ulp-scale change
  assert inference.model_fingerprint(c, jax.tree.unflatten(treedef, leaves)) != fp


# ------------------------------------------------------------------ scripts/recognize.py


class _FakeModel:
  """A stand-in for ``inference.load`` (scripts' logic, not the network, is under test):
  embeddings are a fixed random projection of the pixels, L2-normalized, and the load is
  counted so tests can assert that bad inputs are refused before any model is loaded."""

  def __init__(self, fingerprint="f" * 64):
    self.fingerprint, self.loads = fingerprint, 0

  def __call__(self, workdir, config=None, **_):
    from facenet_jax import inference
    self.loads += 1
    proj = np.random.default_rng(0).normal(size=(16 * 16 * 3, 8))

    def embed(images):
      e = np.asarray(images, np.float64).reshape(len(images), -1) @ proj
      return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    return inference.Trained(config=config, step=4, embed=embed, input_shape=(16, 16, 3),
                             fingerprint=self.fingerprint, source=f"{workdir} step 4")


SAVED = {"threshold": 1.3, "impostor_pairs": 3000.0, "threshold_at_far_1e-3": 0.41,
         "threshold_at_far_1e-2": 0.77, "threshold_at_far_1e-1": 1.02}


@pytest.fixture
def rec(tmp_path, monkeypatch):
  """(recognize module, workdir with config.json + results.json, tmp folder, the fake
  model). Three people, three images each in faces/<person>/<k>.png and one more in
  probes/<person>.png: a person's images are noise around a template of their own, so they
  embed near each other."""
  from PIL import Image

  from configs.facenet import get_config
  from conftest import load_script
  from facenet_jax import inference, workdir as workdir_lib
  from infra import files
  c = get_config("tiny")
  c.unlock()
  c.model.embedding_dim = 8
  wd = tmp_path / "run"
  wd.mkdir()
  workdir_lib.save_config(c, str(wd))
  files.write_json_atomic(str(wd / "results.json"), {"metrics": SAVED})
  rng = np.random.default_rng(1)
  (tmp_path / "probes").mkdir()
  for person in ("ann", "bo", "cy"):
    template = rng.integers(0, 256, (16, 16, 3))
    (tmp_path / "faces" / person).mkdir(parents=True)
    for k in range(4):   # 3 enrolled, the 4th a probe
      im = np.clip(template + rng.normal(0, 8, template.shape), 0, 255).astype(np.uint8)
      Image.fromarray(im).save(tmp_path / (f"faces/{person}/{k}.png" if k < 3 else
                                           f"probes/{person}.png"))
  fake = _FakeModel()
  monkeypatch.setattr(inference, "load", fake)
  return load_script("recognize"), str(wd), tmp_path, fake


def _args(wd, gallery, *rest):
  return [*rest, f"--workdir={wd}", f"--gallery={gallery}"]


def test_enroll_a_folder_of_people_in_one_call_with_progress_then_list_and_remove(rec, capsys):
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "people.npz")
  recognize.CHUNK = 4   # progress lines every 4 images (9 here)
  out = recognize.run(["enroll", str(tmp / "faces"), f"--workdir={wd}", f"--gallery={gallery}"])
  assert out == {"enrolled": ["ann", "bo", "cy"], "people": 3} and fake.loads == 1
  printed = capsys.readouterr().out
  assert "step 4/9" in printed and "images/s" in printed and "eta" in printed
  g = R.Gallery.load(gallery)
  assert g.counts() == {"ann": 3, "bo": 3, "cy": 3}
  assert g.model_fingerprint == fake.fingerprint and g.model_source == f"{wd} step 4"
  assert recognize.run(["list", f"--gallery={gallery}"])["people"] == {"ann": 3, "bo": 3, "cy": 3}
  assert "  bo: 3" in capsys.readouterr().out
  before = open(gallery, "rb").read()
  with pytest.raises(R.GalleryError, match="'zed' is not enrolled"):
    recognize.run(["remove", "--name=zed", f"--gallery={gallery}"])
  assert open(gallery, "rb").read() == before   # nothing changed
  assert recognize.run(["remove", "--name=bo", f"--gallery={gallery}"]) == {"removed": "bo",
                                                                            "people": 2}
  assert R.Gallery.load(gallery).counts() == {"ann": 3, "cy": 3}
  assert fake.loads == 1   # list and remove load no model


def test_identify_threshold_nearest_name_and_out_files(rec, capsys):
  import csv
  import json
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "people.npz")
  recognize.run(["enroll", str(tmp / "faces"), f"--workdir={wd}", f"--gallery={gallery}"])
  probes = [str(tmp / "probes" / f"{p}.png") for p in ("ann", "cy")]
  # default: the run's threshold for FAR 1e-3, not its accuracy threshold (1.3)
  r = recognize.run(["identify", *probes, *_args(wd, gallery)])
  assert r["threshold"] == SAVED["threshold_at_far_1e-3"]
  assert r["threshold"] == recognize.run(["identify", probes[0], "--far=0.001",
                                          *_args(wd, gallery)])["threshold"]
  assert recognize.run(["identify", probes[0], "--far=0.01", *_args(wd, gallery)])["threshold"] == 0.77
  with pytest.raises(R.GalleryError, match=r"results\.json saved thresholds for FAR 0\.001, 0\.01, "
                     r"0\.1 only, not 0\.005"):
    recognize.run(["identify", probes[0], "--far=0.005", *_args(wd, gallery)])
  # rejected at threshold 0: the nearest name and its distance are still printed and saved
  capsys.readouterr()
  out_json, out_csv = str(tmp / "who.json"), str(tmp / "who.csv")
  r = recognize.run(["identify", *probes, "--threshold=0", f"--out={out_json}", *_args(wd, gallery)])
  assert r["ids"] == [None, None] and r["nearest"] == ["ann", "cy"]
  printed = capsys.readouterr().out
  assert f"{probes[0]}: not recognized (nearest ann, distance {r['distances'][0]:.3f} > threshold" in printed
  rows = json.load(open(out_json))
  assert [(x["identity"], x["nearest"], x["accepted"]) for x in rows] == [(None, "ann", False),
                                                                          (None, "cy", False)]
  np.testing.assert_allclose([x["distance"] for x in rows], r["distances"])
  r = recognize.run(["identify", *probes, "--threshold=4", f"--out={out_csv}", *_args(wd, gallery)])
  rows = list(csv.DictReader(open(out_csv)))
  assert [(x["image"], x["identity"], x["accepted"]) for x in rows] == [
      (probes[0], "ann", "True"), (probes[1], "cy", "True")]


def test_gallery_of_another_model_is_refused(rec):
  """Same embedding size, another model: a named error, not "not recognized" for all."""
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "people.npz")
  recognize.run(["enroll", str(tmp / "faces"), *_args(wd, gallery)])
  fake.fingerprint = "0" * 64   # the workdir now holds another model of the same size
  before = open(gallery, "rb").read()
  for command in (["identify", str(tmp / "faces" / "ann" / "0.png")],
                  ["enroll", "--name=dan", str(tmp / "faces" / "ann" / "0.png")]):
    with pytest.raises(R.GalleryError, match=r"people\.npz was enrolled by another model "
                       r"\(.*run step 4, fingerprint ffffffffffff\) than .*run step 4 "
                       r"\(fingerprint 000000000000\)"):
      recognize.run([*command, *_args(wd, gallery)])
  assert open(gallery, "rb").read() == before


def test_probes_read_another_way_than_the_gallery_are_refused_before_the_model(rec, capsys):
  """Before: photos enrolled whole and probes detected with MTCNN (or the reverse) were
  compared, and the distances between a face crop and a whole photo rejected everyone."""
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "people.npz")
  recognize.run(["enroll", str(tmp / "faces"), *_args(wd, gallery)])
  assert recognize.run(["list", f"--gallery={gallery}"])["face_fit"] == "none"
  assert "photos read with --detect=none" in capsys.readouterr().out
  fake.loads = 0
  before = open(gallery, "rb").read()
  probe = str(tmp / "probes" / "ann.png")
  detect = ["--detect=mtcnn", f"--mtcnn_weights={tmp}/nope.npz"]
  for command in (["identify", probe], ["verify", "--name=ann", probe], ["enroll", "--name=dan", probe]):
    with pytest.raises(R.GalleryError, match=r"people\.npz was enrolled from photos read as "
                       r"'none', these are read as 'mtcnn-square1.05'"):
      recognize.run([*command, *detect, *_args(wd, gallery)])
    # --allow_other_fit passes that check (and stops at the missing detector file here)
    with pytest.raises(Exception, match=r"--mtcnn_weights=.*nope\.npz: no such file"):
      recognize.run([*command, *detect, "--allow_other_fit", *_args(wd, gallery)])
  assert fake.loads == 0 and open(gallery, "rb").read() == before


def test_bad_inputs_are_refused_before_the_model_is_loaded(rec):
  """Each input error names the input, comes before any model load and writes nothing."""
  from facenet_jax.data import raw
  from facenet_jax.workdir import WorkdirError
  recognize, wd, tmp, fake = rec
  good = str(tmp / "faces" / "ann" / "0.png")
  gallery = str(tmp / "people.npz")
  recognize.run(["enroll", str(tmp / "faces"), *_args(wd, gallery)])
  fake.loads = 0
  before = open(gallery, "rb").read()
  (tmp / "junk.npz").write_bytes(np.random.default_rng(0).bytes(1000))
  (tmp / "broken.png").write_bytes(open(good, "rb").read()[:40])
  (tmp / "empty_dir").mkdir()
  cases = [
      (["identify", good, *_args(wd, tmp / "nobody.npz")], R.GalleryError, r"nobody\.npz' does not exist"),
      (["identify", good, *_args(wd, tmp / "junk.npz")], R.GalleryError, r"junk\.npz' is not a readable gallery"),
      (["identify", str(tmp / "nope.png"), *_args(wd, gallery)], raw.DataError, r"nope\.png: no such image"),
      (["identify", str(tmp / "broken.png"), *_args(wd, gallery)], raw.DataError, r"broken\.png: not an image"),
      (["identify", str(tmp / "empty_dir"), *_args(wd, gallery)], raw.DataError, r"empty_dir: folder holds no image"),
      (["identify", good, *_args(tmp / "no_run", gallery)], WorkdirError, r"no_run/config\.json not found"),
      (["enroll", good, *_args(wd, gallery)], raw.DataError, r"0\.png: enroll without --name takes folders"),
      (["enroll", "--name=dan", good, str(tmp / "broken.png"), *_args(wd, gallery)], raw.DataError, r"broken\.png"),
      (["identify", good, "--out=who.txt", *_args(wd, gallery)], SystemExit, r"--out=who\.txt: expected a \.json or \.csv"),
      (["verify", "--name=zed", good, *_args(wd, gallery)], R.GalleryError, r"claimed identity 'zed' is not enrolled"),
      # flags the command would have ignored, exit 0; an --out that replaced the run's files
      (["identify", good, "--faces=all", *_args(wd, gallery)], SystemExit, r"--faces has no effect without --detect=mtcnn"),
      (["identify", good, "--threshold=1", "--far=1e-3", *_args(wd, gallery)], SystemExit, r"--far has no effect with --threshold"),
      (["enroll", "--name=dan", good, "--out=x.csv", *_args(wd, gallery)], SystemExit, r"--out has no effect on enroll"),
      (["identify", good, f"--out={wd}/results.json", *_args(wd, gallery)], SystemExit,
       r"results\.json: exists; recognize does not write over a file"),
      (["enroll", "--name= ", good, *_args(wd, gallery)], SystemExit, r"--name=' ': expected a printable, non-blank name"),
      (["remove", "--name=bo", good, f"--gallery={gallery}"], SystemExit, r"remove takes no image paths"),
      (["enroll", "--name=dan", good, good, *_args(wd, gallery)], raw.DataError, r"0\.png: given twice"),
  ]
  for argv, error, message in cases:
    with pytest.raises(error, match=message):
      recognize.run([str(a) for a in argv])
  assert fake.loads == 0 and open(gallery, "rb").read() == before
  assert not (tmp / "nobody.npz").exists() and not (tmp / "who.txt").exists()


def test_recognize_cli_missing_gallery_is_one_line_exit_2(rec):
  """The one subprocess: a user error is one line on stderr, exit status 2, no model."""
  import subprocess
  import sys
  _, wd, tmp, _ = rec
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
  p = subprocess.run([sys.executable, os.path.join(root, "scripts", "recognize.py"), "identify",
                      str(tmp / "probes" / "ann.png"), f"--workdir={wd}",
                      f"--gallery={tmp / 'nobody.npz'}"], capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 2 and p.stdout == ""
  assert p.stderr.strip().splitlines() == [
      f"error: gallery file '{tmp / 'nobody.npz'}' does not exist"]


# ------------------------------------------------- scripts/recognize.py --detect=mtcnn

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MTCNN_WEIGHTS = os.path.join(SHARED, "weights", "mtcnn_weights.npz")
LFW_IMAGES = os.path.join(SHARED, "data", "lfw", "images")
needs_lfw_and_mtcnn = pytest.mark.skipif(
    not (os.path.isfile(MTCNN_WEIGHTS) and os.path.isdir(LFW_IMAGES)),
    reason=f"no {MTCNN_WEIGHTS} or {LFW_IMAGES}")


def _lfw_people_with_two_photos(n):
  """The first ``n`` LFW people (sorted) with >= 2 photos: {name: [photo, photo]}."""
  out = {}
  for person in sorted(os.listdir(LFW_IMAGES)):
    names = sorted(f for f in os.listdir(os.path.join(LFW_IMAGES, person)) if f.endswith(".jpg"))
    if len(names) >= 2:
      out[person] = [os.path.join(LFW_IMAGES, person, f) for f in names[:2]]
    if len(out) == n:
      return out


def _coffee_cup(path):
  """A synthetic mug on a table: a brown body, a handle, dark coffee, a plain wall. No face."""
  from PIL import Image, ImageDraw
  im = Image.new("RGB", (240, 200), (228, 222, 210))
  d = ImageDraw.Draw(im)
  d.rectangle([0, 150, 240, 200], fill=(150, 110, 70))                  # table
  d.rectangle([80, 60, 160, 160], fill=(120, 70, 40))                   # mug body
  d.ellipse([80, 48, 160, 72], fill=(60, 35, 20))                       # coffee
  d.ellipse([150, 80, 190, 130], outline=(120, 70, 40), width=9)         # handle
  d.ellipse([80, 150, 160, 170], fill=(120, 70, 40))                    # rounded base
  im.save(path)
  return str(path)


def test_face_input_follows_the_run_alignment():
  from configs.facenet import get_config
  from facenet_jax.data import aligned
  from facenet_jax.faces import inputs
  c = get_config("tiny")
  c.unlock()
  assert inputs.face_input(c).template is None   # data.align=none: trained unaligned
  assert "not aligned" in inputs.face_input(c).description
  c.data.align = "mtcnn"   # a run trained on aligned faces: its own template at any input size
  for template, size in (("arcface112", 112), ("facenet160", 160), ("facenet160", 64),
                         ("arcface112", 16)):
    c.data.update(align_template=template, image_size=size)
    got = inputs.face_input(c)
    assert (got.template, got.size) == (template, size) and template in got.description
    assert f"resized to the run's {size} px input" in got.description
  c.data.align_template = "arcface96"
  with pytest.raises(aligned.AlignConfigError, match=r"^config\.data\.align_template = 'arcface96'"):
    inputs.face_input(c)
  # the centred square: 1.05 x the longer side, centred on the box
  assert inputs.centred_square([100, 50, 180, 150]) == (88, 48, 193, 153)


@needs_lfw_and_mtcnn
def test_recognize_with_mtcnn_on_lfw_photos(rec, capsys):
  """Enrol LFW photos through detection; a no-face image is refused at enroll (file named,
  gallery unchanged, no model loaded) and is "no face found" for identify and verify."""
  import json
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "lfw.npz")
  people = _lfw_people_with_two_photos(2)
  (a, (a1, a2)), (b, (b1, _)) = people.items()
  cup = _coffee_cup(tmp / "cup.png")
  detect = ["--detect=mtcnn", f"--mtcnn_weights={MTCNN_WEIGHTS}"]
  # a missing detector file: named, before any model loads
  with pytest.raises(Exception, match=r"--mtcnn_weights=.*nope\.npz: no such file"):
    recognize.run(["enroll", f"--name={a}", a1, "--detect=mtcnn", f"--mtcnn_weights={tmp}/nope.npz",
                   *_args(wd, gallery)])
  with pytest.raises(SystemExit, match="enroll takes one face per photo"):
    recognize.run(["enroll", f"--name={a}", a1, *detect, "--faces=all", *_args(wd, gallery)])
  assert fake.loads == 0 and not os.path.exists(gallery)
  recognize.run(["enroll", f"--name={a}", a1, *detect, *_args(wd, gallery)])
  recognize.run(["enroll", f"--name={b}", b1, *detect, *_args(wd, gallery)])
  assert R.Gallery.load(gallery).counts() == {a: 1, b: 1} and fake.loads == 2
  assert "not aligned: a square of 1.05x each face box" in capsys.readouterr().out
  before = open(gallery, "rb").read()
  from facenet_jax.data import raw
  with pytest.raises(raw.DataError, match=rf"^no face found in {cup}: enroll needs a face"):
    recognize.run(["enroll", f"--name={a}", a2, cup, *detect, *_args(wd, gallery)])
  assert open(gallery, "rb").read() == before and fake.loads == 2
  # identify: the enrolled photo again is its person at distance 0 (same detection and fit
  # at enrol and query); the cup is "no face found" in the printed lines and in --out
  out_json = str(tmp / "who.json")
  r = recognize.run(["identify", a1, cup, b1, *detect, "--threshold=0.5", f"--out={out_json}",
                     *_args(wd, gallery)])
  assert r["ids"] == [a, None, b] and r["distances"][1] is None
  assert r["distances"][0] == pytest.approx(0, abs=1e-6)
  printed = capsys.readouterr().out
  assert f"{cup}: no face found\n" in printed
  assert f"{a1} face 1 at [" in printed   # each face with its box
  rows = json.load(open(out_json))
  assert [(x["image"], x["face"], x["note"], x["accepted"]) for x in rows] == [
      (a1, 1, "", True), (cup, None, "no face found", False), (b1, 1, "", True)]
  x1, y1, x2, y2 = rows[0]["box"]
  assert 60 < x2 - x1 < 160 and abs((x1 + x2) / 2 - 125) < 25   # LFW: a centred face
  out_csv = str(tmp / "claim.csv")
  r = recognize.run(["verify", f"--name={a}", a1, cup, *detect, "--threshold=0.5",
                     f"--out={out_csv}", *_args(wd, gallery)])
  assert r["accepted"] == [True, False]
  assert "no face found" in open(out_csv).read().splitlines()[2]


@needs_lfw_and_mtcnn
def test_identify_all_faces_of_a_two_person_photo(rec, capsys):
  """--faces=all: two LFW photos side by side give two results, each with its own box."""
  from PIL import Image
  recognize, wd, tmp, fake = rec
  gallery = str(tmp / "lfw.npz")
  (a, (a1, _)), (b, (b1, _)) = _lfw_people_with_two_photos(2).items()
  detect = ["--detect=mtcnn", f"--mtcnn_weights={MTCNN_WEIGHTS}"]
  recognize.run(["enroll", f"--name={a}", a1, *detect, *_args(wd, gallery)])
  recognize.run(["enroll", f"--name={b}", b1, *detect, *_args(wd, gallery)])
  pair = Image.new("RGB", (500, 250))
  pair.paste(Image.open(a1).convert("RGB"), (0, 0))
  pair.paste(Image.open(b1).convert("RGB"), (250, 0))
  pair.save(tmp / "pair.png")
  capsys.readouterr()
  r = recognize.run(["identify", str(tmp / "pair.png"), *detect, "--faces=all",
                     "--threshold=1e9", *_args(wd, gallery)])
  rows = r["rows"]
  assert [x["face"] for x in rows] == [1, 2] and len(r["ids"]) == 2
  centres = sorted((x["box"][0] + x["box"][2]) / 2 for x in rows)
  assert centres[0] < 250 < centres[1]
  printed = capsys.readouterr().out
  assert printed.count(f"{tmp / 'pair.png'} face ") == 2
  assert "every face, not aligned" in printed


def test_min_face_follows_an_aligned_run_and_the_flag(tmp_path, monkeypatch):
  """load_faces' detector searches from the run's data.align_min_face when the run was trained
  on aligned faces, from MTCNN's 20 px otherwise, and from --min_face when it is given; the
  faces line says which; --min_face <= 0 is refused before anything loads."""
  from PIL import Image

  from configs.facenet import get_config
  from conftest import load_script
  from facenet_jax.faces import detect
  recognize = load_script("recognize")
  seen = []

  class Recorder:   # stands in for the detector: records its settings, finds no face
    def __init__(self, weights, settings):
      seen.append(settings.min_face_size)

    def detect(self, images):
      return [detect.Faces.empty() for _ in images]

  monkeypatch.setattr(detect, "MTCNN", Recorder)
  Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
  c = get_config("lfw")   # align_min_face=40
  c.unlock()
  for align, flag, want in (("none", None, 20.0), ("mtcnn", None, 40.0), ("mtcnn", 25.0, 25.0),
                            ("none", 30.0, 30.0)):
    c.data.align = align
    images, probes, how = recognize.load_faces([str(tmp_path / "a.png")], c, "w.npz", "largest",
                                               min_face=flag)
    assert seen[-1] == want and f"min face {want:g} px" in how
    assert len(images) == 0 and not probes[0].found
  with pytest.raises(SystemExit, match=r"--min_face=0: expected a face size in px > 0"):
    recognize.run(["identify", str(tmp_path / "a.png"), "--detect=mtcnn", "--min_face=0",
                   "--workdir=nowhere", f"--gallery={tmp_path / 'g.npz'}"])


@needs_lfw_and_mtcnn
def test_a_run_trained_on_aligned_faces_gets_template_crops():
  """data.align set at 112 px: the model input is the arcface112 crop of detect_and_align."""
  from PIL import Image

  from configs.facenet import get_config
  from conftest import load_script
  from facenet_jax.faces import detect, detect_and_align
  recognize = load_script("recognize")
  c = get_config("tiny")
  c.unlock()
  c.data.update(align="mtcnn", image_size=112, channels=3)
  (a, (a1, _)), = _lfw_people_with_two_photos(1).items()
  images, probes, how = recognize.load_faces([a1], c, MTCNN_WEIGHTS, "largest")
  assert images.shape == (1, 112, 112, 3) and images.dtype == np.uint8
  assert "aligned to the arcface112 template" in how and probes[0].face == 1
  crop = detect_and_align([np.asarray(Image.open(a1).convert("RGB"))], detect.MTCNN(MTCNN_WEIGHTS),
                          "arcface112")[0][0].crop
  np.testing.assert_array_equal(images[0], np.clip(crop + 0.5, 0, 255).astype(np.uint8))
  c.data.channels = 1   # a grey run: the same crop as luma
  assert recognize.load_faces([a1], c, MTCNN_WEIGHTS, "largest")[0].shape == (1, 112, 112, 1)


@needs_lfw_and_mtcnn
def test_a_run_trained_on_aligned_16px_faces_recognizes_with_its_training_crops(rec, capsys):
  """data.align=mtcnn, align_template=facenet160, image_size=16 (no template is 16 px):
  recognize.py --detect=mtcnn enrols and identifies, and each face's model input is, pixel
  for pixel, the image the dataset preparation stored for the same photo (same detector,
  template, pick and resize)."""
  import shutil

  from facenet_jax import workdir as workdir_lib
  from facenet_jax.data import aligned, prepare, records
  from facenet_jax.data.images import Fit
  recognize, wd, tmp, fake = rec
  c = workdir_lib.load_config(wd)
  c.unlock()
  c.data.update(align="mtcnn", align_template="facenet160", align_pick="largest",
                mtcnn_weights=MTCNN_WEIGHTS)
  assert (c.data.image_size, c.data.channels) == (16, 3)   # the fake model's input
  workdir_lib.save_config(c, wd)
  (a, photos), = _lfw_people_with_two_photos(1).items()
  (tmp / "lfw" / a).mkdir(parents=True)
  for p in photos:
    shutil.copy(p, tmp / "lfw" / a)
  path = prepare.prepare(prepare.folder_plan(str(tmp / "lfw")), str(tmp / "prepared"),
                         Fit(16, 0, 3), encoding="png", workers=1, alignment=aligned.alignment_of(c))
  ds = records.open_prepared(path)
  stored = records.RecordImages(ds)[np.arange(len(ds.labels))]
  assert json.load(open(os.path.join(path, aligned.REPORT_JSON)))["no_face"] == []

  images, probes, how = recognize.load_faces(photos, c, MTCNN_WEIGHTS, "largest")
  assert images.shape == stored.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(images, stored)
  assert "aligned to the facenet160 template and resized to the run's 16 px input" in how

  gallery = str(tmp / "aligned.npz")
  detect = ["--detect=mtcnn", f"--mtcnn_weights={MTCNN_WEIGHTS}"]
  recognize.run(["enroll", f"--name={a}", photos[0], *detect, *_args(wd, gallery)])
  r = recognize.run(["identify", photos[0], *detect, "--threshold=0.5", *_args(wd, gallery)])
  assert r["ids"] == [a] and r["distances"][0] == pytest.approx(0, abs=1e-6)
  assert "aligned to the facenet160 template" in capsys.readouterr().out


def test_one_face_per_photo_is_the_subject_and_said(tmp_path, monkeypatch, capsys):
  """A face cut off at the photo's corner has a box reaching outside it: counted whole it was
  'the largest' and was enrolled in place of the subject, exit 0, without a word (audit 23:
  Colin Powell beside Condoleezza Rice). The area inside the photo decides; a run trained on
  aligned faces picks as its training photos were picked; a line names the box kept."""
  from PIL import Image

  from configs.facenet import get_config
  from conftest import load_script
  from facenet_jax.faces import detect
  recognize = load_script("recognize")
  boxes = np.array([[-13, -9, 65, 108], [100, 72, 182, 175]], np.float32)   # corner, subject
  lms = np.stack([b[:2] + (b[2:] - b[:2]) * np.array(
      [[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) for b in boxes]).astype(np.float32)

  class TwoFaces:
    def __init__(self, weights, settings):
      pass

    def detect(self, images):
      return [detect.Faces(boxes, np.array([0.99, 0.98], np.float32), lms) for _ in images]

  monkeypatch.setattr(detect, "MTCNN", TwoFaces)
  Image.new("RGB", (250, 250), (90, 90, 90)).save(tmp_path / "rice.png")
  c = get_config("lfw")
  c.unlock()
  for align, which, pick, want in (("none", None, "central", 1), ("none", "largest", "central", 1),
                                   ("none", "central", "central", 1), ("mtcnn", None, "central", 1),
                                   ("mtcnn", None, "largest", 1)):
    c.data.update(align=align, align_pick=pick)
    _, probes, how = recognize.load_faces([str(tmp_path / "rice.png")], c, "w.npz", which)
    assert [p.box for p in probes] == [[100.0, 72.0, 182.0, 175.0]], (align, which, pick)
    kept = which or (pick if align == "mtcnn" else "largest")
    assert f"rice.png: 2 faces, kept the {kept} one at [100, 72, 182, 175]" in capsys.readouterr().out
    assert f"the {kept} face of each photo" in how


def test_a_false_accept_rate_below_what_the_calibration_resolves_says_so(tmp_path):
  """ORL runs calibrate on 500 impostor pairs: their 1e-4 and 1e-3 thresholds are one value,
  which accepted 0.0013 of 4,500 other impostor pairs, printed as "false-accept rate 0.0001"."""
  import argparse

  from conftest import load_script
  from infra import files
  recognize = load_script("recognize")
  files.write_json_atomic(str(tmp_path / "results.json"), {"metrics": {
      "threshold_at_far_1e-4": 0.876, "threshold_at_far_1e-3": 0.876,
      "threshold_at_far_1e-2": 1.1, "impostor_pairs": 500}})
  args = lambda far: argparse.Namespace(threshold=None, workdir=str(tmp_path), far=far)
  t, why = recognize.threshold(args(1e-4))
  assert t == 0.876 and "below the 1/500 = 0.002 these pairs resolve" in why
  assert "resolve" not in recognize.threshold(args(1e-2))[1]
