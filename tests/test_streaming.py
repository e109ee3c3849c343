"""Datasets bigger than RAM: preparation into array_record shards (resume, lock, errors),
the label-only P x K sampler at a million labels, per-process rows, grain batches, a
resumed run on prepared shards (online and offline selection), corrupt records (online and
offline), VGG features of a prepared source, no leaked shared memory, insightface RecordIO."""

import fcntl
import io
import os
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs.facenet import get_config
from facenet_jax import offline, steps, train, vgg_features
from facenet_jax.data import batches, prepare, raw, records, recordio, sources
from facenet_jax.data.images import Fit
from facenet_jax.sampler import PKSampler
from infra import checkpoints, mesh as mesh_lib
from infra.overrides import with_overrides

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _people(root, counts, size=(24, 20)):
  """``root/p<k>/<i>.png``: person k has counts[k] images of random pixels."""
  rng = np.random.default_rng(0)
  for k, n in enumerate(counts):
    os.makedirs(root / f"p{k}")
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / f"p{k}" / f"{i}.png")
  return root


def _shard_bytes(path):
  return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))
          if n.endswith(".array_record")}


# ------------------------------------------------------------------ the sampler at scale

def test_sampler_over_a_million_labels_is_balanced_deterministic_and_split_by_process():
  rng = np.random.default_rng(0)
  counts = rng.integers(1, 40, 50_000)             # 50k people, 1..39 images (~1M labels)
  labels = rng.permutation(np.repeat(np.arange(counts.size), counts)).astype(np.int32)
  assert labels.size > 900_000
  s = PKSampler(labels, identities_per_batch=32, images_per_identity=4, seed=7)
  # labels only: what the workers receive is a few flat arrays, not per-identity objects
  assert len(pickle.dumps(s)) < 24 * labels.size
  seen = np.zeros(counts.size)
  for step in range(300):
    b = s(step)
    np.testing.assert_array_equal(labels[b.indices], b.labels)
    ids, per = np.unique(b.labels, return_counts=True)
    assert ids.size == 32 and np.all(per == 4)
    assert np.all(counts[ids] >= 2)               # one-image people are never drawn
    short = ids[counts[ids] < 4]
    for i in short:                               # short people: every image once, rest masked
      assert b.mask[b.labels == i].sum() == counts[i]
    seen[ids] += 1
    if step % 50 == 0:
      again = PKSampler(labels, 32, 4, seed=7)(step)
      np.testing.assert_array_equal(again.indices, b.indices)
      np.testing.assert_array_equal(again.mask, b.mask)
  eligible = counts >= 2
  assert seen[~eligible].sum() == 0
  # 9,600 draws over ~48k eligible people: no person drawn far more than chance allows
  assert seen.max() <= 8

  # four processes' rows of step s, put together, are the global batch exactly once
  images = np.arange(labels.size, dtype=np.int64)[:, None]   # "image" = its own row number
  whole = batches.StepRows(images, s, slice(None))(11)
  parts = [batches.StepRows(images, s, mesh_lib.process_slice(128, p, 4))(11) for p in range(4)]
  for key in ("images", "labels", "mask"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  np.testing.assert_array_equal(whole["images"][:, 0], s(11).indices)


# ------------------------------------------------------------------------ preparation

def test_prepared_shards_hold_fitted_images_and_the_index(tmp_path):
  root = _people(tmp_path / "people", [3, 1, 2])
  plan = prepare.folder_plan(str(root))
  path = prepare.prepare(plan, str(tmp_path / "out"), Fit(12, 0, 3), encoding="png",
                         workers=1, records_per_shard=2)
  ds = records.open_prepared(path)
  assert ds.meta["shards"] == [records.shard_name(k, 3) for k in range(3)]
  np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 2, 2])
  assert ds.identities() == ["p0", "p1", "p2"]
  assert ds.source_of(3) == f"{root}/p1/0.png"
  images = records.RecordImages(ds)
  from facenet_jax.data.images import fit_image
  want = fit_image(Image.open(root / "p2" / "1.png"), Fit(12, 0, 3))
  np.testing.assert_array_equal(images[5], want)            # png: lossless
  assert images[1:4].shape == (3, 12, 12, 3)
  # asking again finds it finished: nothing is rewritten
  before = {n: os.stat(os.path.join(path, n)).st_mtime_ns for n in os.listdir(path)}
  assert prepare.prepare(plan, str(tmp_path / "out"), Fit(12, 0, 3), encoding="png") == path
  assert {n: os.stat(os.path.join(path, n)).st_mtime_ns for n in os.listdir(path)} == before


