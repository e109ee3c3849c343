"""Sweeps: overrides, config sweeps, sweep.py (run / skip / resume / dry run / SLURM),
vmapped margins equal to separate runs, compare_runs.py, test-time robustness."""

import os
import functools
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import facenet as facenet_configs
from configs import sweeps as config_sweeps
from conftest import load_script
from facenet_jax import members as members_lib, robustness, steps, sweep, train
from facenet_jax.config_checks import ConfigError, check_config
from infra import checkpoints, files, mesh as mesh_lib, overrides

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# two margins far enough apart to mine differently (the vmapped step test checks that); a
# third (0.2) cost the sweep fixture one more run with its own compiled step, through the
# same code as these two
MARGINS = (0.05, 0.5)


def _tiny(**kw):
  return overrides.with_overrides(facenet_configs.get_config("tiny"),
                                  dict({"num_steps": 4, "eval_every": 4}, **kw))


# ----------------------------------------------------------------------------- overrides


def test_overrides_parse_strings_as_the_field_type_and_name_bad_fields():
  c = facenet_configs.get_config("tiny")
  out = overrides.with_overrides(c, {"margin": "0.3", "augment.flip": "False", "model.widths": "4,8",
                                     "num_steps": 3, "margins": "0.1,0.2", "optim.learning_rate": 1})
  assert out.margin == 0.3 and out.augment.flip is False and out.model.widths == (4, 8)
  assert out.margins == (0.1, 0.2) and out.num_steps == 3 and out.optim.learning_rate == 1.0
  assert c.margin == 0.2   # the original is unchanged
  with pytest.raises(overrides.OverrideError, match="optim.nope"):
    overrides.with_overrides(c, {"optim.nope": 1})
  with pytest.raises(overrides.OverrideError, match="bogus"):
    overrides.with_overrides(c, {"bogus.margin": 1})
  with pytest.raises(overrides.OverrideError, match="augment.flip"):
    overrides.with_overrides(c, {"augment.flip": "maybe"})


def test_grids_and_point_names():
  g = overrides.product({"margin": (0.1, 0.2), "seed": (0, 1)})
  assert g == [{"margin": 0.1, "seed": 0}, {"margin": 0.1, "seed": 1},
               {"margin": 0.2, "seed": 0}, {"margin": 0.2, "seed": 1}]
  z = overrides.zipped({"identities_per_batch": (16, 8), "images_per_identity": (2, 4)})
  assert z == [{"identities_per_batch": 16, "images_per_identity": 2},
               {"identities_per_batch": 8, "images_per_identity": 4}]
  with pytest.raises(overrides.OverrideError, match="equal lengths"):
    overrides.zipped({"a": (1, 2), "b": (1,)})
  assert len(overrides.cross(z, [{"seed": 0}, {"seed": 1}])) == 4
  assert overrides.point_name({"margin": 0.2, "seed": 1}) == "margin=0.2,seed=1"
  assert overrides.point_name({"margins": (0.05, 1.0)}) == "margins=0.05-1"
  assert overrides.point_name({"data.data_dir": "/a b"}) == "data.data_dir=_a_b"
  with pytest.raises(ValueError, match="share the directory name"):
    sweep.named_points([{"margin": 0.2}, {"margin": 0.20}])
  assert sweep.swept_fields([{"margin": 0.1, "seed": 0}, {"margin": 0.2, "seed": 0}]) == ["margin"]


@pytest.mark.parametrize("name", ["margin", "margin_vmapped", "embedding_dim", "miner",
                                  "batch_shape", "seed"])
def test_config_sweeps_give_valid_configs(name):
  points = config_sweeps.sweep(name)
  assert len(sweep.named_points(points)) == len(points) >= 1
  for variant in ("synthetic", "orl"):
    for p in points:
      check_config(overrides.with_overrides(facenet_configs.get_config(variant), p))
  with pytest.raises(ValueError, match="unknown sweep"):
    config_sweeps.sweep("nope")


