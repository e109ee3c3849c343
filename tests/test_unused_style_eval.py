"""Settings accepted and never read, for style runs (style_jax/cost.py unread_settings) and for
``evaluate_facenet.py --set=data.*`` (facenet_jax/workdir.py check_evaluation_data_read).

An audit showed each bit-identical: L-BFGS fields under Adam, a learning rate under L-BFGS,
init noise fields under an init that has no noise or no mix, scale_factor with one scale, and
data fields of other sources (center_crop, test_fold, calibration_folds, split_seed, tfds_dir
on a synthetic run: the run's own results, yet each in its own eval_<name>@<setting>.json). Now
a new style run is refused before the VGG is built and a resumed one gets a note; evaluation
refuses before anything is read or written; no preset's defaults trip a rule."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from configs import facenet as facenet_configs
from configs import style as style_configs
from conftest import load_script
from facenet_jax import train, workdir as workdir_lib
from infra import files
from infra.overrides import with_overrides
from style_jax import cost, optimize

RNG = np.random.default_rng(0)

# ----------------------------------------------------------------------------------- style


def _style(tmp_path, **overrides):
  """The tiny preset (Adam, content_noise init, one scale, random VGG) on two 32 px images."""
  paths = {}
  for name in ("c", "s"):
    paths[name] = str(tmp_path / f"{name}.png")
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[name])
  return with_overrides(style_configs.get_config("tiny"),
                        {"content": paths["c"], "style": paths["s"], **overrides})


def _leftovers(path):
  if not os.path.exists(path):
    return []
  return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


STYLE_CASES = [   # (overrides, the first message, exactly)
    ({"optimizer": "adam", "lbfgs_memory": 5},
     "config.lbfgs_memory=5: optimizer='adam' keeps no past steps and runs no line search, so it "
     "has no effect; leave it at the 'tiny' preset's default 10, or set optimizer='lbfgs' to use "
     "it"),
    ({"optimizer": "adam", "lbfgs_linesearch_steps": 3},
     "config.lbfgs_linesearch_steps=3: optimizer='adam' keeps no past steps and runs no line "
     "search, so it has no effect; leave it at the 'tiny' preset's default 20, or set "
     "optimizer='lbfgs' to use it"),
    ({"optimizer": "lbfgs", "learning_rate": 0.001},
     "config.learning_rate=0.001: optimizer='lbfgs' takes the step its line search finds, not a "
     "learning rate, so it has no effect; leave it at the 'tiny' preset's default 2.0, or set "
     "optimizer='adam' to use it"),
    ({"init": "content", "init_noise_scale": 1.0},
     "config.init_noise_scale=1.0: init='content' starts from the content image, with no noise, so "
     "it has no effect; leave it at the 'tiny' preset's default 20.0, or set init='noise' or "
     "'content_noise' to use it"),
    ({"init": "content", "init_noise_ratio": 0.1},
     "config.init_noise_ratio=0.1: init='content' does not mix noise and content (only "
     "init='content_noise' does), so it has no effect; leave it at the 'tiny' preset's default "
     "0.6, or set init='content_noise' to use it"),
    ({"init": "noise", "init_noise_ratio": 0.0},
     "config.init_noise_ratio=0.0: init='noise' does not mix noise and content (only "
     "init='content_noise' does), so it has no effect; leave it at the 'tiny' preset's default "
     "0.6, or set init='content_noise' to use it"),
    ({"num_scales": 1, "scale_factor": 1.5},
     "config.scale_factor=1.5: num_scales=1 optimizes at the output's size only, so it has no "
     "effect; leave it at the 'tiny' preset's default 2.0, or set num_scales > 1 to use it"),
    ({"num_scales": 1, "scale_factor": 0.5},
     "config.scale_factor=0.5: num_scales=1 optimizes at the output's size only, so it has no "
     "effect; leave it at the 'tiny' preset's default 2.0, or set num_scales > 1 to use it"),
]


@pytest.mark.parametrize("overrides,message", STYLE_CASES,
                         ids=[f"{k}={v}" for o, _ in STYLE_CASES for k, v in list(o.items())[-1:]])
def test_a_new_style_run_setting_what_it_never_reads_is_refused_before_the_vgg(
    tmp_path, monkeypatch, overrides, message):
  def no_vgg(*a, **k):
    raise AssertionError("the VGG was built before the config was refused")
  monkeypatch.setattr(optimize, "load_network", no_vgg)
  work = str(tmp_path / "run")
  with pytest.raises(cost.StyleConfigError) as e:
    optimize.stylize(_style(tmp_path, **overrides), work)
  assert str(e.value) == message and "\n" not in str(e.value)
  assert _leftovers(work) == []


def test_every_unread_setting_is_counted_in_the_one_line():
  c = with_overrides(style_configs.get_config("tiny"),
                     {"init": "content", "init_noise_scale": 1.0, "init_noise_ratio": 0.1})
  with pytest.raises(cost.StyleConfigError,
                     match=r"^config.init_noise_scale=1.0: .* \(and 1 more: "
                           r"config.init_noise_ratio=0.1: init='content' .*\)$"):
    cost.check_config(c)


@pytest.mark.parametrize("variant", [None, *style_configs.PRESETS])
def test_no_preset_trips_a_rule_and_an_unused_default_is_not_an_error(variant):
  """Each preset as it is, and with its optimizer / init / scales switched so that its own
  defaults go unread (gatys2015's learning_rate under L-BFGS): a default is never refused."""
  base = style_configs.get_config(variant)
  assert cost.check_config(base) == []
  for switch in ({"optimizer": "adam"}, {"optimizer": "lbfgs"}, {"init": "content"},
                 {"init": "noise"}, {"init": "content_noise"}, {"num_scales": 1},
                 {"num_scales": 2}):
    assert cost.check_config(with_overrides(base, switch)) == [], switch


@pytest.mark.parametrize("overrides", [
    {"optimizer": "lbfgs", "lbfgs_memory": 5, "lbfgs_linesearch_steps": 3},
    {"optimizer": "adam", "learning_rate": 0.5},
    {"init": "noise", "init_noise_scale": 1.0},
    {"init": "content_noise", "init_noise_scale": 1.0, "init_noise_ratio": 0.1},
    {"num_scales": 2, "scale_factor": 1.5},
], ids=lambda o: ",".join(o))
def test_the_same_values_where_they_are_read_pass(overrides):
  for variant in style_configs.PRESETS:
    assert cost.check_config(with_overrides(style_configs.get_config(variant), overrides)) == []


def test_a_value_is_validated_where_read_and_named_unread_elsewhere():
  tiny = style_configs.get_config("tiny")
  with pytest.raises(cost.StyleConfigError, match=r"^config.learning_rate=-1.0: must be > 0$"):
    cost.check_config(with_overrides(tiny, {"optimizer": "adam", "learning_rate": -1.0}))
  with pytest.raises(cost.StyleConfigError, match=r"^config.learning_rate=-1.0: optimizer='lbfgs' "
                                                  r"takes the step its line search finds"):
    cost.check_config(with_overrides(tiny, {"optimizer": "lbfgs", "learning_rate": -1.0}))
  with pytest.raises(cost.StyleConfigError,
                     match=r"^config.init_noise_ratio=1.5: must be in \[0, 1\]$"):
    cost.check_config(with_overrides(tiny, {"init": "content_noise", "init_noise_ratio": 1.5}))
  # a config of one's own (a variant configs/style.py does not know) is held to gatys2015's
  own = with_overrides(tiny, {"variant": "mine", "optimizer": "lbfgs", "learning_rate": 0.5})
  with pytest.raises(cost.StyleConfigError, match=r"the 'gatys2015' preset's default 2.0"):
    cost.check_config(own)


def test_a_resumed_style_run_keeps_an_unread_setting_with_a_one_line_note(
    tmp_path, monkeypatch, capsys):
  """A run started by code from before the check (simulated: the rules off) with such a value
  resumes under its own config, noted; the same config in a new workdir is refused."""
  c = _style(tmp_path, optimizer="adam", lbfgs_memory=5, num_steps=2, checkpoint_every=1)
  work = str(tmp_path / "run")
  with monkeypatch.context() as m:
    m.setattr(cost, "unread_settings", lambda config: [])
    optimize.stylize(c, work)
  assert files.read_json(os.path.join(work, "config.json"))["lbfgs_memory"] == 5
  capsys.readouterr()
  with pytest.raises(cost.StyleConfigError, match=r"^config.lbfgs_memory=5: optimizer='adam'"):
    optimize.stylize(c, str(tmp_path / "new"))
  assert _leftovers(str(tmp_path / "new")) == []
  more = with_overrides(c, {"num_steps": 4})
  assert optimize.stylize(more, work)["step"] == 4
  notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
  assert notes == [f"note: continuing {work}, whose config sets what it never reads (kept, as a "
                   f"resume must): {cost.unread_settings(more)[0]}"]


# ------------------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  """A finished tiny synthetic run (2 steps, the pairs evaluator)."""
  tmp = tmp_path_factory.mktemp("eval")
  c = with_overrides(facenet_configs.get_config("tiny"), {
      "num_steps": 2, "checkpoint_every": 2, "evals": "pairs", "data.tfds_dir": str(tmp / "tfds")})
  work = str(tmp / "run")
  train.train_and_evaluate(c, work)
  return work


def _snapshot(path):
  out = {}
  for rel in _leftovers(path):
    with open(os.path.join(path, rel), "rb") as f:
      out[rel] = f.read()
  return out


EVAL_CASES = [   # (--eval, --set, what reads it), on a synthetic run
    ("pairs", {"data.center_crop": "8"},
     "the photo sources ('orl', 'lfw', 'omniglot', 'folder', 'recordio'); a generated source "
     "makes its images at data.image_size"),
    ("pairs", {"data.test_fold": "3"}, "data.source='lfw' with data.lfw_view=2, of View 2 folds"),
    ("pairs", {"data.calibration_folds": "2"},
     "data.source='lfw' with data.lfw_view=2, of View 2 folds"),
    ("pairs", {"data.split_seed": "5"},
     "the sources ('orl', 'omniglot', 'folder', 'recordio'); LFW splits people by data.test_fold, "
     "a generated source makes them from config.seed"),
    ("pairs", {"data.tfds_dir": "/tmp/elsewhere"},
     "the photo sources ('orl', 'lfw', 'omniglot', 'folder', 'recordio'), for their prepared "
     "data, and data.features with data.features_cache='', for its feature cache"),
    ("one_shot", {"data.eval_pairs": "100"}, "the pairs evaluator"),
]


@pytest.mark.parametrize("spec,settings,readers", EVAL_CASES,
                         ids=[next(iter(s)) for _, s, _ in EVAL_CASES])
def test_evaluating_with_a_data_setting_nothing_reads_is_refused(synthetic_run, spec, settings,
                                                                 readers):
  evaluate = load_script("evaluate_facenet").evaluate
  before = _snapshot(synthetic_run)
  [(k, v)] = settings.items()
  with pytest.raises(workdir_lib.WorkdirError) as e:
    evaluate(synthetic_run, spec, settings=settings)
  assert str(e.value) == (f"--set={k}={v}: evaluating data.source='synthetic' with ['{spec}'] "
                          f"does not read it (read only by {readers}), so the results would be "
                          "those without it, in a file named after it; leave it out")
  assert _snapshot(synthetic_run) == before   # no eval_<name>@<setting>.json


def test_a_data_setting_that_is_read_is_still_evaluated(synthetic_run):
  evaluate = load_script("evaluate_facenet").evaluate
  out = evaluate(synthetic_run, "pairs", settings={"data.eval_pairs": "100"})
  assert "pairs" in out["results"]
  assert os.path.exists(os.path.join(synthetic_run, "eval_pairs@data.eval_pairs=100.json"))


@pytest.mark.parametrize("variant,settings,read", [
    ("orl", {"data.split_seed": "3", "data.center_crop": "8", "data.train_identities": "5"}, True),
    ("orl", {"data.test_fold": "3"}, False),
    ("orl", {"data.images_per_identity": "(2, 2)"}, False),
    ("lfw", {"data.test_fold": "3", "data.calibration_folds": "2", "data.tfds_dir": "/x"}, True),
    ("lfw", {"data.split_seed": "3"}, False),
    ("lfw", {"data.eval_identities": "3"}, False),
    ("synthetic", {"data.train_identities": "5", "data.eval_images_per_identity": "(2, 2)"}, True),
    ("synthetic", {"data.center_crop": "8"}, False),
])
def test_which_source_reads_which_data_field(variant, settings, read):
  """Each source against the loaders of facenet_jax/data (no data read here)."""
  c = with_overrides(facenet_configs.get_config(variant), settings)   # parsed as --set parses them
  check = lambda: workdir_lib.check_evaluation_data_read(settings, c, ["pairs"])
  if read:
    check()
  else:
    first = next(iter(settings))
    with pytest.raises(workdir_lib.WorkdirError, match=rf"^--set={re.escape(first)}="):
      check()


def test_a_generated_source_with_cached_features_reads_tfds_dir():
  c = with_overrides(facenet_configs.get_config("tiny"), {"data.features": "vgg19:pool5"})
  workdir_lib.check_evaluation_data_read({"data.tfds_dir": "/x"}, c, ["pairs"])
  c = with_overrides(c, {"data.features_cache": "/cache"})
  with pytest.raises(workdir_lib.WorkdirError, match=r"^--set=data.tfds_dir=/x: "):
    workdir_lib.check_evaluation_data_read({"data.tfds_dir": "/x"}, c, ["pairs"])