def test_a_killed_preparation_resumes_to_the_same_shards(tmp_path, monkeypatch):
  root = _people(tmp_path / "people", [3, 2, 4, 1, 2])
  plan = prepare.folder_plan(str(root))
  fit = Fit(10, 0, 3)
  whole = prepare.prepare(plan, str(tmp_path / "whole"), fit, workers=1, records_per_shard=2)

  write = prepare.write_shard
  calls = []

  def killed_on_third(task):   # the process dies inside shard 3, half its file written
    calls.append(task)
    if len(calls) == 3:
      open(task[-1] + ".tmp999", "wb").write(b"half a shard")
      raise KeyboardInterrupt
    return write(task)

  monkeypatch.setattr(prepare, "write_shard", killed_on_third)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(plan, str(tmp_path / "part"), fit, workers=1, records_per_shard=2)
  part = os.path.join(tmp_path / "part", os.path.basename(whole))
  assert not records.is_prepared(part) and len(_shard_bytes(part)) == 2
  monkeypatch.setattr(prepare, "write_shard", write)
  calls.clear()
  monkeypatch.setattr(prepare, "write_shard", lambda t: calls.append(t) or write(t))
  assert prepare.prepare(plan, str(tmp_path / "part"), fit, workers=1, records_per_shard=2) == part
  assert len(calls) == 6 - 2                       # 12 images in 6 shards; the 2 whole ones kept
  assert _shard_bytes(part) == _shard_bytes(whole)
  assert not [n for n in os.listdir(part) if ".tmp" in n]
  for f in (records.LABELS, records.IDENTITIES):
    assert open(os.path.join(part, f), "rb").read() == open(os.path.join(whole, f), "rb").read()


_PREPARE = """
import sys
from facenet_jax.data import prepare
from facenet_jax.data.images import Fit
if __name__ == "__main__":
  print(prepare.prepare(prepare.folder_plan(sys.argv[1]), sys.argv[2], Fit(10, 0, 3), workers=1,
                        records_per_shard=2), flush=True)
"""


def test_two_concurrent_preparations_make_one_dataset(tmp_path):
  import threading
  import time
  root = _people(tmp_path / "people", [3, 2, 2])
  out = tmp_path / "out"
  name = prepare.prepared_name(prepare.folder_plan(str(root)), Fit(10, 0, 3), "jpeg")
  os.makedirs(out)
  script = tmp_path / "prep.py"
  script.write_text(_PREPARE)
  env = {**os.environ, "PYTHONPATH": ROOT}
  errs = [[], []]
  # the test holds the lock while both start, so both must meet it held and wait
  with open(out / f"{name}.lock", "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    readers = [threading.Thread(target=lambda p=p, e=e: e.extend(p.stderr), daemon=True)
               for p, e in zip(procs, errs)]
    for r in readers:
      r.start()
    deadline = time.time() + 120
    while time.time() < deadline and not all(any("waiting" in l for l in e) for e in errs):
      time.sleep(0.2)
    assert all(any("waiting" in l for l in e) for e in errs), errs
  # not communicate(): it reads stderr too, racing the reader threads for its lines
  outs = [p.stdout.read() for p in procs]
  for p in procs:
    p.wait(timeout=300)
  for r in readers:
    r.join(timeout=10)
  assert [p.returncode for p in procs] == [0, 0], errs
  assert {o.strip() for o in outs} == {str(out / name)}
  assert sum(any("preparing 7 images" in l for l in e) for e in errs) == 1   # one prepared
  assert sorted(os.listdir(out)) == [name, f"{name}.lock"]
  assert records.open_prepared(str(out / name)).labels.size == 7


# a worker killed mid-shard (the OOM killer, a node drain) when its shard's file name holds
# KILL_SHARD; the script's top level runs in every spawned worker too, so the patch reaches them
_PREPARE_KILLED = """
import os, signal, sys
from facenet_jax.data import prepare
from facenet_jax.data.images import Fit
write = prepare.write_shard

def killed(task):
  if os.environ.get("KILL_SHARD") and os.environ["KILL_SHARD"] in os.path.basename(task[6]):
    os.kill(os.getpid(), signal.SIGKILL)
  return write(task)

prepare.write_shard = killed
if __name__ == "__main__":
  print(prepare.prepare(prepare.folder_plan(sys.argv[1]), sys.argv[2], Fit(10, 0, 3), workers=2,
                        records_per_shard=2), flush=True)
"""


