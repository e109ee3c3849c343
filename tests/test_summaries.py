"""Sweep summaries say what their data is (audit 13): counts per averaged point, runs left out,
failed points and their errors, K-margin members by name, the std's ddof.

Every fixture is a fake sweep written here in the formats the readers read (sweep.json,
results.json, config.json, metrics.jsonl, checkpoints/<step>/): no training."""

import json
import os

import matplotlib
import numpy as np
import pytest

from conftest import load_script
from configs import sweeps as config_sweeps
from facenet_jax import sweep
from infra import files, overrides

matplotlib.use("Agg")


def _done(wd, *, acc, step=6, val=0.02, frac_active=0.9):
  """A finished run: results.json (pair metrics, evals, last train metrics), config.json and
  one logged row of train statistics."""
  os.makedirs(wd, exist_ok=True)
  m = {"verification_accuracy": acc, "verification_accuracy_std": 0.04, "val_at_far_1e-3": val,
       "roc_auc": acc + 0.1, "eer": 1.0 - acc}
  files.write_json_atomic(os.path.join(wd, "results.json"), {
      "step": step, "metrics": m, "evals": {"pairs": m}, "wall_seconds": 1.0,
      "train_metrics": {"frac_active": frac_active, "mean_d_ap": 0.1, "mean_d_an": 0.2}})
  files.write_json_atomic(os.path.join(wd, "config.json"), {"num_steps": step})
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": step, "train/frac_active": frac_active, "train/mean_d_ap": 0.1,
                        "train/mean_d_an": 0.2}) + "\n")


def _unfinished(wd, checkpoints, num_steps=6):
  os.makedirs(wd, exist_ok=True)
  files.write_json_atomic(os.path.join(wd, "config.json"), {"num_steps": num_steps})
  for s in checkpoints:
    os.makedirs(os.path.join(wd, "checkpoints", str(s)))


def _figures(monkeypatch):
  """The figures the scripts save, in order (they close them after saving)."""
  from matplotlib.figure import Figure
  saved, real = [], Figure.savefig

  def keep(fig, *a, **k):
    saved.append(fig)
    return real(fig, *a, **k)
  monkeypatch.setattr(Figure, "savefig", keep)
  return saved


def _seed_sweep(root, accs, unfinished=()):
  """margin x seed runs (``accs[(margin, seed)]``), ``unfinished`` ones with checkpoints only."""
  points = [{"margin": m, "seed": s} for (m, s) in accs]
  for p in points:
    wd = os.path.join(root, overrides.point_name(p))
    if (p["margin"], p["seed"]) in unfinished:
      _unfinished(wd, [2, 4])
    else:
      _done(wd, acc=accs[(p["margin"], p["seed"])])
  sweep.write_index(root, points)


# -------------------------------------------------------------- 1: the count of each averaged point


def test_averaged_means_are_over_the_seeds_every_value_finished(tmp_path, monkeypatch):
  """One seed of margin=0.2 unfinished: margin 0.1 was averaged over seeds {0, 1, 2} and 0.2 over
  {0, 1}, which can reverse a ranking (an audit); now both over {0, 1}, margin 0.1's seed 2 named
  as left out, with the paired differences. The figure's title says the count; a point over
  fewer seeds than another (other settings) is hollow and labelled."""
  cr = load_script("compare_runs")
  accs = {(m, s): 0.6 + 0.01 * s + m for m in (0.1, 0.2) for s in (0, 1, 2)}
  root = str(tmp_path / "ms")
  _seed_sweep(root, accs, unfinished={(0.2, 2)})
  figs = _figures(monkeypatch)
  s = cr.compare(root, field="margin", average="seed", histograms=False, out=str(tmp_path / "o"))
  rows = s["averaged"]["rows"]
  assert [r["n"] for r in rows] == [2, 2] and [r["seed"] for r in rows] == [[0, 1], [0, 1]]
  assert rows[0]["verification_accuracy_mean"] == pytest.approx(np.mean([accs[(0.1, 0)], accs[(0.1, 1)]]))
  assert s["averaged"]["left_out"] == [overrides.point_name({"margin": 0.1, "seed": 2})]
  assert rows[1]["verification_accuracy_diff_mean"] == pytest.approx(0.1)   # 0.2 - 0.1 at each seed
  assert rows[1]["verification_accuracy_diff_std"] == pytest.approx(0.0, abs=1e-12)
  table = open(tmp_path / "o" / "compare.md").read()
  assert "left out, finished at a seed that another margin has not finished: margin=0.1,seed=2" in table
  assert "| 0.2 | 2 | 0.8050 +- 0.0050 | +0.1000 +- 0.0000 |" in table
  assert "| 0.1 | 2 | 0.7050 +- 0.0050 | reference |" in table
  fig = next(f for f in figs if "verification against" in f._suptitle.get_text())
  assert "over 2 seeds" in fig._suptitle.get_text()
  assert not fig.axes[0].texts   # every point over as many seeds: no marks
  assert cr.averaged_suffix("seed", [{"n": 3}, {"n": 2}]) == (
      " (mean +- std (ddof=0) over n = 2-3 seeds; hollow markers: n < 3, labelled)", 3)


