"""End to end on the "tiny" config: train -> config.json / results.json evals ->
scripts/evaluate_facenet.py reproduces them; inference.load errors; scripts/recognize.py
(enroll / identify / verify); cached VGG features, a feature_head run and a fine-tuned
vgg19 embedding; scripts/cross_validate.py's summary."""

import functools
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs.facenet import get_config
from conftest import load_script
from facenet_jax import inference, recognition, steps, train, vgg_features, workdir as workdir_lib
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.data import raw, sources
from facenet_jax.data.images import Fit, fit_image
from infra import overrides, vgg as vgg_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
EVALS = ("pairs", "one_shot", "episodes", "clustering")


def _tiny(tmp, **overrides):
  c = get_config("tiny")
  c.unlock()
  c.data.tfds_dir = str(tmp / "tfds")
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  c.lock()
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One tiny training run (4 steps) with every synthetic evaluator, shared by the tests."""
  tmp = tmp_path_factory.mktemp("tiny")
  config = _tiny(tmp, num_steps=4, checkpoint_every=4, evals=",".join(EVALS), **{
      "evaluation.episodes.num_episodes": 40, "evaluation.one_shot.repeats": 2})
  workdir = str(tmp / "run")
  results = train.train_and_evaluate(config, workdir)
  return workdir, config, results


# ------------------------------------------------------------ train + evaluate_facenet


def test_train_writes_config_and_evals_and_evaluate_reproduces_them(run):
  workdir, config, results = run
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 4 and sorted(saved["evals"]) == sorted(EVALS)
  assert list(results["evals"]) == list(EVALS)                # run in config.evals order
  assert saved["evals"]["pairs"] == saved["metrics"]        # the training-time evaluation
  assert {"rank1", "rank5", "open_dir", "open_unknown_rejection_rate"} <= set(saved["evals"]["one_shot"])
  assert saved["evals"]["episodes"]["num_episodes"] == 40
  assert {"nmi", "purity", "oracle_nmi"} <= set(saved["evals"]["clustering"])
  for name in EVALS:
    assert all(np.isfinite(v) for v in saved["evals"][name].values()), name
  # config.json is the run's config, read back field for field
  assert workdir_lib.load_config(workdir).to_dict() == config.to_dict()

  evaluate_facenet = load_script("evaluate_facenet")
  out = evaluate_facenet.evaluate(workdir, "pairs")
  assert out["step"] == 4 and list(out["results"]) == ["pairs"]
  # the same checkpoint, held-out images and pairs: the same numbers, exactly
  assert out["results"]["pairs"] == saved["evals"]["pairs"]
  with open(os.path.join(workdir, "eval_pairs.json")) as f:
    written = json.load(f)
  assert written["step"] == 4 and written["metrics"] == saved["evals"]["pairs"]
  assert written["data"]["source"] == "synthetic"
  # the default spec is the run's config.evals: every protocol reproduces the run's numbers
  everything = evaluate_facenet.evaluate(workdir)["results"]
  assert everything == saved["evals"]
  assert sorted(f for f in os.listdir(workdir) if f.startswith("eval_")) == sorted(
      f"eval_{n}.json" for n in EVALS)
  # a dataset name selects that dataset's data: refused for a synthetic run unless asked
  with pytest.raises(SystemExit, match="--source=orl"):
    evaluate_facenet.evaluate(workdir, "orl")
  # --data_dir without --source on a synthetic run: refused (it evaluated the synthetic people)
  with pytest.raises(ConfigError, match=r"config.data.data_dir = '/photos': expected '' with "
                                        r"data.source='synthetic', which generates its data"):
    evaluate_facenet.evaluate(workdir, "pairs", data_dir="/photos")
  assert sorted(f for f in os.listdir(workdir) if f.startswith("eval_")) == sorted(
      f"eval_{n}.json" for n in EVALS)


def test_flip_tta_embeds_an_image_and_its_mirror_alike(run, tmp_path):
  workdir, config, _ = run
  wd = str(tmp_path / "copy")
  shutil.copytree(workdir, wd)
  images = np.asarray(sources.load(config)[1].images[:6])
  mirrored = images[:, :, ::-1]
  plain = inference.load(wd)
  tta = inference.load(wd, overrides.with_overrides(plain.config, {"evaluation.flip_tta": True}))
  e, m, t, tm = plain.embed(images), plain.embed(mirrored), tta.embed(images), tta.embed(mirrored)
  ref = (e + m) / np.linalg.norm(e + m, axis=1, keepdims=True)
  np.testing.assert_allclose(t, ref, atol=1e-5)
  np.testing.assert_allclose(tm, t, atol=1e-5)
  assert not np.allclose(e, m, atol=1e-3)   # the plain embedding is not mirror invariant
  evaluate_facenet = load_script("evaluate_facenet")
  before = open(os.path.join(wd, "eval_pairs.json")).read()
  out = evaluate_facenet.evaluate(wd, "pairs", settings={"evaluation.flip_tta": "True"})
  written = json.load(open(os.path.join(wd, "eval_pairs@evaluation.flip_tta=True.json")))
  assert written["evaluation"]["flip_tta"] is True and written["metrics"] == out["results"]["pairs"]
  assert open(os.path.join(wd, "eval_pairs.json")).read() == before   # the run's own is kept
  with pytest.raises(workdir_lib.WorkdirError, match="only evaluation"):
    evaluate_facenet.evaluate(wd, "pairs", settings={"model.embedding_dim": "8"})
  with pytest.raises(workdir_lib.WorkdirError, match=r"--set=evaluation\.one_shot\.repeats=\.\.\."):
    evaluate_facenet.evaluate(wd, "one_shot", settings={"evaluation.repeats": "2"})   # old layout
  bad = overrides.with_overrides(get_config("orl_vgg"), {"evaluation.flip_tta": True})
  with pytest.raises(ConfigError, match="evaluation.flip_tta"):
    check_config(bad)


def _tree(path):
  """``{file: (bytes, mtime_ns)}`` under ``path``."""
  out = {}
  for d, _, names in os.walk(path):
    for n in names:
      p = os.path.join(d, n)
      out[os.path.relpath(p, path)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
  return out


def test_scripts_report_user_errors_in_one_line_with_status_2_and_change_nothing(run, tmp_path):
  """The issue-18 rows through the scripts themselves (subprocesses, started together): each
  exits 2 with one ``error: ...`` line on stderr naming the input, no traceback, and leaves
  the finished run byte for byte as it was."""
  import subprocess
  import sys
  workdir, _, _ = run
  before = _tree(workdir)
  afile = tmp_path / "afile"
  afile.write_text("mine")
  py = lambda script, *args: [sys.executable, os.path.join(ROOT, "scripts", script), *args]
  tiny = "--config=" + os.path.join(ROOT, "configs", "facenet.py") + ":tiny"
  photos = tmp_path / "photos" / "p"   # two photos, then one cut short: found before the work
  os.makedirs(photos)
  for k in range(2):
    Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(photos / f"a{k}.jpg")
  (photos / "zz.jpg").write_bytes((photos / "a1.jpg").read_bytes()[:200])
  cut = r"error: \S+/photos/p/zz.jpg: not an image PIL can read: corrupt or truncated"
  cv_old = tmp_path / "cv_old"
  os.makedirs(cv_old / "margin=0.2")
  for name in ("config.json", "results.json"):
    shutil.copy(os.path.join(workdir, name), cv_old / "margin=0.2" / name)
  cv_sum = tmp_path / "cv_sum"   # a cross-validation's summary over two values
  os.makedirs(cv_sum)
  (cv_sum / "summary.json").write_text('{"field": "margin", "values": ["0.2", "0.3"], "runs": {}}')
  (tmp_path / "mine.json").write_text('{"mine": 1}')   # a user's file, not a table of ours
  again = tmp_path / "faces_again"
  os.makedirs(again)
  (again / "detections.json").write_text('{"images": []}')
  (tmp_path / "a1.jpg").write_bytes((photos / "a1.jpg").read_bytes())
  weights = tmp_path / "w.npz"   # a file convert_mtcnn_weights.py used to replace
  weights.write_bytes(b"mine")
  gatys = tmp_path / "gatys"   # what reproduce_gatys.py leaves: its settings and results
  os.makedirs(gatys)
  (gatys / "settings.json").write_text('{"num_steps": 2}')
  (gatys / "results.json").write_text('{"figures": {}}')
  lfw = "--config=" + os.path.join(ROOT, "configs", "facenet.py") + ":lfw"
  lfw_dir = tmp_path / "lfw"   # cross_validate reads the fold count from pairs.txt's header
  os.makedirs(lfw_dir)
  (lfw_dir / "pairs.txt").write_text("10\t300\n")
  cases = {
      "margin": (py("train_facenet.py", tiny, f"--workdir={workdir}", "--config.margin=0.5"),
                 r"error: workdir \S+ holds a run of another config .*margin: 0.2 in the run, 0.5 now"),
      "repeats": (py("evaluate_facenet.py", f"--workdir={workdir}",
                     "--set=evaluation.one_shot.repeats=-1"),
                  r"error: config.evaluation.one_shot.repeats = -1: expected a positive integer"),
      "file": (py("train_facenet.py", tiny, f"--workdir={afile}"),
               r"error: workdir \S+afile is a file, not a directory"),
      "style": (py("stylize.py", "--config=" + os.path.join(ROOT, "configs", "style.py") + ":tiny",
                   f"--workdir={tmp_path / 'style'}", "--config.image_size=100000",
                   "--config.weights=random"),
                r"error: config.image_size=100000: .* needs about .* the largest image_size that "
                r"fits is \d+"),
      # flags out of range used to fail after the work (tracebacks) or print every point
      "evals": (py("train_facenet.py", tiny, f"--workdir={tmp_path / 'evals'}",
                   "--config.evals=pairs,bogus"),
                r"error: config.evals = 'pairs,bogus': evaluator 'bogus' is unknown"),
      "units_k": (py("visualize_units.py", f"--model={workdir}", f"--data={tmp_path}",
                     f"--out={tmp_path / 'units'}", "--k=0"), r"error: flag --k=0: 0 is not a positive"),
      "grid": (py("detect_faces.py", f"--out={tmp_path / 'faces'}", "--grid_count=0", str(afile)),
               r"error: flag --grid_count=0: 0 is not a positive"),
      "png": (py("plot_lfw_roc.py", f"--runs=a={workdir}", f"--out={tmp_path / 'roc.txt'}"),
              r"error: flag --out=\S+roc.txt: expected a .png file name"),
      "episodes_big": (py("evaluate_facenet.py", f"--workdir={workdir}", "--eval=episodes",
                          "--set=evaluation.episodes.n_way=500"),
                       r"error: 500-way 1-shot episodes with \d+ queries need 500 classes"),
      "set_unused": (py("evaluate_facenet.py", f"--workdir={workdir}", "--eval=pairs",
                        "--set=evaluation.one_shot.repeats=20"),
                     r"error: --set=evaluation.one_shot.repeats: evaluator 'one_shot' is not run"),
      "select_out": (py("select_lfw_model.py", f"--runs=a={workdir},b={tmp_path}",
                        f"--out={workdir}/table.json"),
                     r"error: --out=\S+/table.json: inside the run a=\S+ that it reads"),
      "convert_out": (py("convert_mtcnn_weights.py", f"--out={weights}", str(afile)),
                      r"error: --out=\S+/w.npz: exists; remove it first"),
      "roc_folds": (py("plot_lfw_roc.py", f"--runs=a={workdir}", f"--out={tmp_path / 'roc.png'}",
                       "--folds=1,1"), r"error: --folds=1,1: fold\(s\) \[1\] given twice"),
      "cv_late": (py("cross_validate.py", tiny, f"--workdir={tmp_path / 'cv'}", "--field=margin",
                     "--values=0.2,-1"), r"error: config.margin = -1.0: expected a number >= 0"),
      "cv_blank": (py("cross_validate.py", tiny, f"--workdir={tmp_path / 'cv'}", "--field=margin",
                      "--values=0.2,,"), r"error: --values='0.2,,': an empty value"),
      "cv_fold": (py("cross_validate.py", lfw, f"--config.data.data_dir={lfw_dir}",
                     f"--workdir={tmp_path / 'cv'}", "--field=data.test_fold", "--values=0,12"),
                  r"error: config.data.test_fold = 12: expected 0..9"),
      "cv_field": (py("cross_validate.py", tiny, f"--workdir={tmp_path / 'cv'}", "--values=0,1"),
                   r"error: --field=data.test_fold: data.source='synthetic' does not use it, so "
                   r"every value would train and test the same split; its split is chosen by seed"),
      # a folder holding a finished run of another config: its old results were summarized as
      # this config's, exit 0 (sweep.py the same: tests/test_sweep.py)
      "cv_stale": (py("cross_validate.py", tiny, f"--workdir={cv_old}", "--field=margin",
                      "--values=0.2,0.3", "--config.model.embedding_dim=32"),
                   r"error: workdir \S+/cv_old/margin=0.2 holds a run of another config .*"
                   r"model.embedding_dim: \d+ in the run, 32 now"),
      "cv_twice": (py("cross_validate.py", tiny, f"--workdir={tmp_path / 'cv'}", "--field=margin",
                      "--values=0.2,0.2"), r"error: --values: 0.2 given twice"),
      # one value spelled twice trained one run twice, counted as n=2 with std 0
      "cv_same": (py("cross_validate.py", tiny, f"--workdir={tmp_path / 'cv'}", "--field=margin",
                     "--values=0.2,0.20"),
                  r"error: --values: 0.2 and 0.20 are the same value of margin \(0.2\)"),
      # a summary over other values or another field was replaced, exit 0
      "cv_fewer": (py("cross_validate.py", tiny, f"--workdir={cv_sum}", "--field=margin",
                      "--values=0.2"), r"error: \S+/cv_sum/summary.json summarizes --values=0.2,0.3; "
                                       r"this call would drop 0.3 from it"),
      "cv_other_field": (py("cross_validate.py", tiny, f"--workdir={cv_sum}", "--field=seed",
                            "--values=1"), r"error: \S+/cv_sum/summary.json summarizes --field=margin"),
      "select_mine": (py("select_lfw_model.py", f"--runs=a={workdir}", f"--out={tmp_path / 'mine.json'}"),
                      r"error: --out=\S+/mine.json exists and is not a select_lfw_model output"),
      "costs_mine": (py("lfw_threshold_costs.py", f"--runs=a={workdir}", f"--out={tmp_path / 'mine.json'}"),
                     r"error: --out=\S+/mine.json exists and is not a lfw_threshold_costs output"),
      "argparse": (py("recognize.py", "identify", f"--workdir={workdir}", "--gallery=g.npz",
                      "--threshold=abc", "x.png"),
                   r"error: recognize.py: argument --threshold: invalid float value: 'abc'"),
      "no_evals": (py("evaluate_facenet.py", f"--workdir={workdir}", "--eval=,,"),
                   r"error: --eval=',,' names no evaluator"),
      "widths": (py("train_facenet.py", tiny, f"--workdir={tmp_path / 'evals'}", "--config.model.widths=-8,16"),
                 r"error: config.model.widths = \(-8, 16\): expected a sequence of positive integers"),
      "sweep_point": (py("sweep.py", tiny, "--config.num_steps=-1", f"--workdir={tmp_path / 'sweep'}",
                         "--dry_run"), r"error: sweep point margin=0.05: config.num_steps = -1"),
      "texture": (py("texture_1d.py", f"--out={tmp_path / 'texture'}", "--steps=1", "--length=4"),
                  r"error: --length=4: layer\(s\) \['conv4_2'\] get no samples"),
      "out_file": (py("visualize_units.py", f"--model={workdir}", f"--data={tmp_path}", f"--out={afile}"),
                   r"error: flag --out=\S+afile: is a file, expected an output folder"),
      "sweep_index": (py("sweep.py", tiny, "--sweep=margin", f"--workdir={tmp_path / 'sweep'}",
                         "--dry_run", "--index=99"), r"error: --index=99: this sweep has points 0\.\.4"),
      "slurm_blank": (py("sweep.py", tiny, "--sweep=margin", f"--workdir={tmp_path / 'sweep'}",
                         "--emit=slurm", "--slurm_options=--time=4:00:00,,"),
                      r"error: flag --slurm_options=\['--time=4:00:00', '', ''\]: every entry must be "
                      r"an #SBATCH option starting with '-'"),
      "preview_many": (py("preview_identities.py", tiny, f"--out={tmp_path / 'prev.png'}",
                          "--examples=50"),
                       r"error: --identities=3 --examples=50: \S+ has 0 identities with 50 or more "
                       r"examples \(at most \d+ per identity\)"),
      "sweep_both": (py("sweep.py", tiny, "--sweep=seed", f"--workdir={tmp_path / 'sweep'}",
                        "--config.seed=5", "--dry_run"),
                     r"error: --config.seed=5: the sweep 'seed' sets seed at every point, so the "
                     r"flag would be ignored"),
      "robust_flag": (py("robustness.py", f"--workdir={workdir}", "--jpeg_qualities=50,500"),
                      r"error: flag --jpeg_qualities=\['50', '500'\]: expected integers 1..100"),
      "robust_size": (py("robustness.py", f"--workdir={workdir}", "--resolutions=8,16",
                         f"--out={tmp_path / 'robust'}"),
                      r"error: --resolutions \[16\]: expected sizes below the run's image size 16 px"),
      # a folder of another kind of run: its results.json used to be replaced, exit 0
      "gatys_out": (py("reproduce_gatys.py", "--weights", "random", "--image_size", "32",
                       "--num_steps", "2", "--figures", "fig3", "--ratios", "1e-3",
                       "--style_layers", "conv1_1,conv2_1", "--out", str(workdir)),
                    r"error: --out \S+ holds a FaceNet training run \(config.json with a model\); "
                    r"writing a reproduce_gatys.py run \(settings.json\) there would replace its "
                    r"results.json: use another folder"),
      "texture_out": (py("texture_1d.py", f"--out={workdir}", "--steps=1"),
                      r"error: --out \S+ holds a FaceNet training run"),
      "train_gatys": (py("train_facenet.py", tiny, f"--workdir={gatys}"),
                      r"error: workdir \S+ holds a reproduce_gatys.py run \(settings.json\); "
                      r"writing a FaceNet training run"),
      "combine_self": (py("reproduce_gatys.py", "--combine", str(gatys), "--out", str(gatys)),
                       r"error: --combine: --out \S+ is one of the runs combined"),
      "style_output": (py("stylize.py", "--config=" + os.path.join(ROOT, "configs", "style.py") + ":tiny",
                          f"--workdir={tmp_path / 'style'}", "--config.output=../final.png"),
                       r"error: .*output.*must be a file name in the workdir, without a folder"),
      # a bad photo last in the folder: refused before the detector (which made out/aligned and
      # detected the photos before it) or the forward passes run; afile stands in for weights
      "detect_cut": (py("detect_faces.py", f"--out={tmp_path / 'faces_cut'}", "--aligned",
                        "--batch=1", f"--weights={afile}", str(photos.parent)), cut),
      # a rerun replaced detections.json and mixed its crops with the last run's; two photos
      # with one stem wrote the same aligned crop names (the second replaced the first)
      "detect_again": (py("detect_faces.py", f"--out={again}", str(photos / "a1.jpg")),
                       r"error: --out=\S+/faces_again already holds detections.json from an earlier run"),
      "detect_stems": (py("detect_faces.py", f"--out={tmp_path / 'faces_stems'}", "--aligned",
                          str(photos / "a1.jpg"), str(tmp_path / "a1.jpg")),
                       r"error: --aligned: \S+/p/a1.jpg and \S+/a1.jpg would both write aligned/a1_K.png"),
      "units_cut": (py("visualize_units.py", f"--model={workdir}", f"--data={photos.parent}",
                       f"--out={tmp_path / 'units_cut'}"), cut),
  }
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("FACENET_TRACEBACK", None)
  procs = {k: subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for k, (cmd, _) in cases.items()}
  for k, p in procs.items():
    _, err = p.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("W", "I"))]
    assert p.returncode == 2, (k, err)
    assert len(lines) == 1 and re.match(cases[k][1], lines[0]), (k, err)
    assert "Traceback" not in err, (k, err)
  assert _tree(workdir) == before
  assert afile.read_text() == "mine" and not (tmp_path / "style").exists()
  assert sorted(os.listdir(gatys)) == ["results.json", "settings.json"]
  assert weights.read_bytes() == b"mine"
  assert (gatys / "results.json").read_text() == '{"figures": {}}'
  assert os.listdir(again) == ["detections.json"]
  assert os.listdir(cv_old) == ["margin=0.2"]
  assert (again / "detections.json").read_text() == '{"images": []}'
  assert not any((tmp_path / d).exists() for d in ("evals", "units", "faces", "sweep", "cv", "texture",
                                                   "faces_cut", "units_cut", "robust", "prev.png",
                                                   "faces_stems"))
  # FACENET_TRACEBACK=1: the same error with its traceback, for a bug report
  p = subprocess.run(cases["file"][0], cwd=str(tmp_path), capture_output=True, text=True,
                     env=dict(env, FACENET_TRACEBACK="1"), timeout=300)
  assert p.returncode == 1 and "Traceback" in p.stderr and "is a file" in p.stderr


def test_load_errors_name_the_workdir_and_the_bad_input(run, tmp_path):
  workdir, config, _ = run
  empty = tmp_path / "empty"
  os.makedirs(empty)
  with pytest.raises(workdir_lib.WorkdirError, match=f"{empty}/config.json not found"):
    inference.load(str(empty))
  text = open(os.path.join(workdir, "config.json")).read()
  truncated = tmp_path / "truncated"
  os.makedirs(truncated)
  (truncated / "config.json").write_text(text[:len(text) // 2])
  with pytest.raises(workdir_lib.WorkdirError, match=f"{truncated}/config.json: not a readable JSON"):
    inference.load(str(truncated))
  extra = json.loads(text)
  extra["data"]["colour"] = "blue"
  (truncated / "config.json").write_text(json.dumps(extra))
  with pytest.raises(workdir_lib.WorkdirError, match="field config.data.colour is not in"):
    workdir_lib.load_config(str(truncated))
  # a config but no checkpoint
  workdir_lib.save_config(config, str(truncated))
  with pytest.raises(workdir_lib.WorkdirError, match="holds no finished checkpoint"):
    inference.load(str(truncated))

  trained = inference.load(workdir)
  assert trained.step == 4 and trained.input_shape == (16, 16, 3)
  _, held = sources.load(config)
  emb = trained.embed(held.images[:5])
  assert emb.shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match=r"shape \(20, 20, 3\) given to a model trained on \(16, 16, 3\)"):
    trained.embed(np.zeros((2, 20, 20, 3), np.uint8))


# ------------------------------------------------------------------------ recognize


def test_recognize_enroll_identify_verify(run, tmp_path, monkeypatch):
  workdir, config, results = run
  # every recognize.run restores the workdir; one restore serves the whole test
  monkeypatch.setattr(inference, "load", functools.lru_cache()(inference.load))
  trained = inference.load(workdir)
  recognize = load_script("recognize")
  _, held = sources.load(config)
  people = np.unique(held.labels)[:2]
  paths = {}
  for name, label in zip(("alice", "bob"), people):
    for k, row in enumerate(np.nonzero(held.labels == label)[0][:2]):
      paths[name, k] = str(tmp_path / f"{name}{k}.png")
      Image.fromarray(held.images[row]).save(paths[name, k])
  # a larger, non-square photo of alice: center-cropped and resized like the training data
  big = np.asarray(Image.fromarray(held.images[np.nonzero(held.labels == people[0])[0][1]]).resize(
      (40, 40), Image.Resampling.NEAREST))
  big = np.concatenate([np.zeros((40, 10, 3), np.uint8), big, np.zeros((40, 10, 3), np.uint8)], 1)
  paths["big"] = str(tmp_path / "big.png")
  Image.fromarray(big).save(paths["big"])

  gallery = str(tmp_path / "people.npz")
  wd = [f"--workdir={workdir}", f"--gallery={gallery}"]
  assert recognize.run(["enroll", paths["alice", 0], "--name=alice", *wd]) == {
      "enrolled": ["alice"], "people": 1}
  assert recognize.run(["enroll", paths["bob", 0], "--name=bob", *wd])["people"] == 2
  g = recognition.Gallery.load(gallery)
  assert g.identities == ["alice", "bob"] and g.num_embeddings == 2
  gal = trained.embed(np.stack([held.images[np.nonzero(held.labels == p)[0][0]] for p in people]))
  np.testing.assert_allclose(g.emb_NxD, gal, atol=1e-6)   # the PNGs are lossless

  # the run's own threshold for FAR 1e-3 by default; an enrolled image is at distance 0
  r = recognize.run(["identify", paths["alice", 0], paths["bob", 0], *wd])
  assert r["threshold"] == results["metrics"]["threshold_at_far_1e-3"]
  assert r["ids"] == ["alice", "bob"] and max(r["distances"]) < 1e-6
  # a threshold no squared distance of unit vectors can meet (or NaN) is refused, not a
  # gallery that silently rejects everyone
  for bad in ("-1", "nan"):
    with pytest.raises(SystemExit, match=rf"--threshold={bad}: expected a squared L2 distance"):
      recognize.run(["identify", paths["alice", 0], f"--threshold={bad}", *wd])
  # another image, at threshold 0: not recognized; at the loosest threshold (4 = the
  # largest squared distance of unit vectors): the nearest person, as NumPy finds it
  r = recognize.run(["identify", paths["alice", 1], "--threshold=0", *wd])
  assert r["ids"] == [None] and r["distances"][0] > 0
  r = recognize.run(["identify", paths["alice", 1], paths["bob", 1], paths["big"], "--threshold=4", *wd])
  fitted = fit_image(Image.fromarray(big), Fit(size=16, crop=0, channels=3))
  assert fitted.shape == (16, 16, 3)
  probes = np.stack([held.images[np.nonzero(held.labels == people[0])[0][1]],
                     held.images[np.nonzero(held.labels == people[1])[0][1]], fitted])
  d = ((trained.embed(probes)[:, None] - gal[None]) ** 2).sum(-1)
  assert r["ids"] == [("alice", "bob")[k] for k in d.argmin(1)]
  np.testing.assert_allclose(r["distances"], d.min(1), atol=1e-5)

  r = recognize.run(["verify", paths["alice", 0], paths["bob", 0], "--name=alice", "--threshold=0.5", *wd])
  assert r["accepted"][0] is True
  assert r["accepted"][1] == (float(((gal[1] - gal[0]) ** 2).sum()) <= 0.5)   # bob claimed as alice
  with pytest.raises(recognition.GalleryError, match="'zoe' is not enrolled"):
    recognize.run(["verify", paths["alice", 0], "--name=zoe", "--threshold=1", *wd])
  with pytest.raises(SystemExit, match="verify needs --name"):
    recognize.run(["verify", paths["alice", 0], "--threshold=1", *wd])

  missing = str(tmp_path / "nobody.npz")
  with pytest.raises(recognition.GalleryError, match=f"{missing}' does not exist"):
    recognize.run(["identify", paths["alice", 0], f"--workdir={workdir}", f"--gallery={missing}"])
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  with pytest.raises(recognition.GalleryError, match=f"{empty}' is not a readable gallery"):
    recognize.run(["identify", paths["alice", 0], f"--workdir={workdir}", f"--gallery={empty}"])
  bad = tmp_path / "broken.png"
  bad.write_bytes(open(paths["bob", 1], "rb").read()[:40])
  with pytest.raises(raw.DataError, match=f"{bad}: not an image PIL can read"):
    recognize.run(["identify", str(bad), "--threshold=1", *wd])
  with pytest.raises(raw.DataError, match="nope.png: no such image file"):
    recognize.run(["identify", str(tmp_path / "nope.png"), "--threshold=1", *wd])


# ---------------------------------------------------------------------- VGG features


@functools.lru_cache()
def _random_vgg19():
  return nnx.split(vgg_lib.load_vgg("random", 19, "max"))


@functools.partial(jax.jit, static_argnums=2)
def _vgg_forward(state, rgb, layer):
  return nnx.merge(_random_vgg19()[0], state).features(vgg_lib.preprocess_caffe(rgb), (layer,))[layer]


def _vgg_reference(images, layer):
  """The activation of ``layer`` of the random VGG19 for uint8 RGB (or grey) images."""
  rgb = np.asarray(images, np.float32)
  if rgb.shape[-1] == 1:
    rgb = np.repeat(rgb, 3, axis=-1)
  return np.asarray(_vgg_forward(_random_vgg19()[1], rgb, layer))


def test_vgg_features_match_vgg_and_are_cached_by_content(tmp_path, monkeypatch):
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  cache = str(tmp_path / "features")
  computed = []
  real_compute = vgg_features._compute

  def counting(x, *args):
    computed.append(x.shape[0])
    return real_compute(x, *args)

  monkeypatch.setattr(vgg_features, "_compute", counting)
  f = vgg_features.features(images, weights="random", layer="conv2_1", cache_dir=cache, batch_size=3)
  assert f.shape == (8, 16, 16, 128) and f.dtype == np.float32 and computed == [8]
  np.testing.assert_allclose(f, _vgg_reference(images, "conv2_1"), rtol=1e-4, atol=1e-3)
  files = os.listdir(cache)
  assert files == ["vgg19_conv2_1_32x32x3_random.npz"]

  # a reordered subset, with a repeat: read from the cache, nothing computed
  def fail(*args):
    raise AssertionError("features were recomputed")
  monkeypatch.setattr(vgg_features, "_compute", fail)
  rows = [5, 2, 7, 2, 0]
  np.testing.assert_array_equal(
      vgg_features.features(images[rows], weights="random", layer="conv2_1", cache_dir=cache), f[rows])
  # a superset computes only the new images (a repeated new image once)
  monkeypatch.setattr(vgg_features, "_compute", counting)
  new = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  more = np.concatenate([new[:1], images[3:6], new, new[1:]])
  g = vgg_features.features(more, weights="random", layer="conv2_1", cache_dir=cache)
  assert computed == [8, 2]
  np.testing.assert_array_equal(g[1:4], f[3:6])
  np.testing.assert_array_equal(g[0], g[4])
  np.testing.assert_array_equal(g[5], g[6])
  np.testing.assert_allclose(g[[0, 5]], _vgg_reference(new, "conv2_1"), rtol=1e-4, atol=1e-3)
  with np.load(os.path.join(cache, files[0])) as z:
    assert z["keys"].shape == (10,) and z["features"].shape == (10, 16, 16, 128)


def test_feature_cache_is_keyed_by_the_weights_content_not_their_path_or_mtime(tmp_path):
  """The same weights staged elsewhere with a new mtime (a job's node-local copy) name the same
  cache file; one changed byte names another."""
  a, b = tmp_path / "a" / "w.h5", tmp_path / "b" / "w.h5"
  os.makedirs(a.parent)
  os.makedirs(b.parent)
  a.write_bytes(bytes(range(256)) * 64)
  shutil.copy(a, b)
  os.utime(b, ns=(1_000_000_000, 1_000_000_000))
  c = get_config("lfw_vgg")
  names = []
  for w in (a, b):
    c.model.vgg_weights = str(w)
    names.append(os.path.basename(vgg_features.cache_file_for(c, (112, 112, 3))))
  assert names[0] == names[1] and names[0].endswith(
      "_" + __import__("hashlib").sha256(a.read_bytes()).hexdigest()[:12] + ".npz")
  data = bytearray(b.read_bytes())
  data[100] ^= 1
  b.write_bytes(bytes(data))
  c.model.vgg_weights = str(b)
  assert os.path.basename(vgg_features.cache_file_for(c, (112, 112, 3))) != names[0]


def test_vgg_features_grey_images_and_errors(tmp_path):
  grey = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
  cache = str(tmp_path / "features")
  f = vgg_features.features(grey, weights="random", layer="pool1", cache_dir=cache)
  assert f.shape == (3, 16, 16, 64)
  rgb = vgg_features.features(np.repeat(grey, 3, axis=-1), weights="random", layer="pool1")
  np.testing.assert_allclose(f, rgb, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(f, _vgg_reference(grey, "pool1"), rtol=1e-4, atol=1e-3)
  assert os.listdir(cache) == ["vgg19_pool1_32x32x1_random.npz"]   # grey and RGB keyed apart
  with pytest.raises(ValueError, match="'conv5_4' is not a VGG16 layer"):
    vgg_features.features(grey, weights="random", layer="conv5_4", depth=16)
  with pytest.raises(ValueError, match=r"faces: 16x16 px images are smaller than the 32 px .* pool5"):
    vgg_features.features(grey[:, :16, :16], weights="random", layer="pool5", name="faces")
  with pytest.raises(ValueError, match=r"faces: VGG features need \(N, H, W, 1 or 3\)"):
    vgg_features.features(grey[..., 0], weights="random", name="faces")


def test_feature_head_trains_on_cached_vgg_features(tmp_path, monkeypatch):
  config = _tiny(tmp_path, num_steps=3, evals="pairs", **{
      "data.features": "vgg19:pool1", "model.name": "feature_head", "model.vgg_weights": "random",
      "augment.flip": False, "augment.crop_pad": 0})
  workdir = str(tmp_path / "run")
  r = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert r["step"] == 3 and os.path.exists(os.path.join(workdir, "results.json"))
  assert np.isfinite(r["metrics"]["verification_accuracy"]) and np.isfinite(r["train_metrics"]["loss"])
  train_ds, held = sources.load(config)
  cache = tmp_path / "tfds" / "features" / "vgg19_pool1_16x16x3_random.npz"
  with np.load(cache) as z:
    assert z["features"].shape == (len(train_ds) + len(held), 8, 8, 64)
  # the restored run takes raw images and runs the (cached) backbone first
  computed = []
  real_compute = vgg_features._compute
  monkeypatch.setattr(vgg_features, "_compute",
                      lambda x, *a: computed.append(x.shape[0]) or real_compute(x, *a))
  trained = inference.load(workdir)
  assert trained.input_shape == (16, 16, 3)
  emb = trained.embed(held.images)
  assert emb.shape == (len(held), 16) and computed == [1]   # only load()'s zero-image shape probe
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_vgg19_embedding_forward_and_fine_tuning_step():
  config = get_config("tiny")
  config.unlock()
  config.model.update(name="vgg19", vgg_weights="random", vgg_layer="pool2")
  config.optim.warmup_steps = 0
  config.augment.update(flip=False, crop_pad=0)
  config.lock()
  graphdef, tx, state = steps.create_train_state(config, example_shape=(32, 32, 3))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  emb = jax.jit(steps.make_embed_fn(graphdef))(state["params"], state["model_state"], images)
  assert emb.shape == (8, 16)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  # the backbone is the seeded random VGG19 of infra.vgg; the head sees its pool2 activations
  # of the Caffe-preprocessed uint8 images (8x8x128 at 32x32)
  model = nnx.merge(graphdef, state["params"], state["model_state"])
  np.testing.assert_array_equal(model.backbone.block1_conv1.kernel[...],
                                _random_vgg19()[1]["block1_conv1"]["kernel"][...])
  pool2 = _vgg_reference(images, "pool2")
  assert pool2.shape == (8, 8, 8, 128)
  np.testing.assert_allclose(emb, model.head(jnp.asarray(pool2), train=False), rtol=1e-4, atol=1e-5)

  before = jax.tree.map(np.asarray, state["params"])
  batch = {"images": images, "labels": np.repeat(np.arange(4, dtype=np.int32), 2),
           "mask": np.ones(8, bool)}
  # compiled without LLVM optimization: the same step, half the compile time on a busy CPU
  train_step = steps.make_train_step(graphdef, tx, config)
  step_fn = jax.jit(lambda s, b: train_step(s, b, config.margin)).lower(state, batch).compile(
      {"xla_backend_optimization_level": 0})
  new, metrics = step_fn(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  after = nnx.merge(graphdef, new["params"], new["model_state"]).backbone
  old = nnx.merge(graphdef, before, state["model_state"]).backbone
  # layers before pool2 get gradients: Adam's first step moves each weight by ~lr
  step = np.abs(np.asarray(after.block1_conv1.kernel[...]) - np.asarray(old.block1_conv1.kernel[...]))
  assert step.mean() > 0.1 * config.optim.learning_rate
  step = np.abs(np.asarray(after.block2_conv2.kernel[...]) - np.asarray(old.block2_conv2.kernel[...]))
  assert step.mean() > 0.1 * config.optim.learning_rate
  # layers after pool2 get none: only AdamW's decay, w <- w (1 - lr wd)
  lr, wd = config.optim.learning_rate, config.optim.weight_decay
  w = np.asarray(old.block5_conv1.kernel[...])
  np.testing.assert_allclose(np.asarray(after.block5_conv1.kernel[...]), w * (1 - lr * wd), rtol=1e-6)


# --------------------------------------------------------------------- cross_validate


def test_cross_validate_summary_against_numpy():
  cv = load_script("cross_validate")
  per_run = {"0": {"a/x": 0.5, "a/y": 2.0}, "1": {"a/x": 0.75, "a/y": 4.0, "b": 1.0},
             "2": {"a/x": 0.25, "a/y": 3.0}}
  s = cv.summarize(per_run)
  assert list(s) == ["a/x", "a/y", "b"]
  for k, values in (("a/x", [0.5, 0.75, 0.25]), ("a/y", [2.0, 4.0, 3.0]), ("b", [1.0])):
    assert s[k]["mean"] == pytest.approx(np.mean(values))
    assert s[k]["std"] == pytest.approx(np.std(values, ddof=s[k]["std_ddof"]))
    assert s[k]["n"] == len(values) and s[k]["std_ddof"] == 0   # said, not left to guess
  assert s["b"]["std"] == 0.0
  # an evaluator's settings are not averaged as if measured ("mean test_fold 4.5")
  assert list(cv.summarize({"0": {"lfw_view2/test_fold": 0.0, "lfw_view2/accuracy": 0.9},
                            "1": {"lfw_view2/test_fold": 1.0, "lfw_view2/accuracy": 0.8}})) == [
      "lfw_view2/accuracy"]


def _fake_lfw_cv(root, folds, seed, scorers=("distance", "head_chi2")):
  """A cross_validate workdir: per test fold k a run dir with lfw_scores_fold<k>.npz of all
  6,000 pairs (600 per fold); returns {scorer: {fold: (dist, issame)}} as written."""
  rng = np.random.default_rng(seed)
  fold = np.repeat(np.arange(10), 600)
  written = {s: {} for s in scorers}
  for k in folds:
    os.makedirs(os.path.join(root, f"data.test_fold={k}"))
    issame = rng.random(6000) < 0.5
    scores = {s: rng.normal(size=6000) - issame for s in scorers}
    np.savez(os.path.join(root, f"data.test_fold={k}", f"lfw_scores_fold{k}.npz"), fold=fold,
             issame=issame, **scores)
    for s in scorers:
      written[s][k] = (scores[s][fold == k], issame[fold == k])
  return written


def test_pooled_lfw_scores_take_each_runs_own_test_fold(tmp_path):
  from facenet_jax import lfw_runs
  written = _fake_lfw_cv(str(tmp_path / "cv"), [3, 0, 7], seed=0)
  dirs = sorted(str(p) for p in (tmp_path / "cv").iterdir())
  pooled, folds = lfw_runs.pooled_scores(dirs)
  assert folds == [0, 3, 7] and sorted(pooled) == ["distance", "head_chi2"]
  for s in pooled:   # the plain loop: each run's 600 test pairs, runs in directory order
    ref_d = np.concatenate([written[s][k][0] for k in (0, 3, 7)])
    ref_same = np.concatenate([written[s][k][1] for k in (0, 3, 7)])
    np.testing.assert_array_equal(pooled[s][0], ref_d)
    np.testing.assert_array_equal(pooled[s][1], ref_same)
  pooled, folds = lfw_runs.pooled_scores(dirs, folds=[7])
  assert folds == [7] and len(pooled["distance"][0]) == 600
  shutil.copytree(dirs[0], str(tmp_path / "cv" / "again"))   # fold 0 twice: an error, not 1,200 pairs
  with pytest.raises(ValueError, match=r"lfw_scores_fold0.npz: test fold 0 was read before from"):
    lfw_runs.pooled_scores(dirs + [str(tmp_path / "cv" / "again")])


def test_a_score_file_of_unequal_lengths_or_nan_is_named(tmp_path):
  """A score file whose arrays differ in length was an IndexError traceback in
  select_lfw_model, lfw_threshold_costs and plot_lfw_roc; a NaN score an error naming
  neither the file nor the scorer."""
  from facenet_jax import lfw_runs
  d = tmp_path / "r"
  os.makedirs(d)
  fold, issame = np.repeat(np.arange(10), 600), np.arange(6000) % 2 == 0
  np.savez(d / "lfw_scores_fold0.npz", fold=fold, issame=issame, distance=np.zeros(5999))
  with pytest.raises(ValueError, match=r"lfw_scores_fold0.npz: expected one value per pair in "
                                       r"every array, got shapes distance \(5999,\), fold \(6000,\)"):
    lfw_runs.pooled_scores([str(d)])
  np.savez(d / "lfw_scores_fold0.npz", fold=fold, issame=issame, distance=np.zeros(6000))
  with pytest.raises(ValueError, match=r"splits=601: \S+lfw_scores_fold0.npz has 600 test pairs"):
    lfw_runs.threshold_costs([str(d)], splits=601)   # printed as 601 splits, really 600
  nan = np.zeros(6000)
  nan[7] = np.nan
  np.savez(d / "lfw_scores_fold0.npz", fold=fold, issame=issame, distance=np.zeros(6000),
           head_chi2=nan)
  with pytest.raises(ValueError, match=r"lfw_scores_fold0.npz: scores 'head_chi2': 1 of 6000 NaN or Inf"):
    lfw_runs.pooled_scores([str(d)])


def test_cross_validate_pools_the_roc_only_over_distinct_test_folds(tmp_path):
  # a seed sweep on one LFW fold: five runs of fold 0, which must not be pooled (nor crash
  # after the last run, losing the summary)
  cv = load_script("cross_validate")
  root = tmp_path / "seeds"
  _fake_lfw_cv(str(root / "a"), [0], seed=3)
  _fake_lfw_cv(str(root / "b"), [0], seed=4)
  dirs = [str(root / "a" / "data.test_fold=0"), str(root / "b" / "data.test_fold=0")]
  assert cv.pooled_lfw_roc(dirs, str(tmp_path / "roc.png"), "seed") is None
  assert not (tmp_path / "roc.png").exists()
  with pytest.raises(ValueError, match="test fold 0 was read before"):
    cv.pooled_lfw_roc(dirs, str(tmp_path / "roc.png"), "data.test_fold")
  folds = str(tmp_path / "folds")
  _fake_lfw_cv(folds, [0, 1], seed=5)
  out = cv.pooled_lfw_roc(sorted(str(p) for p in (tmp_path / "folds").iterdir()),
                          str(tmp_path / "roc.png"), "data.test_fold")
  assert out and os.path.getsize(out) > 0


def test_plot_lfw_roc_compares_runs_on_the_same_folds(tmp_path, capsys):
  from facenet_jax import verification
  plot = load_script("plot_lfw_roc")
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  wa = _fake_lfw_cv(a, range(10), seed=1)
  _fake_lfw_cv(b, range(8), seed=2)
  with pytest.raises(SystemExit, match=r"different folds .*pass --folds="):
    plot.read_runs([f"A={a}", f"B={b}"], "distance", None)
  runs = plot.read_runs([f"A={a}", f"B={b}"], "head_chi2", list(range(8)))
  assert runs["A"][2] == runs["B"][2] == list(range(8))
  ref = np.concatenate([wa["head_chi2"][k][0] for k in range(8)])
  np.testing.assert_array_equal(runs["A"][0], ref)
  assert verification.roc_auc(*runs["A"][:2]) == pytest.approx(
      verification.roc_auc(ref, np.concatenate([wa["head_chi2"][k][1] for k in range(8)])))
  os.makedirs(str(tmp_path / "c" / "x"))
  with open(str(tmp_path / "c" / "x" / "lfw_scores_fold2.npz"), "wb") as f:
    f.write(b"PK\x03\x04 cut short")
  for entries, scorer, folds, msg in (
      ([f"A{a}"], "distance", None, r"--runs: expected LABEL=DIR, got 'A"),
      ([f"C={tmp_path / 'c'}"], "distance", None, r"--runs: C=.*c: "),
      ([f"C={tmp_path / 'nope'}"], "distance", None, r"--runs: C=.*nope: no such directory"),
      ([f"T={tmp_path}"], "distance", None, r"no lfw_scores_fold\*.npz in its run directories"),
      ([f"A={a}"], "head_x", None, r"--scorer=head_x: not among A's scores \['distance', 'head_chi2'\]"),
      ([f"B={b}"], "distance", [7, 8], r"--folds=7,8: B=.* has only folds \[7\]")):
    with pytest.raises(SystemExit, match=msg):
      plot.read_runs(entries, scorer, folds)


def _write_run_config(root, fold, calibration_folds=1, test_fold=None):
  with open(os.path.join(root, f"data.test_fold={fold}", "config.json"), "w") as f:
    json.dump({"data": {"test_fold": fold if test_fold is None else test_fold,
                        "calibration_folds": calibration_folds}}, f)


def _plain_transfer(d_fit, s_fit, d_test, s_test):
  """Brute force: accuracy on the fitting pairs at every realizable cut, the smallest best
  cut, and the test pairs' accuracy under it."""
  cands = np.r_[d_fit.min() - 1, (np.sort(d_fit)[1:] + np.sort(d_fit)[:-1]) / 2, d_fit.max() + 1]
  accs = [np.mean((d_fit <= t) == s_fit) for t in cands]
  t = min(t for t, a in zip(cands, accs) if a == max(accs))
  return max(accs), float(np.mean((d_test <= t) == s_test))


def test_select_per_fold_chooses_on_calibration_pairs_never_the_test_fold(tmp_path):
  """Two candidates on the same pairs; for each test fold k the reference takes fold k+1's
  pairs (the calibration fold), picks the candidate more accurate there (the first on a
  tie) and counts its fold-k accuracy."""
  from facenet_jax import lfw_runs
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_lfw_cv(a, range(10), seed=5)
  _fake_lfw_cv(b, range(10), seed=5)        # same pairs (truth), scores replaced below
  rng = np.random.default_rng(11)
  fold = np.repeat(np.arange(10), 600)
  for k in range(10):
    _write_run_config(a, k)
    _write_run_config(b, k)
    path_b = os.path.join(b, f"data.test_fold={k}", f"lfw_scores_fold{k}.npz")
    with np.load(path_b) as z:
      issame = z["issame"]
    noise = np.where(fold == (k + 1) % 10, 0.3 if k % 3 == 0 else 3.0, 1.0)   # b: sharp or blurred calibration
    np.savez(path_b, fold=fold, issame=issame, distance=rng.normal(size=6000) * noise - issame,
             head_chi2=rng.normal(size=6000) - issame)
  # fold 9: b's scores a copy of a's, so the calibration accuracies tie and a (first) is chosen
  shutil.copy(os.path.join(a, "data.test_fold=9", "lfw_scores_fold9.npz"),
              os.path.join(b, "data.test_fold=9", "lfw_scores_fold9.npz"))
  choices = lfw_runs.select_per_fold({"a": lfw_runs.run_dirs(a), "b": lfw_runs.run_dirs(b)})
  assert [c.fold for c in choices] == list(range(10))
  ref_chosen = []
  for c in choices:
    k = c.fold
    assert c.calibration == ((k + 1) % 10,)
    ref = {}
    for label, root in (("a", a), ("b", b)):
      with np.load(os.path.join(root, f"data.test_fold={k}", f"lfw_scores_fold{k}.npz")) as z:
        d, s, f = z["distance"], z["issame"], z["fold"]
      ref[label] = _plain_transfer(d[f == (k + 1) % 10], s[f == (k + 1) % 10], d[f == k], s[f == k])
      assert c.calibration_accuracy[label] == pytest.approx(ref[label][0])
      assert c.test[label]["accuracy"] == pytest.approx(ref[label][1])
      # AUC: P(a same pair scores below a different pair), ties 1/2; VAL: the largest calibration
      # threshold with FAR <= 1e-3 (here: below every different pair) on the test pairs
      ds, dd = d[(f == k) & s], d[(f == k) & ~s]
      auc = np.mean((ds[:, None] < dd[None, :]) + 0.5 * (ds[:, None] == dd[None, :]))
      assert c.test[label]["roc_auc"] == pytest.approx(auc)
      cal_d, cal_s = d[f == (k + 1) % 10], s[f == (k + 1) % 10]
      t = max([x for x in np.r_[-np.inf, np.unique(cal_d)] if np.mean(cal_d[~cal_s] <= x) <= 1e-3])
      assert c.test[label]["val_at_far"] == pytest.approx(np.mean(ds <= t))
    ref_chosen.append("b" if ref["b"][0] > ref["a"][0] else "a")
    assert c.chosen == ref_chosen[-1]
  assert ref_chosen[9] == "a" and {"a", "b"} <= set(ref_chosen)   # both chosen somewhere
  summary = lfw_runs.selection_summary(choices)
  for m in ("accuracy", "roc_auc"):
    picked = [c.test[c.chosen][m] for c in choices]
    assert summary["selected"][f"{m}/mean"] == pytest.approx(np.mean(picked))
    assert summary["selected"][f"{m}/std"] == pytest.approx(np.std(picked, ddof=summary["selected"]["std_ddof"]))
    assert summary["a"][f"{m}/mean"] == pytest.approx(np.mean([c.test["a"][m] for c in choices]))
  assert summary["a"]["chosen"] + summary["b"]["chosen"] == 10


def test_select_per_fold_refuses_what_cannot_be_compared(tmp_path):
  from facenet_jax import lfw_runs
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_lfw_cv(a, range(3), seed=1)
  _fake_lfw_cv(b, range(3), seed=1)
  runs = lambda: {"a": lfw_runs.run_dirs(a), "b": lfw_runs.run_dirs(b)}
  with pytest.raises(ValueError, match=r"data.test_fold=0.config.json: expected the run's config"):
    lfw_runs.select_per_fold(runs())
  for k in range(3):
    _write_run_config(a, k)
    _write_run_config(b, k)
  assert len(lfw_runs.select_per_fold(runs())) == 3
  with pytest.raises(ValueError, match=r"no scores 'head_x' \(has \['distance', 'head_chi2'\]\)"):
    lfw_runs.select_per_fold(runs(), scorer="head_x")
  _write_run_config(b, 1, calibration_folds=0)
  with pytest.raises(ValueError, match=r"data.calibration_folds = 0: selection needs 1..8 folds"):
    lfw_runs.select_per_fold(runs())
  _write_run_config(b, 1, calibration_folds=2)
  with pytest.raises(ValueError, match=r"test fold 1: the candidates were calibrated on different folds"):
    lfw_runs.select_per_fold(runs())
  _write_run_config(b, 1, test_fold=4)
  with pytest.raises(ValueError, match=r"data.test_fold = 4, but the scores beside it are of fold 1"):
    lfw_runs.select_per_fold(runs())
  _write_run_config(b, 1)
  _fake_lfw_cv(str(tmp_path / "c"), range(2), seed=1)
  with pytest.raises(ValueError, match=r"tested on different folds"):
    lfw_runs.select_per_fold({"a": lfw_runs.run_dirs(a), "c": lfw_runs.run_dirs(str(tmp_path / "c"))})
  _fake_lfw_cv(str(tmp_path / "d"), range(3), seed=2)    # other truth labels: other pairs
  for k in range(3):
    _write_run_config(str(tmp_path / "d"), k)
  with pytest.raises(ValueError, match=r"its pairs differ from"):
    lfw_runs.select_per_fold({"a": lfw_runs.run_dirs(a), "d": lfw_runs.run_dirs(str(tmp_path / "d"))})
  with pytest.raises(ValueError, match=r"--runs: label 'a' given twice"):
    lfw_runs.parse_runs([f"a={a}", f"a={b}"])


def test_select_lfw_model_script_prints_the_folds_and_the_selection(tmp_path):
  import subprocess
  import sys
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_lfw_cv(a, range(10), seed=3)
  _fake_lfw_cv(b, range(10), seed=4)   # other truth: refused, one line, status 2
  for root in (a, b):
    for k in range(10):
      _write_run_config(root, k)
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "select_lfw_model.py"), f"--runs=A={a},B={b}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and re.search(r"error: \S+lfw_scores_fold0.npz: its pairs differ", p.stderr), p.stderr
  shutil.rmtree(b)
  shutil.copytree(a, b)
  out = tmp_path / "sel.json"
  p = subprocess.run(cmd + [f"--out={out}"], capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  rows = [l for l in p.stdout.splitlines() if re.match(r"\| \d \|", l)]
  assert len(rows) == 10 and all(r.split(" | ")[-2] == "A" for r in rows)   # ties: the first
  with open(out) as f:
    got = json.load(f)
  assert got["summary"]["selected"]["accuracy/mean"] == pytest.approx(got["summary"]["A"]["accuracy/mean"])
  assert got["summary"]["A"]["chosen"] == 10 and len(got["folds"]) == 10


def test_threshold_costs_against_a_plain_loop_and_a_shifted_calibration_fold(tmp_path):
  """transfer / in-sample: brute-force cuts on the calibration / test pairs; within-fold: the
  plain loop over seeds 0..R-1, each a permutation of the test pairs cut into folds by index
  mod splits (kfold_accuracy's split), every part scored at the best cut of the others. A
  calibration fold whose scores are shifted costs accuracy in transfer only."""
  import subprocess
  import sys
  from facenet_jax import lfw_runs
  root = str(tmp_path / "cv")
  _fake_lfw_cv(root, range(3), seed=7)
  fold = np.repeat(np.arange(10), 600)
  for k in range(3):
    _write_run_config(root, k)
  path = os.path.join(root, "data.test_fold=2", "lfw_scores_fold2.npz")
  with np.load(path) as z:
    arrays = dict(z)
  arrays["distance"] = arrays["distance"] + np.where(fold == 3, 2.0, 0.0)   # fold 2's calibration
  np.savez(path, **arrays)
  costs = lfw_runs.threshold_costs(lfw_runs.run_dirs(root), "distance", splits=5, repeats=3)
  assert [c.fold for c in costs] == [0, 1, 2]
  for c in costs:
    with np.load(os.path.join(root, f"data.test_fold={c.fold}", f"lfw_scores_fold{c.fold}.npz")) as z:
      d, s, f = z["distance"], z["issame"], z["fold"]
    cal, test = f == (c.fold + 1) % 10, f == c.fold
    assert c.calibration == ((c.fold + 1) % 10,)
    cal_acc, transfer = _plain_transfer(d[cal], s[cal], d[test], s[test])
    assert (c.calibration_in_sample, c.transfer) == pytest.approx((cal_acc, transfer))
    assert c.in_sample == pytest.approx(_plain_transfer(d[test], s[test], d[test], s[test])[0])
    dt, st, accs = d[test], s[test], []
    for r in range(3):
      part = np.random.default_rng(r).permutation(dt.size) % 5
      accs.append(np.mean([_plain_transfer(dt[part != p], st[part != p], dt[part == p], st[part == p])[1]
                           for p in range(5)]))
    assert c.within_fold == pytest.approx(np.mean(accs))
    assert c.in_sample >= c.within_fold and c.in_sample >= c.transfer
  assert costs[2].within_fold - costs[2].transfer > 0.1        # the shifted calibration fold
  assert abs(costs[0].within_fold - costs[0].transfer) < 0.05
  with pytest.raises(ValueError, match=r"no scores 'head_x'"):
    lfw_runs.threshold_costs(lfw_runs.run_dirs(root), "head_x")
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "lfw_threshold_costs.py"), f"--runs=A={root}",
         "--repeats=2", f"--out={tmp_path / 'costs.json'}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert len([l for l in p.stdout.splitlines() if re.match(r"\| \d \| \d \|", l)]) == 3
  with open(tmp_path / "costs.json") as fh:
    got = json.load(fh)
  assert got["mean"]["A"]["in_sample"] == pytest.approx(np.mean([c.in_sample for c in costs]))
  os.remove(os.path.join(root, "data.test_fold=1", "config.json"))   # no calibration folds known
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and re.search(r"error: \S+config.json: expected the run's config", p.stderr), p.stderr


