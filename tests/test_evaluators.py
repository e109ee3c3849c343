"""Evaluation protocols by name (facenet_jax/evaluators.py) and VAL/FAR threshold transfer.

The protocols only see an ``embed`` function, so they are checked with embeddings whose
answers are known: an "oracle" that maps every image of one identity to (nearly) the
same unit vector and different identities to orthogonal ones (perfect scores), a random
one (chance-level scores) and a constant one (ties, resolved by hand).
"""

import hashlib
import os
import zipfile

import numpy as np
import pytest

from test_data_builders import _config, _write_lfw, _write_omniglot, _LFW_PEOPLE

from configs.facenet import get_config
from facenet_jax import evaluators, verification
from facenet_jax.data import raw, real
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.images import fit_image

# ------------------------------------------------------------------ VAL/FAR transfer


def _ref_threshold(d_fit, same_fit, far_target):
  """Largest candidate threshold (-inf or a fit distance) whose fit FAR <= target."""
  imp = d_fit[~same_fit]
  best = -np.inf
  for t in np.unique(d_fit):
    if np.mean(imp <= t) <= far_target:
      best = max(best, t)
  return best


def test_val_far_transfer_hand_example():
  # fit pairs sorted: 0.1 S, 0.2 S, 0.3 I, 0.5 S, 0.6 I, 0.9 I
  # FAR(t) on fit: t < 0.3: 0; 0.3 <= t < 0.6: 1/3; 0.6 <= t < 0.9: 2/3; t >= 0.9: 1
  d_fit = np.array([0.1, 0.2, 0.5, 0.3, 0.6, 0.9])
  s_fit = np.array([1, 1, 1, 0, 0, 0], bool)
  d_test = np.array([0.45, 0.5, 0.55, 0.05, 0.7, 0.8])
  s_test = np.array([1, 1, 1, 0, 0, 0], bool)
  # target 0.4 -> t = 0.5: same 0.45, 0.5 accepted (VAL 2/3), impostor 0.05 accepted (FAR 1/3)
  val, far = verification.val_far_transfer(d_fit, s_fit, d_test, s_test, 0.4)
  assert val == pytest.approx(2 / 3) and far == pytest.approx(1 / 3)
  # target 0 -> t = 0.2: no test same pair is that close; the 0.05 impostor still is, so
  # the reported FAR (1/3) exceeds the target: it is measured, not assumed
  val, far = verification.val_far_transfer(d_fit, s_fit, d_test, s_test, 0.0)
  assert val == 0.0 and far == pytest.approx(1 / 3)
  # target 1 -> t = 0.9: everything accepted
  assert verification.val_far_transfer(d_fit, s_fit, d_test, s_test, 1.0) == (1.0, 1.0)
  # an impostor nearest of all and target 0: the threshold is -inf, nothing is accepted
  val, far = verification.val_far_transfer(np.array([0.1, 0.2]), np.array([0, 1], bool),
                                           np.array([0.0, 0.0]), np.array([1, 0], bool), 0.0)
  assert (val, far) == (0.0, 0.0)
  # a same and an impostor pair tied at 0.3: 0.3 cannot be accepted without the impostor
  val, _ = verification.val_far_transfer(np.array([0.3, 0.3, 0.1]), np.array([1, 0, 1], bool),
                                         np.array([0.1, 0.3]), np.array([1, 1], bool), 0.0)
  assert val == 0.5


def test_val_far_transfer_threshold_is_chosen_on_fit_pairs_only():
  rng = np.random.default_rng(0)
  s_fit = rng.random(200) < 0.5
  d_fit = np.round(rng.normal(size=200) + np.where(s_fit, 0.0, 1.5), 2)   # with ties
  for target in (0.0, 1e-2, 0.1, 0.3):
    t = _ref_threshold(d_fit, s_fit, target)
    # probes: same pairs at every fit distance and between them; acceptance is monotone in
    # distance, so VAL * n is the number of probes at or below the threshold
    ds = np.unique(d_fit)
    grid = np.unique(np.r_[ds, (ds[:-1] + ds[1:]) / 2, ds[0] - 1, ds[-1] + 1])
    val, _ = verification.val_far_transfer(d_fit, s_fit, grid, np.ones(grid.size, bool), target)
    assert round(val * grid.size) == np.sum(grid <= t)
    # any other test pairs (other distributions, scales, sizes): the same threshold
    for k in range(5):
      n = 30 + 20 * k
      s_test = rng.random(n) < 0.5
      d_test = rng.normal(size=n) * (1 + 10 * k) + np.where(s_test, 0.0, 1.0)
      val, far = verification.val_far_transfer(d_fit, s_fit, d_test, s_test, target)
      assert val == pytest.approx(np.mean(d_test[s_test] <= t))
      assert far == pytest.approx(np.mean(d_test[~s_test] <= t))
    # and the FAR on the fit pairs themselves respects the target
    _, far_fit = verification.val_far_transfer(d_fit, s_fit, d_fit, s_fit, target)
    assert far_fit <= target