# -------------------------------------------------------------- 2: batch study, runs not done


def _batch_sweep(root, unfinished_name=None, drop=None):
  """The batch_size_orl sweep's 6 points as fake runs; ``unfinished_name`` has only a
  checkpoint at 40; ``drop`` is left out of the sweep."""
  points = [p for p in config_sweeps.sweep("batch_size_orl") if overrides.point_name(p) != drop]
  for i, p in enumerate(points):
    wd = os.path.join(root, overrides.point_name(p))
    if overrides.point_name(p) == unfinished_name:
      _unfinished(wd, [40], num_steps=p["num_steps"])
    else:
      _done(wd, acc=0.6 + 0.01 * i, step=p["num_steps"])
  sweep.write_index(root, points)


def test_batch_study_names_runs_not_done_and_substitutes_none_for_them(tmp_path, monkeypatch, capsys):
  """The 300 (30x10) run at equal images (85 steps) unfinished: it was dropped from the table
  without a word, and the 100-step 300 run (30,000 images) was drawn in its place on the curve
  labelled 'equal images (~25,600)'."""
  pbs = load_script("plot_batch_study")
  late = next(overrides.point_name(p) for p in config_sweeps.sweep("batch_size_orl")
              if p["identities_per_batch"] == 30 and p["num_steps"] == 85)
  root = str(tmp_path / "bs_partial")
  _batch_sweep(root, unfinished_name=late)
  figs = _figures(monkeypatch)
  pbs.plot([root], str(tmp_path / "bs.png"))
  out = capsys.readouterr().out
  assert out.count("| 300 (30x10) |") == 1   # the 100-step run only
  assert "not finished, left out of the table and the figure (1 of 6 runs):" in out
  assert f"- 300 (30x10), 85 steps: partial (last checkpoint 40)  [{late}]" in out
  ax_val = figs[-1].axes[1]
  curves = {ln.get_label(): list(ln.get_xdata()) for ln in ax_val.get_lines()}
  assert curves == {"equal steps (100)": [32, 128, 300], "equal images (~25,600)": [32, 128]}
  assert "300 (30x10), 85 steps: partial (last checkpoint 40)" in ax_val.get_xlabel()
  # a sweep without an equal-images run of that batch: the equal-steps run still serves both
  _batch_sweep(str(tmp_path / "bs_designed"), drop=late)
  rows, skipped = pbs.scan(str(tmp_path / "bs_designed"))
  assert skipped == []
  assert [r["batch"] for r in pbs.groups(rows, skipped)["equal images (~25,600)"]] == [32, 128, 300]


# -------------------------------------------------------------- 3: failed points keep their error


def test_failed_point_keeps_its_status_error_and_step(tmp_path):
  """scripts/sweep.py recorded seed=2 'failed' with its NonFiniteLossError in sweep.json;
  collect_runs read the disk only, and compare.md said 'partial' with step '-'."""
  cr = load_script("compare_runs")
  root = str(tmp_path / "fail")
  points = [{"seed": s} for s in range(4)]
  _done(os.path.join(root, "seed=0"), acc=0.68)
  _done(os.path.join(root, "seed=1"), acc=0.64)
  _unfinished(os.path.join(root, "seed=2"), [2, 4, 6])
  _unfinished(os.path.join(root, "seed=3"), [2, 4])
  error = "NonFiniteLossError: loss became NaN at step 5"
  sweep.write_index(root, points, errors={"seed=2": error, "seed=1": "ValueError: old, since redone"})
  runs = {r.name: r for r in sweep.collect_runs(root)}
  assert (runs["seed=2"].status, runs["seed=2"].error, runs["seed=2"].step) == ("failed", error, 6)
  assert (runs["seed=3"].status, runs["seed=3"].error, runs["seed=3"].step) == ("partial", None, 4)
  assert (runs["seed=1"].status, runs["seed=1"].error) == ("done", None)   # finished: done wins
  s = cr.compare(root, histograms=False, out=str(tmp_path / "o"))
  table = open(tmp_path / "o" / "compare.md").read()
  assert f"| 2 | failed: {error} | 6 (last checkpoint) | - |" in table
  assert "| 3 | partial | 4 (last checkpoint) | - |" in table
  assert "| 1 | done | 6 | 0.6400 +- 0.0400 |" in table
  got = {r["name"]: r for r in json.load(open(tmp_path / "o" / "compare.json"))["runs"]}
  assert got["seed=2"]["status"] == "failed" and got["seed=2"]["error"] == error
  assert got["seed=2"]["step"] == 6 and "error" not in got["seed=3"]
  assert s["runs"][2]["error"] == error
  # and the table scripts/sweep.py prints at the end
  printed = load_script("sweep").index_table(sweep.read_index(root))
  assert f"| seed=2 | failed: {error} | 6 (last checkpoint) | - |" in printed
  assert "| seed=3 | partial | 4 (last checkpoint) | - |" in printed