# ------------------------------------------------------------- SPoC + PCA whitening


def test_pooled_vgg_descriptor_matches_numpy_and_is_cached_apart(tmp_path):
  images = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  cache = str(tmp_path / "features")
  act = _vgg_reference(images, "conv2_1")                      # (5, 16, 16, 128), >= 0
  for pool, power in (("mean", 0.5), ("max", 1.0)):
    f = vgg_features.features(images, weights="random", layer="conv2_1", pool=pool, power=power,
                              cache_dir=cache)
    x = act ** power
    ref = x.mean(axis=(1, 2)) if pool == "mean" else x.max(axis=(1, 2))
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert f.shape == (5, 1, 1, 128)
    np.testing.assert_allclose(f[:, 0, 0], ref, rtol=1e-4, atol=1e-5)
  # with the mirror: sum of both pooled vectors, then normalized; a mirrored image gets the same
  f = vgg_features.features(images, weights="random", layer="conv2_1", pool="mean", power=0.5,
                            flip=True, cache_dir=cache)
  ref = (np.sqrt(act).mean(axis=(1, 2))
         + np.sqrt(_vgg_reference(images[:, :, ::-1], "conv2_1")).mean(axis=(1, 2)))
  np.testing.assert_allclose(f[:, 0, 0], ref / np.linalg.norm(ref, axis=1, keepdims=True),
                             rtol=1e-4, atol=1e-5)
  g = vgg_features.features(np.ascontiguousarray(images[:, :, ::-1]), weights="random",
                            layer="conv2_1", pool="mean", power=0.5, flip=True)
  np.testing.assert_allclose(g, f, rtol=1e-4, atol=1e-5)
  assert sorted(os.listdir(cache)) == ["vgg19_conv2_1_maxp1_32x32x3_random.npz",
                                       "vgg19_conv2_1_meanp0.5_32x32x3_random.npz",
                                       "vgg19_conv2_1_meanp0.5_flip_32x32x3_random.npz"]
  with pytest.raises(ValueError, match="data.features_flip=True needs data.features_pool"):
    vgg_features.features(images, weights="random", layer="conv2_1", flip=True)
  with pytest.raises(ValueError, match="data.features_pool='sum'"):
    vgg_features.features(images, weights="random", layer="conv2_1", pool="sum")
  with pytest.raises(ValueError, match="data.features_power=0"):
    vgg_features.features(images, weights="random", layer="conv2_1", pool="mean", power=0)


