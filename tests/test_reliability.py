"""Killed, preempted and failing runs: the quick fault-injection run (3 SIGKILLs of each
kind, training and style), preemption of the style loop, a workdir that is not writable,
a disk that fills during a save, and a checkpoint restored into another model config."""

import concurrent.futures
import errno
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import fault_inject
import multiproc
from configs.facenet import get_config as facenet_config
from configs.style import get_config as style_config
from infra import checkpoints
from infra.errors import Preempted
from infra.overrides import with_overrides
from facenet_jax import steps, train, workdir as workdir_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _tiny(**overrides):
  return with_overrides(facenet_config("tiny"), overrides)


def _restore(workdir, config, step=None):
  _, _, target = steps.create_train_state(config, in_channels=3)
  ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, read_only=True)
  out = ck.restore(target, step)
  ck.close()
  return out


# ----------------------------------------------------------------------- fault injection


def test_quick_fault_injection_resumes_bit_identical(tmp_path, monkeypatch):
  """3 SIGKILLs during steps and 3 inside checkpoint writes, for a 24-step training run and
  a 2-scale, 24-step style run side by side: every resume succeeds, no checkpoint is ever
  corrupt, and both end bit-identical to their uninterrupted runs."""
  # every run after the reference finds all of its programs compiled: JAX's persistent cache
  # keeps only those that took over a second to compile unless told otherwise, and the 14
  # restarts recompiled the rest (tests/multiproc.py CACHE_ENV)
  for k, v in multiproc.CACHE_ENV.items():
    if k != "JAX_COMPILATION_CACHE_DIR":   # fault_inject's own cache (runs/) stays theirs
      monkeypatch.setenv(k, v)
  programs = [fault_inject.facenet_program(num_steps=24, checkpoint_every=3),
              fault_inject.style_program(str(tmp_path / "inputs"), steps_per_scale=12,
                                         checkpoint_every=3)]
  kills = {"step": 3, "checkpoint": 3}

  def soak(p):
    return fault_inject.run_soak(p, str(tmp_path / p.name), kills, seed=1, write_delay=0.6,
                                 per_cycle=6, log=lambda m: None)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    reports = list(pool.map(soak, programs))
  for rep in reports:
    assert rep.failures == [], rep.failures
    assert rep.kills == {"step": 3, "checkpoint": 3, "sigterm": 0, "sigint": 0}, rep
    assert rep.resumes_ok == 6 and rep.resumes_failed == 0
    assert rep.corrupt_checkpoints == 0
    assert rep.cycles_identical == rep.cycles >= 1
    assert rep.max_steps_lost <= 3   # checkpoint_every: a kill loses at most one period
    assert rep.ok


# ----------------------------------------------------------------- preemption of style runs


def test_style_sigint_checkpoints_the_current_step_and_resumes_identically(tmp_path, monkeypatch):
  from style_jax import optimize
  content, style = fault_inject.write_style_inputs(str(tmp_path / "in"))
  c = style_config("tiny")
  c.unlock()
  c.content, c.style, c.num_steps, c.checkpoint_every = content, style, 6, 100
  c.lock()
  full = optimize.stylize(c, str(tmp_path / "full"))
  real = optimize.compiled_functions(*_style_key(c, optimize))
  calls = {"n": 0}

  def fake_compiled(*args):
    f, t, step_fn, tx = real

    def step(*a):
      calls["n"] += 1
      if calls["n"] == 3:   # preempted during step 3
        os.kill(os.getpid(), signal.SIGINT)
      return step_fn(*a)
    return f, t, step, tx
  monkeypatch.setattr(optimize, "compiled_functions", fake_compiled)
  with pytest.raises(optimize.Preempted, match="signal 2 after checkpointing step 3") as e:
    optimize.stylize(c, str(tmp_path / "part"))
  assert e.value.signum == signal.SIGINT and e.value.step == 3
  assert sorted(os.listdir(tmp_path / "part" / "checkpoints")) == ["3"]
  monkeypatch.undo()
  resumed = optimize.stylize(c, str(tmp_path / "part"))
  assert resumed["final"] == full["final"] and resumed["initial"] == full["initial"]
  assert (open(tmp_path / "full" / "final.png", "rb").read()
          == open(tmp_path / "part" / "final.png", "rb").read())