def test_an_unfinished_k_margin_point_shows_its_members_last_checkpoints(tmp_path):
  """A killed K-margin point (members checkpoint in margin=<a>/checkpoints) was 'pending' with no
  step in sweep.json and compare.md, sweep.py said 'starting' before resuming it, and its
  'margins' override became a column of the seeds' table (an audit)."""
  cr = load_script("compare_runs")
  root = str(tmp_path / "ms")
  margins = [0.1, 0.2]
  points = [{"seed": 0, "margins": margins}, {"seed": 1, "margins": margins}]
  done, wd = (os.path.join(root, overrides.point_name(p)) for p in points)
  for m, acc in zip(margins, (0.6, 0.7)):   # seed 0 finished: its own index of members
    _done(os.path.join(done, f"margin={m:g}"), acc=acc)
  sweep.write_index(done, [{"margin": m} for m in margins])
  _unfinished(wd, [], num_steps=40)
  files.write_json_atomic(os.path.join(wd, "config.json"), {"num_steps": 40, "margins": margins})
  _unfinished(os.path.join(wd, "margin=0.1"), [8, 12, 13], num_steps=40)
  _unfinished(os.path.join(wd, "margin=0.2"), [8, 12], num_steps=40)
  assert sweep.point_status(wd) == {"status": "partial", "step": 12, "metrics": {}}   # resumes at 12
  sweep.write_index(root, points)
  runs = {r.name: r for r in sweep.collect_runs(root)}
  k = os.path.basename(wd)
  assert sorted(runs) == sorted(f"{os.path.basename(d)}/margin={m:g}" for d in (done, wd) for m in margins)
  assert (runs[f"{k}/margin=0.1"].status, runs[f"{k}/margin=0.1"].step) == ("partial", 13)
  assert runs[f"{k}/margin=0.2"].overrides == {"seed": 1, "margin": 0.2}
  cr.compare(root, histograms=False, out=str(tmp_path / "o"))
  table = open(tmp_path / "o" / "compare.md").read()
  assert table.splitlines()[0].startswith("| seed | margin | status |")   # no 'margins' column
  assert "| 1 | 0.2 | partial | 12 (last checkpoint) | - |" in table


# -------------------------------------------------------------- 4: K-margin members by name, in order


def test_k_margin_accuracies_are_named_and_in_the_runs_margins_order(tmp_path):
  """A config.margins run's accuracies came unnamed in sweep.json's sorted key order
  (margin=0.5, margin=10, margin=2): the 10's accuracy read as the 2's."""
  root = str(tmp_path / "ms10")
  wd = os.path.join(root, "seed=0")
  os.makedirs(wd)
  accs = {"margin=0.5": 0.61, "margin=2": 0.62, "margin=10": 0.63}
  files.write_json_atomic(os.path.join(wd, "results.json"), {   # as train.finish writes it
      "margins": [0.5, 2.0, 10.0], "step": 6, "wall_seconds": 1.0,
      "members": {n: {"verification_accuracy": a, "verification_accuracy_std": 0.04}
                  for n, a in accs.items()}})
  _done(os.path.join(root, "seed=1"), acc=0.7)
  index = sweep.write_index(root, [{"seed": 0}, {"seed": 1}])
  assert [k for k in index["points"][0]["metrics"] if k.endswith("verification_accuracy")] == [
      "margin=0.5/verification_accuracy", "margin=2/verification_accuracy",
      "margin=10/verification_accuracy"]
  printed = load_script("sweep").index_table(index)
  assert "| seed=0 | done | 6 | margin=0.5: 0.6100, margin=2: 0.6200, margin=10: 0.6300 |" in printed
  assert "| seed=1 | done | 6 | 0.7000 |" in printed   # one run: one accuracy, unnamed
  # the order is the run's, not a sort: margins (10, 0.5)
  entry = {"metrics": {"margin=0.5/verification_accuracy": 0.5, "margin=10/verification_accuracy": 0.1},
           "margins": [10.0, 0.5]}
  assert load_script("sweep").accuracy_cell(entry) == "margin=10: 0.1000, margin=0.5: 0.5000"


