"""The cost of neural style transfer (Gatys et al. 2016) as pure functions, and its config.

  J(G) = alpha * sum_l J_content^l(C, G) + beta * sum_l lambda_l J_style^l(S, G) + tv * TV(G)

``Objective`` says what J is made of (layers, lambda_l, alpha, beta, the TV weight; hashable,
so it parametrizes jitted functions); ``check_config`` refuses a config that cannot work,
naming the field, or that sets a field its optimizer / init / scales never read
(``unread_settings``); ``compute_targets`` takes the content activations and the blended style
Gram matrices once; ``make_loss_terms`` gives every term of J for an image. The per-layer
costs are :mod:`style_jax.losses`; the optimization loop is :mod:`style_jax.optimize`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from configs import style as style_configs
from infra import vgg as vgg_lib
from infra.errors import UserError
from style_jax import losses

TERMS = ("content", "style", "tv", "total")


class StyleConfigError(UserError, ValueError):
  """A config value that cannot work; names the field."""


# ------------------------------------------------------------------------- config


def comma_list(s: str) -> list[str]:
  """The non-empty, stripped items of a comma-separated config string."""
  return [p.strip() for p in str(s).split(",") if p.strip()]


def weight_list(s: str, field: str, n: int) -> list[float]:
  """Comma-separated floats of ``field``; "" means n equal weights 1/n."""
  parts = comma_list(s)
  if not parts:
    return [1.0 / n] * n
  try:
    vals = [float(p) for p in parts]
  except ValueError as e:
    raise StyleConfigError(f"{field}={s!r}: not a comma-separated list of numbers") from e
  if len(vals) != n:
    raise StyleConfigError(f"{field}={s!r} has {len(vals)} values, expected {n}")
  if any(v < 0 or not math.isfinite(v) for v in vals):
    raise StyleConfigError(f"{field}={s!r}: weights must be finite and >= 0")
  return vals


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the loss is made of (hashable: it parametrizes the jitted functions)."""
  content_layers: tuple[str, ...]
  style_layers: tuple[tuple[str, float], ...]   # (layer, lambda_l)
  content_loss: str
  alpha: float
  beta: float
  tv_weight: float

  @property
  def layers(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.content_layers + tuple(n for n, _ in self.style_layers)))


# Fields only some configurations read: (fields, whether ``config`` leaves them unread, why,
# how to use them instead). Set away from their default where unread they used to run exactly the
# image the default runs, exit 0, while config.json and results.json recorded the value (an
# audit: bit-identical final images for each rule below, different ones where they are read).
UNREAD_RULES: tuple[tuple[tuple[str, ...], Callable, Callable, str], ...] = (
    (("lbfgs_memory", "lbfgs_linesearch_steps"), lambda c: c.optimizer != "lbfgs",
     lambda c: f"optimizer={c.optimizer!r} keeps no past steps and runs no line search",
     "set optimizer='lbfgs' to use it"),
    (("learning_rate",), lambda c: c.optimizer != "adam",
     lambda c: f"optimizer={c.optimizer!r} takes the step its line search finds, not a "
               "learning rate", "set optimizer='adam' to use it"),
    (("init_noise_scale",), lambda c: c.init == "content",
     lambda c: "init='content' starts from the content image, with no noise",
     "set init='noise' or 'content_noise' to use it"),
    (("init_noise_ratio",), lambda c: c.init != "content_noise",
     lambda c: f"init={c.init!r} does not mix noise and content (only init='content_noise' does)",
     "set init='content_noise' to use it"),
    (("scale_factor",), lambda c: c.num_scales == 1,
     lambda c: "num_scales=1 optimizes at the output's size only",
     "set num_scales > 1 to use it"),
)


