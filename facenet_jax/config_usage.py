"""Settings a FaceNet configuration accepts but does not read.

A field set away from its default in a configuration that never reads it (weight decay under
Adam, a semi-hard fallback under batch-hard mining, ``model.depth`` of a small ConvNet) used to
train exactly the run it would have trained without it, exit 0, while the config saved with
the run and the name of a sweep point said otherwise. ``margins`` under a loss with no margin
trained K identical models and reported them as a margin sweep. Each rule below names the
fields, when the configuration does not read them, and why; a field is reported only when it
differs from the default of the run's variant (``configs/facenet.py``), so a default that is
merely unused never is, and not when it is the value that switches it off (NEUTRAL: no weight
decay, no flip), which says what the run does. An audit showed every rule's fields leave the
parameters bit-identical in that configuration (and change them where they are read).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from configs import facenet as facenet_configs
from facenet_jax.data import sources

Config = ml_collections.ConfigDict


def _pooled_features(c: Config) -> bool:
  """Cached backbone features pooled to one descriptor per image: nothing to flip or warp."""
  return bool(c.data.features) and bool(c.data.features_pool) and c.data.features_grid == 1


def _no_margin(c: Config) -> bool:
  """The soft margin log(1 + exp(d_ap - d_an)) has no alpha, and only the semi-hard miner
  uses alpha to choose negatives (batch_all with the soft margin is refused elsewhere)."""
  return c.loss == "soft_margin" and c.miner in ("batch_hard", "random") and not c.offline.enabled


# (fields, when the configuration does not read them, why: shown after the value)
RULES: tuple[tuple[tuple[str, ...], Callable[[Config], bool], Callable[[Config], str]], ...] = (
    (("optim.weight_decay",), lambda c: c.optim.name != "adamw",
     lambda c: f"only optim.name='adamw' applies weight decay (optim.name={c.optim.name!r})"),
    (("miner", "semi_hard_fallback"), lambda c: c.loss == "contrastive",
     lambda c: "loss='contrastive' trains on every pair of the batch and mines no triplets"),
    (("miner", "semi_hard_fallback", "identities_per_batch", "images_per_identity"),
     lambda c: c.offline.enabled,
     lambda c: "offline.enabled selects its own triplets, 3 x offline.triplets_per_batch images "
               "a batch, without the online miner or a P x K batch"),
    (("semi_hard_fallback",), lambda c: c.miner != "semi_hard",
     lambda c: f"only miner='semi_hard' has a fallback (miner={c.miner!r})"),
    (("margin", "margins"), _no_margin,
     lambda c: f"loss='soft_margin' with miner={c.miner!r} has no margin (every margin would "
               "train the same model)"),
    (("margin",), lambda c: bool(tuple(c.margins)),
     lambda c: f"config.margins={tuple(c.margins)} trains one model per margin in it"),
    (("model.depth",), lambda c: c.model.name != "resnet",
     lambda c: f"only model.name='resnet' has a depth (model.name={c.model.name!r})"),
    (("model.widths",), lambda c: c.model.name == "inception_resnet_v1",
     lambda c: "model.name='inception_resnet_v1' has a fixed architecture"),
    (("model.vgg_layer",), lambda c: bool(c.data.features),
     lambda c: f"with data.features the layer is data.features' ({c.data.features!r})"),
    (("augment.flip", "augment.crop_pad", "augment.scale", "augment.rotate"), _pooled_features,
     lambda c: f"data.features={c.data.features!r} pools each image to one descriptor "
               "(data.features_grid=1): there is no image to flip, crop or warp (a grid > 1 "
               "keeps a layout that they move)"),
    (("data.features_pool", "data.features_power", "data.features_flip", "data.features_grid",
      "data.features_cache"), lambda c: not c.data.features,
     lambda c: "data.features is '' (the model reads the images); these shape cached backbone "
               "features"),
    (("data.test_fold", "data.calibration_folds"), lambda c: c.data.lfw_view == 1,
     lambda c: "data.lfw_view=1 scores View 1's DevTest pairs with thresholds from its "
               "DevTrain pairs, not View 2's folds"),
    (("data.lfw_view", "data.lfw_dev_dir"), lambda c: c.data.source != "lfw",
     lambda c: f"only data.source='lfw' has LFW's views (data.source={c.data.source!r})"),
    (("data.lfw_dev_dir",), lambda c: c.data.lfw_view != 1,
     lambda c: "only data.lfw_view=1 reads the View 1 files"),
    (("data.images_per_identity", "data.eval_images_per_identity"),
     lambda c: c.data.source not in sources.GENERATED,
     lambda c: f"only the generated sources {sources.GENERATED} draw a number of images per "
               f"person; data.source={c.data.source!r} reads its own"),
)


# values that switch a field's effect off: set where it is not read, they say what happens
# (no weight decay, no flip), so they are never reported
NEUTRAL = {"optim.weight_decay": 0.0, "augment.flip": False, "augment.crop_pad": 0,
           "augment.scale": 0.0, "augment.rotate": 0.0, "margins": (), "data.features_pool": "",
           "data.features_flip": False, "data.features_grid": 1, "data.features_cache": ""}


def _get(c: Config, field: str):
  for part in field.split("."):
    c = c[part]
  return tuple(c) if isinstance(c, (list, tuple)) else c


def unused_settings(c: Config) -> list[str]:
  """One line per field of ``c`` set away from its variant's default in a configuration that
  does not read it (RULES), each naming the field, its value, why, and the default."""
  # a config file of one's own names its own variant: compare with the generic defaults
  default = (facenet_configs.get_config(c.variant) if c.variant in facenet_configs.VARIANTS
             else facenet_configs.default_config(c.variant))
  out, seen = [], set()
  for fields, unread, why in RULES:
    if not unread(c):
      continue
    for f in fields:
      value, was = _get(c, f), _get(default, f)
      if f not in seen and value != was and not (f in NEUTRAL and value == NEUTRAL[f]):
        seen.add(f)
        out.append(f"config.{f} = {value!r}: {why(c)}, so it would have no effect; leave it at "
                   f"the default {was!r}")
  return out


def check_settings_read(c: Config, workdir: str) -> list[str]:
  """Raises ConfigError with the first of :func:`unused_settings` (and how many more) for a
  run that starts in ``workdir``; for a run continuing there (its config.json exists: trained
  by code from before this check, it keeps its config) returns them as notes to print."""
  import os

  from facenet_jax import workdir as workdir_lib
  from facenet_jax.config_checks import ConfigError
  unused = unused_settings(c)
  if not unused or os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return [f"note: {u}" for u in unused]
  more = f" (and {len(unused) - 1} more: {'; '.join(unused[1:])})" if len(unused) > 1 else ""
  raise ConfigError(unused[0] + more)