# -------------------------------------------------------------- 5: the std's ddof


def test_averaged_std_says_ddof_0(tmp_path, monkeypatch):
  """The averaged table, its JSON and the figure's error bars use the population std
  (ddof=0, 1.22x smaller than ddof=1 at 3 seeds) without saying so."""
  cr = load_script("compare_runs")
  accs = {(m, s): 0.6 + 0.02 * s + m for m in (0.1, 0.2) for s in (0, 1, 2)}
  root = str(tmp_path / "ms")
  _seed_sweep(root, accs)
  figs = _figures(monkeypatch)
  cr.compare(root, field="margin", average="seed", histograms=False, out=str(tmp_path / "o"))
  summary = json.load(open(tmp_path / "o" / "compare.json"))
  assert summary["averaged"]["std_ddof"] == 0
  for r in summary["averaged"]["rows"]:   # the numbers are unchanged: ddof=0
    vals = [accs[(r["value"], s)] for s in (0, 1, 2)]
    assert r["verification_accuracy_std"] == pytest.approx(np.std(vals, ddof=0))
  table = open(tmp_path / "o" / "compare.md").read()
  assert "mean +- std over seed (std with ddof=0;" in table
  title = next(f for f in figs if "verification against" in f._suptitle.get_text())._suptitle.get_text()
  assert "(mean +- std (ddof=0) over 3 seeds)" in title


def test_an_array_task_keeps_the_failures_other_tasks_recorded(tmp_path):
  """Each --index=I task rewrote sweep.json from the point folders alone, erasing the other
  tasks' recorded failures (they then showed as partial, their errors lost)."""
  from facenet_jax import sweep
  root = str(tmp_path)
  points = [{"margin": 0.1}, {"margin": 0.2}]
  names = [n for n, _ in sweep.named_points(points)]
  sweep.write_index(root, points, errors={names[0]: "NonFiniteLossError: loss became NaN"})
  assert sweep.recorded_failures(root) == {names[0]: "NonFiniteLossError: loss became NaN"}
  assert sweep.recorded_failures(root, skip=[names[0]]) == {}   # the task that runs it again
  index = sweep.write_index(root, points, errors=sweep.recorded_failures(root, skip=[names[1]]))
  assert index["points"][0]["status"] == "failed" and "loss became NaN" in index["points"][0]["error"]


_OTHER_TASK = """
import sys, time
from facenet_jax import sweep
root, marker = sys.argv[1], sys.argv[2]
points = [{"margin": 0.1}, {"margin": 0.2}]
name = sweep.named_points(points)[1][0]
real = sweep.recorded_failures
def slow(*a, **k):   # this task has read the index; the other one writes meanwhile
  out = real(*a, **k)
  open(marker, "w").close()
  time.sleep(1.5)
  return out
sweep.recorded_failures = slow
sweep.update_index(root, points, header={}, errors={name: "ValueError: b"}, runs_here=[name])
"""


def test_two_array_tasks_recording_failures_at_once_keep_both(tmp_path):
  """Two tasks failing at once: each read sweep.json, then wrote it with its own failure, and
  the later write lost the earlier one's (the point then showed as pending). The read and the
  write are now one turn under root/.sweep.lock."""
  import subprocess
  import sys
  import time
  root, marker = str(tmp_path / "root"), str(tmp_path / "marker")
  points = [{"margin": 0.1}, {"margin": 0.2}]
  names = [n for n, _ in sweep.named_points(points)]
  other = subprocess.Popen([sys.executable, "-c", _OTHER_TASK, root, marker],
                           env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                               os.path.abspath(__file__)))))
  deadline = time.time() + 120
  while not os.path.exists(marker):   # the other task is between its read and its write
    assert other.poll() is None and time.time() < deadline
    time.sleep(0.05)
  sweep.update_index(root, points, header={}, errors={names[0]: "ValueError: a"},
                     runs_here=[names[0]])
  assert other.wait(timeout=120) == 0
  failed = {p["name"]: p["error"] for p in files.read_json(os.path.join(root, sweep.INDEX))["points"]
            if p["status"] == "failed"}
  assert failed == {names[0]: "ValueError: a", names[1]: "ValueError: b"}