def _grid_reference(act, grid, power, mirror_act=None):
  """float64 loops: mean of act ** power over each cell of the round(i n / grid) partition
  (the mirror's map flipped back), summed with the mirror's, the whole L2-normalized."""
  def pooled(a):
    b, h, w, c = a.shape
    re = [int(np.floor(i * h / grid + 0.5)) for i in range(grid + 1)]
    ce = [int(np.floor(i * w / grid + 0.5)) for i in range(grid + 1)]
    out = np.zeros((b, grid, grid, c))
    for i in range(grid):
      for j in range(grid):
        out[:, i, j] = (a[:, re[i]:re[i + 1], ce[j]:ce[j + 1]].astype(np.float64) ** power
                        ).mean(axis=(1, 2))
    return out
  x = pooled(act) + (0 if mirror_act is None else pooled(mirror_act[:, :, ::-1]))
  return x / np.linalg.norm(x.reshape(len(x), -1), axis=1)[:, None, None, None]


def test_grid_pooled_vgg_descriptor_matches_numpy_and_is_cached_apart(tmp_path):
  images = np.random.default_rng(5).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
  cache = str(tmp_path / "features")
  act = _vgg_reference(images, "conv2_1")                      # (3, 20, 24, 128)
  mirror = _vgg_reference(np.ascontiguousarray(images[:, :, ::-1]), "conv2_1")
  for grid in (1, 3, 7):
    f = vgg_features.features(images, weights="random", layer="conv2_1", pool="mean", power=0.5,
                              flip=True, grid=grid, cache_dir=cache)
    assert f.shape == (3, grid, grid, 128)
    np.testing.assert_allclose(f, _grid_reference(act, grid, 0.5, mirror), rtol=1e-4, atol=1e-5)
  # a mirrored image's descriptor is the original's with its columns of cells reversed
  g = vgg_features.features(np.ascontiguousarray(images[:, :, ::-1]), weights="random",
                            layer="conv2_1", pool="mean", power=0.5, flip=True, grid=3)
  np.testing.assert_allclose(g, f_3 := vgg_features.features(
      images, weights="random", layer="conv2_1", pool="mean", power=0.5, flip=True, grid=3,
      cache_dir=cache)[:, :, ::-1], rtol=1e-4, atol=1e-5)
  assert f_3.shape == (3, 3, 3, 128)
  assert sorted(os.listdir(cache)) == ["vgg19_conv2_1_meanp0.5_flip_40x48x3_random.npz",
                                       "vgg19_conv2_1_meanp0.5_grid3_flip_40x48x3_random.npz",
                                       "vgg19_conv2_1_meanp0.5_grid7_flip_40x48x3_random.npz"]
  assert vgg_features.feature_shape(19, "conv4_4", "mean", (112, 112, 3), 3) == (3, 3, 512)
  with pytest.raises(ValueError, match=r"data.features_grid=15: expected 1..14"):
    vgg_features.feature_shape(19, "conv4_4", "mean", (112, 112, 3), 15)
  with pytest.raises(ValueError, match="data.features_grid=2 needs data.features_pool"):
    vgg_features.features(images, weights="random", layer="conv2_1", grid=2)


