"""Real datasets as (train, held-out) IdentityDatasets, through the tfds builders.

Each loader prepares its builder once into ``config.data.tfds_dir`` (array_record files;
later calls reuse them), reads it back with ``builder.as_data_source()`` (random access,
no tf.data, no TensorFlow) and decodes, center-crops and resizes every image to
``config.data.image_size`` with ``config.data.channels`` channels. Raw files come from
``config.data.data_dir``; "" downloads them where a public archive exists (LFW, Omniglot).

Prepared data is found by builder name, config and version, not by ``data_dir``: after
pointing ``data_dir`` at a different copy of ORL / LFW / Omniglot, use a fresh
``tfds_dir`` (identity folders and RecordIO are prepared by ``streamed.py``, keyed on the
source's contents).

Train and held-out identities are disjoint. Labels are contiguous per dataset, 0..n-1 in
the natural order of the identity names (ORL: s1 < s2 < s10). Rows are sorted by
identity, then by file name, so row order is a function of the data and the config.

Evaluators: ``lfw_pairs`` (the View 2 pairs of the test fold, as indices into the
held-out dataset), ``lfw_view2`` (every View 2 image and all 6,000 pairs with their
folds; with ``data.lfw_view=1`` View 1's pairs instead, ``lfw_view1.py``) and
``omniglot_runs`` (the 20 official one-shot runs as arrays).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np

from facenet_jax.data import aligned, fingerprint, lfw_view1, prepare as prepare_shards, raw, records
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.images import Fit, fit_image
from infra import distributed

_CHUNK = 256   # records decoded per read: bounds the memory of full-size images
PREPARE_TIMEOUT_S = 3600   # the other processes wait this long for process 0 to prepare a dataset


@dataclasses.dataclass(frozen=True)
class VerificationPairs:
  """Pairs of rows of one IdentityDataset: ``i``, ``j`` (P,) int64, ``issame`` (P,) bool,
  ``fold`` (P,) int32 (the LFW View 2 fold, 0..9)."""
  i: np.ndarray
  j: np.ndarray
  issame: np.ndarray
  fold: np.ndarray

  def __len__(self) -> int:
    return int(self.i.shape[0])


@dataclasses.dataclass(frozen=True)
class OneShotRuns:
  """R one-shot runs of N ways, images S x S x C. ``train_images`` (R, N, S, S, C) uint8:
  one image per class; ``train_classes`` (R, N) int32: each one's class id;
  ``test_images`` (R, T, S, S, C) uint8; ``test_classes`` (R, T) int32: the true class id
  of each test image, one of that run's ``train_classes``. Omniglot: R = 20, N = T = 20,
  class ids 1..20; a test image is classified correctly when its nearest training image
  has its class."""
  train_images: np.ndarray
  train_classes: np.ndarray
  test_images: np.ndarray
  test_classes: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Decoded, fitted records of one split: images (N, S, S, C) uint8 and their metadata."""
  images: np.ndarray
  meta: list[dict]


def fit_of(config: ml_collections.ConfigDict) -> Fit:
  d = config.data
  return Fit(size=int(d.image_size), crop=int(d.center_crop), channels=int(d.channels))


def tfds_dir(config: ml_collections.ConfigDict) -> str:
  """Where prepared tfds data goes: ``config.data.tfds_dir`` with ~ expanded."""
  return os.path.abspath(os.path.expanduser(config.data.tfds_dir))


def _manual_dir(config: ml_collections.ConfigDict, required: bool) -> str | None:
  d = config.data.data_dir
  if not d:
    if required:
      raise raw.DataError(f"config.data.source = {config.data.source!r} needs config.data.data_dir "
                          "(the folder of raw files); it is empty")
    return None
  d = os.path.abspath(os.path.expanduser(d))
  if not os.path.isdir(d):
    raise raw.DataError(f"config.data.data_dir = {config.data.data_dir!r}: no such folder")
  if not any(not n.startswith(".") for n in os.listdir(d)):   # tfds would take it for "download"
    raise raw.DataError(f"config.data.data_dir = {config.data.data_dir!r}: the folder is empty, "
                        f"expected the raw files of data.source={config.data.source!r}")
  return d