def test_margins_config_errors_name_the_field():
  for bad in ((0.1, 0.1), (-0.1,), ("a",)):
    with pytest.raises(ConfigError, match="config.margins"):
      check_config(_tiny(margins=bad))
  with pytest.raises(ConfigError, match="config.margins"):
    check_config(_tiny(margins=(0.1, 0.2), **{"offline.enabled": True}))


# ----------------------------------------------------------------------------- vmapped step


def test_vmapped_step_equals_separate_steps():
  """The multi-margin step is the single-run step under vmap: K = 2 models after 3 steps
  equal two single-margin models trained on the same batches."""
  config = _tiny(miner="semi_hard")
  mesh = mesh_lib.make_data_mesh()
  data = train.prepare_data(config, mesh)
  graphdef, tx, state = steps.create_train_state(config, example_shape=data.train_ds.example_shape)
  train_step = steps.make_train_step(graphdef, tx, config)
  multi = jax.jit(steps.make_member_step(train_step, np.asarray(MARGINS, np.float32)))
  singles = [jax.jit(functools.partial(train_step, margin=m)) for m in MARGINS]
  K = len(MARGINS)
  state_K = steps.stack([state] * K)
  states = [state] * K
  for step in range(3):
    batch = data.batch(step)
    state_K, metrics_K = multi(state_K, batch)
    for k in range(K):
      states[k], metrics = singles[k](states[k], batch)
      for key in metrics:
        np.testing.assert_allclose(metrics_K[key][k], metrics[key], rtol=1e-4, atol=1e-5, err_msg=key)
  for k in range(K):
    for a, b in zip(jax.tree.leaves(steps.unstack(state_K, k)), jax.tree.leaves(states[k])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # the margins really differ in what they mine
  assert not np.allclose(metrics_K["frac_active"][0], metrics_K["frac_active"][-1])


# ----------------------------------------------------------------------------- sweep runs


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """A margin sweep of separate runs (one per MARGINS) and the same margins as one vmapped
  run."""
  root = str(tmp_path_factory.mktemp("sweep"))
  base = _tiny()
  points = [{"margin": m} for m in MARGINS]
  for p in points:
    assert train.run_sweep_point(base, p, root) == "pending"
  sweep.write_index(root, points, header={"kind": "sweep"})
  vm = os.path.join(str(tmp_path_factory.mktemp("vmapped")), "vm")
  out = train.train_and_evaluate(overrides.with_overrides(base, {"margins": MARGINS}), vm)
  return root, vm, points, out


def _final_params(workdir, config):
  _, _, target = steps.create_train_state(config, in_channels=3)
  ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), every=1)
  step, state, _ = ck.restore(target)
  ck.close()
  return step, state


def test_vmapped_run_equals_separate_runs(swept):
  root, vm, points, out = swept
  assert sorted(out["members"]) == [f"margin={m:g}" for m in MARGINS]
  for m in MARGINS:
    name = f"margin={m:g}"
    sep = files.read_json(os.path.join(root, name, "results.json"))
    mem = files.read_json(os.path.join(vm, name, "results.json"))
    # each member is written as its own run: its config is the single run's config
    assert mem["config"] == sep["config"] and mem["config"]["margin"] == m
    step_s, s = _final_params(os.path.join(root, name), _tiny())
    step_v, v = _final_params(os.path.join(vm, name), _tiny())
    assert step_s == step_v == 4
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(v)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mem["metrics"]["roc_auc"], sep["metrics"]["roc_auc"], atol=2e-3)
  idx = sweep.read_index(vm)
  assert [p["status"] for p in idx["points"]] == ["done"] * len(MARGINS)
  assert [p["overrides"] for p in idx["points"]] == points


def test_sweep_skips_done_points_and_resumes_partial_ones(swept):
  root, _, points, _ = swept
  idx = sweep.read_index(root)
  assert [p["status"] for p in idx["points"]] == ["done"] * len(MARGINS)
  assert all("pairs/verification_accuracy" in p["metrics"] for p in idx["points"])
  assert train.run_sweep_point(_tiny(), points[0], root) == "done"
  # half-finished: results and the last checkpoint gone
  wd = os.path.join(root, "margin=0.05")
  os.remove(os.path.join(wd, "results.json"))
  ck = os.path.join(wd, "checkpoints")
  last = max(int(n) for n in os.listdir(ck) if n.isdigit())
  shutil.rmtree(os.path.join(ck, str(last)))
  assert sweep.point_status(wd)["status"] == "partial"
  assert train.run_sweep_point(_tiny(), points[0], root) == "partial"
  assert sweep.point_status(wd)["status"] == "done"


