"""Multi-process runs on this machine: 2 processes on loopback (gloo), tiny config.

Launch settings, a 2-process run against a 1-process run of the same devices, a stop signal
reaching one process (or both, at different steps), a dataset two processes find unprepared,
and a process that dies. Each multi-process test runs a few seconds of steps; start-up and
compilation dominate (tests/multiproc.py shares a compilation cache between them).
"""

import json
import os
import re
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

import multiproc
from infra import distributed
from infra.errors import UserError

TIMEOUT = 420   # a loaded 2-core machine starts two JAX processes slowly


def _digest(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
    return json.load(f)["state_sha256"]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _run(workdir, processes, devices, *overrides, on_line=None):
  g = multiproc.launch(multiproc.train_argv(str(workdir), *overrides), processes, devices)
  rcs = g.wait(TIMEOUT, on_line)
  return g, rcs


# ------------------------------------------------------------------------ launch settings

def test_launch_settings_from_env_flags_slurm_and_named_errors():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert distributed.launch_settings(env) == distributed.Launch("explicit", "10.0.0.1:1234", 2, 1)
  # flags win over the environment
  got = distributed.launch_settings(env, process_id=0, local_device_ids="0,1")
  assert (got.process_id, got.local_device_ids) == (0, (0, 1))
  # the documented failure: an address alone (JAX reads no count or id from the environment)
  with pytest.raises(distributed.LaunchError, match="missing: JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
    distributed.launch_settings({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  with pytest.raises(distributed.LaunchError, match="missing: JAX_COORDINATOR_ADDRESS"):
    distributed.launch_settings({}, num_processes=2, process_id=0)
  with pytest.raises(distributed.LaunchError, match="JAX_PROCESS_ID=2 must be in 0 .. "):
    distributed.launch_settings(dict(env, JAX_PROCESS_ID="2"))
  with pytest.raises(distributed.LaunchError, match="JAX_NUM_PROCESSES='two': expected an integer"):
    distributed.launch_settings(dict(env, JAX_NUM_PROCESSES="two"))
  with pytest.raises(distributed.LaunchError, match="expected host:port"):
    distributed.launch_settings(dict(env, JAX_COORDINATOR_ADDRESS="10.0.0.1"))
  # a port JAX cannot use: it segfaulted (abc) or hung (99999) inside jax.distributed
  for address in ("badhost:abc", "10.0.0.1:99999", "10.0.0.1:0", ":1234"):
    with pytest.raises(distributed.LaunchError, match=r"expected host:port of process 0, the port 1..65535"):
      distributed.launch_settings(dict(env, JAX_COORDINATOR_ADDRESS=address))
  # --num_processes=0 alone: named as such, not as the other two missing
  with pytest.raises(distributed.LaunchError, match=r"--num_processes=0: expected a positive number"):
    distributed.launch_settings({}, num_processes=0)
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
  assert distributed.launch_settings(slurm).source == "slurm"
  assert distributed.launch_settings(dict(slurm, SLURM_NTASKS="1")).source == "single"
  assert distributed.launch_settings({"JAX_DISTRIBUTED": "auto"}).source == "auto"
  assert distributed.launch_settings({}).source == "single"
  with pytest.raises(distributed.LaunchError, match="JAX_DISTRIBUTED='yes'"):
    distributed.launch_settings({"JAX_DISTRIBUTED": "yes"})
  assert distributed.launch_settings(slurm).heartbeat_timeout_s == distributed.HEARTBEAT_TIMEOUT_S
  assert distributed.launch_settings(dict(env, JAX_HEARTBEAT_TIMEOUT_S="90")).heartbeat_timeout_s == 90
  with pytest.raises(distributed.LaunchError, match="JAX_HEARTBEAT_TIMEOUT_S=0: expected a positive"):
    distributed.launch_settings(dict(env, JAX_HEARTBEAT_TIMEOUT_S="0"))
  # a value from a flag is named as the flag
  with pytest.raises(distributed.LaunchError, match=r"--process_id=5 must be in 0 \.\. JAX_NUM_PROCESSES - 1 = 1"):
    distributed.launch_settings(env, process_id=5)
  with pytest.raises(distributed.LaunchError, match="--num_processes=0: expected a positive number"):
    distributed.launch_settings(env, num_processes=0)
  # a user error (infra.cli: one line on stderr, exit status 2), still a ValueError
  assert issubclass(distributed.LaunchError, UserError) and issubclass(distributed.LaunchError, ValueError)


def test_scripts_report_a_bad_launch_variable_or_flag_in_one_line_with_status_2(tmp_path):
  """A malformed launch setting through the scripts themselves (cli.run): exit status 2, one
  ``error: ...`` line on stderr naming the variable or flag and what was expected, no
  traceback, and no workdir (the launch is read before anything is written)."""
  import subprocess
  py = lambda script, cfg: [sys.executable, os.path.join(multiproc.ROOT, "scripts", script),
                            f"--config={os.path.join(multiproc.ROOT, 'configs', cfg)}:tiny"]
  cases = {   # name: (argv, environment, the one line expected)
      "train": (py("train_facenet.py", "facenet.py") + [f"--workdir={tmp_path / 'train'}"],
                {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "abc",
                 "JAX_PROCESS_ID": "0"},
                "error: JAX_NUM_PROCESSES='abc': expected an integer"),
      "style": (py("stylize.py", "style.py") + [f"--workdir={tmp_path / 'style'}", "--process_id=2"],
                {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2"},
                "error: --process_id=2 must be in 0 .. JAX_NUM_PROCESSES - 1 = 1"),
  }
  procs = {}
  for k, (argv, launch, _) in cases.items():
    env = multiproc.env_for(0, 1, 1, 0)   # CPU, no launch variables: then this case's
    env.pop("FACENET_TRACEBACK", None)
    procs[k] = subprocess.Popen(argv, env=dict(env, **launch), cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for k, p in procs.items():
    out, err = p.communicate(timeout=TIMEOUT)
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode == 2, (k, p.returncode, err)
    assert lines == [cases[k][2]], (k, err)
    assert out == "" and not os.path.exists(tmp_path / k), (k, out)


# ------------------------------------------------------------- the same run, 1 or 2 processes

@pytest.mark.parametrize("margins", [(), ("--config.margins=(0.1,0.3)",)], ids=["one", "K=2"])
def test_two_by_two_devices_train_exactly_like_one_by_four(tmp_path, margins):
  """2 processes x 2 devices against 1 process x 4 devices, bit for bit (one model, and K
  margins vmapped, semi-hard mining over the global batch): losses and every member's
  checkpoint digests. Every sum across devices (parameter gradients, BatchNorm statistics and
  their gradients) is added in device order (steps.make_ordered_grads), not in the collective
  library's order (an all-reduce of 4 differed in the last bits between gloo across
  processes and one process), and every process runs XLA:CPU with the same thread count
  (multiproc.env_for: Eigen's convolutions block their work by it). One config.json /
  results.json / events file per run directory (process 0 writes them). (2 processes x 1
  device against 1 x 2 is test_stop_signals_...'s reference.)"""
  args = ("--config.num_steps=4", "--config.checkpoint_every=2", "--config.log_every=1",
          "--config.eval_every=4", *margins)
  one, two = tmp_path / "one", tmp_path / "two"
  _, rcs1 = _run(one, 1, 4, *args)
  g2, rcs2 = _run(two, 2, 2, *args)
  assert rcs1 == [0] and rcs2 == [0, 0], g2.text(0)[-2000:] + g2.text(1)[-2000:]
  assert "global batch 16 over 4 device(s)" in g2.text(0)
  for member in (["margin=0.1", "margin=0.3"] if margins else ["."]):
    assert _steps(one / member) == _steps(two / member) == [2, 4]
    for step in (2, 4):
      assert _digest(one / member, step) == _digest(two / member, step)
    assert _losses(one / member) == _losses(two / member)
    assert sorted(_losses(two / member)) == [1, 2, 3, 4]
    files = os.listdir(two / member)
    assert files.count("config.json") == 1 and files.count("results.json") == 1
    assert len([f for f in files if f.startswith("events.out")]) == 1   # process 0's only


def test_ordered_step_on_8_devices_matches_the_one_device_step():
  """The step with sums in device order (mesh of 8 devices, shard_map) computes what the
  1-device step computes, to float32 rounding, with config.batch_chunk (each device embeds
  its share of every chunk) and K = 2 margins vmapped."""
  import jax
  import jax.numpy as jnp
  from configs.facenet import get_config
  from facenet_jax import steps
  from infra import mesh as mesh_lib
  from infra.overrides import with_overrides
  config = with_overrides(get_config("tiny"), {"identities_per_batch": 8, "batch_chunk": 8})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (32, 16, 16, 3)).astype(np.uint8),
           "labels": np.repeat(np.arange(8, dtype=np.int32), 4), "mask": np.ones(32, bool)}
  margins = jnp.asarray([0.1, 0.5], jnp.float32)
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = mesh_lib.make_data_mesh(devices)
    repl = mesh_lib.replicated(mesh)
    fn = jax.jit(steps.make_member_step(steps.make_train_step(graphdef, tx, config, mesh), margins),
                 in_shardings=(repl, mesh_lib.batch_sharded(mesh)), out_shardings=(repl, repl))
    s, m = jax.device_put(steps.stack([state] * 2), repl), None
    for _ in range(2):
      s, m = fn(s, mesh_lib.shard_batch(batch, mesh))
    out.append(jax.device_get((s, m)))
  (s1, m1), (s8, m8) = out
  assert m1["num_valid"].min() > 0
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("people,chunk", [(6, 0), (12, 24)])
def test_gradients_on_8_devices_equal_one_device_at_3_rows_per_device(people, chunk):
  """At 3 rows per device (24 images, or chunks of 24) the max-pool gradient lost windows in
  the compiled 8-device step: gradients up to 40% of their largest entry off the 1-device
  ones, with the same loss and BatchNorm statistics (layers.max_pool compared its input with
  the maximum again; found by an audit helper)."""
  import jax
  import jax.numpy as jnp
  from configs.facenet import get_config
  from facenet_jax import steps
  from infra import mesh as mesh_lib
  from infra.overrides import with_overrides
  config = with_overrides(get_config("tiny"), {"identities_per_batch": people, "batch_chunk": chunk})
  graphdef, _, state = steps.create_train_state(config, in_channels=3)
  B = 4 * people
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 16, 16, 3)), jnp.float32)
  batch = {"labels": jnp.asarray(np.repeat(np.arange(people), 4), jnp.int32),
           "mask": jnp.ones(B, bool)}
  args = (state["params"], state["model_state"])
  one = jax.jit(steps.make_global_grads(graphdef, config))(*args, x, batch, jax.random.key(1), 0.2)
  mesh = mesh_lib.make_data_mesh(jax.devices()[:8])
  with jax.set_mesh(mesh):
    f = steps.make_ordered_grads(graphdef, config, mesh)
    eight = jax.jit(f)(*args, jax.device_put(x, mesh_lib.batch_sharded(mesh)), batch,
                       jax.random.key(1), 0.2)
  np.testing.assert_allclose(float(eight[0]), float(one[0]), rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(one[3]))
  for a, b in zip(jax.tree.leaves(one[3]), jax.tree.leaves(eight[3])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * scale)


# ------------------------------------------------------------------------------- preemption

def _stop_at(group_signals):
  """on_line sending ``sig`` to process ``i`` when it prints step ``at``:
  ``group_signals = [(i, at, sig)]``; ``procs`` is filled in once launched."""
  state = {"procs": None, "sent": set()}

  def on_line(i, line):
    m = re.match(r"step (\d+)/", line)
    if not m:
      return
    for k, (who, at, sig) in enumerate(group_signals):
      if who == i and int(m.group(1)) >= at and k not in state["sent"]:
        state["sent"].add(k)
        state["procs"][who].send_signal(sig)
  return state, on_line


def test_stop_signals_checkpoint_one_common_step_and_resume_bit_identical(tmp_path):
  """One workdir of 2 processes x 1 device stopped three times, then finished: SIGTERM to
  process 1 only, SIGINT to process 0 only, SIGTERM to both at different steps. Every time
  both processes checkpoint the same step and exit 143 / 130; the finished run's parameters
  and every step's loss equal, bit for bit, those of an uninterrupted run of 1 process x 2
  devices (so the 2 x 1 layout is checked against one process too)."""
  args = ("--config.num_steps=12", "--config.checkpoint_every=100", "--config.log_every=1",
          "--config.eval_every=12")
  ref = tmp_path / "ref"
  g, rcs = _run(ref, 1, 2, *args)
  assert rcs == [0], g.text(0)[-2000:]
  wd = tmp_path / "stopped"
  before = 0
  for signals, status in (([(1, 2, signal.SIGTERM)], 143), ([(0, before + 1, signal.SIGINT)], 130),
                          ([(1, 1, signal.SIGTERM), (0, 2, signal.SIGTERM)], 143)):
    if before:   # a resumed run prints steps from before + 1
      signals = [(who, before + at, sig) for who, at, sig in signals]
    g = multiproc.launch(multiproc.train_argv(str(wd), *args), 2, 1)
    state, on_line = _stop_at(signals)
    state["procs"] = g.procs
    rcs = g.wait(TIMEOUT, on_line)
    assert rcs == [status, status], g.text(0)[-1500:] + g.text(1)[-1500:]
    stopped = [int(re.search(r"after checkpointing step (\d+)", g.text(i)).group(1)) for i in (0, 1)]
    assert stopped[0] == stopped[1] > before and _steps(wd)[-1] == stopped[0]
    before = stopped[0]
  g, rcs = _run(wd, 2, 1, *args)
  assert rcs == [0, 0], g.text(0)[-2000:] + g.text(1)[-2000:]
  assert "global batch 16 over 2 device(s)" in g.text(0)
  assert _digest(wd, 12) == _digest(ref, 12)
  assert _losses(wd) == _losses(ref) and sorted(_losses(wd)) == list(range(1, 13))


def test_style_transfer_two_processes_stop_together_and_resume_bit_identical(tmp_path):
  """scripts/stylize.py as 2 processes x 1 device: a SIGTERM to process 1 stops both at the
  same checkpointed step (exit 143); resumed, the run ends with an uninterrupted 2-process
  run's final checkpoint, final.png and results.json; process 0 alone writes the files."""
  import fault_inject
  content, style = fault_inject.write_style_inputs(str(tmp_path / "inputs"))

  def argv(wd):
    return [sys.executable, os.path.join(multiproc.ROOT, "scripts", "stylize.py"),
            f"--config={os.path.join(multiproc.ROOT, 'configs', 'style.py')}:tiny",
            f"--config.content={content}", f"--config.style={style}", "--config.num_steps=8",
            "--config.checkpoint_every=100", "--config.save_every=0", f"--workdir={wd}"]
  ref, wd = tmp_path / "ref", tmp_path / "stopped"
  g = multiproc.launch(argv(ref), 2, 1)
  assert g.wait(TIMEOUT) == [0, 0], g.text(0)[-2000:] + g.text(1)[-2000:]
  g = multiproc.launch(argv(wd), 2, 1)
  state, on_line = _stop_at([(1, 3, signal.SIGTERM)])
  state["procs"] = g.procs
  assert g.wait(TIMEOUT, on_line) == [143, 143], g.text(0)[-1500:] + g.text(1)[-1500:]
  stopped = [int(re.search(r"after checkpointing step (\d+)", g.text(i)).group(1)) for i in (0, 1)]
  assert stopped[0] == stopped[1] and _steps(wd) == [stopped[0]]
  g = multiproc.launch(argv(wd), 2, 1)
  assert g.wait(TIMEOUT) == [0, 0], g.text(0)[-2000:] + g.text(1)[-2000:]
  assert f"resumed from {wd}/checkpoints/{stopped[0]}" in g.text(1)
  assert fault_inject.differences(fault_inject.Program("style", (), 8, 100, ("final.png",)),
                                  str(ref), str(wd)) == []
  # one events file per session (stopped, resumed): process 0's only
  assert len([f for f in os.listdir(wd) if f.startswith("events.out")]) == 2


# --------------------------------------------------------------------- data and dying processes

_PREPARE = textwrap.dedent("""
    import sys
    from infra import distributed
    distributed.maybe_initialize()
    from configs.facenet import get_config
    from facenet_jax.data import real, streamed
    from infra.overrides import with_overrides
    b = real.prepare("orl_faces", sys.argv[1], sys.argv[2])
    print("records", len(b.as_data_source(split="train")), flush=True)
    c = with_overrides(get_config("tiny"), {"data.source": "folder", "data.data_dir": sys.argv[2],
                                            "data.tfds_dir": sys.argv[1], "data.image_size": 10,
                                            "data.prepare_workers": 1})
    print("folder", streamed.prepared_path(c), flush=True)
""")


def test_two_processes_on_an_unprepared_dataset_prepare_it_once(tmp_path):
  root = tmp_path / "orl"
  rng = np.random.default_rng(0)
  for p in range(1, 4):
    os.makedirs(root / f"s{p}")
    for k in range(1, 4):
      Image.fromarray(rng.integers(0, 256, (112, 92), dtype=np.uint8)).save(root / f"s{p}" / f"{k}.pgm")
  g = multiproc.launch([sys.executable, "-c", _PREPARE, str(tmp_path / "tfds"), str(root)], 2, 1)
  rcs = g.wait(TIMEOUT)
  assert rcs == [0, 0], g.text(0)[-2000:] + g.text(1)[-2000:]
  assert "records 9" in g.text(0) and "records 9" in g.text(1)
  prepared = [d for d, _, files in os.walk(tmp_path / "tfds") if "dataset_info.json" in files]
  assert len(prepared) == 1 and "incomplete" not in prepared[0]
  # the same photos as an identity folder: process 0 reads their bytes for the content key,
  # process 1 finds it memoized, and both name the one folder process 0 prepared
  folders = [re.findall(r"^folder (\S+)$", g.text(i), re.M) for i in (0, 1)]
  assert folders[0] == folders[1] and len(folders[0]) == 1, folders
  assert "9 files of" in g.text(0) and "by content" not in g.text(1), g.text(0) + g.text(1)


def test_processes_launched_with_different_configs_are_refused_naming_the_fields(tmp_path):
  """Process 1 with another margin and learning rate trained its half of every batch under
  them, exit 0 on both, results of neither model (audit: accuracy 0.6725 for 0.6875; each
  checkpoint a blend of the two copies that failed its own SHA-256)."""
  wd = tmp_path / "wd"
  g = multiproc.launch(multiproc.train_argv(str(wd)), 2, 1,
                       extra={1: ["--config.margin=0.3", "--config.optim.learning_rate=4e-3"]})
  assert g.wait(TIMEOUT) == [2, 2], g.text(0)[-2000:] + g.text(1)[-2000:]
  want = ("error: the processes of this run disagree on the config: margin: 0.2 on process 0, 0.3 on "
          "process 1; optim.learning_rate: 0.002 on process 0, 0.004 on process 1; start every "
          "process with the same flags and data")
  assert want in g.text(0) and want in g.text(1)
  assert not os.path.exists(wd / "config.json") and not os.path.exists(wd / "checkpoints")


def test_processes_with_different_device_counts_are_refused_in_one_line(tmp_path):
  """1 + 3 devices failed with 'cannot reshape array of size 4 into shape (2,1)'."""
  g = multiproc.launch(multiproc.train_argv(str(tmp_path / "wd")), 2, 1,
                       extra_env={1: {"JAX_NUM_CPU_DEVICES": "3"}})
  assert g.wait(TIMEOUT) == [2, 2], g.text(0)[-2000:] + g.text(1)[-2000:]
  assert ("error: the processes of this run hold different numbers of devices (process 0: 1, "
          "process 1: 3); give every process the same number") in g.text(0)


def test_check_same_everywhere_names_the_process_that_differs(monkeypatch):
  """The data check (the prepared dataset's name, or a hash of in-memory data) with the
  gather stubbed: every process must read the same data."""
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 3)
  monkeypatch.setattr(distributed, "gathered_bytes", lambda b: [b, b, b"training folder_other"])
  with pytest.raises(distributed.ProcessMismatchError,
                     match=r"disagree on the data they read: 'training folder_a' on process 0, "
                           r"'training folder_other' on process 2; start every process"):
    distributed.check_same_everywhere("the data they read", "training folder_a")
  monkeypatch.setattr(distributed, "gathered_bytes", lambda b: [b, b, b])
  distributed.check_same_everywhere("the data they read", "training folder_a")


