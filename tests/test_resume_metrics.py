"""A run stopped or killed between two logs and resumed writes the metrics of an uninterrupted
run: the same metrics.jsonl rows, TensorBoard scalars and results.json train_metrics (the
parameters were already bit-identical; tests/test_reliability.py logs every step, which hid
both faults). The runs: the tiny config, 8 steps, a log every 3 steps (3, 6, 8), a checkpoint
every 4 (4, 8), one device."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.facenet import get_config
from facenet_jax import members as members_lib, train
from infra import metric_writer
from infra.errors import Preempted
from infra.overrides import with_overrides

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OVERRIDES = {"num_steps": 8, "log_every": 3, "checkpoint_every": 4, "eval_every": 4}
TIMING = {"train/steps_per_sec", "steps_per_sec", "wall_seconds"}


def _train(workdir, stop_after=None, **overrides):
  """Trains on one device; ``stop_after``: a SIGTERM arrives while that step's batch is made
  (the run checkpoints it and raises Preempted)."""
  config = with_overrides(get_config("tiny"), dict(OVERRIDES, **overrides))
  real = train.RunData.batch

  def batch(self, step, rows=slice(None)):
    if step == stop_after - 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self, step, rows)
  with pytest.MonkeyPatch.context() as m:
    if stop_after is not None:
      m.setattr(train.RunData, "batch", batch)
    return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])


def _rows(workdir):
  """metrics.jsonl without its timing fields."""
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metric_writer.read_metrics(str(workdir))]


def _train_metrics(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return {k: v for k, v in json.load(f)["train_metrics"].items() if k not in TIMING}


def _scalars(workdir):
  """``{tag: [(step, value)]}`` as TensorBoard shows them (without timing tags)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(workdir), size_guidance={"scalars": 0})
  acc.Reload()
  return {t: [(e.step, e.value) for e in acc.Scalars(t)]
          for t in acc.Tags()["scalars"] if t not in TIMING}


def _raw_summaries(workdir):
  """``[(step, tag)]`` of every summary value in every event file (no TensorBoard purge)."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  out = []
  for n in sorted(os.listdir(workdir)):
    if n.startswith("events.out.tfevents"):
      out += [(e.step, v.tag) for e in EventFileLoader(os.path.join(workdir, n)).Load()
              for v in e.summary.value]
  return sorted(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  work = tmp_path_factory.mktemp("reference") / "run"
  _train(work)
  return work


def _assert_same_logs(work, ref):
  assert _rows(work) == _rows(ref)
  assert _train_metrics(work) == _train_metrics(ref)
  assert _scalars(work) == _scalars(ref)
  assert _raw_summaries(work) == _raw_summaries(ref)


def test_sigterm_between_logs_resumes_with_the_uninterrupted_logs(reference, tmp_path):
  """Stopped after step 5 (between the logs of 3 and 6) and after step 7 (in the last log
  window): no row is logged at 5 or 7, and the logs at 6 and 8 average steps 4-6 and 7-8, as
  in the uninterrupted run (the unlogged steps' metrics travel in the checkpoint meta)."""
  work = tmp_path / "run"
  for stop in (5, 7):
    with pytest.raises(Preempted, match=f"after checkpointing step {stop}"):
      _train(work, stop)
  assert [r["step"] for r in metric_writer.read_metrics(str(work)) if "train/loss" in r] == [3, 6]
  _train(work)
  _assert_same_logs(work, reference)


_KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
from configs.facenet import get_config
from facenet_jax import train
from infra.overrides import with_overrides
real = train.RunData.batch
def batch(self, step, rows=slice(None)):
  if step == 6:   # making step 7's batch: step 6 is logged and flushed, checkpoint 8 not made
    os.kill(os.getpid(), signal.SIGKILL)
  return real(self, step, rows)
train.RunData.batch = batch
train.train_and_evaluate(with_overrides(get_config("tiny"), {overrides!r}), {work!r},
                         devices=jax.devices()[:1])
"""


def test_kill_after_a_log_resumes_without_duplicate_rows(reference, tmp_path):
  """SIGKILL in step 7, after the log of step 6 and before checkpoint 8: the resumed run
  starts from checkpoint 4 and logs step 6 again. metrics.jsonl and the event files keep one
  row per step, and the log of step 6 averages steps 4-6 (step 4's metrics came from the
  checkpoint: 4 is not a log step)."""
  work = tmp_path / "run"
  code = _KILLED.format(root=ROOT, cache=jax.config.jax_compilation_cache_dir,
                        overrides=OVERRIDES, work=str(work))
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
  assert sorted(os.listdir(work / "checkpoints")) == ["4"]
  assert [r["step"] for r in metric_writer.read_metrics(str(work)) if "train/loss" in r] == [3, 6]
  _train(work)
  _assert_same_logs(work, reference)


def test_restart_drops_later_rows_and_summaries(tmp_path):
  """``MetricWriter.restart_at(s)``: rows and summaries of steps >= s from an earlier writer
  (killed: flushed, never closed) are gone from metrics.jsonl and its event file, the rest
  stays byte for byte; the new event file starts with TensorBoard's SessionLog.START at s."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.compat.proto.event_pb2 import SessionLog
  killed = metric_writer.MetricWriter(str(tmp_path))
  for s in range(7):
    killed.write_scalars(s, {"train/loss": s / 10})
  killed.flush()
  first = sorted(os.listdir(tmp_path))
  resumed = metric_writer.MetricWriter(str(tmp_path))
  resumed.restart_at(5)
  resumed.write_scalars(5, {"train/loss": 0.55})
  resumed.close()
  assert metric_writer.read_metrics(str(tmp_path)) == [
      {"step": s, "train/loss": s / 10} for s in range(5)] + [{"step": 5, "train/loss": 0.55}]
  assert _raw_summaries(tmp_path) == sorted([(s, "train/loss") for s in range(6)])
  new = [n for n in os.listdir(tmp_path) if n.startswith("events") and n not in first]
  starts = [e.step for e in EventFileLoader(str(tmp_path / new[0])).Load()
            if e.session_log.status == SessionLog.START]
  assert starts == [5]
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".rewrite-")]
  killed.close()


