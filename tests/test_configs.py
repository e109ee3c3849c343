"""configs/facenet.py (variants by name, the evaluation layout, upgrade of old saved
configs), configs/sweeps.py, and check_config's allowed values and evaluator settings."""

import copy
import json
import os

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_dict, config_flags

from configs import facenet, sweeps
from facenet_jax import clustering, evaluators, losses, mining, models
from facenet_jax.config_checks import ConfigError, check_config
from facenet_jax.steps import OPTIMIZERS, SCHEDULES

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VARIANTS = ("synthetic", "tiny", "inception", "orl", "orl_vgg", "lfw", "lfw_vgg",
            "lfw_vgg_aligned", "lfw_vgg_aligned224", "omniglot", "ekg", "volume")

# config.evaluation as configs/facenet.py wrote it before the settings were grouped by
# evaluator (the layout of older runs' config.json)
FLAT_EVALUATION = dict(
    far=1e-3, flip_tta=False, repeats=5, open_set_enrolled=0, open_set_far=0.01,
    calibrate_on="train", n_way=5, k_shot=1, n_query=5, num_episodes=200, linkage="average",
    pair_features="abs_diff,chi2,concat", pair_head_pairs=3000, pair_head_steps=500,
    pair_head_lr=0.05, pair_head_weight_decay=0.0)