def _run_script(tmp_path, text, *args, **env):
  script = tmp_path / "script.py"
  script.write_text(text)
  return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                        text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT, **env})


def test_a_killed_worker_is_an_error_not_a_wait_and_the_rerun_resumes(tmp_path):
  # multiprocessing.Pool replaced a dead worker and waited for its shard forever
  root = _people(tmp_path / "people", [3, 2, 4, 1, 2])
  whole = prepare.prepare(prepare.folder_plan(str(root)), str(tmp_path / "whole"),
                          Fit(10, 0, 3), workers=2, records_per_shard=2)
  assert prepare.WORKER_OF not in os.environ       # the workers' mark is this call's only
  r = _run_script(tmp_path, _PREPARE_KILLED, root, tmp_path / "part", KILL_SHARD="00003-of")
  assert r.returncode == 1, r.stderr
  assert "RuntimeError: a preparation worker process died (" in r.stderr
  assert "are kept: run again to resume" in r.stderr
  part = os.path.join(tmp_path / "part", os.path.basename(whole))
  assert not records.is_prepared(part) and "shard-00003-of-00006.array_record" not in os.listdir(part)
  r = _run_script(tmp_path, _PREPARE_KILLED, root, tmp_path / "part")
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == part
  assert _shard_bytes(part) == _shard_bytes(whole)
  assert not [n for n in os.listdir(part) if ".tmp" in n]


def test_an_unguarded_calling_script_is_an_error_not_a_wait(tmp_path):
  # each spawned worker re-ran the script, met the lock its parent held and waited, the
  # parent waited for them; nothing said why
  root = _people(tmp_path / "people", [2, 2])
  r = _run_script(tmp_path, _PREPARE.replace('if __name__ == "__main__":', "if True:")
                  .replace("workers=1", "workers=2"), root, tmp_path / "out")
  assert r.returncode == 1, r.stderr
  assert "RuntimeError: prepare() called in one of its own worker processes" in r.stderr
  assert "must be under `if __name__ == '__main__':`" in r.stderr.splitlines()[-1]