def test_a_done_point_of_another_config_is_refused_and_more_steps_continue(swept, tmp_path):
  """A point folder's results.json was taken as done whatever config made it: a sweep rerun
  with other base flags reported the old runs' numbers as its own, exit 0. More steps
  continue a point only under a constant schedule (the tiny config's cosine is refused)."""
  from facenet_jax.workdir import WorkdirError
  root, _, points, _ = swept
  name = "margin=0.05"
  shutil.copytree(os.path.join(root, name), tmp_path / name)
  with pytest.raises(WorkdirError, match=r"holds a run of another config .*model.embedding_dim: 16 in "
                                         r"the run, 32 now"):
    train.run_sweep_point(_tiny(**{"model.embedding_dim": 32}), points[0], str(tmp_path))
  assert files.read_json(str(tmp_path / name / "results.json"))["step"] == 4   # untouched
  with pytest.raises(WorkdirError, match=r"num_steps: 4 in the run, 6 now \(its optim.schedule='cosine'"):
    train.run_sweep_point(_tiny(num_steps=6), points[0], str(tmp_path))
  assert files.read_json(str(tmp_path / name / "results.json"))["step"] == 4   # untouched


def test_sweep_script_dry_run_and_slurm(tmp_path):
  root = str(tmp_path / "s")
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--config=configs/facenet.py:tiny",
         "--sweep=miner", f"--workdir={root}", "--config.num_steps=3", "--config.model.widths=(4, 8)"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  lines = subprocess.run(cmd + ["--dry_run"], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()
  assert len(lines) == 4
  assert all(f"--index={i}" in line and "--config.num_steps=3" in line and
             "'--config.model.widths=(4, 8)'" in line for i, line in enumerate(lines))
  subprocess.run(cmd + ["--emit=slurm", "--slurm_options=--gres=gpu:1,--time=1:00:00"], cwd=ROOT,
                 env=env, check=True, capture_output=True)
  script = open(os.path.join(root, "sweep.slurm")).read()
  assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:1" in script
  assert "--index=$SLURM_ARRAY_TASK_ID" in script and script.startswith("#!/bin/bash")
  with pytest.raises(SystemExit, match="unknown sweep"):
    load_script("sweep").load_points("nope")


def test_train_script_reports_every_margin_of_a_k_margin_run(tmp_path):
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "train_facenet.py"), "--config=configs/facenet.py:tiny",
         f"--workdir={tmp_path / 'k'}", "--config.num_steps=2", "--config.margins=0.1,0.3",
         "--config.model.widths=(4, 8)", "--config.evals=pairs"]
  out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True,
                       capture_output=True, text=True).stdout
  last = out.strip().splitlines()[-1]
  assert last.startswith("held-out verification accuracy margin=0.1: ") and "margin=0.3: " in last


# ----------------------------------------------------------------------------- compare_runs


def test_compare_runs_table_json_and_figures(swept, tmp_path):
  root, vm, _, _ = swept
  cr = load_script("compare_runs")
  s = cr.compare(vm, out=str(tmp_path / "vm"), histograms=True, title="tiny")
  assert s["field"] == "margin" and [r["value"] for r in s["runs"]] == list(MARGINS)
  for r in s["runs"]:
    res = files.read_json(os.path.join(r["workdir"], "results.json"))
    assert r["verification_accuracy"] == res["metrics"]["verification_accuracy"]
    # the table's training columns are the run's last logged values (results.json keeps them)
    for k in ("frac_active", "mean_d_ap", "mean_d_an"):
      assert r[f"final_{k}"] == pytest.approx(res["train_metrics"][k], rel=1e-6), k
  for p in s["figures"].values():
    assert os.path.getsize(p) < 300_000
  assert set(s["figures"]) == {"metrics", "training", "distances"}
  table = open(tmp_path / "vm" / "compare.md").read()
  assert table.count("\n") == 2 + len(MARGINS) and "| 0.05 | done | 4 |" in table
  # a sweep root whose point is itself a vmapped run is expanded; any field can be compared
  outer = str(tmp_path / "outer")
  os.makedirs(outer)
  os.symlink(vm, os.path.join(outer, "margins=x"))
  sweep.write_index(outer, [{"margins": "x"}])
  s2 = cr.compare(outer, histograms=False)
  assert s2["field"] == "margin" and len(s2["runs"]) == len(MARGINS)
  with pytest.raises(SystemExit, match="swept fields"):
    cr.compare(root, field="seed", histograms=False)