def _saved(config: config_dict.ConfigDict) -> dict:
  """``config`` as a run's config.json holds it (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict()))


def _dict(variant: str | None) -> dict:
  """``get_config(variant).to_dict()``."""
  return facenet.get_config(variant).to_dict()


def _with(config: config_dict.ConfigDict, dotted: str, value) -> config_dict.ConfigDict:
  """A copy of ``config`` with the field at ``dotted`` set to ``value`` of any type."""
  out = copy.deepcopy(config)
  out.unlock()
  *parents, leaf = dotted.split(".")
  node = out
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  return out


# ----------------------------------------------------------------------------- variants


def test_variants_by_name_and_the_default():
  assert tuple(facenet.VARIANTS) == VARIANTS
  assert _dict(None) == _dict("") == _dict("synthetic")
  assert facenet.default_config().to_dict() == _dict("synthetic")
  for v in VARIANTS:
    c = facenet.get_config(v)
    assert c.variant == v and c.is_locked
  with pytest.raises(ValueError) as e:
    facenet.get_config("orl-vgg")
  assert "\n" not in str(e.value) and all(v in str(e.value) for v in VARIANTS)


def test_vgg_variants_are_their_family_plus_the_spoc_head():
  for family, vgg in (("orl", "orl_vgg"), ("lfw", "lfw_vgg")):
    a, b = facenet.get_config(family), facenet.get_config(vgg)
    assert (b.data.source, b.data.data_dir, b.evals) == (a.data.source, a.data.data_dir, a.evals)
    assert b.model.name == "feature_head" and b.model.head_init == "pca_whiten"
    assert b.data.features == "vgg19:conv4_4" and b.data.features_flip


def test_aligned_lfw_variant_is_lfw_vgg_with_alignment_and_a_grid():
  a, b = facenet.get_config("lfw_vgg").to_dict(), facenet.get_config("lfw_vgg_aligned").to_dict()
  assert (b["data"]["align"], b["data"]["features_grid"]) == ("mtcnn", 7)
  a["data"].update(align="mtcnn", features_grid=7)
  a["variant"] = "lfw_vgg_aligned"
  assert a == b
  c = facenet.get_config("lfw_vgg_aligned224").to_dict()
  b["data"]["image_size"], b["variant"] = 224, "lfw_vgg_aligned224"
  assert c == b


def test_command_line_variant_and_nested_evaluation_overrides():
  fv = flags.FlagValues()
  args = ["prog", f"--config={os.path.join(ROOT, 'configs', 'facenet.py')}:orl_vgg",
          "--config.margin=0.3", "--config.evaluation.one_shot.repeats=7"]
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=args)
  fv(args)
  assert fv.config.variant == "orl_vgg" and fv.config.margin == 0.3
  assert fv.config.evaluation.one_shot.repeats == 7


def test_evaluation_settings_are_grouped_under_evaluator_names():
  e = facenet.get_config().evaluation
  groups = [k for k, v in e.items() if isinstance(v, config_dict.ConfigDict)]
  assert set(groups) <= set(evaluators.EVALUATORS)
  assert [k for k in e if k not in groups] == ["flip_tta"]
  assert set(facenet.FLAT_EVALUATION_FIELDS.values()) == set(groups)
  for field, evaluator in facenet.FLAT_EVALUATION_FIELDS.items():
    assert field in e[evaluator]


# ----------------------------------------------------------------------------- upgrade


@pytest.mark.parametrize("variant", VARIANTS)
def test_upgrade_maps_the_flat_layout_to_the_nested_one(variant):
  new = _saved(facenet.get_config(variant))
  old = copy.deepcopy(new)
  old["evaluation"] = dict(FLAT_EVALUATION)
  frozen = copy.deepcopy(old)
  assert facenet.upgrade(old) == new
  assert old == frozen                       # the argument is not changed
  assert facenet.upgrade(new) == new         # the current layout passes through


def test_upgrade_of_a_partial_old_config_moves_what_it_has():
  old = {"variant": "tiny", "evaluation": {"flip_tta": True, "repeats": 2, "linkage": "single"}}
  assert facenet.upgrade(old) == {"variant": "tiny", "evaluation": {
      "flip_tta": True, "one_shot": {"repeats": 2}, "clustering": {"linkage": "single"}}}
  assert facenet.upgrade({"variant": "tiny"}) == {"variant": "tiny"}


def test_an_upgraded_old_config_builds_and_passes_the_checks():
  old = _saved(facenet.get_config("orl"))
  old["evaluation"] = dict(FLAT_EVALUATION, repeats=3)
  c = config_dict.ConfigDict(facenet.upgrade(old))
  assert c.evaluation.one_shot.repeats == 3
  check_config(c)


# ------------------------------------------------------------------------------ sweeps


def test_sweeps_live_apart_from_the_variants():
  assert not hasattr(facenet, "sweep") and not hasattr(facenet, "MARGINS")
  assert [p["margin"] for p in sweeps.sweep("margin")] == list(sweeps.MARGINS)
  assert sweeps.sweep("margin_vmapped") == [{"margins": sweeps.MARGINS}]
  assert len(sweeps.sweep("margin_seeds")) == 3
  with pytest.raises(ValueError, match="unknown sweep 'nope'; expected one of"):
    sweeps.sweep("nope")


# ---------------------------------------------------------------------- allowed values


@pytest.mark.parametrize("field,allowed", [
    ("loss", losses.LOSSES), ("miner", tuple(mining.MINERS)),
    ("semi_hard_fallback", mining.FALLBACKS), ("model.dtype", tuple(models.DTYPES)),
    ("optim.name", OPTIMIZERS), ("optim.schedule", SCHEDULES),
    ("evaluation.clustering.linkage", clustering.LINKAGES),
    ("evaluation.one_shot.calibrate_on", evaluators.CALIBRATE_ON),
])
def test_each_allowed_value_passes_and_the_error_lists_them(field, allowed):
  tiny = facenet.get_config("tiny")
  for value in allowed:
    check_config(_with(tiny, field, value))
  with pytest.raises(ConfigError, match=rf"config\.{field} = 'nope': expected one of") as e:
    check_config(_with(tiny, field, "nope"))
  assert str(tuple(allowed)) in str(e.value)


def test_create_model_takes_its_allowed_values_from_the_same_constants():
  rngs = nnx.Rngs(0)
  for bad, match in (({"dtype": "float16"}, str(list(models.DTYPES))),
                     ({"spatial_dims": 4}, str(models.SPATIAL_DIMS)),
                     ({"name": "vgg"}, ", ".join(models.MODEL_NAMES))):
    cfg = config_dict.ConfigDict({"name": "small_cnn", "embedding_dim": 8, **bad})
    with pytest.raises(ValueError) as e:
      models.create_model(cfg, in_channels=1, rngs=rngs)
    assert match in str(e.value)


# ------------------------------------------------------------------ evaluator settings


@pytest.mark.parametrize("field,value", [
    ("evaluation.lfw_view2.far", 0.0), ("evaluation.lfw_view2.far", 1.0),
    ("evaluation.lfw_view2.pair_features", "abs_diff,cosine"),
    ("evaluation.lfw_view2.pair_head_pairs", 0), ("evaluation.lfw_view2.pair_head_steps", 2.5),
    ("evaluation.lfw_view2.pair_head_lr", 0.0),
    ("evaluation.lfw_view2.pair_head_weight_decay", -1e-4),
    ("evaluation.one_shot.repeats", 0), ("evaluation.one_shot.repeats", True),
    ("evaluation.one_shot.open_set_enrolled", -1), ("evaluation.one_shot.open_set_far", 1.5),
    ("evaluation.one_shot.calibrate_on", "test"),
    ("evaluation.episodes.n_way", 1), ("evaluation.episodes.k_shot", 0),
    ("evaluation.episodes.n_query", -2), ("evaluation.episodes.num_episodes", 0),
    ("evaluation.clustering.linkage", "ward"),
])
def test_bad_evaluator_settings_are_named_in_one_line(field, value):
  with pytest.raises(ConfigError, match=rf"^config\.{field} = {value!r}: expected ") as e:
    check_config(_with(facenet.get_config("tiny"), field, value))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("margins", [(0.1, 0.1000001), (0.2, 0.2000000001)])
def test_margins_sharing_a_directory_name_or_a_float32_are_refused(margins):
  """(0.1, 0.1000001) trained both members into one margin=0.1 folder (logs and checkpoints
  mixed) and failed only after the run; (0.2, 0.2000000001) trained one model twice."""
  with pytest.raises(ConfigError, match=r"^config\.margins = .*: expected margins that differ as "
                                        r"float32 and in their directory names"):
    check_config(_with(facenet.get_config("tiny"), "margins", margins))
  check_config(_with(facenet.get_config("tiny"), "margins", (0.1, 0.2)))


def test_good_evaluator_settings_pass():
  tiny = facenet.get_config("tiny")
  for field, value in (("evaluation.lfw_view2.pair_features", ""),
                       ("evaluation.lfw_view2.pair_features", "chi2"),
                       ("evaluation.one_shot.open_set_far", 0.0),
                       ("evaluation.episodes.n_way", 2), ("evaluation.one_shot.repeats", 1)):
    check_config(_with(tiny, field, value))


def test_every_evaluator_and_dataset_name_passes_and_a_misspelt_one_fails_before_training():
  """config.evals is checked with the rest of the config: a misspelt name used to surface as a
  ValueError traceback only when the evaluators ran, after the whole training run."""
  tiny = facenet.get_config("tiny")
  own = [n for n in (*evaluators.EVALUATORS, *evaluators.DATASET_EVALS)
         if not set(evaluators.names(n)) & set(evaluators.SOURCE_OF)]
  for value in (*own, "pairs,one_shot", ""):
    check_config(_with(tiny, "evals", value))
  with pytest.raises(ConfigError, match=r"config\.evals = 'pairs,bogus': evaluator 'bogus' is unknown"):
    check_config(_with(tiny, "evals", "pairs,bogus"))
  # a dataset's own protocol on another source: it failed after training, naming LFW's cache
  for name, source in evaluators.SOURCE_OF.items():
    with pytest.raises(ConfigError, match=rf"config\.evals = 'pairs,{name}': expected evaluators of "
                                          rf"this run's data.source='synthetic' \('{name}' is for "
                                          rf"data.source='{source}'\)"):
      check_config(_with(tiny, "evals", f"pairs,{name}"))
    variant = facenet.get_config({"lfw": "lfw", "omniglot": "omniglot"}[source])
    if name == "lfw_view1":   # the View 1 split (tests/test_lfw_view1.py: not on View 2's)
      variant = _with(variant, "data.lfw_view", 1)
    check_config(_with(variant, "evals", name))


def test_evaluating_another_split_of_the_run_s_own_people_is_refused():
  """evaluate_facenet --set=data.split_seed=1 on an ORL run scored 6 of its 10 "held-out"
  people from training (accuracy 0.978 for 0.891), and --set=data.test_fold=5 on an LFW run
  scored a fold it trained on, exit 0 (a numerical audit)."""
  from facenet_jax import workdir as workdir_lib
  from infra.overrides import with_overrides
  check = workdir_lib.check_held_out_people
  orl = facenet.get_config("orl")
  for bad in ({"data.split_seed": 1}, {"data.train_identities": orl.data.train_identities - 1}):
    with pytest.raises(workdir_lib.WorkdirError, match=rf"--set={next(iter(bad))}=.*people it "
                                                       r"trained on as held-out"):
      check(orl, with_overrides(orl, bad))
  # more or fewer held-out people after the same training ones, or other data: unseen people
  for ok in ({"data.eval_identities": 5}, {"data.source": "folder", "data.data_dir": "/photos",
                                            "data.split_seed": 3}, {"data.data_dir": "/other"}):
    check(orl, with_overrides(orl, ok))
  every = with_overrides(orl, {"data.train_identities": 0, "data.eval_identities": 10})
  with pytest.raises(workdir_lib.WorkdirError, match="data.eval_identities"):   # 0: all the rest
    check(every, with_overrides(every, {"data.eval_identities": 5}))
  lfw = facenet.get_config("lfw")
  for bad in ({"data.test_fold": 5}, {"data.calibration_folds": 2}):
    with pytest.raises(workdir_lib.WorkdirError, match=rf"--set={next(iter(bad))}=5|=2"):
      check(lfw, with_overrides(lfw, bad))
  tiny = facenet.get_config("tiny")   # generated people: held out by generator seed
  check(tiny, with_overrides(tiny, {"data.train_identities": 3}))


def test_a_field_missing_from_an_old_config_takes_its_generic_default(tmp_path):
  """A run's config.json from before a field existed reloaded with today's *variant* value:
  an orl_vgg run from before data.features_flip was evaluated on mirrored features, an lfw run
  from before data.calibration_folds as if fold 1 were held out. The generic default is the
  value that does what code did then."""
  import json
  from facenet_jax import workdir as workdir_lib
  for variant, field, old in (("orl_vgg", "features_flip", False), ("lfw", "calibration_folds", 0)):
    saved = facenet.get_config(variant).to_dict()
    del saved["data"][field]
    d = tmp_path / variant
    d.mkdir()
    (d / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.load_config(str(d)).data[field] == old
  mine = facenet.default_config("mine").to_dict()   # a config file of one's own
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "config.json").write_text(json.dumps(mine))
  assert workdir_lib.load_config(str(tmp_path / "mine")).variant == "mine"


@pytest.mark.parametrize("field,value", [("optim.grad_clip_norm", -10.0),
                                         ("optim.weight_decay", -1e-4),
                                         ("optim.warmup_steps", -5)])
def test_negative_optimizer_settings_are_refused(field, value):
  """A negative grad_clip_norm flipped every gradient (optax): the loss rose, exit 0."""
  with pytest.raises(ConfigError, match=rf"^config\.{field} = {value!r}: expected "):
    check_config(_with(facenet.get_config("tiny"), field, value))


def test_margin_beside_margins_is_an_unread_setting():
  """With margins set, margin is not read: a margin sweep over a K-margin config trained the
  same K models at every point, each labelled with a margin it never used."""
  from facenet_jax import config_usage
  c = _with(_with(facenet.get_config("tiny"), "margins", (0.1, 0.3)), "margin", 0.5)
  assert any(line.startswith("config.margin = 0.5: config.margins=(0.1, 0.3) trains one model")
             for line in config_usage.unused_settings(c))


def test_continuing_may_change_how_batches_are_read_not_what_offline_mining_embeds(tmp_path):
  from facenet_jax import workdir as workdir_lib
  from infra import files
  base = facenet.get_config("tiny")
  d = tmp_path / "run"
  d.mkdir()
  files.write_json_atomic(str(d / "config.json"), base.to_dict())
  assert workdir_lib.check_continuation(_with(base, "data.workers", 2), str(d))
  offline = _with(base, "offline.enabled", True)
  files.write_json_atomic(str(d / "config.json"), offline.to_dict())
  with pytest.raises(workdir_lib.WorkdirError, match=r"evaluation.flip_tta: False in the run, True now"):
    workdir_lib.check_continuation(_with(offline, "evaluation.flip_tta", True), str(d))


@pytest.mark.parametrize("variant", ["ekg", "volume"])
@pytest.mark.parametrize("field", ["evaluation.flip_tta", "augment.flip"])
def test_a_mirror_of_a_strip_or_a_volume_is_refused(variant, field):
  """A strip played backwards is not a heartbeat, a volume's mirror another identity (the
  variants keep flips off): flip_tta changed the ekg accuracy 0.7425 -> 0.7875, exit 0."""
  with pytest.raises(ConfigError, match=rf"^config\.{field} = True: expected False with "
                                        rf"data.source='{variant}'"):
    check_config(_with(facenet.get_config(variant), field, True))