def test_several_layers_pool_side_by_side_with_equal_weight(tmp_path):
  images = np.random.default_rng(6).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
  mirrored = np.ascontiguousarray(images[:, :, ::-1])
  refs = [_grid_reference(_vgg_reference(images, layer), 2, 0.5, _vgg_reference(mirrored, layer))
          for layer in ("conv2_1", "conv3_1")]
  f = vgg_features.features(images, weights="random", layer="conv2_1+conv3_1", pool="mean",
                            power=0.5, flip=True, grid=2, cache_dir=str(tmp_path))
  assert f.shape == (3, 2, 2, 128 + 256)
  np.testing.assert_allclose(f, np.concatenate(refs, axis=-1) / np.sqrt(2), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(f.reshape(3, -1), axis=1), 1.0, rtol=1e-5)
  assert os.listdir(tmp_path) == ["vgg19_conv2_1+conv3_1_meanp0.5_grid2_flip_40x48x3_random.npz"]
  assert vgg_features.feature_shape(19, "conv4_4+conv5_4", "max", (112, 112, 3), 7) == (7, 7, 1024)
  with pytest.raises(ValueError, match=r"data.features_grid=8: expected 1..7"):   # conv5_4: 7x7
    vgg_features.feature_shape(19, "conv4_4+conv5_4", "mean", (112, 112, 3), 8)
  with pytest.raises(ValueError, match=r"'conv2_1\+conv3_1': several layers need data.features_pool"):
    vgg_features.features(images, weights="random", layer="conv2_1+conv3_1")
  with pytest.raises(ValueError, match="layer 'conv9_1' is not a VGG19 layer"):
    vgg_features.features(images, weights="random", layer="conv2_1+conv9_1", pool="mean")
  with pytest.raises(ValueError, match="a layer is named twice"):
    vgg_features.feature_shape(19, "conv2_1+conv2_1", "mean", (40, 48, 3))