# ------------------------------------------------------------- oracle / random embeds
#
# Synthetic images (4x4x1 uint8) carry their identity code in pixel (0, 0); the other
# pixels are noise. The oracle embeds code c as the one-hot e_c plus 0.05 x (8 noise
# pixels - 0.5) in dims 0..7 (codes are >= 100, so the two never overlap), L2-normalized:
# same identity at squared distance <= ~0.02, different identities at ~2.

_DIM = 256


def _coded_images(codes, seed):
  codes = np.asarray(codes)
  x = np.random.default_rng(seed).integers(0, 256, (codes.size, 4, 4, 1), dtype=np.uint8)
  x[:, 0, 0, 0] = codes
  return x


def _oracle(images, noise=0.05):
  flat = np.asarray(images).reshape(len(images), -1)
  e = np.zeros((flat.shape[0], _DIM), np.float32)
  e[np.arange(flat.shape[0]), flat[:, 0]] = 1.0
  e[:, :8] += noise * (flat[:, 1:9] / 255.0 - 0.5)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def _random_embed(images):
  out = []
  for img in np.asarray(images):
    seed = int.from_bytes(hashlib.sha1(img.tobytes()).digest()[:8], "little")
    out.append(np.random.default_rng(seed).normal(size=32))
  e = np.asarray(out, np.float32)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def _eval_config(**one_shot):
  c = get_config("tiny")
  c.unlock()
  c.data.eval_pairs = 60
  c.evaluation.one_shot.repeats = 3
  c.evaluation.one_shot.update(one_shot)
  c.evaluation.episodes.update(dict(n_way=5, k_shot=1, n_query=3, num_episodes=200))
  c.lock()
  return c


def _datasets(people=12, per=6, train_people=10, train_per=4):
  held_codes = np.repeat(100 + np.arange(people), per)
  train_codes = np.repeat(200 + np.arange(train_people), train_per)
  held = IdentityDataset(_coded_images(held_codes, 1), (held_codes - 100).astype(np.int32), "held")
  train = IdentityDataset(_coded_images(train_codes, 2), (train_codes - 200).astype(np.int32), "train")
  return train, held


def test_oracle_sanity():
  train, held = _datasets()
  e = _oracle(held.images)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
  d = ((e[:, None] - e[None]) ** 2).sum(-1)
  same = held.labels[:, None] == held.labels[None]
  assert d[same].max() < 0.05 and d[~same].min() > 1.9
  assert len({img.tobytes() for img in np.r_[held.images, train.images]}) == len(held) + len(train)


def test_oracle_embedding_scores_perfectly():
  train, held = _datasets()
  ctx = evaluators.Context(_eval_config(calibrate_on="train"), _oracle, held, train)
  pairs = evaluators.eval_pairs(ctx)
  assert pairs["verification_accuracy"] == 1.0 and pairs["roc_auc"] == 1.0 and pairs["eer"] == 0.0

  one = evaluators.eval_one_shot(ctx)
  assert one["people"] == 12 and one["rank1"] == 1.0 and one["rank5"] == 1.0
  assert one["rank1_std"] == 0.0
  # open set: 6 of the 12 enrolled, the other 6 unknown, threshold from the training people
  assert one["open_enrolled"] == 6 and one["open_target_far"] == 0.01
  assert one["open_dir"] == 1.0 and one["open_unknown_rejection_rate"] == 1.0
  assert one["open_far"] == 0.0
  # training people are all ~2 from the gallery and 1% of 120 calibration probes is < 1
  # accept: the threshold sits just below the nearest impostor, above every genuine match
  assert 0.05 < one["open_threshold"] < 2.1

  ep = evaluators.eval_episodes(ctx)
  assert ep["accuracy"] == 1.0 and ep["ci95"] == 0.0 and ep["num_episodes"] == 200

  cl = evaluators.eval_clustering(ctx)
  assert cl["nmi"] == pytest.approx(1.0) and cl["purity"] == 1.0 and cl["clusters"] == 12
  assert cl["oracle_nmi"] == pytest.approx(1.0) and cl["people"] == 12
  assert 0.05 < cl["threshold"] < 1.9     # chosen on training pairs, inside the gap