def _style_key(c, optimize):
  from flax import nnx

  from infra import vgg
  from style_jax import cost
  model = vgg.load_vgg(c.weights, c.depth, c.pooling, remat=c.remat, seed=c.seed)
  graphdef, _ = nnx.split(model)
  return (graphdef, cost.objective_from_config(c),
          (c.optimizer, float(c.learning_rate), int(c.lbfgs_memory), int(c.lbfgs_linesearch_steps)))


# ------------------------------------------------------ failing disks and unwritable workdirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished tiny run (checkpoints at steps 2, 4, 6)."""
  work = str(tmp_path_factory.mktemp("trained") / "run")
  results = train.train_and_evaluate(_tiny(), work)
  return work, results


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  work = str(tmp_path / "run")
  real = checkpoints._meta_handler

  def filling_disk():
    h = real()
    inner = h.async_save

    async def async_save(directory, *a, **k):
      if h.fault_step == 4:   # the arrays of step 4 are written; the disk fills now
        raise OSError(errno.ENOSPC, "No space left on device")
      return await inner(directory, *a, **k)
    h.async_save = async_save
    return h
  monkeypatch.setattr(checkpoints, "_meta_handler", filling_disk)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"saving step 4 .* failed \(OSError: No space left on device\); the "
                           r"partial write was removed and the earlier checkpoints \[2\] are intact"):
    train.train_and_evaluate(_tiny(), work)
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2"]   # no temporary dir
  assert not os.path.exists(os.path.join(work, "results.json"))
  step, state, _ = _restore(work, _tiny())
  assert step == 2 and int(state["step"]) == 2
  monkeypatch.undo()   # space freed: the same command resumes from step 2 and finishes
  r = train.train_and_evaluate(_tiny(), work)
  assert r["step"] == 6