def prepare(name: str, data_dir: str, manual_dir: str | None, builder_config=None):
  """Builds (once) and returns tfds builder ``name`` (see ``tfds_builders.BUILDERS``).

  ``data_dir``: where prepared data goes. ``manual_dir``: the raw files; None downloads
  them (LFW, Omniglot only). ``builder_config``: a config name or BuilderConfig.
  """
  import tensorflow_datasets as tfds   # lazy: the training path never imports tfds

  from facenet_jax.data import tfds_builders   # lazy, as tfds above
  make = lambda: tfds_builders.BUILDERS[name](data_dir=data_dir, config=builder_config,
                                              file_format="array_record")

  def build():
    builder = make()
    fresh = not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if manual_dir is not None:
      check_prepared_from(builder.data_dir, manual_dir, data_dir, fresh)
    return builder
  # several processes share data_dir: process 0 prepares, the others wait and then open the
  # prepared data (two writers race on tfds's incomplete-directory rename)
  builder = distributed.run_on_process_zero_then_barrier(
      build, PREPARE_TIMEOUT_S, f"tfds dataset {name} prepared in {data_dir} by process 0")
  return builder if builder is not None else make()


SOURCE_RECORD = "facenet_source.json"   # beside a prepared tfds dataset: the raw files it came from


def check_prepared_from(prepared: str, manual_dir: str, memo_dir: str, fresh: bool) -> None:
  """Raises DataError when the tfds dataset in ``prepared`` was made from other raw files than
  those in ``manual_dir``: their content key (``fingerprint.tree_key``) is recorded beside a
  dataset when it is prepared (``fresh``). tfds prepares a dataset once per ``data.tfds_dir``
  and then ignores its manual dir, so another ``data.data_dir`` used to read the old data
  without a word. A dataset prepared before this record existed cannot be checked, so it is
  refused too (it was read with a note, and an empty or unrelated data_dir then trained and
  evaluated on the old data, exit 0); deleting it prepares it again, with the record."""
  from infra.files import read_json, write_json_atomic
  path = os.path.join(os.fspath(prepared), SOURCE_RECORD)
  if not os.path.exists(path) and not fresh:
    raise raw.DataError(
        f"config.data.data_dir = {manual_dir!r}: {os.fspath(prepared)} was prepared before the "
        f"project recorded the files a dataset comes from, so it cannot be checked against this "
        f"folder; delete {os.fspath(prepared)} to prepare it again from there (seconds for ORL, "
        f"a few minutes for LFW)")
  key = fingerprint.tree_key(manual_dir, memo_dir)
  if not os.path.exists(path):
    write_json_atomic(path, {"manual_dir": manual_dir, "content_key": key})
    return
  was = read_json(path)
  if was.get("content_key") != key:
    raise raw.DataError(
        f"config.data.data_dir = {manual_dir!r}: {os.fspath(prepared)} was prepared from other "
        f"files ({was.get('manual_dir')!r}, content key {was.get('content_key')}; this folder's "
        f"is {key}). Use another config.data.tfds_dir, or delete that folder to prepare it again")


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _read(builder, split: str, fit: Fit | None,
          keep: Callable[[dict], bool] = lambda m: True) -> _Rows:
  """Records of ``split`` for which ``keep(metadata)``, sorted by (identity, file name);
  images decoded and fitted (``fit`` None: not decoded, ``images`` is (N, 0))."""
  import tensorflow_datasets as tfds
  has_image = "image" in builder.info.features
  # images come back as their stored bytes and are decoded here: errors name the file,
  # and PIL decodes in threads (it releases the GIL)
  src = builder.as_data_source(
      split=split, decoders={"image": tfds.decode.SkipDecoding()} if has_image else None)
  decode = fit is not None and has_image
  mode = "L" if decode and fit.channels == 1 else "RGB"

  cfg = builder.builder_config
  prefix = f"{builder.name}/{cfg.name + '/' if cfg else ''}{split}"

  def fitted(rec_meta):
    rec, m = rec_meta
    where = f"{prefix}: {m['file_name']}"
    return fit_image(raw.decode_image(rec["image"], where, mode), fit, where)

  images, meta = [], []
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(src), _CHUNK):
      chunk = []
      for rec in src.__getitems__(list(range(start, min(len(src), start + _CHUNK)))):
        m = {k: _text(v) if isinstance(v, (bytes, str)) else np.asarray(v).item()
             for k, v in rec.items() if k != "image"}
        if keep(m):
          chunk.append((rec, m))
      meta += [m for _, m in chunk]
      if decode:
        images += list(pool.map(fitted, chunk))
  # tfds stores records in hashed-key order
  order = sorted(range(len(meta)), key=lambda k: (raw.natural_key(meta[k].get("identity", "")),
                                                   raw.natural_key(meta[k].get("file_name", ""))))
  if not decode:
    arr = np.zeros((len(meta), 0), np.uint8)
  elif images:
    arr = np.stack([images[k] for k in order])
  else:
    arr = np.zeros((0, fit.size, fit.size, fit.channels), np.uint8)
  return _Rows(arr, [meta[k] for k in order])