def test_one_shot_calibrated_on_held_out_people_and_clustering_without_train():
  train, held = _datasets()
  ctx = evaluators.Context(_eval_config(calibrate_on="held_out"), _oracle, held, train)
  one = evaluators.eval_one_shot(ctx)
  # few calibration people: the threshold is just below their nearest distance, and a few
  # unknown probes (all ~2 away, like the calibration ones) fall under it
  assert one["open_dir"] == 1.0 and one["open_unknown_rejection_rate"] > 0.8
  assert "train" not in ctx._cache     # the training people were never embedded
  # without training people, calibrate_on="train" falls back to held-out calibration and
  # clustering reports only the (labelled) oracle cut
  ctx = evaluators.Context(_eval_config(calibrate_on="train"), _oracle, held, None)
  assert evaluators.eval_one_shot(ctx)["open_dir"] == 1.0
  cl = evaluators.eval_clustering(ctx)
  assert "nmi" not in cl and cl["oracle_nmi"] == pytest.approx(1.0)


@pytest.mark.parametrize("people", [4, 5])
def test_one_shot_has_no_rank5_among_5_people_or_fewer(people):
  """Rank-5 among 4 or 5 enrolled people is 1.0 for any embedding: it was saved as "rank5"
  (among 5, an audit: random embeddings gave rank-1 0.19, rank-5 1.0)."""
  train, held = _datasets(people=people)
  one = evaluators.eval_one_shot(evaluators.Context(_eval_config(), _random_embed, held, train))
  assert one["people"] == people and "rank5" not in one and 0.0 <= one["rank1"] < 1.0


def test_random_embedding_scores_near_chance():
  train, held = _datasets()
  ctx = evaluators.Context(_eval_config(), _random_embed, held, train)
  assert 0.35 < evaluators.eval_pairs(ctx)["verification_accuracy"] < 0.65
  one = evaluators.eval_one_shot(ctx)
  assert one["rank1"] < 0.25 and one["rank1"] < one["rank5"] < 0.7     # chance: 1/12 and 5/12
  ep = evaluators.eval_episodes(ctx)                                   # chance: 1/5
  assert 0.14 < ep["accuracy"] < 0.26 and 0.0 < ep["ci95"] < 0.05


def test_one_shot_needs_two_people_with_two_images():
  codes = np.r_[100, 100, 101, 102]
  held = IdentityDataset(_coded_images(codes, 0), (codes - 100).astype(np.int32), "held")
  with pytest.raises(ValueError, match="1 people with >= 2 images"):
    evaluators.eval_one_shot(evaluators.Context(_eval_config(), _oracle, held))


def test_run_names_and_flatten():
  train, held = _datasets()
  calls = []

  def embed(images):
    calls.append(len(images))
    return _oracle(images)

  ctx = evaluators.Context(_eval_config(), embed, held, train)
  out = evaluators.run("pairs,episodes,pairs", ctx)
  assert list(out) == ["pairs", "episodes"]
  assert calls == [len(held)]          # held-out embeddings computed once, shared
  flat = evaluators.flatten(out)
  assert flat["pairs/verification_accuracy"] == 1.0 and flat["episodes/accuracy"] == 1.0
  assert set(flat) == {f"{n}/{k}" for n, m in out.items() for k in m}


def test_names_expand_datasets_and_reject_unknown():
  assert evaluators.names("omniglot") == ["omniglot_runs", "episodes"]
  assert evaluators.names("lfw") == ["lfw_view2"]
  assert evaluators.names(" orl , pairs,one_shot ") == ["one_shot", "pairs", "clustering"]
  assert evaluators.names("pairs,synthetic") == ["pairs", "one_shot", "episodes", "clustering"]
  assert evaluators.names("") == []
  assert set(evaluators.names(",".join(evaluators.EVALUATORS))) == set(evaluators.EVALUATORS)
  with pytest.raises(ValueError, match="'bogus' is unknown"):
    evaluators.names("pairs,bogus")


# ----------------------------------------------------------------------- LFW View 2


def _fitted_lookup(files_to_label, config):
  """{fitted image bytes: label}, decoding the raw fixture files here, as the loaders do."""
  fit = real.fit_of(config)
  mode = "L" if fit.channels == 1 else "RGB"
  out = {}
  for data, label in files_to_label:
    out[fit_image(raw.decode_image(data, "fixture", mode), fit).tobytes()] = label
  assert len(out) == len(files_to_label)       # no two fixture images fit to the same pixels
  return out


