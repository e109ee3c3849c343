"""The SHA-256 every checkpoint records over its arrays (infra/checkpoints.py): it cannot be
switched off by editing the meta, and arrays or whole step folders copied between steps are
caught. Checkpoints here are tiny pytrees in tmp_path."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infra import checkpoints

_STATE = {"params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)},
          "step": jnp.zeros((), jnp.int32)}


def _state_at(step: int) -> dict:
  """A state whose every array differs from step to step."""
  return jax.tree.map(lambda a: a + jnp.asarray(step, a.dtype), _STATE)


def _save_steps(directory, steps=(2, 4)) -> None:
  ck = checkpoints.Checkpointer(directory, every=1, keep=5)
  for s in steps:
    ck.save(s, _state_at(s), {"note": f"step {s}"})
  ck.close()


def _meta_path(directory, step: int) -> str:
  """Where Orbax keeps the JSON ``meta`` item of a step: <step>/meta/metadata."""
  return os.path.join(directory, str(step), "meta", "metadata")


def _edit_meta(directory, step: int, edit) -> None:
  p = _meta_path(directory, step)
  with open(p) as f:
    meta = json.load(f)
  edit(meta)
  with open(p, "w") as f:
    json.dump(meta, f)


def _restore(directory, step: int):
  ck = checkpoints.Checkpointer(directory, every=1)
  try:
    return ck.restore(_STATE, step=step)
  finally:
    ck.close()


def _verify(directory, step: int) -> None:
  ck = checkpoints.Checkpointer(directory, every=1)
  try:
    ck.verify(step)
  finally:
    ck.close()


def _assert_refused(directory, step: int, match: str) -> None:
  """Both restore and verify refuse ``step``; the other step still restores intact."""
  for read in (_restore, _verify):
    with pytest.raises(checkpoints.CheckpointError, match=match):
      read(directory, step)
  other = 4 if step == 2 else 2
  got, state, meta = _restore(directory, other)
  assert got == other and meta["note"] == f"step {other}"
  np.testing.assert_array_equal(state["params"]["w"], _state_at(other)["params"]["w"])


def test_every_save_records_a_digest_that_restore_checks_and_removes(tmp_path):
  d = str(tmp_path / "ck")
  _save_steps(d)
  with open(_meta_path(d, 2)) as f:
    recorded = json.load(f)[checkpoints.DIGEST_KEY]
  assert recorded == checkpoints.state_digest(_state_at(2)) and len(recorded) == 64
  with warnings.catch_warnings():
    warnings.simplefilter("error", checkpoints.UnverifiedCheckpointWarning)
    step, state, meta = _restore(d, 2)
    _verify(d, 2)
  assert step == 2 and checkpoints.DIGEST_KEY not in meta and meta["step"] == 2
  np.testing.assert_array_equal(state["params"]["b"], _state_at(2)["params"]["b"])


def test_a_deleted_digest_is_an_error_naming_the_step_folder(tmp_path):
  d = str(tmp_path / "ck")
  _save_steps(d)
  _edit_meta(d, 2, lambda m: m.pop(checkpoints.DIGEST_KEY))
  _assert_refused(d, 2, r"checkpoint .*ck/2 is corrupt: its meta \(meta/metadata\) has no "
                        r"state_sha256.*put the recorded digest back, or delete that step "
                        r"directory to resume from an earlier one \(\[4\]\)")


@pytest.mark.parametrize("value", [None, "", "abc", 12, "0" * 63, "A" * 64])
def test_a_malformed_digest_is_an_error(tmp_path, value):
  d = str(tmp_path / "ck")
  _save_steps(d)
  _edit_meta(d, 2, lambda m: m.update({checkpoints.DIGEST_KEY: value}))
  _assert_refused(d, 2, r"ck/2 is corrupt: .*state_sha256 = .*expected 64 hex digits")


@pytest.mark.parametrize("merge", [False, True], ids=["replaced", "copied-over"])
def test_arrays_swapped_in_from_another_step_are_caught(tmp_path, merge):
  d = str(tmp_path / "ck")
  _save_steps(d)
  src, dst = os.path.join(d, "4", "state"), os.path.join(d, "2", "state")
  if not merge:
    shutil.rmtree(dst)
  shutil.copytree(src, dst, dirs_exist_ok=merge)   # step 2 keeps its own meta and digest
  _assert_refused(d, 2, r"ck/2 is corrupt: its arrays do not match the SHA-256")


def test_a_whole_step_copied_over_another_is_caught_by_its_meta_step(tmp_path):
  d = str(tmp_path / "ck")
  _save_steps(d)
  for item in ("state", "meta"):   # arrays and their matching digest both from step 4
    shutil.rmtree(os.path.join(d, "2", item))
    shutil.copytree(os.path.join(d, "4", item), os.path.join(d, "2", item))
  _assert_refused(d, 2, r"ck/2 is corrupt: its meta \(meta/metadata\) says step 4, expected 2")


def test_a_meta_without_its_step_is_an_error(tmp_path):
  d = str(tmp_path / "ck")
  _save_steps(d)
  _edit_meta(d, 4, lambda m: m.pop("step"))
  _assert_refused(d, 4, r"ck/4 is corrupt: its meta \(meta/metadata\) says step None, expected 4")


def test_a_state_sharded_across_processes_is_saved_and_restored_unverified(tmp_path, monkeypatch):
  # state_digest returns None when no process holds the arrays whole (multi-host sharding);
  # that is the one documented reason a checkpoint lacks a digest, stated in the meta
  d = str(tmp_path / "ck")
  monkeypatch.setattr(checkpoints, "state_digest", lambda tree: None)
  _save_steps(d, steps=(2,))
  with open(_meta_path(d, 2)) as f:
    assert json.load(f)[checkpoints.DIGEST_KEY] == checkpoints.UNVERIFIED
  monkeypatch.undo()   # restoring on one host could hash the arrays, but has nothing to compare
  with pytest.warns(checkpoints.UnverifiedCheckpointWarning,
                    match=r"checkpoint .*ck/2: restored unverified \(no SHA-256: its arrays were "
                          r"sharded across processes when saved\)"):
    step, state, meta = _restore(d, 2)
  assert step == 2 and checkpoints.DIGEST_KEY not in meta
  np.testing.assert_array_equal(state["params"]["w"], _state_at(2)["params"]["w"])
  with pytest.warns(checkpoints.UnverifiedCheckpointWarning, match=r"ck/2: restored unverified"):
    _verify(d, 2)


def test_restoring_into_arrays_this_process_does_not_hold_whole_warns(tmp_path, monkeypatch):
  d = str(tmp_path / "ck")
  _save_steps(d, steps=(2,))
  monkeypatch.setattr(checkpoints, "state_digest", lambda tree: None)
  with pytest.warns(checkpoints.UnverifiedCheckpointWarning,
                    match=r"ck/2: restored unverified \(this process does not hold its arrays"):
    step, _, _ = _restore(d, 2)
  assert step == 2


def test_read_only_restore_logs_no_orbax_warnings_and_leaves_other_warnings_alone(tmp_path, caplog):
  """Restoring read-only (evaluate, recognize) printed three orbax warnings per call, one of
  them "Given directory is read only=...", which is about orbax's mode, not the folder."""
  import logging
  d = str(tmp_path / "ck")
  _save_steps(d)
  caplog.set_level(logging.INFO, logger="absl")
  ck = checkpoints.Checkpointer(d, every=1, read_only=True)
  got, state, _ = ck.restore(_STATE)
  ck.close()
  assert got == 4
  np.testing.assert_array_equal(state["params"]["w"], _state_at(4)["params"]["w"])
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  logging.getLogger("absl").warning("Given directory is read only=elsewhere")   # filter removed
  assert "elsewhere" in caplog.text


