"""Validation of FaceNet configs: every bad value is named with what was expected.

The allowed values of a field come from the module that implements them (``losses.LOSSES``,
``mining.MINERS``, ``models.DTYPES``, ``clustering.LINKAGES``, ...), so a new option is
added in one place.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from facenet_jax import clustering, evaluators, losses, mining, models, pair_head, steps, vgg_features
from facenet_jax.data import sources
from infra import overrides
from infra.errors import UserError

# config.optim.name / .schedule: the optimizers and learning-rate schedules that
# train.make_optimizer builds


class ConfigError(UserError, ValueError):
  """A config field with a value outside what it accepts."""


def _require(ok: bool, field: str, value, expected: str) -> None:
  """Raises ConfigError ``config.<field> = <value>: expected <expected>`` unless ``ok``."""
  if not ok:
    raise ConfigError(f"config.{field} = {value!r}: expected {expected}")


def _positive_int(c, field):
  """Requires the field at dotted path ``field`` of ``c`` to be an integer > 0."""
  v = c
  for part in field.split("."):
    v = v[part]
  _require(_pos_int(v), field, v, "a positive integer")


def _pos_int(v) -> bool:
  """Whether ``v`` is an integer > 0 (not a bool)."""
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v) -> bool:
  """Whether ``v`` is an integer >= 0 (not a bool)."""
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
  """Whether ``v`` is an int or float (not a bool)."""
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(value, allowed, field: str) -> None:
  """Requires ``value`` to be one of ``allowed`` (a tuple, or a dict's keys)."""
  _require(value in allowed, field, value, f"one of {tuple(allowed)}")


def _check_objective(c: ml_collections.ConfigDict) -> None:
  """Loss, miner, margin(s) and their combinations."""
  _one_of(c.loss, losses.LOSSES, "loss")
  _one_of(c.miner, mining.MINERS, "miner")
  _require(isinstance(c.margin, (int, float)) and c.margin >= 0, "margin", c.margin,
           "a number >= 0 (alpha, the triplet margin)")
  margins = tuple(c.margins)
  _require(all(_number(m) and m >= 0 for m in margins) and len(set(margins)) == len(margins),
           "margins", c.margins,
           "distinct numbers >= 0 (one model per alpha), or () for one run at config.margin")
  if len(set(margins)) == len(margins) and all(_number(m) for m in margins):
    # each member trains at its float32 margin in a directory named by it (margin=0.1): two
    # that share either trained one model twice, or wrote two into one folder before failing
    names = [overrides.point_name({"margin": float(m)}) for m in margins]
    _require(len(set(names)) == len(names) and len(set(np.float32(margins).tolist())) == len(margins),
             "margins", c.margins, "margins that differ as float32 and in their directory "
             f"names (these give {names})")
  _require(not (margins and c.offline.enabled), "margins", c.margins,
           "() with offline.enabled (offline selection uses one model's embeddings)")
  _one_of(c.semi_hard_fallback, mining.FALLBACKS, "semi_hard_fallback")
  _require(not (c.miner == "batch_all" and c.loss == "soft_margin"), "loss", c.loss,
           "'triplet' with miner='batch_all' (the soft margin has no batch-all form)")


def _check_sizes(c: ml_collections.ConfigDict) -> None:
  """Batch shape, step counts and evaluation sizes: positive integers."""
  for f in ("identities_per_batch", "images_per_identity", "num_steps", "log_every",
            "eval_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
            "model.embedding_dim", "data.eval_pairs", "data.eval_folds", "data.image_size"):
    _positive_int(c, f)
  _require(c.identities_per_batch >= 2, "identities_per_batch", c.identities_per_batch,
           ">= 2 (negatives need a second identity)")
  _require(c.images_per_identity >= 2, "images_per_identity", c.images_per_identity,
           ">= 2 (positives need a second image)")
  _require(isinstance(c.batch_chunk, int) and not isinstance(c.batch_chunk, bool)
           and c.batch_chunk >= 0, "batch_chunk", c.batch_chunk,
           "an integer >= 0 (images per chunk of the global batch; 0: no chunking)")


def _check_model(m: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """``config.model`` (``d``: ``config.data``, for the cached features a head reads)."""
  _one_of(m.name, models.MODEL_NAMES, "model.name")
  _one_of(m.head_init, models.HEAD_INITS, "model.head_init")
  if m.head_init == "pca_whiten":
    _require(m.name == "feature_head" and d.features, "model.head_init", m.head_init,
             "'random' unless model.name='feature_head' over data.features")
    _require(tuple(m.widths) == (), "model.widths", m.widths,
             "() with model.head_init='pca_whiten' (PCA whitening is one linear map)")
    _require(m.whiten_eps >= 0, "model.whiten_eps", m.whiten_eps, ">= 0")
  _one_of(m.spatial_dims, models.SPATIAL_DIMS, "model.spatial_dims")
  _require(isinstance(m.widths, (tuple, list)) and all(_pos_int(w) for w in m.widths),
           "model.widths", m.widths, "a sequence of positive integers (channels per stage)")
  _one_of(m.dtype, models.DTYPES, "model.dtype")


def _check_optim(o: ml_collections.ConfigDict) -> None:
  """``config.optim``."""
  _one_of(o.name, steps.OPTIMIZERS, "optim.name")
  _one_of(o.schedule, steps.SCHEDULES, "optim.schedule")
  _require(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "> 0")
  # optax takes a negative clip norm and flips every gradient: the run climbed the loss, exit 0
  _require(_number(o.grad_clip_norm) and o.grad_clip_norm >= 0, "optim.grad_clip_norm",
           o.grad_clip_norm, "a number >= 0 (0: no clipping)")
  _require(_number(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay,
           "a number >= 0")
  _require(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "optim.warmup_steps",
           o.warmup_steps, "an integer >= 0")


# sources whose mirror image is not an example of the same identity (the variants keep flips
# off for this); a flip there changed scores without a word
NO_MIRROR = {"ekg": "a strip played backwards is not a heartbeat",
             "volume": "a volume's mirror image is another identity"}


def _check_augment(a: ml_collections.ConfigDict, spatial_dims: int) -> None:
  """``config.augment``: non-negative strengths; rotation only of 2-D examples."""
  _require(a.crop_pad >= 0, "augment.crop_pad", a.crop_pad, ">= 0")
  for f in ("scale", "rotate", "brightness"):
    _require(a[f] >= 0, f"augment.{f}", a[f], ">= 0")
  _require(0 <= a.contrast < 1, "augment.contrast", a.contrast, "in [0, 1)")
  _require(a.rotate == 0 or spatial_dims == 2, "augment.rotate", a.rotate,
           f"0 with model.spatial_dims={spatial_dims} (rotation is 2-D)")


def _check_lfw_view2(e: ml_collections.ConfigDict) -> None:
  """``config.evaluation.lfw_view2``: the VAL@FAR target and the pair heads."""
  _require(_number(e.far) and 0 < e.far < 1, "evaluation.lfw_view2.far", e.far,
           "a number in (0, 1) (the VAL@FAR target)")
  names = [f for f in e.pair_features.split(",") if f]
  _require(all(f in pair_head.FEATURES for f in names), "evaluation.lfw_view2.pair_features",
           e.pair_features, f"comma-separated names from {tuple(pair_head.FEATURES)}, or '' "
           "(the distance only)")
  for f in ("pair_head_pairs", "pair_head_steps"):
    _require(_pos_int(e[f]), f"evaluation.lfw_view2.{f}", e[f], "a positive integer")
  _require(_number(e.pair_head_lr) and e.pair_head_lr > 0, "evaluation.lfw_view2.pair_head_lr",
           e.pair_head_lr, "a number > 0")
  _require(_number(e.pair_head_weight_decay) and e.pair_head_weight_decay >= 0,
           "evaluation.lfw_view2.pair_head_weight_decay", e.pair_head_weight_decay, "a number >= 0")


def _check_one_shot(e: ml_collections.ConfigDict) -> None:
  """``config.evaluation.one_shot``: repeats and the open-set settings."""
  _require(_pos_int(e.repeats), "evaluation.one_shot.repeats", e.repeats,
           "a positive integer (seeded choices of the enrolment images)")
  _require(_nonneg_int(e.open_set_enrolled), "evaluation.one_shot.open_set_enrolled",
           e.open_set_enrolled, "an integer >= 0 (people enrolled; 0: half)")
  _require(_number(e.open_set_far) and 0 <= e.open_set_far <= 1,
           "evaluation.one_shot.open_set_far", e.open_set_far,
           "a number in [0, 1] (accepted fraction of calibration impostors)")
  _one_of(e.calibrate_on, evaluators.CALIBRATE_ON, "evaluation.one_shot.calibrate_on")


def _check_episodes(e: ml_collections.ConfigDict) -> None:
  """``config.evaluation.episodes``: N-way (N >= 2) K-shot, queries, episode count."""
  _require(_pos_int(e.n_way) and e.n_way >= 2, "evaluation.episodes.n_way", e.n_way,
           "an integer >= 2 (one way is no choice)")
  for f in ("k_shot", "n_query", "num_episodes"):
    _require(_pos_int(e[f]), f"evaluation.episodes.{f}", e[f], "a positive integer")


def _check_evaluation(e: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """``config.evaluation``: flip_tta, then every evaluator's settings (checked whether or
  not ``config.evals`` names it: ``evaluate_facenet.py --eval`` may run it later)."""
  _require(not (e.flip_tta and d.features), "evaluation.flip_tta", e.flip_tta,
           f"False with data.features={d.features!r} (cached backbone features have no image "
           "to mirror)")
  _require(not (e.flip_tta and d.source in NO_MIRROR), "evaluation.flip_tta", e.flip_tta,
           f"False with data.source={d.source!r} ({NO_MIRROR.get(d.source)})")
  _check_lfw_view2(e.lfw_view2)
  _check_one_shot(e.one_shot)
  _check_episodes(e.episodes)
  _one_of(e.clustering.linkage, clustering.LINKAGES, "evaluation.clustering.linkage")


def _check_data(d: ml_collections.ConfigDict) -> None:
  """``config.data``: the source and its split, crops, cached-feature pooling."""
  _one_of(d.source, sources.SOURCES, "data.source")
  _require(d.channels in (1, 3), "data.channels", d.channels, "1 or 3")
  _require(_nonneg_int(d.center_crop), "data.center_crop", d.center_crop,
           "an integer >= 0 (0: the largest centered square)")
  _require(d.eval_folds >= 2, "data.eval_folds", d.eval_folds, ">= 2")
  for f in ("images_per_identity", "eval_images_per_identity"):   # procedural sources' range
    v = d[f]
    _require(isinstance(v, (tuple, list)) and len(v) == 2 and all(_pos_int(n) for n in v)
             and v[0] <= v[1], f"data.{f}", v, "(min, max): two integers, 1 <= min <= max")
  if d.source in ("orl", "omniglot", "folder", "recordio"):
    for f in ("train_identities", "eval_identities"):
      # 0 and 0: every person trains, none is held out
      _require(_nonneg_int(d[f]), f"data.{f}", d[f], "an integer >= 0 (0: all the rest)")
  if d.source == "lfw":
    # the upper bound is pairs.txt's fold count, checked when it is read
    _require(_nonneg_int(d.test_fold), "data.test_fold", d.test_fold,
             "a View 2 fold, an integer >= 0 (0..9 for the official pairs.txt)")
    _require(_nonneg_int(d.calibration_folds), "data.calibration_folds", d.calibration_folds,
             "an integer >= 0 (View 2 folds held out of training to choose thresholds)")
  _require(d.lfw_view in (1, 2), "data.lfw_view", d.lfw_view, "1 (View 1, for choosing a "
           "model) or 2 (View 2's ten folds, for reporting it)")
  # View 1 keeps only pairs whose photos are there; a dropped no-face photo would leave
  # its pairs out unseen among them
  _require(not (d.lfw_view == 1 and d.no_face == "drop"), "data.no_face", d.no_face,
           "'center_crop' with data.lfw_view=1 (every pair's photos stay, as in View 2)")
  _require(d.features_pool in vgg_features.POOLS, "data.features_pool", d.features_pool,
           f"one of {vgg_features.POOLS} ('' keeps the activation map)")
  _require(isinstance(d.features_power, (int, float)) and d.features_power > 0,
           "data.features_power", d.features_power, "a number > 0 (0.5: square root)")
  _require(not (d.features_flip and not d.features_pool), "data.features_flip", d.features_flip,
           "False unless data.features_pool is 'mean' or 'max'")
  _require(_nonneg_int(d.features_grid) and d.features_grid >= 1, "data.features_grid",
           d.features_grid, "an integer >= 1 (1: pooled over all positions)")
  _require(d.features_grid == 1 or d.features_pool, "data.features_grid", d.features_grid,
           "1 unless data.features_pool is 'mean' or 'max' (a grid of pooled cells)")
  # a generated source reads no files: a data_dir given with it was meant for another source
  # (evaluate_facenet --data_dir on a synthetic run evaluated the synthetic people again)
  _require(not (d.source in sources.GENERATED and d.data_dir), "data.data_dir", d.data_dir,
           f"'' with data.source={d.source!r}, which generates its data and reads no files "
           f"(for a folder of photos set data.source='folder' too)")
  if d.source == "folder":
    _require(bool(d.data_dir), "data.data_dir", d.data_dir, "the identity folder root "
             "(data_dir/<identity>/<image>) with data.source='folder'")
  if d.source == "recordio":
    _require(bool(d.data_dir), "data.data_dir", d.data_dir, "the folder holding train.rec and "
             "train.idx with data.source='recordio'")
  _one_of(d.record_encoding, ("jpeg", "png"), "data.record_encoding")
  for f in ("prepare_workers", "prefetch"):
    _require(_nonneg_int(d[f]), f"data.{f}", d[f], "an integer >= 0")
  _require(isinstance(d.workers, int) and d.workers >= -1, "data.workers", d.workers,
           "an integer >= -1 (-1: automatic)")


def _check_source_rank(c: ml_collections.ConfigDict) -> None:
  """The procedural 1-D / 3-D sources need a model of their rank (and ekg one channel)."""
  for source, rank in (("ekg", 1), ("volume", 3)):
    if c.data.source == source:
      _require(c.model.spatial_dims == rank, "model.spatial_dims", c.model.spatial_dims,
               f"{rank} with data.source={source!r} (its examples have {rank} spatial axes)")
  _require(not (c.data.source == "ekg" and c.data.channels != 1), "data.channels", c.data.channels,
           "1 with data.source='ekg' (a single-lead strip)")


def _check_lfw_view(c: ml_collections.ConfigDict, named: list[str]) -> None:
  """The LFW evaluator must score the view the run's split was made for: View 1's split
  trains on View 2's test people, View 2's on View 1's DevTest people."""
  if c.data.source != "lfw":
    return
  want, other = ("lfw_view1", "lfw_view2") if c.data.lfw_view == 1 else ("lfw_view2", "lfw_view1")
  _require(other not in named, "evals", c.evals,
           f"{want!r}, not {other!r}, with data.lfw_view={c.data.lfw_view} (the split is made "
           f"for View {c.data.lfw_view})")


def check_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field."""
  _check_objective(c)
  _check_sizes(c)
  _check_model(c.model, c.data)
  _check_optim(c.optim)
  _check_augment(c.augment, c.model.spatial_dims)
  _require(not (c.augment.flip and c.data.source in NO_MIRROR), "augment.flip", c.augment.flip,
           f"False with data.source={c.data.source!r} ({NO_MIRROR.get(c.data.source)})")
  _check_evaluation(c.evaluation, c.data)
  try:   # a misspelt name would otherwise surface only after training
    named = evaluators.names(c.evals)
  except evaluators.EvaluatorError as e:
    raise ConfigError(f"config.evals = {c.evals!r}: {e}") from None
  for n in named:   # LFW's pairs on an ORL run: a tfds error about LFW's cache, after training
    _require(evaluators.SOURCE_OF.get(n, c.data.source) == c.data.source, "evals", c.evals,
             f"evaluators of this run's data.source={c.data.source!r} ({n!r} is for "
             f"data.source={evaluators.SOURCE_OF.get(n)!r})")
  _check_data(c.data)
  _check_lfw_view(c, named)
  _check_source_rank(c)
  if c.offline.enabled:
    _require(c.loss != "contrastive", "loss", c.loss, "a triplet loss with offline.enabled")
    for f in ("offline.pool_size", "offline.rescore_every", "offline.triplets_per_batch"):
      _positive_int(c, f)
