"""LFW View 1 (``data.lfw_view=1``, facenet_jax/data/lfw_view1.py): the development view's
split and pairs, checked on a tiny fixture against what the two files say."""

import os

import numpy as np
import pytest
from PIL import Image

from test_data_builders import _config, _rng_image, _write_lfw, _LFW_PEOPLE
from test_evaluators import _fitted_lookup

from facenet_jax import evaluators, verification
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import raw, real, sources

# View 2 (the fixture's pairs.txt): Ann, Bob in fold 0; Cid, Dee, Eve in fold 1. Fay is in
# no View 2 pair. View 1: DevTest holds Ann and Bob, DevTrain Cid, Dee, Eve and Fay; one
# DevTest pair names Ann_0004, which the folder lacks (a View 2-only copy of LFW).
_DEV_TEST = "2\nAnn\t1\t2\nAnn\t2\t4\nAnn\t1\tBob\t1\nBob\t1\tAnn\t3\n"
_DEV_TRAIN = "2\nCid\t1\t2\nFay\t1\t2\nCid\t1\tDee\t1\nEve\t1\tFay\t2\n"


def _write_view1(tmp_path, dev_test=_DEV_TEST, dev_train=_DEV_TRAIN):
  lfw = _write_lfw(tmp_path / "lfw")
  os.makedirs(lfw / "images" / "Fay")
  for i in (1, 2):
    Image.fromarray(_rng_image((40, 40, 3), 90 + i)).save(lfw / "images" / "Fay" / f"Fay_{i:04d}.jpg",
                                                          quality=95)
  dev = tmp_path / "view1"
  os.makedirs(dev)
  (dev / "pairsDevTest.txt").write_text(dev_test)
  (dev / "pairsDevTrain.txt").write_text(dev_train)
  return lfw, dev


def _view1_config(tmp_path, lfw, dev, **data):
  return _config(tmp_path, source="lfw", data_dir=str(lfw), image_size=16, center_crop=32,
                 lfw_view=1, lfw_dev_dir=str(dev), **data)


def test_view1_trains_on_everyone_outside_devtest_and_scores_its_present_pairs(tmp_path, capsys):
  lfw, dev = _write_view1(tmp_path)
  c = _view1_config(tmp_path, lfw, dev)
  train, held = sources.load(c)
  # DevTest people are held out; DevTrain people and Fay (in no View 2 pair) train
  assert held.name == "lfw-held-out(view1)" and len(held) == 4 and held.num_identities == 2
  assert len(train) == 6 and train.num_identities == 4       # Cid 2, Dee 1, Eve 1, Fay 2
  everything, pairs = real.lfw_view2(c)
  assert len(everything) == 10
  assert list(pairs.fold) == [0, 0, 0, 1, 1, 1, 1]            # Ann 2-4 left out
  assert list(pairs.issame) == [True, False, False, True, True, False, False]
  assert np.array_equal(everything.labels[pairs.i] == everything.labels[pairs.j], pairs.issame)
  err = capsys.readouterr().err   # said once, not at each of the loader's reads
  assert err.count("3 of the 4 pairs of pairsDevTest.txt have both photos") == 1
  assert real.lfw_test_fold(c) == 0 and real.lfw_calibration_folds(c, 2) == (1,)
  p = real.lfw_pairs(c)   # DevTest pairs as rows of the held-out set: Ann 1-3, Bob 1
  assert list(zip(p.i, p.j)) == [(0, 1), (0, 3), (3, 2)]
  # the same folder under View 2 keeps its own split: Fay in no pair is in neither side
  c2 = _config(tmp_path, source="lfw", data_dir=str(lfw), image_size=16, center_crop=32, test_fold=1)
  train2, held2 = sources.load(c2)
  assert len(train2) == 4 and len(held2) == 4