def _linear_head(in_features, dim, widths=()):
  from facenet_jax import models
  return models.FeatureHead(in_features, widths, dim, rngs=nnx.Rngs(0))


def test_pca_whitening_head_matches_numpy_reference():
  from facenet_jax import whitening
  rng = np.random.default_rng(4)
  # correlated features with very different variances per direction; more examples than
  # features (the scatter matrix is solved), then fewer (the Gram matrix: LFW's 25,088 values)
  wide = rng.normal(size=(30, 40)) @ (rng.normal(size=(40, 40)) * np.geomspace(10, 0.1, 40)) + 3.0
  x = rng.normal(size=(200, 12)) @ (rng.normal(size=(12, 12)) * np.geomspace(10, 0.1, 12)) + 3.0
  for eps, x in ((0.0, wide), (1.0, wide), (0.0, x), (1.0, x)):
    head = _linear_head(x.shape[1], 5)
    whitening.fit_pca_whitening(head, x, eps)
    # reference: eigen-decomposition of the covariance (not the SVD the code uses)
    mu = x.mean(0)
    lam, vec = np.linalg.eigh(np.cov(x.T, bias=True))
    lam, vec = lam[::-1][:5], vec[:, ::-1][:, :5]
    z_ref = (x - mu) @ vec / np.sqrt(lam / lam.mean() + eps)
    z = np.asarray(head.out(jnp.asarray(x, jnp.float32)))
    # eigenvectors are defined up to sign
    z_ref = z_ref * np.sign(np.sum(z * z_ref, axis=0))
    np.testing.assert_allclose(z, z_ref, rtol=1e-3, atol=1e-3)
    if eps == 0.0:   # full whitening: the training projections are decorrelated, equal variance
      cov = np.cov(z.T, bias=True)
      np.testing.assert_allclose(cov / cov[0, 0], np.eye(5), atol=1e-3)
    emb = np.asarray(head(jnp.asarray(x, jnp.float32), train=False))
    np.testing.assert_allclose(emb, z_ref / np.linalg.norm(z_ref, axis=1, keepdims=True),
                               rtol=1e-3, atol=1e-3)
  # 10 examples, 3 distinct: 2 principal directions, 3 of the 5 columns without variance stay 0
  few = np.repeat(rng.normal(size=(3, 40)), [4, 3, 3], axis=0)
  head = _linear_head(40, 5)
  whitening.fit_pca_whitening(head, few, 1.0)
  kernel = np.asarray(head.out.kernel.value)
  assert np.all(np.isfinite(kernel)) and np.allclose(kernel[:, 2:], 0.0, atol=1e-6)
  with pytest.raises(ValueError, match=r"needs a linear head: model.widths=\(\)"):
    whitening.fit_pca_whitening(_linear_head(12, 5, (8,)), x)
  with pytest.raises(ValueError, match="6 training examples give at most 5 principal directions; "
                                       "model.embedding_dim=8"):
    whitening.fit_pca_whitening(_linear_head(12, 8), x[:6])
  with pytest.raises(ValueError, match="features have 12 values per example, the head takes 10"):
    whitening.fit_pca_whitening(_linear_head(10, 5), x)