def _lookup_embed(lookup, dim):
  def embed(images):
    e = np.zeros((len(images), dim), np.float32)
    for r, img in enumerate(np.asarray(images)):
      e[r, lookup[img.tobytes()]] = 1.0
    return e
  return embed


def test_lfw_view2_oracle_on_the_test_fold(tmp_path):
  lfw = _write_lfw(tmp_path / "lfw")
  c = _config(tmp_path, source="lfw", data_dir=str(lfw), image_size=16, center_crop=32, test_fold=1)
  c.unlock()
  c.evaluation.lfw_view2.update(dict(pair_features="abs_diff", pair_head_steps=10, pair_head_pairs=8))
  c.lock()
  files = [((lfw / "images" / name / f"{name}_{i:04d}.jpg").read_bytes(), k)
           for k, (name, n) in enumerate(_LFW_PEOPLE.items()) for i in range(1, n + 1)]
  embed = _lookup_embed(_fitted_lookup(files, c), 8)     # unperturbed one-hot per person
  from facenet_jax.data import sources
  train, held = sources.load(c)
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  out = evaluators.eval_lfw_view2(evaluators.Context(c, embed, held, train, str(workdir)))
  # fold 1 pairs: Cid-Cid, Cid-Cid (distance 0), Cid-Dee, Eve-Dee (distance 2); the
  # threshold from fold 0 (same 0, different 2) is 1
  assert out["test_fold"] == 1.0
  assert out["distance/accuracy"] == 1.0
  assert out["distance/roc_auc"] == 1.0 and out["distance/eer"] == 0.0
  # VAL@FAR: fold 0's largest zero-FAR threshold is 0, which accepts both Cid pairs only
  assert out["distance/val_at_far"] == 1.0 and out["distance/far"] == 0.0
  # the pair head (abs_diff of one-hot embeddings, fitted on Ann / Bob pairs) separates the
  # test fold too: its differing pairs score above every same pair, whose features are all 0
  assert out["head_abs_diff/accuracy"] == 1.0 and out["head_abs_diff/roc_auc"] == 1.0
  assert out["head_abs_diff/eer"] == 0.0 and out["head_abs_diff/far"] == 0.0
  with open(workdir / "roc_lfw_fold1.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with np.load(workdir / "lfw_scores_fold1.npz") as z:
    assert sorted(z.files) == ["distance", "fold", "head_abs_diff", "issame"]
    np.testing.assert_array_equal(z["fold"], [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(z["issame"], [True, True, False, False] * 2)
    np.testing.assert_array_equal(z["distance"], [0, 0, 2, 2] * 2)
    head = z["head_abs_diff"]
  # every same pair has the all-zero abs_diff feature, so one score (the head's bias) for all
  # four; the reported accuracy is the fold 1 pairs under the threshold of fold 0's scores
  np.testing.assert_array_equal(head[[0, 1, 4, 5]], head[0])
  cands = np.r_[head[:4].min() - 1, (np.sort(head[:4])[1:] + np.sort(head[:4])[:-1]) / 2,
                head[:4].max() + 1]
  fit_acc = [np.mean((head[:4] <= t) == [True, True, False, False]) for t in cands]
  t = cands[int(np.argmax(fit_acc))]
  assert out["head_abs_diff/accuracy"] == np.mean((head[4:] <= t) == [True, True, False, False])
  assert out["head_abs_diff/calibration_accuracy"] == max(fit_acc)
  assert out["distance/calibration_accuracy"] == 1.0     # fold 0's distances 0, 0, 2, 2 split
  # a re-evaluation with other settings writes its own files: it replaced the run's scores
  # (the pair head's column lost), which select_lfw_model and lfw_threshold_costs read
  from facenet_jax import lfw_runs
  own = (workdir / "lfw_scores_fold1.npz").read_bytes()
  from infra.overrides import with_overrides
  c2 = with_overrides(c, {"evaluation.lfw_view2.pair_features": ""})
  evaluators.eval_lfw_view2(evaluators.Context(c2, embed, held, train, str(workdir),
                                               suffix="@evaluation.lfw_view2.pair_features="))
  assert (workdir / "lfw_scores_fold1.npz").read_bytes() == own
  assert os.path.exists(workdir / "lfw_scores_fold1@evaluation.lfw_view2.pair_features=.npz")
  assert not [f for f in os.listdir(workdir) if f.endswith(".tmp.npz")]
  assert list(lfw_runs.fold_scores([str(workdir)])) == [1]   # the run's own file only


# ------------------------------------------------------------------------ Omniglot


def test_omniglot_runs_oracle_and_constant_embeddings(tmp_path):
  root, answers = _write_omniglot(tmp_path / "omniglot", runs=2, ways=3)
  c = _config(tmp_path, source="omniglot", data_dir=str(root), image_size=16, channels=1,
              train_identities=0, eval_identities=2)
  # the run's test drawings differ from its training drawings: the oracle knows each
  # drawing's class from the answer key the fixture wrote (run r, test item i -> answers[r][i])
  with zipfile.ZipFile(root / "all_runs.zip") as zf:
    files = []
    for r, perm in answers.items():
      for k in range(1, 4):
        files.append((zf.read(f"run{r:02d}/training/class{k:02d}.png"), k))
        files.append((zf.read(f"run{r:02d}/test/item{k:02d}.png"), int(perm[k - 1])))
  embed = _lookup_embed(_fitted_lookup(files, c), 4)
  dummy = IdentityDataset(np.zeros((2, 16, 16, 1), np.uint8), np.zeros(2, np.int32))
  out = evaluators.eval_omniglot_runs(evaluators.Context(c, embed, dummy))
  assert out == {"accuracy": 1.0, "ci95": 0.0, "runs": 2.0, "ways": 3.0, "worst_run": 1.0,
                 "best_run": 1.0}
  # all embeddings equal: every distance ties and goes to the run's first class (class 1),
  # which is the answer for exactly one of the 3 test items of each run
  const = lambda images: np.full((len(images), 4), 0.5, np.float32)
  out = evaluators.eval_omniglot_runs(evaluators.Context(c, const, dummy))
  assert out["accuracy"] == pytest.approx(1 / 3) and out["ci95"] == 0.0
  assert out["worst_run"] == out["best_run"] == pytest.approx(1 / 3)


def test_lfw_calibration_folds_are_the_folds_after_the_test_fold(tmp_path):
  from facenet_jax.data import raw, real
  c = _config(tmp_path, source="lfw", data_dir="unused", test_fold=8)
  c.unlock()
  for k, want in ((0, ()), (1, (9,)), (2, (9, 0)), (8, (9, 0, 1, 2, 3, 4, 5, 6))):
    c.data.calibration_folds = k
    assert real.lfw_calibration_folds(c, 10) == want
  c.data.calibration_folds = 9     # nothing left to train on
  with pytest.raises(raw.DataError, match=r"calibration_folds = 9: expected 0\.\.8"):
    real.lfw_calibration_folds(c, 10)


def test_lfw_view2_thresholds_from_a_calibration_fold_unseen_in_training(tmp_path, monkeypatch):
  """Three folds; test fold 2, calibration fold 0: training holds only fold 1's people, and
  the oracle's thresholds come from fold 0's pairs."""
  import test_data_builders
  people = {"Ann": 3, "Bob": 1, "Cid": 2, "Dee": 1, "Eve": 1, "Fay": 2, "Gus": 1}
  monkeypatch.setattr(test_data_builders, "_LFW_PEOPLE", people)
  pairs = ("3\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t2\nCid\t1\tDee\t1\n"
           "Fay\t1\t2\nFay\t1\tGus\t1\n")
  lfw = _write_lfw(tmp_path / "lfw", pairs)
  c = _config(tmp_path, source="lfw", data_dir=str(lfw), image_size=16, center_crop=32, test_fold=2)
  c.unlock()
  c.data.calibration_folds = 1
  c.evaluation.lfw_view2.pair_features = ""
  c.lock()
  from facenet_jax.data import sources
  train, held = sources.load(c)
  assert len(train) == 3 and train.num_identities == 2       # Cid (2) + Dee (1): fold 1 only
  assert len(held) == 3 and held.num_identities == 2         # Fay (2) + Gus (1)
  files = [((lfw / "images" / name / f"{name}_{i:04d}.jpg").read_bytes(), k)
           for k, (name, n) in enumerate(people.items()) for i in range(1, n + 1)]
  embed = _lookup_embed(_fitted_lookup(files, c), 8)
  out = evaluators.eval_lfw_view2(evaluators.Context(c, embed, held, train, None))
  assert out["calibration_folds"] == 1.0
  assert out["distance/accuracy"] == 1.0 and out["distance/far"] == 0.0