def test_a_source_image_that_does_not_decode_leaves_no_dataset(tmp_path):
  root = _people(tmp_path / "people", [2, 2])
  (root / "p1" / "2.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(raw.DataError, match=r"people/p1/2\.jpg: not an image PIL can read"):
    prepare.prepare(prepare.folder_plan(str(root)), str(tmp_path / "out"), Fit(8, 0, 3),
                    workers=1, records_per_shard=2)
  assert [n for n in os.listdir(tmp_path / "out") if not n.endswith(".lock")] == []


# ------------------------------------------------------------------------- training data

def _config(tmp_path, root, **over):
  c = with_overrides(get_config("tiny"), {
      "data.source": "folder", "data.data_dir": str(root), "data.tfds_dir": str(tmp_path / "tfds"),
      "data.train_identities": 0, "data.eval_identities": 3, "data.image_size": 12,
      "data.eval_pairs": 20, "data.prepare_workers": 1, **over})
  return c


def _rewrite_record(shard, position, data):
  """Replaces one record of an array_record shard (a corrupt image in a prepared dataset)."""
  from array_record.python import array_record_module as arm
  r = arm.ArrayRecordReader(shard)
  recs = r.read_all()
  r.close()
  recs[position] = data
  w = arm.ArrayRecordWriter(shard, "group_size:1")
  for x in recs:
    w.write(x)
  w.close()


def test_corrupt_record_is_named_or_skipped_and_counted(tmp_path):
  root = _people(tmp_path / "people", [4, 4, 4, 1])
  c = _config(tmp_path, root, **{"data.eval_identities": 0})
  train_ds, held = sources.load(c)
  assert len(held) == 0 and train_ds.num_identities == 4    # every person trains
  shard = train_ds.images.prepared.shard_paths[0]
  _rewrite_record(shard, 2, b"\xff\xd8 garbage")            # record 2: p0/2.png
  with pytest.raises(raw.DataError, match=r"record 2 of .*\(shard-00000-of-00001\.array_record\), "
                                          r"from .*people/p0/2\.png: cannot decode"):
    train_ds.images[np.arange(4)]
  s = PKSampler(train_ds.labels, 3, 4, seed=0)
  strict = batches.TrainBatches(train_ds.images, s, 10)
  skipping = batches.TrainBatches(train_ds.images, s, 10, skip_bad=True)
  bad_steps = [t for t in range(10) if 2 in s(t).indices]
  assert bad_steps
  with pytest.raises(raw.DataError, match="record 2 of"):
    strict(bad_steps[0])
  b = skipping(bad_steps[0])
  row = list(s(bad_steps[0]).indices).index(2)
  assert not b["mask"][row] and np.all(b["images"][row] == 0) and skipping.skipped == 1
  assert b["mask"].sum() == s(bad_steps[0]).mask.sum() - 1
  # one-image person p3 is in the data but never in a batch (no positive)
  assert all(3 not in s(t).labels for t in range(10))


def _final_states(c, *dirs):
  _, _, target = steps.create_train_state(c, in_channels=3)
  states = []
  for d in dirs:
    ck = checkpoints.Checkpointer(os.path.join(d, "checkpoints"), every=1)
    states.append(ck.restore(target))
    ck.close()
  return states


@pytest.mark.parametrize("offline_mode", [False, True])
def test_resumed_run_on_prepared_shards_equals_uninterrupted_run(tmp_path, offline_mode):
  """Batches through grain worker processes (data.workers=1): the step is the loader's whole
  position, so a run killed after its step-2 checkpoint resumes to the same parameters. In
  offline mode the re-score's pool rows and each period's triplets are read by the same
  workers (offline.rescore_every=3: the resumed run restarts them mid-period at step 2 from
  the selection its checkpoint saved), and reading in the caller (workers=0) trains the same."""
  root = _people(tmp_path / "people", [3, 4, 2, 5, 3, 4, 2, 3, 1, 4])
  c = _config(tmp_path, root, **{"data.workers": 1, "offline.enabled": offline_mode})
  full = train.train_and_evaluate(c, str(tmp_path / "full"))
  part = tmp_path / "part"
  train.train_and_evaluate(c, str(part))
  for s in (4, 6):
    shutil.rmtree(part / "checkpoints" / str(s))
  os.remove(part / "results.json")
  resumed = train.train_and_evaluate(c, str(part))
  dirs = [tmp_path / "full", part]
  if offline_mode:
    train.train_and_evaluate(with_overrides(c, {"data.workers": 0}), str(tmp_path / "sync"))
    dirs.append(tmp_path / "sync")
  states = _final_states(c, *dirs)
  assert {s[0] for s in states} == {c.num_steps}
  for other in states[1:]:
    for a, b in zip(jax.tree.leaves(states[0][1]), jax.tree.leaves(other[1])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed["metrics"] == full["metrics"]
  if offline_mode:
    assert states[1][2]["offline_selected"] == states[0][2]["offline_selected"]
    return
  # the same data read in the caller (workers=0) gives the same batches as the workers did
  data = train.prepare_data(with_overrides(c, {"data.workers": 0}), mesh_lib.make_data_mesh())
  sync = data.batch(3)
  data_w = train.prepare_data(c, mesh_lib.make_data_mesh())
  for key, v in data_w.batch(3).items():
    np.testing.assert_array_equal(v, sync[key])
  data_w.loader.close()


def _mean_pixel_embedder():
  """``embed_fn(params, model_state, images) -> (B, 1)``: each image's mean pixel (a stand-in
  model for re-scoring), and a state for it."""
  fn = jax.jit(lambda p, m, x: x.reshape(x.shape[0], -1).astype(np.float32).mean(1, keepdims=True))
  return fn, {"params": None, "model_state": None}


def test_offline_reads_name_or_skip_corrupt_records(tmp_path):
  """Offline selection reads through the run's TrainBatches: the re-score's embedding of a
  corrupt record stops with its name and source file; with skip_bad its rows are zeros,
  masked out of their triplet, counted (training reads only) and a triplet with any masked
  row is left out of the loss."""
  root = _people(tmp_path / "people", [4, 4, 4])
  c = _config(tmp_path, root, **{"data.eval_identities": 0})
  train_ds, _ = sources.load(c)
  _rewrite_record(train_ds.images.prepared.shard_paths[0], 2, b"\xff\xd8 garbage")
  labels, mesh = train_ds.labels, mesh_lib.make_data_mesh()
  cfg = with_overrides(get_config("tiny"), {"offline.pool_size": 32, "offline.rescore_every": 3,
                                            "offline.triplets_per_batch": 8}).offline
  assert 2 in offline.sample_pool(labels, 32, seed=0, version=0)
  embed_fn, state = _mean_pixel_embedder()
  s = PKSampler(labels, 3, 4, seed=0)

  def run(loader, steps_):
    ob = offline.OfflineBatches(cfg, labels, loader, 0.2, 0, {}, 6)
    embed = lambda st, r: train.embed_loaded(embed_fn, st, loader, r, labels, 8, mesh)
    return ob, [ob.batch(t, embed, state) for t in steps_]

  strict = batches.TrainBatches(train_ds.images, s, 6, workers=1)
  with pytest.raises(raw.DataError, match=r"record 2 of .*\(shard-00000-of-00001\.array_record\), "
                                          r"from .*people/p0/2\.png: cannot decode"):
    run(strict, [0])
  strict.close()
  loaders = [batches.TrainBatches(train_ds.images, s, 6, skip_bad=True, workers=w) for w in (1, 0)]
  (ob, got), (_, want) = (run(l, range(6)) for l in loaders)
  loaders[0].close()
  for g, w in zip(got, want):             # workers and the caller read the same batches
    for key in g:
      np.testing.assert_array_equal(g[key], w[key])
  drawn = np.concatenate([ob.rows(t).indices for t in range(3, 6)])   # period 3..5
  bad = [b["mask"][ob.rows(t).indices == 2] for t, b in zip(range(3, 6), got[3:])]
  assert all(not m.any() for m in bad)
  masked = sum(int((~b["mask"]).sum()) for b in got)
  assert masked == loaders[0].skipped == loaders[1].skipped > 0 and 2 in drawn
  # the loss leaves out every triplet with a masked row, whichever of the three it is
  objective = steps.make_objective(with_overrides(get_config("tiny"), {"offline.enabled": True}))
  b = got[int(np.argmax([(~g["mask"]).sum() for g in got]))]
  T = b["mask"].size // 3
  emb = np.random.default_rng(0).normal(size=(3 * T, 4)).astype(np.float32)
  _, stats = objective(emb, b, None, 0.2)
  assert int(stats["num_valid"]) == int(b["mask"].reshape(3, T).all(0).sum()) < T


# ------------------------------------------------------------- VGG features, shared memory

def test_vgg_features_of_a_prepared_source_stream_in_chunks_and_respect_the_limit(tmp_path,
                                                                                 monkeypatch):
  """A prepared source is read in chunks by input workers (never made one array) and gives
  the features its decoded array gives, sharing the cache; features over the memory limit
  fail before any image is read, naming config.data.features."""
  root = _people(tmp_path / "people", [20, 21])
  c = _config(tmp_path, root, **{"data.eval_identities": 0})
  train_ds, _ = sources.load(c)
  images = train_ds.images
  whole = images[np.arange(len(images))]
  kw = dict(weights="random", layer="conv1_1", pool="mean", batch_size=1)   # chunks of 32
  chunks = []
  real_chunks = vgg_features._chunks
  monkeypatch.setattr(vgg_features, "_chunks",
                      lambda *a: (chunks.append(x.shape[0]) or x for x in real_chunks(*a)))
  got = vgg_features.features(images, cache_dir=str(tmp_path / "f1"), workers=1, **kw)
  assert chunks == [32, 9]
  np.testing.assert_array_equal(got, vgg_features.features(whole, **kw))
  # the array's features come from the cache the streamed source filled
  monkeypatch.setattr(vgg_features, "_compute", lambda *a: pytest.fail("recomputed"))
  np.testing.assert_array_equal(
      vgg_features.features(whole[::-1], cache_dir=str(tmp_path / "f1"), **kw), got[::-1])
  monkeypatch.setattr(vgg_features, "_chunks", lambda *a: pytest.fail("read before the check"))
  with pytest.raises(ValueError, match=r"config.data.features='vgg19:conv1_1' \(data.features_pool="
                                       r"''\): the features of 41 faces are \(12, 12, 64\) float32 "
                                       r"each, .* over the limit of"):
    vgg_features.features(images, weights="random", layer="conv1_1", name="faces",
                          limit=41 * 12 * 12 * 64 * 4 - 1)


_SHM = """
import sys
import numpy as np
from facenet_jax.data import batches, records
from facenet_jax.sampler import PKSampler
if __name__ == "__main__":
  ds = records.open_prepared(sys.argv[1])
  kept = []
  # one closed, one left open at exit, one read to its end (grain's exhausted iterator
  # holds its last batch in a reference cycle) and closed
  for close, steps in ((True, 40), (False, 40), (True, 6)):
    loader = batches.TrainBatches(records.RecordImages(ds), PKSampler(ds.labels, 3, 4, 0), steps,
                                  workers=1, prefetch=4)
    kept += [loader(s) for s in range(6)]   # batches still referenced at exit
    if close:
      loader.close()
  assert all(type(b["images"]) is np.ndarray for b in kept)
  print("read", len(kept), flush=True)
"""


def test_grain_workers_leak_no_shared_memory(tmp_path):
  """grain hands batches over in shared memory; neither a closed loader nor one left open
  at exit, nor batches still referenced then, leave blocks for Python to report leaked."""
  root = _people(tmp_path / "people", [4, 4, 4, 4])
  path = prepare.prepare(prepare.folder_plan(str(root)), str(tmp_path / "out"), Fit(12, 0, 3),
                         workers=1, records_per_shard=4)
  script = tmp_path / "shm.py"
  script.write_text(_SHM)
  p = subprocess.run([sys.executable, str(script), path], env={**os.environ, "PYTHONPATH": ROOT},
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0 and "read 18" in p.stdout, p.stderr
  assert "leaked shared_memory" not in p.stderr, p.stderr


def test_more_people_asked_than_exist_is_an_error(tmp_path):
  root = _people(tmp_path / "people", [2, 2, 2])
  c = _config(tmp_path, root, **{"data.train_identities": 3, "data.eval_identities": 1})
  with pytest.raises(raw.DataError, match=r"3 identities cannot give config.data.train_identities = 3 "
                                          r"training and config.data.eval_identities = 1"):
    sources.load(c)


# ----------------------------------------------------------------------------- RecordIO

def _jpeg(seed, size=20):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
      buf, format="JPEG", quality=90)
  return buf.getvalue()


def test_recordio_prepares_like_a_folder_and_rejects_bad_files(tmp_path):
  # insightface layout: record 0 and identity records carry no image (flag 2, label ranges)
  import struct
  header = struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<ff", 5, 7)
  payloads = [header] + [recordio.pack(lab, _jpeg(k)) for k, lab in enumerate([1, 0, 1, 0])]
  d = tmp_path / "ms1m"
  os.makedirs(d)
  recordio.write_rec(str(d / "train.rec"), payloads)
  offsets, labels = recordio.image_records(str(d / "train.rec"))
  np.testing.assert_array_equal(labels, [1, 0, 1, 0])
  c = _config(tmp_path, d, **{"data.source": "recordio", "data.eval_identities": 0,
                              "data.record_encoding": "png"})
  train_ds, held = sources.load(c)
  np.testing.assert_array_equal(train_ds.labels, [0, 0, 1, 1])   # grouped by label, key order
  src = train_ds.images.prepared.source_of(0)
  assert src == f"{d}/train.rec@{offsets[1]}"                      # key 2: label 0's first

  rec = (d / "train.rec").read_bytes()
  (d / "train.rec").write_bytes(rec[:offsets[2]] + b"\0\0\0\0" + rec[offsets[2] + 4:])
  with pytest.raises(raw.DataError, match=rf"train.rec: record 3 \(byte {offsets[2]}\): bad magic "
                                          r"number 0x00000000 \(expected 0xCED7230A\)"):
    recordio.image_records(str(d / "train.rec"))
  (d / "train.rec").write_bytes(rec)
  with open(d / "train.idx", "a") as f:
    f.write(f"5\t{len(rec) + 64}\n")
  with pytest.raises(raw.DataError, match=r"train.idx: line 6: offset \d+ points past the end of "
                                          rf"the .rec file \({len(rec)} bytes\)"):
    recordio.image_records(str(d / "train.rec"))
  # every record listed twice under new keys: accepted before, and the doubles made identical
  # pairs (VAL@FAR=1e-3 0.17 against 0 on the clean data in the probe)
  lines = (d / "train.idx").read_text().splitlines()[:5]
  doubled = lines + [f"{100 + int(k)}\t{off}" for k, off in (l.split() for l in lines)]
  (d / "train.idx").write_text("\n".join(doubled) + "\n")
  with pytest.raises(raw.DataError, match=r"train.idx: line 6: offset \d+ is already on line 1; "
                                          r"each record must be listed once"):
    recordio.image_records(str(d / "train.rec"))


def test_a_folder_under_the_default_config_trains_every_person(tmp_path):
  """The default config's identity counts are 0 and 0: synthetic still generates 400 + 100
  people, a folder trains on all of its people and holds none out (not 400 of them)."""
  root = _people(tmp_path / "people", [2, 3, 1, 2, 2])
  c = with_overrides(get_config(), {"data.source": "folder", "data.data_dir": str(root),
                                    "data.tfds_dir": str(tmp_path / "tfds"), "data.image_size": 8,
                                    "data.prepare_workers": 1})
  from facenet_jax.config_checks import check_config
  check_config(c)
  train_ds, held = sources.load(c)
  assert (train_ds.num_identities, len(train_ds), len(held)) == (5, 10, 0)
  gen_train, gen_held = sources.load(get_config())
  assert (gen_train.num_identities, gen_held.num_identities) == (400, 100)


def test_evaluating_a_run_whose_folder_changed_since_training_is_refused(tmp_path):
  """The files under data_dir changed in place (a relabelled train.rec in the probe): evaluate
  prepared them again and scored them under the run's own eval file names, exit 0."""
  from conftest import load_script
  root = _people(tmp_path / "people", [3, 4, 2, 5, 3, 4, 2, 3, 2])
  c = with_overrides(_config(tmp_path, root), {"num_steps": 2, "evals": "pairs"})
  wd = str(tmp_path / "run")
  res = train.train_and_evaluate(c, wd)
  assert res["prepared_data"].startswith("folder_")
  evaluate = load_script("evaluate_facenet").evaluate
  assert evaluate(wd, "pairs")["results"]["pairs"] == res["evals"]["pairs"]   # unchanged: same
  Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(root / "p0" / "0.png")   # one image edited
  with pytest.raises(SystemExit, match=rf"{wd} trained on folder_\S+ \(results.json: prepared_data\), "
                                       r"but its data_dir now prepares as folder_\S+: the files changed"):
    evaluate(wd, "pairs")
  out = evaluate(wd, "pairs", data_dir=str(root))   # asked for: other data, its own file
  assert out["step"] == 2 and any(n.startswith("eval_pairs@data.data_dir=") for n in os.listdir(wd))


_KILLED_PARENT = """
import sys
from facenet_jax.data import prepare
from facenet_jax.data.images import Fit
if __name__ == "__main__":
  prepare.prepare(prepare.folder_plan(sys.argv[1]), sys.argv[2], Fit(96, 0, 3), workers=2,
                  records_per_shard=2)
"""


def _workers_of(parent: int) -> list[int]:
  """PIDs of the processes that are preparation workers of ``parent`` (by their environment)."""
  out = []
  for d in os.listdir("/proc"):
    try:
      with open(f"/proc/{d}/environ", "rb") as f:
        env = f.read().split(b"\0")
    except OSError:
      continue
    if f"{prepare.WORKER_OF}={parent}".encode() in env:
      out.append(int(d))
  return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the workers")
def test_preparation_workers_end_with_a_killed_parent(tmp_path):
  """A parent killed outright (kill -9, the OOM killer) left its spawned workers blocked for
  ever, still writing queued shards into the folder a resumed run prepared."""
  import signal
  import time
  root = _people(tmp_path / "people", [8] * 12, size=(400, 400))
  script = tmp_path / "prep.py"
  script.write_text(_KILLED_PARENT)
  p = subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "out")],
                       env={**os.environ, "PYTHONPATH": ROOT}, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while len(_workers_of(p.pid)) < 2:
    assert p.poll() is None and time.time() < deadline, "the workers did not start"
    time.sleep(0.1)
  workers = _workers_of(p.pid)
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  deadline = time.time() + 30
  while [w for w in workers if os.path.exists(f"/proc/{w}") and
         open(f"/proc/{w}/stat").read().split()[2] != "Z"]:
    assert time.time() < deadline, "preparation workers outlived their killed parent"
    time.sleep(0.2)
