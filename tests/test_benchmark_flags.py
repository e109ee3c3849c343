"""Benchmarks refuse bad flags and a missing peer package in one line, before any work (each
of these was a traceback, some after timing ours; found by a probe helper). Subprocesses,
started together."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarks_refuse_bad_flags_in_one_line(tmp_path):
  bench = lambda name, *args: [sys.executable, os.path.join(ROOT, "benchmarks", name), *args]
  cases = {
      "accelerator_rows": (bench("accelerator.py", "--rows=train,nope"),
                           "argument --rows: expected distinct names of train,margins,style,input"),
      "big_batch_quick": (bench("big_batch.py", "--quick", "--big=8x8"),
                          "--quick sets its own sizes; --big would be ignored"),
      "big_batch_chunks": (bench("big_batch.py", "--chunks=16,,x"), "argument --chunks: expected an integer >= 1"),
      "input_shards": (bench("input_pipeline.py", f"--work={tmp_path}/ip", "--shard_images=5,abc"),
                       "flag --shard_images=['5', 'abc']: expected positive integers"),
      "input_steps": (bench("input_pipeline.py", f"--work={tmp_path}/ip", "--train_steps=0"),
                      "flag --train_steps=0: 0 is not a positive integer"),
      "mtcnn_n": (bench("mtcnn.py", "--n=0"), "argument --n: expected an integer >= 1, got '0'"),
      "mtcnn_weights": (bench("mtcnn.py", f"--weights={tmp_path}/none.npz"),
                        f"--weights={tmp_path}/none.npz: no such file or folder"),
      "style_memory": (bench("style_memory.py", "--size=-5"), "argument --size: expected an integer >= 1"),
      "variant": (bench("platform_programs.py", "--variant=nope"),
                  "argument --variant: expected a configs/facenet.py variant"),
      "margin_vmap": (bench("margin_vmap.py", "--variant=nope"),
                      "argument --variant: expected a configs/facenet.py variant"),
      "big_batch": (bench("big_batch.py", "--big=abc"), "argument --big: expected PxK"),
      "vs_commit_base": (bench("vs_commit.py", "--base=nosuchrev"),
                         "--base=nosuchrev: not a commit of this checkout"),
      "vs_commit_jobs": (bench("vs_commit.py", "--base=HEAD", "--jobs=bogus"),
                         "--jobs: unknown ['bogus']"),
      "lfw_head": (bench("lfw_head.py", f"--out={tmp_path}/h", "--test_fold=12"),
                   "argument --test_fold: invalid choice: 12"),
  }
  if importlib.util.find_spec("torch") is None:   # the peers are benchmark-only installs
    cases["mining"] = (bench("mining.py", "--quick"), "torch, pytorch_metric_learning not installed")
    cases["style_vs_torch"] = (bench("style_vs_torch.py", "--quick", f"--weights={__file__}"),
                               "torch not installed")
  worktrees = lambda: subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                                     text=True).stdout
  before = worktrees()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {k: subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for k, (cmd, _) in cases.items()}
  for k, p in procs.items():
    _, err = p.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("usage:")
             and not l.startswith(" ")]
    assert p.returncode in (1, 2) and "Traceback" not in err, (k, err)
    assert len(lines) == 1 and cases[k][1] in lines[0], (k, err)
  assert not os.path.exists(tmp_path / "h") and not os.path.exists(tmp_path / "ip")
  assert worktrees() == before   # vs_commit checked --jobs before making its checkout


def test_provenance_names_a_tree_that_is_not_its_commit(tmp_path, monkeypatch):
  """A result measured on changed files must not carry the bare commit hash (the H200 copy of
  this tree had an older .git: its header named a commit whose code had not run)."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import provenance
  git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
                                  cwd=tmp_path, check=True, capture_output=True, text=True).stdout
  monkeypatch.setattr(provenance, "ROOT", str(tmp_path))
  assert provenance.commit() == "?"   # not a checkout
  git("init", "-q")
  (tmp_path / "a.py").write_text("x = 1\n")
  git("add", "a.py")
  git("commit", "-qm", "a")
  head = git("rev-parse", "--short", "HEAD").strip()
  (tmp_path / "notes.txt").write_text("untracked files are not the measured code\n")
  assert provenance.commit() == head
  (tmp_path / "a.py").write_text("x = 2\n")
  assert provenance.commit() == head + " + uncommitted changes"
  assert provenance.commit("HEAD~0") == head   # a named base revision is that commit


def test_help_exits_0():
  """absl scripts printed --help and exited 1, a failure to a shell or a launcher."""
  for script in ("benchmarks/input_pipeline.py", "scripts/detect_faces.py"):
    for flag in ("--help", "--helpfull"):
      r = subprocess.run([sys.executable, os.path.join(ROOT, script), flag], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
      assert r.returncode == 0 and "--" in r.stdout + r.stderr, (script, flag, r.stderr[-2000:])
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "detect_faces.py"), "--bogus"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2   # other flag errors still fail