def defaults_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config ``config`` was built from: its preset's (``config.variant``), or the default
  preset's for a variant configs/style.py does not know (a config file of one's own)."""
  variant = config.get("variant")
  return style_configs.get_config(variant if variant in style_configs.PRESETS else None)


def unread_settings(config: ml_collections.ConfigDict) -> list[str]:
  """One line per field set away from its preset's default in a configuration that never
  reads it (UNREAD_RULES), naming the field, its value, why, and what to do. A default that
  is merely unused (learning_rate under L-BFGS in gatys2015) is not reported."""
  default = defaults_of(config)
  out = []
  for fields, unread, why, use in UNREAD_RULES:
    if not unread(config):
      continue
    for f in fields:
      if config[f] != default[f]:
        out.append(f"config.{f}={config[f]!r}: {why(config)}, so it has no effect; leave it at "
                   f"the {default.variant!r} preset's default {default[f]!r}, or {use}")
  return out


def check_config(config: ml_collections.ConfigDict, continuing: bool = False) -> list[str]:
  """Raises StyleConfigError naming the first field that cannot work, then the first of
  ``unread_settings`` (and how many more). ``continuing``: the run resumes a workdir whose
  config.json (or checkpoints) older code wrote, possibly with such a value, and a resume
  must keep its config: the unread settings are returned as notes instead."""
  def need(ok, field, msg):
    if not ok:
      raise StyleConfigError(f"config.{field}={config[field]!r}: {msg}")
  need(config.depth in (16, 19), "depth", "must be 16 or 19")
  need(config.pooling in ("max", "avg"), "pooling", "must be 'max' or 'avg'")
  need(config.optimizer in ("lbfgs", "adam"), "optimizer", "must be 'lbfgs' or 'adam'")
  need(config.init in ("noise", "content", "content_noise"), "init",
       "must be noise, content or content_noise")
  need(config.content_loss in ("sum", "normalized"), "content_loss", "must be sum or normalized")
  need(config.num_steps >= 1, "num_steps", "must be >= 1")
  need(config.num_scales >= 1, "num_scales", "must be >= 1")
  need(config.num_scales == 1 or config.scale_factor > 1, "scale_factor",
       "must be > 1 with num_scales > 1")
  need(config.style_scale > 0, "style_scale", "must be > 0")
  need(config.image_size >= 0, "image_size", "must be >= 0 (0: the content image's size)")
  need(config.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
  need(config.log_every >= 1, "log_every", "must be >= 1")
  need(config.save_every >= 0, "save_every", "must be >= 0 (0: no intermediate images)")
  # validated where read; elsewhere any other value than the default is unread_settings'
  need(config.init != "content_noise" or 0.0 <= config.init_noise_ratio <= 1.0,
       "init_noise_ratio", "must be in [0, 1]")
  need(config.optimizer != "adam" or config.learning_rate > 0, "learning_rate", "must be > 0")
  # NaN and huge values failed inside NumPy's uniform(), a traceback
  need(config.init == "content" or 0 <= config.init_noise_scale <= 1e6, "init_noise_scale",
       "must be a number in [0, 1e6] (the noise amplitude in pixel values)")
  for field in ("content_weight", "style_weight", "tv_weight"):   # NaN fails both comparisons
    need(0 <= config[field] < float("inf"), field, "must be a finite number >= 0 (a negative "
         "weight maximizes its loss)")
  need(config.optimizer != "lbfgs" or config.lbfgs_memory >= 1, "lbfgs_memory", "must be >= 1")
  need(config.optimizer != "lbfgs" or config.lbfgs_linesearch_steps >= 1,
       "lbfgs_linesearch_steps", "must be >= 1")
  need(bool(comma_list(config.style)), "style", "no style image given")
  need(bool(comma_list(config.content_layers)), "content_layers", "no content layer given")
  need(bool(comma_list(config.style_layers)), "style_layers", "no style layer given")
  valid = vgg_lib.layer_names(config.depth)
  for field in ("content_layers", "style_layers"):
    names = comma_list(config[field])
    bad = [n for n in names if n not in valid]
    need(not bad, field, f"unknown layer(s) {bad} for VGG{config.depth}; valid: {valid}")
    # a repeated style layer summed its Gram target twice (the target became 2 G(S)) while its
    # lambda was the last one given; give each layer once, with its weight
    repeated = sorted({n for n in names if names.count(n) > 1})
    need(not repeated, field, f"layer(s) {repeated} listed more than once; list each layer once "
         f"(style: set its weight in style_layer_weights)")
  layer_weights = weight_list(config.style_layer_weights, "config.style_layer_weights",
                              len(comma_list(config.style_layers)))
  # all zeros dropped the style term without a word (the blend weights had this check)
  need(sum(layer_weights) > 0, "style_layer_weights", "at least one weight must be > 0")
  blend = weight_list(config.style_blend_weights, "config.style_blend_weights",
                  len(comma_list(config.style)))
  need(sum(blend) > 0, "style_blend_weights", "at least one weight must be > 0")
  need(config.output.endswith(".png"), "output", "must be a .png file name")
  # a file name in the workdir: '../other/final.png' replaced another run's image, and
  # iter_NNNNNN.png is the name of an intermediate image, written over at that step
  need(os.path.basename(config.output) == config.output and config.output != ".png",
       "output", "must be a file name in the workdir, without a folder")
  need(not re.fullmatch(r"iter_\d{6}\.png", config.output), "output",
       "must not be named like the intermediate images (iter_NNNNNN.png)")
  unread = unread_settings(config)
  if unread and not continuing:
    more = f" (and {len(unread) - 1} more: {'; '.join(unread[1:])})" if len(unread) > 1 else ""
    raise StyleConfigError(unread[0] + more)
  return unread


def objective_from_config(config: ml_collections.ConfigDict) -> Objective:
  style = comma_list(config.style_layers)
  lam = weight_list(config.style_layer_weights, "config.style_layer_weights", len(style))
  return Objective(content_layers=tuple(comma_list(config.content_layers)),
                   style_layers=tuple(zip(style, lam)), content_loss=config.content_loss,
                   alpha=float(config.content_weight), beta=float(config.style_weight),
                   tv_weight=float(config.tv_weight))


# ------------------------------------------------------------------ pure functions


def make_features_fn(graphdef: nnx.GraphDef) -> Callable:
  """Jitted ``(vgg_state, x (H, W, 3), layers) -> {layer: activation}`` (layers static)."""
  def features(vgg_state, x, layers):
    return nnx.merge(graphdef, vgg_state).features(x, layers)
  return jax.jit(features, static_argnums=2)


def compute_targets(features_fn: Callable, vgg_state, objective: Objective, content_x: jax.Array,
                    style_xs: list[jax.Array], blend: list[float]) -> dict:
  """``{"content": {layer: a(C)}, "style": {layer: sum_i w_i G(S_i)/M_i}}`` (w normalized)."""
  content = features_fn(vgg_state, content_x, objective.content_layers)
  style_names = tuple(n for n, _ in objective.style_layers)
  w = np.asarray(blend, np.float64) / np.sum(blend)
  grams: dict[str, jax.Array] = {}
  for wi, sx in zip(w, style_xs):
    if wi == 0:
      continue
    feats = features_fn(vgg_state, sx, style_names)
    for n in style_names:
      g = float(wi) * losses.normalized_gram(feats[n])
      grams[n] = g if n not in grams else grams[n] + g
  return {"content": dict(content), "style": grams}


def make_loss_terms(graphdef: nnx.GraphDef, objective: Objective) -> Callable:
  """``(vgg_state, targets, x) -> {content, style, tv, total}``.

  total = alpha * sum_l J_content^l + beta * sum_l lambda_l J_style^l + tv_weight * TV(x).
  """
  content_fn = (losses.content_cost if objective.content_loss == "sum"
                else losses.content_cost_normalized)
  style_w = dict(objective.style_layers)

  def loss_terms(vgg_state, targets, x):
    feats = nnx.merge(graphdef, vgg_state).features(x, objective.layers)
    content = sum(content_fn(targets["content"][n], feats[n]) for n in objective.content_layers)
    style = losses.style_cost(targets["style"], feats, style_w)
    # measured at weight 0 too: it was reported as 0, read as a perfectly smooth image
    tv = losses.total_variation(x)
    total = objective.alpha * content + objective.beta * style + objective.tv_weight * tv
    return {"content": content, "style": style, "tv": tv, "total": total}
  return loss_terms
