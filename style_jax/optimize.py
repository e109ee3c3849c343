"""Pixel optimization for neural style transfer: pure jitted steps and the checkpointed loop.

The VGG is split once into a static graphdef and its (never updated) weights; the steps are
pure functions ``(vgg_state, targets, state) -> (state, loss)`` with ``state = {"step",
"image", "opt_state"}`` where ``image`` (H, W, 3) holds Caffe-preprocessed pixels (BGR minus
the ImageNet mean) clipped after every update to the image of RGB 0..255.

  Adam:   g = dL/dx;  x <- clip(x + adam(g))
  L-BFGS: optax.lbfgs with its zoom line search (gradients computed by the line search are
          reused through ``optax.value_and_grad_from_state``); x <- clip(x + update). When
          the clip moved a pixel, the cached value/gradient belong to the unclipped point, so
          they are invalidated and recomputed at the next step (projected L-BFGS heuristic).

``stylize(config, workdir)`` runs the coarse-to-fine schedule, checkpoints
(image, optimizer state, step) with Orbax every ``checkpoint_every`` steps and on
SIGTERM/SIGINT, resumes from ``workdir`` (bit-identical to an uninterrupted run on CPU),
and writes ``final.png``, intermediate PNGs, TensorBoard scalars and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from infra import checkpoints, files, vgg as vgg_lib
from infra.errors import NonFiniteLossError, Preempted  # noqa: F401 (re-exported)
from infra.metric_writer import MetricWriter
from infra.preemption import exit_if_stopped, stop_requests
from infra.progress import Progress
from style_jax import images, losses

State = dict[str, Any]
TERMS = ("content", "style", "tv", "total")


class StyleConfigError(ValueError):
  """A config value that cannot work; names the field."""


# ------------------------------------------------------------------------- config


def _split(s: str) -> list[str]:
  return [p.strip() for p in str(s).split(",") if p.strip()]


def _floats(s: str, field: str, n: int) -> list[float]:
  """Comma-separated floats of ``field``; "" means n equal weights 1/n."""
  parts = _split(s)
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


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises StyleConfigError naming the first field that cannot work."""
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
  need(0.0 <= config.init_noise_ratio <= 1.0, "init_noise_ratio", "must be in [0, 1]")
  need(config.learning_rate > 0, "learning_rate", "must be > 0")
  need(bool(_split(config.style)), "style", "no style image given")
  need(bool(_split(config.content_layers)), "content_layers", "no content layer given")
  need(bool(_split(config.style_layers)), "style_layers", "no style layer given")
  valid = vgg_lib.layer_names(config.depth)
  for field in ("content_layers", "style_layers"):
    bad = [n for n in _split(config[field]) if n not in valid]
    need(not bad, field, f"unknown layer(s) {bad} for VGG{config.depth}; valid: {valid}")
  _floats(config.style_layer_weights, "config.style_layer_weights",
          len(_split(config.style_layers)))
  blend = _floats(config.style_blend_weights, "config.style_blend_weights",
                  len(_split(config.style)))
  need(sum(blend) > 0, "style_blend_weights", "at least one weight must be > 0")
  need(config.output.endswith(".png"), "output", "must be a .png file name")


def objective_from_config(config: ml_collections.ConfigDict) -> Objective:
  style = _split(config.style_layers)
  lam = _floats(config.style_layer_weights, "config.style_layer_weights", len(style))
  return Objective(content_layers=tuple(_split(config.content_layers)),
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
    tv = losses.total_variation(x) if objective.tv_weight else jnp.zeros((), jnp.float32)
    total = objective.alpha * content + objective.beta * style + objective.tv_weight * tv
    return {"content": content, "style": style, "tv": tv, "total": total}
  return loss_terms


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(config.learning_rate)
  return optax.lbfgs(
      memory_size=config.lbfgs_memory,
      linesearch=optax.scale_by_zoom_linesearch(
          max_linesearch_steps=config.lbfgs_linesearch_steps, initial_guess_strategy="one"))


def _strong(tree):
  """Leaves as committed, strongly typed arrays: the form ``step`` returns and Orbax restores,
  so that the jitted step is compiled once per image size, not again after the first step."""
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), tree)


def init_state(tx: optax.GradientTransformation, image: jax.Array, step: int) -> State:
  image = jnp.asarray(image, jnp.float32)
  return _strong({"step": jnp.asarray(step, jnp.int32), "image": image,
                  "opt_state": tx.init(image)})


