"""What a resumed run or a gallery depends on is identified by its bytes, not by a path or an
unchecked record: a checkpoint's meta (offline mining's triplets) is covered by a SHA-256 like
its arrays (infra/checkpoints.py), a style run keeps the SHA-256 of its content, style and VGG
weights files (style_jax/workdir.py inputs.json), and a model fingerprint covers the frozen
backbone's weights file (facenet_jax/inference.py). Each test here passed silently before."""

import hashlib
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from conftest import SHARED
from facenet_jax import inference, recognition
from infra import checkpoints
from style_jax import cost, optimize
from test_checkpoint_integrity import _assert_refused, _edit_meta, _restore, _state_at, _verify
from test_style import _content, _style, _tiny, _write

# ------------------------------------------------------------ checkpoint meta (offline mining)

_META_DIGEST = "meta_sha256"   # checkpoints.META_DIGEST_KEY: the entry every meta records


def _offline_meta(step: int) -> dict:
  """A meta shaped like an offline-mining run's (OfflineBatches.meta plus the loop's fields)."""
  pool = np.arange(3 * 8).reshape(8, 3) + step
  return {"note": f"step {step}", "offline_pool": pool.tolist(),
          "offline_selected": pool[::2].tolist(), "train_metrics": {"loss": 0.25, "frac": 1.0}}


def _save_offline(directory, steps=(2, 4)) -> None:
  ck = checkpoints.Checkpointer(directory, every=1, keep=5)
  for s in steps:
    ck.save(s, _state_at(s), _offline_meta(s))
  ck.close()


@pytest.mark.parametrize("edit", [
    lambda m: m.update(offline_selected=m["offline_selected"][:2]),   # a lost tail
    lambda m: m["offline_pool"][0].__setitem__(0, 7),                  # one row changed
    lambda m: m["train_metrics"].update(loss=0.5),
    lambda m: m.update(extra=1),
], ids=["selection-cut", "pool-row", "metric", "key-added"])
def test_an_edited_checkpoint_meta_is_refused_naming_the_step(tmp_path, edit):
  d = str(tmp_path / "ck")
  _save_offline(d)
  with warnings.catch_warnings():   # an untouched meta restores verified, as saved
    warnings.simplefilter("error", checkpoints.UnverifiedCheckpointWarning)
    step, _, meta = _restore(d, 2)
  assert step == 2 and meta == dict(_offline_meta(2), step=2)
  _edit_meta(d, 2, edit)
  _assert_refused(d, 2, r"checkpoint .*ck/2 is corrupt: its meta \(meta/metadata\) does not "
                        r"match the meta_sha256 recorded when it was saved .*delete that step "
                        r"directory to resume from an earlier one \(\[4\]\)")


def test_a_meta_saved_before_meta_digests_restores_with_a_warning_when_resuming(tmp_path):
  """Checkpoints of the code before meta_sha256 (simulated by removing it) stay readable:
  a resume warns that their meta is unverified, a read-only restore (evaluate) is quiet."""
  d = str(tmp_path / "ck")
  _save_offline(d)
  _edit_meta(d, 2, lambda m: m.pop(_META_DIGEST, None))
  for read in (_verify, _restore):
    with pytest.warns(checkpoints.UnverifiedCheckpointWarning, match=r"ck/2: its meta "
                      r"\(meta/metadata\) restored unverified \(it has no meta_sha256"):
      restored = read(d, 2)
  step, _, meta = restored
  assert step == 2 and meta == dict(_offline_meta(2), step=2)
  ck = checkpoints.Checkpointer(d, every=1, read_only=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error", checkpoints.UnverifiedCheckpointWarning)
    assert ck.restore(_state_at(0), step=2)[0] == 2
  ck.close()


# ----------------------------------------------------------- style run: the inputs' contents


def _snapshot(path) -> dict:
  """``{file: (bytes, mtime_ns)}`` under ``path`` (as tests/test_bad_inputs.py): unchanged
  means untouched."""
  out = {}
  for root, _, names in os.walk(path):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, path)] = (f.read(), os.stat(p).st_mtime_ns)
  return out


def _no_vgg(*args):
  raise AssertionError("the VGG was built before the inputs were checked")


@pytest.mark.parametrize("field", ["content", "style"])
def test_a_style_resume_refuses_an_image_replaced_at_the_same_path(tmp_path, monkeypatch, field):
  work = str(tmp_path / "run")
  optimize.stylize(_tiny(tmp_path, num_steps=2, checkpoint_every=1), work)
  path = str(tmp_path / f"{field}.png")
  original = open(path, "rb").read()
  other = _content()[::-1] if field == "content" else _style()[:, ::-1]
  before = _snapshot(work)
  with monkeypatch.context() as m:
    m.setattr(optimize, "load_network", _no_vgg)
    config = _tiny(tmp_path, num_steps=4, checkpoint_every=1)   # rewrites both images...
    _write(path, np.ascontiguousarray(other))                   # ...then this one differs
    with pytest.raises(cost.StyleConfigError,
                       match=rf"^config\.{field}: the contents of {re.escape(path)} changed "
                             rf"since the run in {re.escape(work)} started \(SHA-256 "
                             r"[0-9a-f]{12} in inputs\.json, [0-9a-f]{12} now\).*use a new "
                             r"workdir, or put the original"):
      optimize.stylize(config, work)
  assert _snapshot(work) == before   # nothing written, nothing rewritten
  open(path, "wb").write(original)   # the run's own file back: it continues
  assert optimize.stylize(config, work)["step"] == 4
  recorded = json.load(open(os.path.join(work, "inputs.json")))   # as the run started
  assert recorded[field] == [[path, hashlib.sha256(original).hexdigest()]]