def test_a_k_margin_run_root_given_as_a_model_names_its_margin_folders(swept):
  """It said '<root>/checkpoints holds no finished checkpoint (no such folder)'."""
  from facenet_jax import inference
  from facenet_jax.workdir import WorkdirError
  _, vm, _, _ = swept
  with pytest.raises(WorkdirError, match=rf"{vm} is a K-margin run \(config.margins\): it holds "
                                         rf"one model per margin, in margin=0.05, .*give one of those"):
    inference.load(vm)


def test_plot_batch_study_names_a_root_that_is_not_a_batch_sweep(swept):
  """A margin sweep root: a KeyError traceback before; now the root and what it lacks."""
  from absl import app
  root, _, _, _ = swept
  with pytest.raises(app.UsageError, match=rf"{root}: run .* does not set identities_per_batch, "
                                           rf"images_per_identity, num_steps; expected a batch_size sweep"):
    load_script("plot_batch_study").runs_of(root)


def test_compare_runs_average_over_seeds_matches_numpy(swept, tmp_path):
  cr = load_script("compare_runs")
  rng = np.random.default_rng(0)
  rows = []
  for seed in (0, 1, 2):
    for m in (0.1, 0.2):
      for miner in ("semi_hard", "batch_all"):
        rows.append({"status": "done", "value": m, "others": {"seed": seed, "miner": miner},
                     **{k: float(rng.uniform()) for k in cr.AVERAGED_KEYS}})
  rows.append({"status": "failed", "value": 0.1, "others": {"seed": 3, "miner": "semi_hard"}})
  avg, left_out = cr.average_rows("margin", ["seed", "miner"], rows, "seed")
  assert len(avg) == 4 and all(r["n"] == 3 and r["seed"] == [0, 1, 2] for r in avg) and left_out == []
  for r in avg:
    same = [x for x in rows if x["status"] == "done" and x["value"] == r["value"]
            and x["others"]["miner"] == r["others"]["miner"]]
    for k in cr.AVERAGED_KEYS:
      np.testing.assert_allclose(r[f"{k}_mean"], np.mean([x[k] for x in same]))
      np.testing.assert_allclose(r[f"{k}_std"], np.std([x[k] for x in same]))
    # paired: this margin's accuracy minus margin 0.1's at the same seed and miner
    acc = lambda m, seed: next(x["verification_accuracy"] for x in rows if x["status"] == "done"
                               and x["value"] == m and x["others"] == {"seed": seed, "miner": r["others"]["miner"]})
    d = [acc(r["value"], seed) - acc(0.1, seed) for seed in (0, 1, 2)]
    assert r["reference"] == 0.1
    np.testing.assert_allclose(r["verification_accuracy_diff_mean"], np.mean(d), atol=1e-12)
    np.testing.assert_allclose(r["verification_accuracy_diff_std"], np.std(d), atol=1e-12)
  with pytest.raises(SystemExit, match="--average=seed"):
    cr.average_rows("margin", ["miner"], rows, "seed")
  # end to end: two "seeds" of the vmapped run (the same run twice: std 0)
  _, vm, _, _ = swept
  outer = str(tmp_path / "seeds")
  os.makedirs(outer)
  points = [{"margins": "x", "seed": 0}, {"margins": "x", "seed": 1}]
  for p in points:
    os.symlink(vm, os.path.join(outer, overrides.point_name(p)))
  sweep.write_index(outer, points)
  s = cr.compare(outer, field="margin", histograms=False, average="seed", out=str(tmp_path / "o"))
  got = s["averaged"]["rows"]
  assert s["averaged"]["over"] == "seed" and [r["value"] for r in got] == list(MARGINS)
  single = {r["value"]: r for r in s["runs"]}
  for r in got:
    assert r["n"] == 2 and r["verification_accuracy_std"] == 0.0
    assert r["verification_accuracy_mean"] == pytest.approx(single[r["value"]]["verification_accuracy"])
  assert "mean +- std over seed" in open(tmp_path / "o" / "compare.md").read()