def _save_big(directory) -> dict:
  """Steps 2 and 4 of a state with an array too big to sit inline in the OCDBT B-tree
  (> 1,024 bytes), so the step has a tree-node file and a separate array-value file."""
  big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32),
         "b": jnp.zeros(3)}
  ck = checkpoints.Checkpointer(directory, every=1, keep=5)
  for s in (2, 4):
    ck.save(s, jax.tree.map(lambda a: a + s, big))
  ck.close()
  return big


def _step_files(directory, step: int) -> dict[str, str]:
  """The tree-node file (``state/d/``) and the value file (a process's ``ocdbt.process_0/d/``)."""
  state = os.path.join(directory, str(step), "state")
  node, = os.listdir(os.path.join(state, "d"))
  values = max(os.listdir(os.path.join(state, "ocdbt.process_0", "d")),
               key=lambda n: os.path.getsize(os.path.join(state, "ocdbt.process_0", "d", n)))
  return {"node": os.path.join(state, "d", node),
          "values": os.path.join(state, "ocdbt.process_0", "d", values)}


@pytest.mark.parametrize("damage", ["missing", "cut"])
@pytest.mark.parametrize("which", ["node", "values"])
def test_a_missing_or_cut_array_file_is_named_before_orbax_reads(tmp_path, which, damage):
  """Before: a NOT_FOUND / OUT_OF_RANGE error quoting a whole tensorstore spec, and the reads
  Orbax had in flight printing "Event loop is closed" tracebacks at exit."""
  d = str(tmp_path / "ck")
  big = _save_big(d)
  f = _step_files(d, 2)[which]
  if damage == "missing":
    os.remove(f)
    said = "is missing"
  else:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
    said = rf"is {os.path.getsize(f)} bytes, expected >= \d+"
  for read in (lambda: _restore_into(d, big, 2), lambda: _verify(d, 2)):
    with pytest.raises(checkpoints.CheckpointError) as e:
      read()
    assert str(e.value).startswith(f"checkpoint {d}/2 is corrupt: {f} ")
    assert re.search(rf"{said} \(its arrays point into it\); delete that step directory to "
                     rf"resume from an earlier one \(\[4\]\)$", str(e.value)), str(e.value)
    assert len(str(e.value)) < 400
  step, state, _ = _restore_into(d, big, 4)
  np.testing.assert_array_equal(state["w"], big["w"] + 4)