_CORRUPT = textwrap.dedent("""
    import shutil, sys
    import numpy as np
    from PIL import Image
    from array_record.python import array_record_module as arm
    from configs.facenet import get_config
    from facenet_jax.data import sources
    from infra.overrides import with_overrides
    root, tfds, bad = sys.argv[1:4]
    rng = np.random.default_rng(0)
    import os
    for k, n in enumerate([4, 5, 6, 4, 5, 6, 4, 5, 6, 4, 5, 6]):
      os.makedirs(f"{root}/p{k}")
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(f"{root}/p{k}/{i}.png")
    fields = {"data.source": "folder", "data.tfds_dir": tfds, "data.train_identities": 0,
              "data.eval_identities": 3, "data.image_size": 12, "data.eval_pairs": 20,
              "data.prepare_workers": 1}
    tr, _ = sources.load(with_overrides(get_config("tiny"), {**fields, "data.data_dir": root}))
    shutil.copytree(tr.images.prepared.path, bad)   # a prepared folder is a data_dir itself
    tr, _ = sources.load(with_overrides(get_config("tiny"), {**fields, "data.data_dir": bad}))
    shard = tr.images.prepared.shard_paths[0]
    r = arm.ArrayRecordReader(shard); recs = r.read_all(); r.close()
    for p in list(tr.images.rows)[::4]:
      recs[p] = b"\\xff\\xd8 garbage"
    w = arm.ArrayRecordWriter(shard, "group_size:1")
    for x in recs:
      w.write(x)
    w.close()
""")