def make_adam_step(loss_terms: Callable, tx: optax.GradientTransformation) -> Callable:
  """Pure ``(vgg_state, targets, state) -> (state, loss at the old image)``: Adam + clip."""
  lo, hi = vgg_lib.caffe_bounds()

  def step(vgg_state, targets, state):
    f = lambda x: loss_terms(vgg_state, targets, x)["total"]
    value, grad = jax.value_and_grad(f)(state["image"])
    updates, opt_state = tx.update(grad, state["opt_state"], state["image"])
    image = jnp.clip(optax.apply_updates(state["image"], updates), lo, hi)
    return {"step": state["step"] + 1, "image": image, "opt_state": opt_state}, value
  return step


def make_lbfgs_step(loss_terms: Callable, tx: optax.GradientTransformation) -> Callable:
  """Pure ``(vgg_state, targets, state) -> (state, loss at the old image)``: L-BFGS + clip.

  One step = one L-BFGS direction and its zoom line search (several loss evaluations).
  """
  lo, hi = vgg_lib.caffe_bounds()

  def step(vgg_state, targets, state):
    f = lambda x: loss_terms(vgg_state, targets, x)["total"]
    x = state["image"]
    value, grad = optax.value_and_grad_from_state(f)(x, state=state["opt_state"])
    updates, opt_state = tx.update(grad, state["opt_state"], x, value=value, grad=grad,
                                   value_fn=f)
    moved = optax.apply_updates(x, updates)
    image = jnp.clip(moved, lo, hi)
    # the line search cached f and grad at `moved`; after a clip they are stale: mark
    # them invalid so that value_and_grad_from_state recomputes them at `image`
    cached = optax.tree.get(opt_state, "value")
    stale = jnp.any(image != moved)
    opt_state = optax.tree.set(opt_state, value=jnp.where(stale, jnp.inf, cached))
    return {"step": state["step"] + 1, "image": image, "opt_state": opt_state}, value
  return step


@functools.lru_cache(maxsize=8)
def compiled_functions(graphdef: nnx.GraphDef, objective: Objective,
                       optim: tuple) -> tuple[Callable, Callable, Callable, optax.GradientTransformation]:
  """``(features_fn, terms_fn, step_fn, tx)``, jitted, cached per (network, objective, optimizer).

  ``optim`` = (optimizer, learning_rate, lbfgs_memory, lbfgs_linesearch_steps). Several
  ``stylize`` calls in one process (a notebook, a resumed run, the tests) reuse the
  compiled executables instead of compiling the VGG forward/backward again.
  """
  name, lr, memory, ls_steps = optim
  config = ml_collections.ConfigDict(dict(optimizer=name, learning_rate=lr, lbfgs_memory=memory,
                                          lbfgs_linesearch_steps=ls_steps))
  tx = make_optimizer(config)
  loss_terms = make_loss_terms(graphdef, objective)
  make_step = make_adam_step if name == "adam" else make_lbfgs_step
  return (make_features_fn(graphdef), jax.jit(loss_terms), jax.jit(make_step(loss_terms, tx)), tx)


# ------------------------------------------------------------------------ schedule


def scale_sizes(config: ml_collections.ConfigDict, content_shape: tuple[int, ...]) -> list[tuple[int, int]]:
  """(H, W) of the generated image at each scale, coarse to fine; the last is the output size."""
  longest = config.image_size or max(content_shape[:2])
  out = []
  for k in range(config.num_scales):
    size = int(round(longest / config.scale_factor ** (config.num_scales - 1 - k)))
    out.append(images.size_for_longest(content_shape, max(size, 1)))
  return out


def style_size(config: ml_collections.ConfigDict, style_shape, out_hw) -> tuple[int, int]:
  """The style image's (H, W) for an output of ``out_hw``: longest side style_scale x output's."""
  return images.size_for_longest(style_shape, max(1, int(round(config.style_scale * max(out_hw)))))


def check_sizes(config, objective: Objective, content_path: str, content_shape,
                style_paths: list[str], style_shapes: list) -> None:
  """Every image fed to the VGG must keep >= 1 position at the deepest requested layer."""
  c_need = vgg_lib.min_input_size(objective.layers)
  s_need = vgg_lib.min_input_size([n for n, _ in objective.style_layers])
  deepest_layer = max(objective.layers, key=lambda n: vgg_lib.min_input_size([n]))
  for k, hw in enumerate(scale_sizes(config, content_shape)):
    if min(hw) < c_need:
      raise images.ImageError(
          f"config.content: {content_path!r} ({content_shape[1]}x{content_shape[0]} px) becomes "
          f"{hw[1]}x{hw[0]} px at scale {k} (config.image_size={config.image_size}, "
          f"num_scales={config.num_scales}), smaller than the {c_need} px per side that layer "
          f"{deepest_layer} needs after its poolings; use a larger image_size")
    for p, sh in zip(style_paths, style_shapes):
      shw = style_size(config, sh, hw)
      if min(shw) < s_need:
        raise images.ImageError(
            f"config.style: {p!r} ({sh[1]}x{sh[0]} px) becomes {shw[1]}x{shw[0]} px at scale {k} "
            f"(config.style_scale={config.style_scale}), smaller than the {s_need} px per side "
            f"that the style layers need; use a larger style_scale or image_size")