def test_a_sweep_into_a_root_of_another_sweep_is_refused(tmp_path):
  """sweep.py --sweep=miner into the root of a --sweep=seed run replaced its sweep.json, and
  the seed points, still on disk, were listed no more."""
  from facenet_jax import sweep
  header = {"kind": "sweep", "config_file": "configs/facenet.py:tiny", "sweep": "seed", "base_overrides": []}
  sweep.write_index(str(tmp_path), [{"seed": 0}], header=header)
  sweep.check_same_sweep(str(tmp_path), header)   # the same sweep again (an array task): fine
  with pytest.raises(ValueError, match=r"sweep.json indexes another sweep \(sweep: 'seed' there, "
                                       r"'miner' now\); use another --workdir"):
    sweep.check_same_sweep(str(tmp_path), {**header, "sweep": "miner"})
  sweep.check_same_sweep(str(tmp_path / "new"), header)   # no index yet


def test_compare_runs_and_robustness_refuse_outputs_they_did_not_write(tmp_path):
  """A user's compare.md / robustness.md in --out was replaced, exit 0; so was another
  comparison's table. The same command again rewrites its own outputs."""
  cr, rb = load_script("compare_runs"), load_script("robustness")
  out = tmp_path / "out"
  out.mkdir()
  (out / "compare.md").write_text("my notes")
  with pytest.raises(SystemExit, match=r"--out=.* holds compare.md, not written by compare_runs for "):
    cr.check_out(str(out), str(tmp_path / "sweep"))
  (out / "compare.json").write_text(json.dumps({"root": str(tmp_path / "sweep")}))
  cr.check_out(str(out), str(tmp_path / "sweep"))   # its own: rewritten
  with pytest.raises(SystemExit, match="not written by compare_runs for"):
    cr.check_out(str(out), str(tmp_path / "other"))
  record = {"workdir": str(tmp_path / "run"), "resolutions": [8], "jpeg_qualities": [10], "step": 40}
  (out / "robustness.md").write_text("my notes")
  with pytest.raises(SystemExit, match=r"holds robustness.md of another workdir, other"):
    rb.check_out(str(out), record)
  (out / "robustness.json").write_text(json.dumps({**record, "rows": []}))
  rb.check_out(str(out), record)
  with pytest.raises(SystemExit, match="of another workdir, other"):
    rb.check_out(str(out), {**record, "resolutions": [12]})
  # the run trained on since: its earlier results were replaced, exit 0 (an audit)
  with pytest.raises(SystemExit, match="or another checkpoint step"):
    rb.check_out(str(out), {**record, "step": 80})


def test_a_comparison_that_fails_writes_nothing_and_leaves_no_stale_figure(tmp_path, monkeypatch):
  """compare_runs wrote its PNGs, then restored every run for the histograms: a run that failed to
  restore left new figures beside the old tables; and with --nohistograms an earlier
  compare_distances.png stayed beside tables that no longer listed it (an audit)."""
  cr = load_script("compare_runs")
  root, out = str(tmp_path / "ms"), str(tmp_path / "o")
  _seed_sweep(root, {(m, s): 0.6 + m for m in (0.1, 0.2) for s in (0, 1)})
  d = (np.array([0.1, 2.0, 0.2, 1.5]), np.array([True, False, True, False]))
  monkeypatch.setattr(cr, "pair_distances", lambda workdir: d)
  cr.compare(root, field="margin", out=out)
  before = {n: open(os.path.join(out, n), "rb").read() for n in cr.OUTPUTS}

  def broken(workdir):
    raise SystemExit(f"{workdir}: holds no finished checkpoint")
  monkeypatch.setattr(cr, "pair_distances", broken)
  with pytest.raises(SystemExit, match="no finished checkpoint"):
    cr.compare(root, field="margin", out=out, title="again")
  assert {n: open(os.path.join(out, n), "rb").read() for n in cr.OUTPUTS} == before
  cr.compare(root, field="margin", out=out, histograms=False)
  assert not os.path.exists(os.path.join(out, "compare_distances.png"))
  assert "distances" not in json.load(open(os.path.join(out, "compare.json")))["figures"]