def test_skipped_records_count_every_process_and_survive_a_resume(tmp_path):
  """results.json's skipped_records counted only process 0's rows (9 of 19 on 2 processes)
  and restarted at 0 on a resume (5); it is now the run's count either way."""
  import subprocess
  bad = tmp_path / "bad"
  r = subprocess.run([sys.executable, "-c", _CORRUPT, str(tmp_path / "people"), str(tmp_path / "tfds"),
                      str(bad)], cwd=multiproc.ROOT, env=multiproc.env_for(0, 1, 1, 0),
                     capture_output=True, text=True, timeout=TIMEOUT)
  assert r.returncode == 0, r.stdout + r.stderr
  flags = [f"--config.data.data_dir={bad}", f"--config.data.tfds_dir={tmp_path / 'tfds'}",
           "--config.data.source=folder", "--config.data.train_identities=0",
           "--config.data.eval_identities=3", "--config.data.eval_pairs=20",
           "--config.data.image_size=12", "--config.data.skip_corrupt=True", "--config.data.workers=1"]
  counts = {}
  for name, procs, devs in (("one", 1, 2), ("two", 2, 1)):
    g, rcs = _run(tmp_path / name, procs, devs, *flags)
    assert rcs == [0] * procs, g.text(0)[-3000:]
    counts[name] = json.load(open(tmp_path / name / "results.json"))["skipped_records"]
  assert counts["one"] == counts["two"] > 0, counts
  wd = tmp_path / "stopped"
  sent = []

  def stop_at_step_2(i, line):   # process 1 stops the run after step 2 (checkpoint_every 2)
    if i == 1 and not sent and line.startswith("step 2/"):
      sent.append(1)
      g.procs[1].send_signal(signal.SIGTERM)
  g = multiproc.launch(multiproc.train_argv(str(wd), *flags), 2, 1)
  assert g.wait(TIMEOUT, stop_at_step_2) == [143, 143], g.text(0)[-3000:]
  g, rcs = _run(wd, 2, 1, *flags)
  assert rcs == [0, 0] and "resumed from" in g.text(0), g.text(0)[-3000:]
  assert json.load(open(wd / "results.json"))["skipped_records"] == counts["one"]