def _dataset(rows: _Rows, name: str) -> IdentityDataset:
  """Rows (sorted by identity) with contiguous labels 0..n-1 in identity order."""
  idents = [m["identity"] for m in rows.meta]
  index = {ident: k for k, ident in enumerate(dict.fromkeys(idents))}
  labels = np.asarray([index[i] for i in idents], np.int32)
  return IdentityDataset(images=rows.images, labels=labels, name=name)


def _subset(rows: _Rows, keep: Callable[[dict], bool]) -> _Rows:
  idx = [k for k, m in enumerate(rows.meta) if keep(m)]
  return _Rows(rows.images[idx], [rows.meta[k] for k in idx])


def split_identities(identities: Sequence[str], train: int, held_out: int, seed: int,
                     what: str) -> tuple[set[str], set[str]]:
  """Seeded disjoint identity sets of sizes ``train`` and ``held_out`` (0: all the rest;
  ``held_out`` = 0 with ``train`` = every identity holds no one out: evaluators that need
  held-out people are then skipped, ``evaluators.skipped``)."""
  names = sorted(set(identities), key=raw.natural_key)
  n = len(names)
  asked = (train, held_out)
  train = train or n - held_out
  held_out = held_out or n - train
  if train < 1 or held_out < 0 or train + held_out > n:
    raise raw.DataError(
        f"{what}: {n} identities cannot give config.data.train_identities = {asked[0]} training "
        f"and config.data.eval_identities = {asked[1]} held-out identities (0: all the rest)")
  perm = np.random.default_rng(seed).permutation(n)
  return {names[k] for k in perm[:train]}, {names[k] for k in perm[train:train + held_out]}


def _split_rows(rows: _Rows, config: ml_collections.ConfigDict,
                what: str) -> tuple[IdentityDataset, IdentityDataset]:
  d = config.data
  tr, ho = split_identities([m["identity"] for m in rows.meta], int(d.train_identities),
                            int(d.eval_identities), int(d.split_seed), what)
  seed = f"split_seed={d.split_seed}"
  return (_dataset(_subset(rows, lambda m: m["identity"] in tr), f"{what}-train({seed})"),
          _dataset(_subset(rows, lambda m: m["identity"] in ho), f"{what}-held-out({seed})"))


# -- ORL ----------------------------------------------------------------------------------