def test_view1_evaluator_takes_thresholds_from_devtrain(tmp_path):
  """Distances of seeded random embeddings: accuracy on DevTest at DevTrain's best threshold,
  against the same computed here."""
  lfw, dev = _write_view1(tmp_path)
  c = _view1_config(tmp_path, lfw, dev)
  files = [((lfw / "images" / name / f"{name}_{i:04d}.jpg").read_bytes(), k)
           for k, (name, n) in enumerate({**_LFW_PEOPLE, "Fay": 2}.items()) for i in range(1, n + 1)]
  lookup = {img: row for row, img in enumerate(_fitted_lookup(files, c))}
  vec = np.random.default_rng(3).normal(size=(len(lookup), 6)).astype(np.float32)
  vec /= np.linalg.norm(vec, axis=1, keepdims=True)
  embed = lambda images: vec[[lookup[x.tobytes()] for x in np.asarray(images)]]
  train, held = sources.load(c)
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  out = evaluators.eval_lfw_view1(evaluators.Context(c, embed, held, train, str(workdir)))
  everything, pairs = real.lfw_view2(c)
  e = embed(everything.images)
  d = np.sum((e[pairs.i] - e[pairs.j]) ** 2, axis=1)
  dev_test, dev_train = pairs.fold == 0, pairs.fold == 1
  t, cal = verification.best_threshold(d[dev_train], pairs.issame[dev_train])
  assert out["distance/calibration_accuracy"] == pytest.approx(cal)
  assert out["distance/accuracy"] == pytest.approx(np.mean((d[dev_test] <= t) == pairs.issame[dev_test]))
  kf = verification.kfold_accuracy(d[dev_test], pairs.issame[dev_test], 10, seed=0)
  assert out["distance/kfold_accuracy"] == pytest.approx(kf["accuracy"])
  assert out["test_pairs"] == 3 and out["calibration_pairs"] == 4 and "test_fold" not in out
  assert sorted(os.listdir(workdir)) == ["lfw_view1_scores.npz", "roc_lfw_view1.png"]
  from facenet_jax import lfw_runs   # View 2's tools never take it for a fold
  assert lfw_runs.fold_scores([str(workdir)]) == {}


@pytest.mark.parametrize("dev_test,dev_train,match", [
    ("Ann\t1\t2\n", _DEV_TRAIN, r"pairsDevTest.txt: line 1: expected the View 1 header"),
    ("2\nAnn\t1\t2\n", _DEV_TRAIN, r"pairsDevTest.txt: header says 1 folds x \(2 x 2\) pairs"),
    (_DEV_TEST, _DEV_TRAIN.replace("Cid\t1\t2", "Ann\t1\t3"),
     r"pairsDevTrain.txt: line 2: Ann is in pairsDevTest.txt too"),
    (_DEV_TEST.replace("Bob\t1\tAnn\t3", "Ann\t3\tAnn\t9").replace("Ann\t1\tBob\t1", "Ann\t1\tAnn\t7"),
     _DEV_TRAIN, r"1 of the 4 pairs of pairsDevTest.txt have both photos \(1 matched\); need matched"),
])
def test_bad_view1_files_are_named(tmp_path, dev_test, dev_train, match):
  lfw, dev = _write_view1(tmp_path, dev_test, dev_train)
  with pytest.raises(raw.DataError, match=match):
    sources.load(_view1_config(tmp_path, lfw, dev))


def test_missing_view1_files_and_mismatched_settings_are_refused(tmp_path):
  lfw, dev = _write_view1(tmp_path)
  os.remove(dev / "pairsDevTrain.txt")
  with pytest.raises(raw.DataError, match=r"lfw_view=1 reads LFW's View 1 pairs from \S+/view1/"
                                          r"pairsDevTrain.txt, which does not exist: download "
                                          r"http://vis-www.cs.umass.edu/lfw/pairsDevTest.txt"):
    sources.load(_view1_config(tmp_path, lfw, dev))
  # the lfw variants score View 2: a View 1 split needs the View 1 evaluator, and back
  c = _config(tmp_path, "lfw_vgg", lfw_view=1)
  with pytest.raises(ConfigError, match=r"config.evals = 'lfw_view2': expected 'lfw_view1', not "
                                        r"'lfw_view2', with data.lfw_view=1"):
    check_config(c)
  c = _config(tmp_path, "lfw_vgg")
  c.unlock()
  c.evals = "lfw_view1"
  with pytest.raises(ConfigError, match=r"expected 'lfw_view2', not 'lfw_view1', with data.lfw_view=2"):
    check_config(c)
  c.evals, c.data.lfw_view = "lfw_view1", 1
  check_config(c)
  c.data.no_face = "drop"
  with pytest.raises(ConfigError, match=r"config.data.no_face = 'drop': expected 'center_crop' "
                                        r"with data.lfw_view=1"):
    check_config(c)
  c.data.no_face, c.data.lfw_view = "center_crop", 3
  with pytest.raises(ConfigError, match=r"config.data.lfw_view = 3: expected 1 \(View 1"):
    check_config(c)


def test_view1_unread_view2_fields_are_named(tmp_path):
  from facenet_jax import config_usage
  c = _config(tmp_path, "lfw_vgg", lfw_view=1, test_fold=3)
  assert any(u.startswith("config.data.test_fold = 3: data.lfw_view=1 scores View 1's DevTest")
             for u in config_usage.unused_settings(c))
  c = _config(tmp_path, "lfw_vgg", lfw_dev_dir="/x")
  assert any(u.startswith("config.data.lfw_dev_dir = '/x': only data.lfw_view=1")
             for u in config_usage.unused_settings(c))
