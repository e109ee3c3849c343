"""Validation of FaceNet configs: every bad value is named with what was expected."""

from __future__ import annotations

import ml_collections

from facenet_jax import mining
from facenet_jax import models
from facenet_jax import vgg_features
from facenet_jax.data import sources

_LOSSES = ("triplet", "soft_margin", "contrastive")
_MODELS = models.MODEL_NAMES


class ConfigError(ValueError):
  """A config field with a value outside what it accepts."""


def _require(ok: bool, field: str, value, expected: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field} = {value!r}: expected {expected}")


def _positive_int(c, field):
  v = c
  for part in field.split("."):
    v = v[part]
  _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, field, v, "a positive integer")


def _nonneg_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_data(d: ml_collections.ConfigDict) -> None:
  _require(d.source in sources.SOURCES, "data.source", d.source, f"one of {tuple(sources.SOURCES)}")
  _require(d.channels in (1, 3), "data.channels", d.channels, "1 or 3")
  _require(_nonneg_int(d.center_crop), "data.center_crop", d.center_crop,
           "an integer >= 0 (0: the largest centered square)")
  if d.source in ("orl", "omniglot", "folder"):
    for f in ("train_identities", "eval_identities"):
      _require(_nonneg_int(d[f]), f"data.{f}", d[f], "an integer >= 0 (0: all the rest)")
    _require(d.train_identities + d.eval_identities > 0, "data.train_identities",
             d.train_identities, "> 0 when data.eval_identities is 0 (one side must be sized)")
  if d.source == "lfw":
    # the upper bound is pairs.txt's fold count, checked when it is read
    _require(_nonneg_int(d.test_fold), "data.test_fold", d.test_fold,
             "a View 2 fold, an integer >= 0 (0..9 for the official pairs.txt)")
    _require(_nonneg_int(d.calibration_folds), "data.calibration_folds", d.calibration_folds,
             "an integer >= 0 (View 2 folds held out of training to choose thresholds)")
  _require(d.features_pool in vgg_features.POOLS, "data.features_pool", d.features_pool,
           f"one of {vgg_features.POOLS} ('' keeps the activation map)")
  _require(isinstance(d.features_power, (int, float)) and d.features_power > 0,
           "data.features_power", d.features_power, "a number > 0 (0.5: square root)")
  _require(not (d.features_flip and not d.features_pool), "data.features_flip", d.features_flip,
           "False unless data.features_pool is 'mean' or 'max'")
  if d.source == "folder":
    _require(bool(d.data_dir), "data.data_dir", d.data_dir, "the identity folder root "
             "(data_dir/<identity>/<image>) with data.source='folder'")


def check_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field."""
  _require(c.loss in _LOSSES, "loss", c.loss, f"one of {_LOSSES}")
  _require(c.miner in mining.MINERS, "miner", c.miner, f"one of {tuple(mining.MINERS)}")
  _require(isinstance(c.margin, (int, float)) and c.margin >= 0, "margin", c.margin,
           "a number >= 0 (alpha, the triplet margin)")
  margins = tuple(c.margins)
  _require(all(isinstance(m, (int, float)) and not isinstance(m, bool) and m >= 0 for m in margins)
           and len(set(margins)) == len(margins), "margins", c.margins,
           "distinct numbers >= 0 (one model per alpha), or () for one run at config.margin")
  _require(not (margins and c.offline.enabled), "margins", c.margins,
           "() with offline.enabled (offline selection uses one model's embeddings)")
  _require(c.semi_hard_fallback in mining.FALLBACKS, "semi_hard_fallback",
           c.semi_hard_fallback, f"one of {mining.FALLBACKS}")
  _require(not (c.miner == "batch_all" and c.loss == "soft_margin"), "loss", c.loss,
           "'triplet' with miner='batch_all' (the soft margin has no batch-all form)")
  for f in ("identities_per_batch", "images_per_identity", "num_steps", "log_every",
            "eval_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
            "model.embedding_dim", "data.eval_pairs", "data.eval_folds", "data.image_size"):
    _positive_int(c, f)
  _require(c.identities_per_batch >= 2, "identities_per_batch", c.identities_per_batch,
           ">= 2 (negatives need a second identity)")
  _require(c.images_per_identity >= 2, "images_per_identity", c.images_per_identity,
           ">= 2 (positives need a second image)")
  _require(c.model.name in _MODELS, "model.name", c.model.name, f"one of {_MODELS}")
  _require(c.model.head_init in models.HEAD_INITS, "model.head_init", c.model.head_init,
           f"one of {models.HEAD_INITS}")
  if c.model.head_init == "pca_whiten":
    _require(c.model.name == "feature_head" and c.data.features, "model.head_init",
             c.model.head_init, "'random' unless model.name='feature_head' over data.features")
    _require(tuple(c.model.widths) == (), "model.widths", c.model.widths,
             "() with model.head_init='pca_whiten' (PCA whitening is one linear map)")
    _require(c.model.whiten_eps >= 0, "model.whiten_eps", c.model.whiten_eps, ">= 0")
  _require(c.model.spatial_dims in (1, 2, 3), "model.spatial_dims", c.model.spatial_dims, "1, 2 or 3")
  _require(c.model.dtype in ("float32", "bfloat16"), "model.dtype", c.model.dtype,
           "'float32' or 'bfloat16'")
  _require(c.optim.name in ("adamw", "adam", "sgd"), "optim.name", c.optim.name,
           "'adamw', 'adam' or 'sgd'")
  _require(c.optim.schedule in ("cosine", "constant"), "optim.schedule", c.optim.schedule,
           "'cosine' or 'constant'")
  _require(c.optim.learning_rate > 0, "optim.learning_rate", c.optim.learning_rate, "> 0")
  _require(c.augment.crop_pad >= 0, "augment.crop_pad", c.augment.crop_pad, ">= 0")
  _require(not (c.evaluation.flip_tta and c.data.features), "evaluation.flip_tta",
           c.evaluation.flip_tta, f"False with data.features={c.data.features!r} (cached "
           "backbone features have no image to mirror)")
  for f in ("scale", "rotate", "brightness"):
    _require(c.augment[f] >= 0, f"augment.{f}", c.augment[f], ">= 0")
  _require(0 <= c.augment.contrast < 1, "augment.contrast", c.augment.contrast, "in [0, 1)")
  _require(c.augment.rotate == 0 or c.model.spatial_dims == 2, "augment.rotate",
           c.augment.rotate, f"0 with model.spatial_dims={c.model.spatial_dims} (rotation is 2-D)")
  _require(c.data.eval_folds >= 2, "data.eval_folds", c.data.eval_folds, ">= 2")
  _check_data(c.data)
  for source, rank in (("ekg", 1), ("volume", 3)):   # procedural 1-D / 3-D sources
    if c.data.source == source:
      _require(c.model.spatial_dims == rank, "model.spatial_dims", c.model.spatial_dims,
               f"{rank} with data.source={source!r} (its examples have {rank} spatial axes)")
  _require(not (c.data.source == "ekg" and c.data.channels != 1), "data.channels", c.data.channels,
           "1 with data.source='ekg' (a single-lead strip)")
  if c.offline.enabled:
    _require(c.loss != "contrastive", "loss", c.loss, "a triplet loss with offline.enabled")
    for f in ("offline.pool_size", "offline.rescore_every", "offline.triplets_per_batch"):
      _positive_int(c, f)