# ----------------------------------------------------------------------------- robustness


def test_degrade():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  g = x[..., :1]
  for imgs in (x, g):
    assert robustness.degrade(imgs).tolist() == imgs.tolist()
    for kw in ({"resolution": 4}, {"jpeg_quality": 10}, {"resolution": 8, "jpeg_quality": 50}):
      y = robustness.degrade(imgs, **kw)
      assert y.shape == imgs.shape and y.dtype == np.uint8 and not np.array_equal(y, imgs)
  smooth = np.repeat(np.repeat(rng.integers(0, 256, (1, 4, 4, 1), dtype=np.uint8), 4, 1), 4, 2)
  err = lambda q: np.abs(robustness.degrade(smooth, jpeg_quality=q).astype(int) - smooth).mean()
  assert err(95) < err(5)
  with pytest.raises(ValueError, match="jpeg_quality"):
    robustness.degrade(x, jpeg_quality=101)


def test_robustness_evaluate_matches_training_evaluation(swept):
  root, _, _, _ = swept
  wd = os.path.join(root, f"margin={MARGINS[-1]:g}")
  out = robustness.evaluate(wd, resolutions=[8, 4], jpeg_qualities=[50, 10, 50])
  rows = out["rows"]   # levels sorted (given out of order, the figure's lines zigzagged)
  assert [(r["kind"], r["value"]) for r in rows] == [("original", 0), ("resolution", 4), ("resolution", 8),
                                                     ("jpeg_quality", 10), ("jpeg_quality", 50)]
  res = files.read_json(os.path.join(wd, "results.json"))
  np.testing.assert_allclose(rows[0]["roc_auc"], res["metrics"]["roc_auc"], atol=1e-6)
  assert out["step"] == res["step"] and len(out["fingerprint"]) == 64 and out["pairs"] > 0
  # the default levels are the run's smaller sizes (a fixed 8..32 refused the default 32 px run)
  assert robustness.resolutions_for(wd) == [r for r in robustness.DEFAULT_RESOLUTIONS if r < 16]


def test_vmapped_run_resumes_from_the_latest_step_every_member_has(tmp_path):
  state = {"w": np.arange(3, dtype=np.float32)}
  cks = [checkpoints.Checkpointer(str(tmp_path / n), every=1) for n in ("a", "b")]
  cks[0].save(2, state)
  cks[0].save(4, {"w": state["w"] + 1})
  cks[1].save(2, {"w": state["w"] * 2})
  step, members, _ = members_lib.restore_members(cks, state)
  assert step == 2
  np.testing.assert_array_equal(members[0]["w"], state["w"])
  np.testing.assert_array_equal(members[1]["w"], state["w"] * 2)
  assert members_lib.restore_members([cks[0], checkpoints.Checkpointer(str(tmp_path / "c"), every=1)],
                               state) is None
  for c in cks:
    c.close()


def test_margin_vmap_benchmark_runs_and_prints_its_table():
  """benchmarks/margin_vmap.py at tiny sizes: both rows and the ratio line (it once called a
  list's .stack(), a parameter named like the steps module, and failed before its first row)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "margin_vmap.py"), "--variant=tiny",
                      "--k=2", "--steps=1", "--rounds=1", "--warmup=1", "--run_steps=0"],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| vmapped, one program |" in r.stdout and "| 2 sequential runs |" in r.stdout, r.stdout
  assert "ratio sequential / vmapped per round:" in r.stdout and "commit " in r.stdout, r.stdout