def _restore_into(directory, abstract, step: int):
  ck = checkpoints.Checkpointer(directory, every=1)
  try:
    return ck.restore(abstract, step=step)
  finally:
    ck.close()


def test_a_damaged_only_checkpoint_says_the_run_starts_again(tmp_path):
  d = str(tmp_path / "ck")
  _save_steps(d, steps=(2,))
  _edit_meta(d, 2, lambda m: m.pop(checkpoints.DIGEST_KEY))
  with pytest.raises(checkpoints.CheckpointError,
                     match=rf"it is this run's only checkpoint: move {d} away to start the run again"):
    _restore(d, 2)


def test_a_script_on_a_missing_array_file_prints_one_line(tmp_path):
  """The whole stderr of a script (through infra.cli) is its one error line: no tracebacks
  from reads left in flight."""
  d = str(tmp_path / "ck")
  _save_big(d)
  os.remove(_step_files(d, 4)["values"])
  code = ("import jax.numpy as jnp\n"
          "from infra import checkpoints, cli\n"
          "def main():\n"
          f"  ck = checkpoints.Checkpointer({d!r}, every=1)\n"
          "  ck.restore({'w': jnp.zeros((64, 64)), 'b': jnp.zeros(3)})\n"
          "cli.run(main, absl_flags=False)\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                     timeout=120, env={**os.environ, "PYTHONPATH": root})
  assert p.returncode == 2, p.stderr
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {d}/4 is corrupt: ") \
      and "is missing" in lines[0], p.stderr
