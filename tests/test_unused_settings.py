"""Settings a FaceNet configuration accepts but does not read (facenet_jax/config_usage.py):
set away from the variant's default they used to train the run they would have trained
without them, exit 0 (an audit showed each bit-identical). Now a new run is refused before
anything is written, a continuing one gets a note, and no variant's defaults trip a rule."""

import os

import jax
import numpy as np
import pytest

from configs import facenet as facenet_configs
from facenet_jax import config_usage, steps, train
from facenet_jax.config_checks import ConfigError, check_config
from infra.overrides import with_overrides

CASES = [   # (overrides, the field reported)
    ({"optim.name": "adam", "optim.weight_decay": 0.5}, "optim.weight_decay"),
    ({"optim.name": "sgd", "optim.weight_decay": 0.01}, "optim.weight_decay"),
    ({"miner": "batch_hard", "semi_hard_fallback": "drop"}, "semi_hard_fallback"),
    ({"loss": "contrastive", "miner": "batch_all"}, "miner"),
    ({"offline.enabled": True, "miner": "batch_hard"}, "miner"),
    ({"offline.enabled": True, "identities_per_batch": 6}, "identities_per_batch"),
    ({"loss": "soft_margin", "miner": "batch_hard", "margin": 1.0}, "margin"),
    ({"loss": "soft_margin", "miner": "random", "margins": (0.1, 0.5, 1.0)}, "margins"),
    ({"model.depth": 50}, "model.depth"),
    ({"model.name": "inception_resnet_v1", "model.widths": (999, 7), "data.image_size": 80},
     "model.widths"),
    ({"data.features": "vgg19:conv2_2", "data.features_pool": "mean", "model.name": "feature_head",
      "model.vgg_layer": "conv1_1"}, "model.vgg_layer"),
    ({"data.features": "vgg19:conv2_2", "data.features_pool": "mean", "model.name": "feature_head",
      "augment.crop_pad": 4}, "augment.crop_pad"),
    ({"data.features_power": 0.5}, "data.features_power"),
    ({"data.source": "orl", "data.images_per_identity": (1, 1)}, "data.images_per_identity"),
]


def _tiny(overrides):
  return with_overrides(facenet_configs.get_config("tiny"), overrides)


@pytest.mark.parametrize("overrides,field", CASES, ids=[f for _, f in CASES])
def test_a_setting_the_configuration_does_not_read_is_named(overrides, field):
  c = _tiny(overrides)
  check_config(c)   # valid values: what they lack is an effect
  [first, *_] = config_usage.unused_settings(c)
  assert first.startswith(f"config.{field} = ") and "would have no effect" in first


def test_a_new_run_is_refused_before_anything_is_written_and_a_continuing_one_noted(tmp_path, capsys):
  c = _tiny({"loss": "soft_margin", "miner": "batch_hard", "margins": (0.1, 0.5), "num_steps": 1})
  work = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"config.margins = \(0.1, 0.5\): loss='soft_margin' with "
                                        r"miner='batch_hard' has no margin"):
    train.train_and_evaluate(c, work)
  assert not os.path.exists(work)
  os.makedirs(work)
  from facenet_jax import workdir as workdir_lib
  workdir_lib.save_config(c, work)   # a run trained so by code from before the check
  assert config_usage.check_settings_read(c, work) == [f"note: {config_usage.unused_settings(c)[0]}"]


def test_switching_an_unread_setting_off_is_not_an_error():
  """Saying what the run does (no weight decay under Adam, no flip of pooled descriptors)."""
  feats = {"data.features": "vgg19:conv2_2", "data.features_pool": "mean", "model.name": "feature_head"}
  for overrides in ({"optim.name": "adam", "optim.weight_decay": 0.0},
                    {**feats, "augment.flip": False, "augment.crop_pad": 0}):
    assert config_usage.unused_settings(_tiny(overrides)) == []


@pytest.mark.parametrize("variant", list(facenet_configs.VARIANTS))
def test_no_variant_sets_a_field_it_does_not_read(variant):
  assert config_usage.unused_settings(facenet_configs.get_config(variant)) == []


def test_the_margins_of_a_loss_without_one_trained_identical_models():
  """Why the margins rule exists: under soft_margin + batch_hard the step's gradients do not
  depend on alpha, so K 'margins' were K copies of one model reported as a sweep."""
  c = _tiny({"loss": "soft_margin", "miner": "batch_hard", "optim.schedule": "constant",
             "optim.warmup_steps": 0})
  graphdef, tx, state = steps.create_train_state(c, example_shape=(c.data.image_size,) * 2 + (3,))
  step = jax.jit(steps.make_train_step(graphdef, tx, c))
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (16, c.data.image_size, c.data.image_size, 3), np.uint8),
           "labels": np.repeat(np.arange(4), 4).astype(np.int32), "mask": np.ones(16, bool)}
  outs = [step(state, batch, m)[0]["params"] for m in (0.1, 1.0)]
  moved = step(state, batch, 0.1)[0]["params"]   # and the step does train
  assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 0
             for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(state["params"])))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_array_equal(a, b)
