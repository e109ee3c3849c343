"""No pickle or shell on a path a user's file can reach; downloads checked against a hash;
the same seed and config give identical results.json and parameters on CPU."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import fault_inject
from configs.facenet import get_config as facenet_config
from configs.style import get_config as style_config
from facenet_jax import train
from facenet_jax.data import raw

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCANNED = ("facenet_jax", "infra", "style_jax", "scripts", "configs", "benchmarks", "tests")

# code that can execute what a file contains, or hand a string to a shell
FORBIDDEN = {
    r"\bpickle\.loads?\(": "pickle.load: unpickling runs code from the file",
    r"\b(cloudpickle|dill|joblib)\.loads?\(": "pickle-based loader",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True) unpickles object arrays",
    r"\btorch\.load\(": "torch.load unpickles",
    r"\byaml\.(unsafe_)?load\(": "yaml.load can construct arbitrary objects (use safe_load)",
    r"\bmarshal\.loads?\(": "marshal.load",
    r"shell\s*=\s*True": "a shell would parse paths from configs/flags",
    r"\bos\.(system|popen|exec[lv]p?e?)\(": "runs a command line through a shell / replaces the process",
    r"\bsubprocess\.\w+\(\s*f?[\"']": "a command given as one string",
}


def _sources():
  for top in SCANNED:
    for d, _, names in os.walk(os.path.join(ROOT, top)):
      for n in names:
        if n.endswith(".py"):
          yield os.path.join(d, n)


def test_no_pickle_or_shell_in_the_source():
  me = os.path.abspath(__file__)
  hits = []
  for path in _sources():
    if path == me:
      continue
    text = open(path, encoding="utf-8").read()
    for lineno, line in enumerate(text.splitlines(), 1):
      for pattern, why in FORBIDDEN.items():
        if re.search(pattern, line):
          hits.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {why}: {line.strip()}")
  assert not hits, "\n".join(hits)


def test_every_npy_read_refuses_pickles_explicitly():
  """Every np.load / read_array of the code says allow_pickle=False itself, so no file a user
  hands us is unpickled whatever numpy's default becomes."""
  calls = 0
  for path in _sources():
    if os.path.relpath(path, ROOT).startswith("tests"):   # tests read the files they wrote
      continue
    text = open(path, encoding="utf-8").read()
    for m in re.finditer(r"\b(np\.load|numpy\.load|read_array)\(", text):
      depth, end = 0, m.end() - 1
      for end in range(m.end() - 1, len(text)):   # to the call's own closing parenthesis
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
          break
      call = text[m.start():end + 1]
      assert "allow_pickle=False" in call, f"{path}: {call}"
      calls += 1
  assert calls >= 3   # the gallery, the feature cache, cross_validate's ROC pieces


def test_downloads_are_checked_before_use(tmp_path):
  # every tfds download goes through raw.check_download, every urlopen through an md5 check
  for path in _sources():
    text = open(path, encoding="utf-8").read()
    for m in re.finditer(r"dl_manager\.download(_and_extract)?\(", text):
      line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.start())]
      stmt = text[m.start() - 200:m.start() + 200]
      assert "_and_extract" not in m.group(0), f"{path}: extracts before checking: {line}"
      assert "check_download" in stmt, f"{path}: download not checked: {line}"
    if "urlopen(" in text and "tests" not in path:
      assert "_md5(tmp)" in text and "os.replace(tmp, dest)" in text, path
  f = tmp_path / "lfw.tgz"
  f.write_bytes(b"tampered")
  with pytest.raises(raw.DataError, match=r"lfw.tgz: downloaded file .* has SHA-256 [0-9a-f]{64}, "
                                          r"expected 0{64}; it was not used"):
    raw.check_download(str(f), "http://example.invalid/lfw.tgz", "0" * 64)
  with pytest.raises(raw.DataError, match="no pinned SHA-256"):
    raw.check_download(str(f), "http://example.invalid/all_runs.zip", None)
  import hashlib
  ok = hashlib.sha256(b"tampered").hexdigest()
  assert raw.check_download(str(f), "http://example.invalid/lfw.tgz", ok) == str(f)


# ---------------------------------------------------------------------------- determinism

def _twice(run, workdir):
  """Runs ``run(workdir)`` twice in the same path (the first result moved aside), so that
  paths recorded in results.json agree; returns both workdirs."""
  first = workdir + "-first"
  run(workdir)
  shutil.move(workdir, first)
  run(workdir)
  return first, workdir


def _assert_same_run(a, b, step):
  ra, rb = (json.load(open(os.path.join(d, "results.json"))) for d in (a, b))
  assert fault_inject.without_timing(ra) == fault_inject.without_timing(rb)
  sa, sb = fault_inject.final_state(a, step), fault_inject.final_state(b, step)
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(x, y)


def test_same_seed_and_config_give_identical_training_runs(tmp_path):
  config = facenet_config("tiny")
  a, b = _twice(lambda w: train.train_and_evaluate(config, w), str(tmp_path / "run"))
  _assert_same_run(a, b, config.num_steps)


def test_same_seed_and_config_give_identical_style_runs(tmp_path):
  from style_jax import optimize
  c = style_config("tiny")
  c.unlock()
  rng = np.random.default_rng(5)
  c.content, c.style = str(tmp_path / "c.png"), str(tmp_path / "s.png")
  Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(c.content)
  Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(c.style)
  c.lock()
  a, b = _twice(lambda w: optimize.stylize(c, w), str(tmp_path / "style"))
  _assert_same_run(a, b, c.num_steps)
  assert open(os.path.join(a, "final.png"), "rb").read() == open(os.path.join(b, "final.png"), "rb").read()