def test_margin_axis_carries_each_members_unlogged_steps(tmp_path):
  """Two margins in one vmapped run of 6 steps, stopped after step 5: each member's
  checkpoint carries its own metrics of steps 4-5, and each member's logs equal those of the
  uninterrupted run."""
  margins = {"margins": (0.1, 0.3), "num_steps": 6}
  _train(tmp_path / "ref", **margins)
  with pytest.raises(Preempted, match="after checkpointing step 5"):
    _train(tmp_path / "run", 5, **margins)
  _train(tmp_path / "run", **margins)
  members = [members_lib.member_name(m) for m in margins["margins"]]
  for name in members:
    assert _rows(tmp_path / "run" / name) == _rows(tmp_path / "ref" / name)
    assert _train_metrics(tmp_path / "run" / name) == _train_metrics(tmp_path / "ref" / name)
  assert _rows(tmp_path / "ref" / members[0]) != _rows(tmp_path / "ref" / members[1])


def test_a_log_window_pools_triplet_statistics_over_its_valid_triplets():
  """A step without a valid triplet (semi-hard, fallback 'drop') reports frac_active and the
  mean distances as 0; a plain mean over the window counted those zeros (one such step in
  two halved mean_d_ap). Reference: the statistics of all the window's triplets at once."""
  rng = np.random.default_rng(0)
  steps = []
  triplets = []   # (d_ap, d_an, active) of every valid triplet of the window
  for n in (3, 0, 5, 1):
    d_ap, d_an = rng.uniform(0, 1, n), rng.uniform(0, 2, n)
    active = (d_ap - d_an + 0.2) > 0
    triplets += list(zip(d_ap, d_an, active))
    denom = max(n, 1)
    steps.append({"loss": rng.uniform(), "num_valid": np.float32(n), "num_active": np.float32(active.sum()),
                  "frac_active": np.float32(active.sum() / denom), "mean_d_ap": np.float32(d_ap.sum() / denom),
                  "mean_d_an": np.float32(d_an.sum() / denom)})
  got = members_lib.window_means(steps)
  t = np.asarray(triplets, np.float64)
  np.testing.assert_allclose([got["frac_active"], got["mean_d_ap"], got["mean_d_an"]],
                             [t[:, 2].mean(), t[:, 0].mean(), t[:, 1].mean()], rtol=1e-6)
  assert got["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]))   # the steps' objective
  assert got["num_valid"] == pytest.approx(9 / 4)
  empty = members_lib.window_means([{**steps[1]}, {**steps[1]}])
  assert empty["mean_d_ap"] == 0.0 and empty["frac_active"] == 0.0


def test_finished_run_run_again_logs_its_final_rows_once(reference, tmp_path):
  """A finished run started again with the same command evaluates again and logs its
  ``final/...`` rows at the last step: one copy of each (a second was appended before), the
  logs otherwise the uninterrupted run's."""
  work = tmp_path / "run"
  _train(work)
  _train(work)
  _assert_same_logs(work, reference)
  tags = [t for s, t in _raw_summaries(work) if t.startswith("final/")]
  assert tags and len(tags) == len(set(tags))


def test_forget_drops_only_the_prefix(tmp_path):
  """``MetricWriter.forget(s, prefix)``: values tagged ``prefix...`` at steps >= s go from
  metrics.jsonl and the earlier event files; other values of the same rows stay."""
  first = metric_writer.MetricWriter(str(tmp_path))
  first.write_scalars(2, {"train/loss": 0.2, "final/acc": 0.9})
  first.write_scalars(3, {"final/acc": 0.8})
  first.write_scalars(1, {"final/acc": 0.7})
  first.close()
  again = metric_writer.MetricWriter(str(tmp_path))
  again.forget(2, "final/")
  again.close()
  assert metric_writer.read_metrics(str(tmp_path)) == [
      {"step": 2, "train/loss": 0.2}, {"step": 1, "final/acc": 0.7}]
  assert _raw_summaries(tmp_path) == [(1, "final/acc"), (2, "train/loss")]


def test_a_writer_started_in_the_second_of_an_earlier_one_sorts_after_it(tmp_path):
  """TensorBoard reads event files in name order (events.out.tfevents.<second>.<host>.<pid>):
  a run resumed within the second its killed run started could sort first, by pid as text."""
  import time
  fake = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.zzzz.99999.0"   # sorts last
  fake.write_bytes(b"")
  w = metric_writer.MetricWriter(str(tmp_path))
  w.close()
  names = sorted(n for n in os.listdir(tmp_path) if n.startswith("events"))
  assert names[0] == fake.name and len(names) == 2