def test_unwritable_workdir_is_a_clear_error_and_its_checkpoints_stay_restorable(trained, tmp_path):
  src, _ = trained
  work = str(tmp_path / "readonly")
  shutil.copytree(src, work)
  os.remove(os.path.join(work, "results.json"))
  before = {s: _restore(work, _tiny(), s)[1] for s in (4, 6)}
  for d, _, fs in os.walk(work):
    os.chmod(d, 0o555)
    for f in fs:
      os.chmod(os.path.join(d, f), 0o444)
  prefix = []
  if os.getuid() == 0:   # root writes anywhere: drop the capabilities that bypass permissions
    if not shutil.which("setpriv"):
      pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
  code = f"""
import os, sys
from configs.facenet import get_config
from facenet_jax import train
c = get_config("tiny"); c.unlock(); c.num_steps = 8; c.lock()
try:
  train.train_and_evaluate(c, {work!r})
except Exception as e:
  print(type(e).__name__ + ": " + str(e))
from facenet_jax import inference   # a finished run on read-only storage is still usable
print("loaded step", inference.load({work!r}).step)
sys.exit(3)
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
  os.chmod(tmp_path, 0o755)
  try:
    p = subprocess.run(prefix + [sys.executable, "-c", code], cwd="/", env=env,
                       capture_output=True, text=True, timeout=300)
  finally:
    for d, _, fs in os.walk(work):
      os.chmod(d, 0o755)
  assert p.returncode == 3, p.stdout + p.stderr
  assert (f"WriteError: workdir {work} is not writable (Permission denied); nothing in it was "
          "changed") in p.stdout, p.stdout
  assert "loaded step 6" in p.stdout, p.stdout
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2", "4", "6"]
  for s, st in before.items():   # nothing saved was lost or changed
    step, state, _ = _restore(work, _tiny(), s)
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_model_config_names_the_parameter(trained, tmp_path):
  src, _ = trained
  work = str(tmp_path / "run")
  shutil.copytree(src, work)
  # training refuses another model config from config.json, before any checkpoint is read
  with pytest.raises(workdir_lib.WorkdirError, match=r"model.widths: \(8, 16\) in the run, "
                                                     r"\(8, 32\) now"):
    train.train_and_evaluate(_tiny(**{"model.widths": (8, 32), "num_steps": 8}), work)
  # a checkpoint restored into another model (config.json edited by hand, a copied
  # checkpoint): the restore names the parameter, checked from the metadata
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint .*checkpoints/6: parameter \S+ has shape \(16,\) but "
                           r"this config expects \(32,\)"):
    _restore(work, _tiny(**{"model.widths": (8, 32)}))
  with pytest.raises(checkpoints.CheckpointError, match=r"does not match the model/state of "
                                                         r"this config: missing \[.*\]"):
    _restore(work, _tiny(**{"model.widths": (8, 16, 16)}))
  step, _, _ = _restore(work, _tiny())   # the run itself is untouched and restorable
  assert step == 6


def test_run_resumed_at_its_last_step_writes_the_same_results(trained, tmp_path):
  src, results = trained
  work = str(tmp_path / "run")
  shutil.copytree(src, work)
  os.remove(os.path.join(work, "results.json"))   # killed after the last checkpoint
  again = train.train_and_evaluate(_tiny(), work)
  assert again["train_metrics"]   # carried by the checkpoint
  assert fault_inject.without_timing(again) == fault_inject.without_timing(results)


def test_stop_signal_during_a_print_does_not_kill_the_run(monkeypatch):
  """A SIGTERM that lands while the loop is writing a progress line: the handler must not
  write to the same buffered stream (Python raises "reentrant call" and the run dies
  without its checkpoint; found by the sigterm/sigint soak)."""
  import io

  from infra import preemption

  class Raw(io.RawIOBase):
    sent = False

    def writable(self):
      return True

    def write(self, b):
      if not Raw.sent:   # the signal arrives in the middle of this write
        Raw.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
      return len(b)

  stream = io.TextIOWrapper(io.BufferedWriter(Raw()), line_buffering=True)
  monkeypatch.setattr(sys, "stdout", stream)
  with preemption.stop_requests() as stop:
    print("step 7/24  loss=0.1", flush=True)
    assert stop and stop.signal == signal.SIGTERM
    from infra.errors import Preempted
    with pytest.raises(Preempted, match="signal 15 after checkpointing step 7"):
      preemption.exit_if_stopped(stop, 7)


def test_stop_landing_after_the_checkpoint_decision_waits_one_step(tmp_path, monkeypatch):
  """A SIGTERM between the loop's 'checkpoint this step?' test and its exit check used to
  exit 'after checkpointing step 4' with no checkpoint of step 4 (found by the soak): the
  exit now waits until the checkpoint of the step it reports exists."""
  from infra import metric_writer
  calls = {"n": 0}
  real_flush = metric_writer.MetricWriter.flush

  def flush(self):   # the gap between the checkpoint block and exit_if_stopped
    calls["n"] += 1
    if calls["n"] == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_flush(self)
  monkeypatch.setattr(metric_writer.MetricWriter, "flush", flush)
  config = _tiny(checkpoint_every=100, log_every=1, num_steps=6)
  with pytest.raises(Preempted, match="after checkpointing step 5") as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert e.value.step == 5
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]


def test_scripts_keep_compiled_programs_unless_told_not_to(tmp_path):
  """cli.use_compile_cache: the persistent cache goes to ~/.cache/facenet_jax/xla (or under
  $XDG_CACHE_HOME); the user's own JAX_COMPILATION_CACHE_DIR wins; FACENET_COMPILE_CACHE=off
  leaves it off. A second start of a script then finds the train step compiled (shown in the
  README's start-up figures; not timed here)."""
  from infra import cli
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  cli.use_compile_cache(env)
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "facenet_jax" / "xla")
  env = {"JAX_COMPILATION_CACHE_DIR": "/mine"}
  cli.use_compile_cache(env)
  assert env == {"JAX_COMPILATION_CACHE_DIR": "/mine"}
  env = {"FACENET_COMPILE_CACHE": "off"}
  cli.use_compile_cache(env)
  assert env == {"FACENET_COMPILE_CACHE": "off"}
  env = {"HOME": str(tmp_path)}
  assert cli.default_compile_cache(env).endswith(os.path.join(".cache", "facenet_jax", "xla"))