def test_pca_whitened_spoc_run_restores_and_checks_its_config(tmp_path):
  overrides = {"data.features": "vgg19:conv2_1", "data.features_pool": "mean",
               "data.features_power": 0.5, "model.name": "feature_head", "model.widths": (),
               "model.head_init": "pca_whiten", "model.vgg_weights": "random",
               "augment.flip": False, "augment.crop_pad": 0}
  config = _tiny(tmp_path, num_steps=2, evals="pairs", **overrides)
  workdir = str(tmp_path / "run")
  # 2 steps at a negligible learning rate: the trained head is still the whitening it started as
  config.unlock()
  config.optim.learning_rate = 1e-9
  config.lock()
  r = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  train_ds, held = sources.load(config)
  trained = inference.load(workdir)
  emb = trained.embed(held.images)
  from facenet_jax import whitening
  head = _linear_head(128, 16)
  feats = vgg_features.features(train_ds.images, weights="random", layer="conv2_1", pool="mean",
                                power=0.5)
  whitening.fit_pca_whitening(head, feats, 1.0)
  ref = np.asarray(head(jnp.asarray(vgg_features.features(
      held.images, weights="random", layer="conv2_1", pool="mean", power=0.5)), train=False))
  # the same whitening fitted on the same features: equal embeddings, sign included (a
  # flipped principal direction or a head fitted on other examples would differ here)
  np.testing.assert_allclose(emb, ref, rtol=0, atol=1e-5)   # observed 3e-7
  assert np.isfinite(r["metrics"]["verification_accuracy"])
  for field, value, msg in (("model.widths", (8,), r"model.widths.*\(\) with model.head_init"),
                            ("model.name", "small_cnn", "model.head_init.*'random' unless"),
                            ("data.features_pool", "sum", "data.features_pool")):
    bad = _tiny(tmp_path, num_steps=2, evals="pairs", **{**overrides, field: value})
    with pytest.raises(ValueError, match=msg):
      train.train_and_evaluate(bad, str(tmp_path / "bad"), devices=jax.devices()[:1])
  assert not os.path.exists(tmp_path / "bad")