def initial_image(config: ml_collections.ConfigDict, content_x: jax.Array) -> jax.Array:
  """Seeded noise, the content image, or their mix (preprocessed space, clipped)."""
  lo, hi = vgg_lib.caffe_bounds()
  noise = np.random.default_rng(config.seed).uniform(
      -config.init_noise_scale, config.init_noise_scale, content_x.shape).astype(np.float32)
  if config.init == "noise":
    x = noise
  elif config.init == "content":
    x = content_x
  else:
    r = config.init_noise_ratio
    x = r * noise + (1.0 - r) * content_x
  return jnp.clip(x, lo, hi)


def upsample(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of a preprocessed (h, w, 3) image to ``hw`` (next scale's init), clipped."""
  lo, hi = vgg_lib.caffe_bounds()
  return jnp.clip(jax.image.resize(x, (hw[0], hw[1], x.shape[-1]), "bilinear"), lo, hi)


def to_rgb(x: jax.Array) -> np.ndarray:
  """Preprocessed (H, W, 3) -> RGB float32 0..255 (clipped)."""
  return np.clip(np.asarray(vgg_lib.deprocess_caffe(x)), 0.0, 255.0)


# ---------------------------------------------------------------------------- loop


def _load_inputs(config):
  content_path = os.path.abspath(os.path.expanduser(config.content))
  content = images.load_image(content_path, "config.content")
  style_paths = [os.path.abspath(os.path.expanduser(p)) for p in _split(config.style)]
  styles = [images.load_image(p, "config.style") for p in style_paths]
  return content_path, content, style_paths, styles


def stylize(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Optimizes the pixels of a generated image; resumes from ``workdir`` if checkpointed.

  Writes to ``workdir``: ``config.output`` (final PNG), ``iter_NNNNNN.png`` every
  ``save_every`` steps, TensorBoard events and ``metrics.jsonl``, ``checkpoints/`` and
  ``results.json`` = ``{config, step, sizes, initial: {content, style, tv, total},
  final: {...}, output, seconds_per_step, wall_seconds, ...}`` (initial: at step 0, on the
  first scale; final: the saved image). Returns the same dict.

  Raises:
    FileNotFoundError / images.ImageError: unreadable or too small inputs (naming the field).
    StyleConfigError: an unusable config value. vgg.WeightsError: a bad weights file.
    NonFiniteLossError: the loss became NaN/Inf. Preempted: SIGTERM/SIGINT (checkpointed).
  """
  t_start = time.time()
  check_config(config)
  objective = objective_from_config(config)
  workdir = os.path.abspath(workdir)
  content_path, content_rgb, style_paths, style_rgbs = _load_inputs(config)
  check_sizes(config, objective, content_path, content_rgb.shape, style_paths,
              [s.shape for s in style_rgbs])
  blend = _floats(config.style_blend_weights, "config.style_blend_weights", len(style_rgbs))
  sizes = scale_sizes(config, content_rgb.shape)
  n = config.num_steps
  total_steps = n * len(sizes)

  model = vgg_lib.load_vgg(config.weights, config.depth, config.pooling,
                           cache_dir=config.weights_cache or None, remat=config.remat,
                           seed=config.seed)
  graphdef, vgg_state = nnx.split(model)
  os.makedirs(workdir, exist_ok=True)   # only once the inputs, config and weights are good
  features_fn, terms_fn, step_fn, tx = compiled_functions(
      graphdef, objective, (config.optimizer, float(config.learning_rate),
                            int(config.lbfgs_memory), int(config.lbfgs_linesearch_steps)))

  def scale_inputs(k: int):
    hw = sizes[k]
    cx = vgg_lib.preprocess_caffe(images.resize(content_rgb, hw))
    sxs = [vgg_lib.preprocess_caffe(images.resize(s, style_size(config, s.shape, hw)))
           for s in style_rgbs]
    return cx, compute_targets(features_fn, vgg_state, objective, cx, sxs, blend)

  def host_terms(targets, x) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(terms_fn(vgg_state, targets, x)).items()}

  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  every=config.checkpoint_every, keep=config.keep_checkpoints)
  writer = MetricWriter(workdir)
  start = ckpt.latest_step() or 0
  if start > total_steps:
    raise StyleConfigError(f"{ckpt.directory} holds step {start}, beyond this config's "
                           f"{total_steps} steps (num_steps x num_scales): use a new workdir")
  meta: dict = {}
  state, state_scale = None, -1
  # a checkpoint at step t in (k n, (k+1) n] holds an image of scale k
  k = max(0, (start - 1) // n) if start else 0
  if start:
    target = init_state(tx, jnp.zeros(sizes[k] + (3,), jnp.float32), start)
    _, state, meta = ckpt.restore(target)
    state, state_scale = _strong(state), k
    print(f"resumed from {ckpt.directory}/{start}", flush=True)
  initial = meta.get("initial")
  print(f"stylizing {os.path.basename(content_path)} with "
        f"{', '.join(os.path.basename(p) for p in style_paths)}: scales "
        f"{[f'{w}x{h}' for h, w in sizes]}, {config.optimizer}, {n} steps per scale, "
        f"VGG{config.depth} ({config.pooling} pooling) from {config.weights}", flush=True)

  progress = Progress(total_steps, start, unit="it")
  step = start
  seconds = {"optimizing": 0.0}
  with stop_requests() as stop:
    for k in range(k, len(sizes)):
      end = (k + 1) * n
      content_x, targets = scale_inputs(k)
      if state_scale != k:
        if state is None:
          x0 = initial_image(config, content_x)
        else:   # finished scale k - 1: its result, upsampled, starts scale k
          x0 = upsample(state["image"], sizes[k])
        state, state_scale = init_state(tx, x0, step), k
      if initial is None:
        initial = host_terms(targets, state["image"])
        writer.write_scalars(0, {f"loss/{t}": v for t, v in initial.items()})
      compiled_at = None
      t0 = time.perf_counter()
      while step < end:
        state, value = step_fn(vgg_state, targets, state)
        step += 1
        if compiled_at is None:
          jax.block_until_ready(value)
          compiled_at = step
          t0 = time.perf_counter()
          progress.mark_compiled(step)
        last = step == total_steps
        if step % config.log_every == 0 or step == end or stop:
          values = host_terms(targets, state["image"])
          if not all(math.isfinite(v) for v in values.values()) or not np.isfinite(float(value)):
            raise NonFiniteLossError(
                f"loss became NaN/Inf by step {step} ({values}); no checkpoint after step "
                f"{ckpt.latest_step()} was written. Lower learning_rate or the loss weights.")
          extra = {"it_per_sec": progress.rate(step), "scale": k}
          if config.optimizer == "lbfgs":   # loss evaluations of the last line search
            info = optax.tree.get(state["opt_state"], "info")
            extra["linesearch_steps"] = int(info.num_linesearch_steps)
          writer.write_scalars(step, {f"loss/{t}": values[t] for t in TERMS} | extra)
          progress.report(step, {t: values[t] for t in TERMS}
                          | ({"ls": extra["linesearch_steps"]} if "linesearch_steps" in extra else {}))
        if config.save_every and (step % config.save_every == 0) and not last:
          rgb = to_rgb(state["image"])
          if config.preserve_colors:
            rgb = images.preserve_colors(rgb, content_rgb)
          images.save_png(os.path.join(workdir, f"iter_{step:06d}.png"), rgb)
          writer.write_images(step, {"generated": images.to_uint8(rgb)})
        if step % config.checkpoint_every == 0 or step == end or stop:
          ckpt.save(step, state, {"initial": initial, "scale": k, "variant": config.variant},
                    force=True)
        writer.flush()
        if not last:
          exit_if_stopped(stop, step, writer, ckpt)
      if compiled_at is not None and step > compiled_at:
        seconds["optimizing"] += time.perf_counter() - t0
        seconds.setdefault("steps_timed", 0)
        seconds["steps_timed"] += step - compiled_at

  final_x = state["image"]
  final = host_terms(targets, final_x)
  rgb = to_rgb(final_x)
  if config.preserve_colors:
    rgb = images.preserve_colors(rgb, content_rgb)
  out_path = images.save_png(os.path.join(workdir, config.output), rgb)
  writer.write_images(step, {"generated": images.to_uint8(rgb)})
  timed = seconds.get("steps_timed", 0)
  results = {
      "config": config.to_dict(),
      "step": int(jax.device_get(state["step"])),
      "sizes": [list(s) for s in sizes],
      "initial": initial,
      "final": final,
      "output": out_path,
      "content": content_path,
      "style": style_paths,
      "seconds_per_step": seconds["optimizing"] / timed if timed else None,
      "platform": jax.devices()[0].platform,
      "wall_seconds": time.time() - t_start,
  }
  files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  writer.close()
  ckpt.close()
  return results