def test_a_style_resume_refuses_vgg_weights_changed_at_the_same_path(tmp_path, monkeypatch):
  h5py = pytest.importorskip("h5py")
  shared = os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5")
  if not os.path.isfile(shared):
    pytest.skip(f"{shared} absent (../shared is not part of a fresh clone)")
  weights = str(tmp_path / "vgg19.h5")
  shutil.copy(shared, weights)
  work = str(tmp_path / "run")
  optimize.stylize(_tiny(tmp_path, weights=weights, num_steps=2, checkpoint_every=1), work)
  with h5py.File(weights, "r+") as h:   # other kernels in the file at the same path
    ds = h["block1_conv1"]["block1_conv1_W_1:0"]
    ds[...] = ds[...][:, :, ::-1, :]
  before = _snapshot(work)
  monkeypatch.setattr(optimize, "load_network", _no_vgg)
  with pytest.raises(cost.StyleConfigError,
                     match=rf"^config\.weights: the contents of {re.escape(weights)} changed "
                           r"since the run"):
    optimize.stylize(_tiny(tmp_path, weights=weights, num_steps=4, checkpoint_every=1), work)
  assert _snapshot(work) == before


def test_a_style_workdir_from_before_inputs_json_resumes_with_a_note_and_records_them(
    tmp_path, capsys):
  work = str(tmp_path / "run")
  optimize.stylize(_tiny(tmp_path, num_steps=2, checkpoint_every=1), work)
  inputs = os.path.join(work, "inputs.json")
  if os.path.exists(inputs):   # the workdir as the code before inputs.json left it
    os.remove(inputs)
  capsys.readouterr()
  assert optimize.stylize(_tiny(tmp_path, num_steps=4, checkpoint_every=1), work)["step"] == 4
  err = capsys.readouterr().err
  assert "written before style runs recorded their input files' SHA-256 (inputs.json)" in err
  entry = lambda name: [[str(tmp_path / name),
                         hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()]]
  assert json.load(open(inputs)) == {"content": entry("content.png"), "style": entry("style.png"),
                                     "weights": [["random", None]]}
  config = _tiny(tmp_path, num_steps=6, checkpoint_every=1)
  _write(tmp_path / "content.png", np.ascontiguousarray(_content()[::-1]))
  with pytest.raises(cost.StyleConfigError, match=r"^config\.content: the contents of"):
    optimize.stylize(config, work)


# ------------------------------------------------------ gallery fingerprint: frozen backbone


def _features_run(weights: str):
  """A feature_head run's config (a head over frozen VGG19 features) reading ``weights``."""
  from configs.facenet import get_config
  c = get_config("orl_vgg")
  c.model.vgg_weights = weights
  return c


_WEIGHTS = {"params": {"w": np.arange(6.0, dtype=np.float32)}, "model_state": {}}


def test_the_fingerprint_of_a_features_run_follows_its_backbone_file_contents(tmp_path):
  a = tmp_path / "a.h5"
  a.write_bytes(b"backbone one")
  fp = inference.model_fingerprint(_features_run(str(a)), _WEIGHTS)
  moved = tmp_path / "elsewhere" / "b.h5"   # the same file at another path: the same model
  moved.parent.mkdir()
  shutil.copy(a, moved)
  assert inference.model_fingerprint(_features_run(str(moved)), _WEIGHTS) == fp
  a.write_bytes(b"backbone two")   # other weights in the file at the run's path
  changed = inference.model_fingerprint(_features_run(str(a)), _WEIGHTS)
  assert changed != fp
  assert inference.model_fingerprint(_features_run("random"), _WEIGHTS) not in (fp, changed)
  gallery = recognition.Gallery(16, fp, "runs/a step 8")
  gallery.check_model(inference.model_fingerprint(_features_run(str(moved)), _WEIGHTS), "moved")
  with pytest.raises(recognition.GalleryError, match=r"enrolled by another model"):
    gallery.check_model(changed, "runs/a step 8")


def test_models_without_a_frozen_backbone_keep_their_fingerprint(tmp_path):
  """Fingerprints of runs without data.features are what they were before the backbone was
  covered (their galleries stay valid), whatever the weights file holds."""
  from configs.facenet import get_config
  c = get_config("tiny")
  c.model.vgg_weights = str(tmp_path / "w.h5")   # not read by this model
  before = hashlib.sha256(json.dumps(inference.embedding_config(c), sort_keys=True,
                                     default=list).encode())
  before.update(checkpoints.state_digest(_WEIGHTS).encode())
  assert inference.model_fingerprint(c, _WEIGHTS) == before.hexdigest()
  (tmp_path / "w.h5").write_bytes(b"anything")
  assert inference.model_fingerprint(c, _WEIGHTS) == before.hexdigest()