def load_orl(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  """ORL faces split by person: ``train_identities`` people (seeded by ``split_seed``) for
  training, ``eval_identities`` (0: the rest) held out."""
  b = prepare("orl_faces", tfds_dir(config), _manual_dir(config, required=True))
  return _split_rows(_read(b, "train", fit_of(config)), config, "orl")


# -- LFW ----------------------------------------------------------------------------------

def _lfw_builders(config: ml_collections.ConfigDict, images: bool = True):
  """The prepared ``images`` (None when not asked: aligned LFW reads the files itself) and
  ``pairs`` builders."""
  manual = _manual_dir(config, required=False)
  images = prepare("lfw", tfds_dir(config), manual, "images") if images else None
  pairs = prepare("lfw", tfds_dir(config), manual, "pairs")
  return images, pairs


def _lfw_pair_meta(pairs_builder) -> tuple[list[dict], dict[str, int]]:
  """The pairs in file order, and each person's fold (checked disjoint)."""
  meta = sorted(_read(pairs_builder, "view2", None).meta, key=lambda m: m["index"])
  folds = raw.lfw_fold_of_person(
      [raw.LfwPair(m["index"] + 2, m["fold"], m["issame"], m["name_a"], 0, m["name_b"], 0)
       for m in meta], "lfw pairs.txt")
  return meta, folds


def _check_fold(config: ml_collections.ConfigDict, num_folds: int) -> int:
  f = int(config.data.test_fold)
  if not 0 <= f < num_folds:
    raise raw.DataError(f"config.data.test_fold = {f}: expected 0..{num_folds - 1}")
  return f


def _index_pairs(rows: _Rows, pairs: list[dict]) -> VerificationPairs:
  row = {m["file_name"]: k for k, m in enumerate(rows.meta)}
  for p in pairs:
    for f in (p["file_a"], p["file_b"]):
      if f not in row:
        raise raw.DataError(f"lfw: pair {p['index']} (pairs.txt line {p['index'] + 2}) names {f}, "
                            "which the prepared lfw/images data does not hold; were images and "
                            "pairs prepared from different folders?")
  return VerificationPairs(
      i=np.asarray([row[p["file_a"]] for p in pairs], np.int64),
      j=np.asarray([row[p["file_b"]] for p in pairs], np.int64),
      issame=np.asarray([p["issame"] for p in pairs], bool),
      fold=np.asarray([p["fold"] for p in pairs], np.int32))


def _lfw_rows(config: ml_collections.ConfigDict, fit: Fit | None):
  """(rows, pairs, person -> fold, test fold) of the protocol ``data.lfw_view`` names: View 2's
  pairs.txt, or View 1's two files (``lfw_view1``: only pairs whose photos the rows hold)."""
  alignment = aligned.alignment_of(config)
  images_b, pairs_b = _lfw_builders(config, images=alignment is None)
  if _view(config) == 1:
    pairs = lfw_view1.read_pairs(config)
    fold_of, test = lfw_view1.fold_of_person(pairs), lfw_view1.TEST_FOLD
    keep = lambda m: True   # everyone outside DevTest trains, people in no pair too
  else:
    pairs, fold_of = _lfw_pair_meta(pairs_b)
    test = _check_fold(config, max(fold_of.values()) + 1)
    # people in no View 2 pair (the full LFW has ~1,500) are left out of both sides
    keep = lambda m: m["identity"] in fold_of
  if alignment is None:
    rows = _read(images_b, "train", fit, keep=keep)
  else:
    rows = _lfw_aligned_rows(config, alignment, fit, keep, pairs if _view(config) == 2 else [])
  if _view(config) == 1:
    pairs = lfw_view1.present(pairs, {m["file_name"] for m in rows.meta},
                              _manual_dir(config, required=False) or "the downloaded LFW")
  return rows, pairs, fold_of, test


def _view(config: ml_collections.ConfigDict) -> int:
  return int(config.data.lfw_view)


def lfw_test_fold(config: ml_collections.ConfigDict) -> int:
  """The fold whose pairs ``lfw_view2`` scores: ``data.test_fold`` of View 2, or View 1's
  DevTest pairs (``lfw_view1.TEST_FOLD``)."""
  return lfw_view1.TEST_FOLD if _view(config) == 1 else int(config.data.test_fold)


def _lfw_aligned_rows(config: ml_collections.ConfigDict, alignment: aligned.Alignment,
                      fit: Fit | None, keep: Callable[[dict], bool], pairs: list[dict]) -> _Rows:
  """LFW with ``data.align`` set: the images folder prepared once as an aligned identity
  folder (``prepare.prepare``: detection cached, crops stored as shards, no-face report), read
  back whole (it is 7,701 images) in the order ``_read`` gives. ``fit`` None: metadata only."""
  manual = _manual_dir(config, required=False)
  if manual is None:
    raise raw.DataError(f"config.data.align = {config.data.align!r} with data.source='lfw' needs "
                        "config.data.data_dir (the LFW folder holding images/); it is empty")
  from facenet_jax.data.tfds_builders.lfw import images_dir   # lazy: imports tfds
  root = images_dir(manual)
  d = config.data
  out = os.path.join(tfds_dir(config), "prepared")
  plan = prepare_shards.shared_plan(lambda: prepare_shards.folder_plan(root, out), PREPARE_TIMEOUT_S,
                                    f"lfw {root} fingerprinted by process 0")
  use = fit_of(config)   # names the folder even when no image is decoded
  distributed.run_on_process_zero_then_barrier(
      lambda: prepare_shards.prepare(plan, out, use, encoding=d.record_encoding,
                                     workers=int(d.prepare_workers), alignment=alignment),
      PREPARE_TIMEOUT_S, f"aligned lfw prepared in {out} by process 0")
  path = os.path.join(out, prepare_shards.prepared_name(plan, use, d.record_encoding, alignment))
  prepared = records.open_prepared(path)
  with open(os.path.join(path, records.SOURCES), encoding="utf-8") as f:
    rels = ["/".join(line.rstrip("\n").split("/")[-2:]) for line in f]
  meta = [{"identity": r.split("/")[0], "file_name": r} for r in rels]
  held = {m["file_name"] for m in meta}
  lost = sorted({p[k] for p in pairs for k in ("file_a", "file_b")} - held)
  if lost:
    raise raw.DataError(
        f"lfw: data.no_face='drop' dropped {len(lost)} image(s) that View 2 pairs name (first "
        f"{lost[0]}; all in {os.path.join(path, aligned.REPORT_JSON)}): the protocol needs every "
        "pair, so use data.no_face='center_crop' for LFW")
  idx = [k for k, m in enumerate(meta) if keep(m)]
  idx.sort(key=lambda k: (raw.natural_key(meta[k]["identity"]), raw.natural_key(meta[k]["file_name"])))
  if fit is None:
    return _Rows(np.zeros((len(idx), 0), np.uint8), [meta[k] for k in idx])
  imgs = records.RecordImages(prepared)
  arr = np.concatenate([imgs.read(idx[c:c + _CHUNK])[0] for c in range(0, len(idx), _CHUNK)]) \
      if idx else np.zeros((0, use.size, use.size, use.channels), np.uint8)
  return _Rows(arr, [meta[k] for k in idx])


def lfw_calibration_folds(config: ml_collections.ConfigDict, num_folds: int) -> tuple[int, ...]:
  """The ``data.calibration_folds`` View 2 folds after the test fold (cyclically): held
  out of training, their pairs choose the verification thresholds."""
  if _view(config) == 1:   # View 1: the DevTrain pairs
    return (lfw_view1.CALIBRATION_FOLD,)
  test, k = _check_fold(config, num_folds), int(config.data.calibration_folds)
  if not 0 <= k <= num_folds - 2:
    raise raw.DataError(f"config.data.calibration_folds = {k}: expected 0..{num_folds - 2} "
                        f"(pairs.txt has {num_folds} folds; one is the test fold, one must train)")
  return tuple((test + 1 + i) % num_folds for i in range(k))


def check_lfw_folds(config: ml_collections.ConfigDict) -> None:
  """``data.test_fold`` and ``data.calibration_folds`` against the fold count in the header
  of ``data_dir/pairs.txt`` (its first line only), so that a run over several folds refuses a
  bad one before the first trains. Nothing to check when the file is not there (a download:
  the full checks run when the data is read)."""
  path = os.path.join(config.data.data_dir, "pairs.txt") if config.data.data_dir else ""
  if _view(config) == 1 or not os.path.isfile(path):
    return
  with open(path) as f:
    head = f.readline().split()
  if len(head) == 2 and head[0].isdigit() and int(head[0]) > 0:   # else: parse_lfw_pairs says
    lfw_calibration_folds(config, int(head[0]))


def load_lfw(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  """train: every image of the people of the View 2 folds other than
  ``config.data.test_fold`` and the calibration folds (``lfw_calibration_folds``);
  held-out: every image of the test fold's people. View 1 (``data.lfw_view=1``): train on
  everyone in no DevTest pair, hold out the DevTest people."""
  rows, _, fold_of, test = _lfw_rows(config, fit_of(config))
  if _view(config) == 1:
    out, what = {test}, "view1"
  else:
    out = set(lfw_calibration_folds(config, max(fold_of.values()) + 1)) | {test}
    what = f"test_fold={test}"
  return (_dataset(_subset(rows, lambda m: fold_of.get(m["identity"], -1) not in out), f"lfw-train({what})"),
          _dataset(_subset(rows, lambda m: fold_of.get(m["identity"], -1) == test), f"lfw-held-out({what})"))


def lfw_pairs(config: ml_collections.ConfigDict) -> VerificationPairs:
  """The 600 View 2 pairs of ``config.data.test_fold`` (300 matched, then 300 mismatched,
  in pairs.txt order; View 1: the DevTest pairs) as row indices into ``load_lfw(config)[1]``.
  Decodes no image."""
  rows, pairs, fold_of, test = _lfw_rows(config, None)
  held = _subset(rows, lambda m: fold_of.get(m["identity"], -1) == test)
  return _index_pairs(held, [p for p in pairs if p["fold"] == test])


def lfw_view2(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, VerificationPairs]:
  """Every image of every View 2 person (7,701 for the official file) and all pairs
  (6,000) with their folds, as row indices into it: the official 10-fold protocol for a
  model trained on other data (choose the threshold on nine folds, test on the tenth).
  View 1 (``data.lfw_view=1``): every image, and the DevTest (fold 0) and DevTrain (fold 1)
  pairs whose photos it holds."""
  rows, pairs, _, _ = _lfw_rows(config, fit_of(config))
  return _dataset(rows, "lfw-view2"), _index_pairs(rows, pairs)


# -- Omniglot -----------------------------------------------------------------------------

def _omniglot_background(config: ml_collections.ConfigDict) -> _Rows:
  """small1 + small2 with the characters both hold (Greek, Latin) kept once."""
  b = prepare("omniglot", tfds_dir(config), _manual_dir(config, required=False), "background")
  fit = fit_of(config)
  first = _read(b, "small1", fit)
  second = _read(b, "small2", fit)
  seen = {m["file_name"].split("/", 1)[1]: k for k, m in enumerate(first.meta)}
  extra = []
  for k, m in enumerate(second.meta):
    key = m["file_name"].split("/", 1)[1]
    if key not in seen:
      extra.append(k)
    elif not np.array_equal(first.images[seen[key]], second.images[k]):
      raise raw.DataError(f"omniglot: {first.meta[seen[key]]['file_name']} and {m['file_name']} "
                          "name the same drawing of the same character but differ")
  rows = _Rows(np.concatenate([first.images, second.images[extra]]),
               first.meta + [second.meta[k] for k in extra])
  order = sorted(range(len(rows.meta)), key=lambda k: (raw.natural_key(rows.meta[k]["identity"]),
                                                       raw.natural_key(rows.meta[k]["file_name"])))
  return _Rows(rows.images[order], [rows.meta[k] for k in order])


def load_omniglot(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  """Background small1 + small2 characters (identity = alphabet/character): seeded
  ``eval_identities`` characters held out for validation, the rest (or
  ``train_identities``) for training."""
  return _split_rows(_omniglot_background(config), config, "omniglot")


def omniglot_runs(config: ml_collections.ConfigDict) -> OneShotRuns:
  """The official 20-way 1-shot runs, images fitted like the training images."""
  b = prepare("omniglot", tfds_dir(config), _manual_dir(config, required=False), "runs")
  rows = _read(b, "runs", fit_of(config))
  runs = sorted({m["run"] for m in rows.meta})
  out: dict[str, list] = {"training": [], "test": []}
  for run in runs:
    for role in out:
      idx = sorted((k for k, m in enumerate(rows.meta) if m["run"] == run and m["role"] == role),
                   key=lambda k: rows.meta[k]["item"])
      out[role].append((rows.images[idx], np.asarray([rows.meta[k]["class_id"] for k in idx], np.int32)))
  for role, per_run in out.items():
    sizes = {x.shape[0] for x, _ in per_run}
    if len(sizes) != 1:
      raise raw.DataError(f"omniglot runs: the runs hold different numbers of {role} images {sorted(sizes)}")
  return OneShotRuns(
      train_images=np.stack([x for x, _ in out["training"]]),
      train_classes=np.stack([c for _, c in out["training"]]),
      test_images=np.stack([x for x, _ in out["test"]]),
      test_classes=np.stack([c for _, c in out["test"]]))