def test_a_killed_process_ends_the_other_with_a_named_error_within_a_minute(tmp_path):
  g = multiproc.launch(multiproc.train_argv(str(tmp_path / "wd"), "--config.num_steps=2000",
                                            "--config.log_every=1", "--config.checkpoint_every=1000",
                                            "--config.eval_every=2000"), 2, 1,
                       heartbeat_s=30)
  killed = {}

  def on_line(i, line):
    if i == 1 and line.startswith("step 3/") and not killed:
      killed["at"] = time.time()
      g.procs[1].send_signal(signal.SIGKILL)
  rcs = g.wait(TIMEOUT, on_line)
  assert rcs[1] == -signal.SIGKILL and rcs[0] != 0
  assert g.ended[0] - killed["at"] < 60
  assert re.search(r"Task 1 heartbeat timeout|Connection closed by peer", g.text(0)), g.text(0)[-3000:]


def test_accelerator_benchmark_quick_runs_every_row_on_cpu():
  """benchmarks/accelerator.py --quick: every row of the accelerator table, tiny sizes."""
  import subprocess
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             JAX_COMPILATION_CACHE_DIR=multiproc.CACHE)
  r = subprocess.run([sys.executable, os.path.join(multiproc.ROOT, "benchmarks", "accelerator.py"),
                      "--quick"], env=env, cwd=multiproc.ROOT, capture_output=True, text=True,
                     timeout=TIMEOUT)
  assert r.returncode == 0, r.stderr[-3000:]
  for row in ("small_cnn 16 px, bf16 matmuls, 4/device", "small_cnn 16 px, bf16 matmuls, 8/device",
              "K=3 margins", "style transfer 32 px, 5 L-BFGS iterations",
              "in-memory batch gather (synthetic source, no loader workers; not the record pipeline",
              "global batch 4 (4/device)"):
    assert row in r.stdout, r.stdout
  assert "FAILED" not in r.stdout, r.stdout
  assert re.search(r"MFU \d+\.\d%", r.stdout) and re.search(r": \d+\.\d\dx, median of 2 interleaved rounds", r.stdout)