def test_lda_head_against_a_whitened_eigenproblem_and_one_image_people():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "lfw_head.py")
  spec = importlib.util.spec_from_file_location("lfw_head", path)
  lda = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lda)
  rng = np.random.default_rng(3)
  # 40 people x 5 rows in 6-d: people differ along axes 0 and 1, their rows scatter elsewhere
  labels = np.repeat(np.arange(40), 5)
  z = (rng.normal(size=(40, 6)) * [3, 2, .1, .1, .1, .1])[labels] + rng.normal(size=(200, 6)) * [1, .5, 1, 2, 1, 1]
  sw_ref = sum(np.outer(d, d) for c in range(40)
               for d in z[labels == c] - z[labels == c].mean(axis=0)) / (200 - 40)
  # three people with one image each add nothing to the within-person scatter
  sw, dof = lda.within_class_scatter(np.concatenate([z, 10 * rng.normal(size=(3, 6))]),
                                     np.concatenate([labels, [40, 41, 42]]))
  assert dof == 160
  np.testing.assert_allclose(sw, sw_ref, rtol=1e-10)
  st = np.cov(z.T, bias=True)
  w = lda.lda_directions(z, labels, 3)
  np.testing.assert_allclose(w.T @ sw_ref @ w, np.eye(3), atol=1e-9)
  lam = w.T @ st @ w
  np.testing.assert_allclose(lam, np.diag(np.diag(lam)), atol=1e-9)
  # reference: the ordinary eigenproblem of S_w^-1/2 S_t S_w^-1/2
  ev, v = np.linalg.eigh(sw_ref)
  root_inv = v @ np.diag(ev ** -0.5) @ v.T
  e_ref, u = np.linalg.eigh(root_inv @ st @ root_inv)
  np.testing.assert_allclose(np.diag(lam), e_ref[::-1][:3], rtol=1e-9)
  w_ref = root_inv @ u[:, ::-1][:, :3]
  np.testing.assert_allclose(np.abs(w.T @ sw_ref @ w_ref), np.eye(3), atol=1e-9)   # up to sign
  assert np.all(np.diff(np.diag(lam)) < 0) and np.diag(lam)[0] > 5
  first = w[:, 0] / np.linalg.norm(w[:, 0])
  assert np.sum(first[:2] ** 2) > 0.9                 # where the people differ comes first
  # fully shrunk, S_w is a multiple of I: LDA is PCA of S_t
  p = lda.lda_directions(z, labels, 2, shrink=1.0)
  top = np.linalg.eigh(st)[1][:, ::-1][:, :2]
  np.testing.assert_allclose(np.abs(p.T @ top) / np.linalg.norm(p, axis=0)[:, None],
                             np.eye(2), atol=1e-9)
  with pytest.raises(ValueError, match=r"k=7 directions of 6-d values: expected 1\.\.6"):
    lda.lda_directions(z, labels, 7)
  with pytest.raises(ValueError, match="no class has two rows"):
    lda.lda_directions(z[:10], np.arange(10), 2)
