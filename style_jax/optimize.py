"""Pixel optimization for neural style transfer: pure jitted steps and the checkpointed loop.

The VGG is split once into a static graphdef and its (never updated) weights; the steps are
pure functions ``(vgg_state, targets, state) -> (state, loss)`` with ``state = {"step",
"image", "opt_state"}`` where ``image`` (H, W, 3) holds Caffe-preprocessed pixels (BGR minus
the ImageNet mean) clipped after every update to the image of RGB 0..255.

  Adam:   g = dL/dx;  x <- clip(x + adam(g))
  L-BFGS: ``style_jax.lbfgs.projected_step`` (optax.lbfgs with its zoom line search, whose
          gradients are reused through ``optax.value_and_grad_from_state``); x <- clip(x +
          update). When the clip moved a pixel, the cached value/gradient belong to the
          unclipped point, so they are invalidated and recomputed at the next step (projected
          L-BFGS heuristic). scripts/reproduce_gatys.py uses the same module's batched form.

``stylize(config, workdir)`` runs the coarse-to-fine schedule, each scale through
``infra.loop.run_loop`` (the training loop's driver), checkpoints (image, optimizer state,
step) with Orbax every ``checkpoint_every`` steps, at the end of each scale and on
SIGTERM/SIGINT, resumes from ``workdir`` (bit-identical to an uninterrupted run on CPU),
and writes ``final.png``, intermediate PNGs, TensorBoard scalars and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from infra import checkpoints, distributed, files, loop, mesh as mesh_lib, vgg as vgg_lib
from infra.errors import NonFiniteLossError, Preempted  # noqa: F401 (re-exported)
from infra.metric_writer import MetricWriter
from infra.preemption import StopFlag, exit_if_stopped, stop_requests
from infra.progress import Progress
from style_jax import cost, images, lbfgs, memory, workdir as workdir_lib

State = dict[str, Any]


# --------------------------------------------------------------------- optimizer

def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam at ``learning_rate``, or the L-BFGS of ``style_jax.lbfgs`` (= ``optax.lbfgs``)."""
  if config.optimizer == "adam":
    return optax.adam(config.learning_rate)
  return lbfgs.transform(config.lbfgs_memory, config.lbfgs_linesearch_steps)


def _strong(tree):
  """Leaves as committed, strongly typed arrays: the form ``step`` returns and Orbax restores,
  so that the jitted step is compiled once per image size, not again after the first step."""
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), tree)


def replicated_copies(tree, mesh: jax.sharding.Mesh | None):
  """``tree`` (this process's copy of a state every process holds alike) as global arrays
  replicated over ``mesh``, so that a multi-process checkpoint writes it once; with ``tree``
  a ShapeDtypeStruct tree, their abstract form (a restore target). None: ``tree`` itself."""
  if mesh is None:
    return tree
  repl = mesh_lib.replicated(mesh)
  if all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(tree)):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), tree)
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(repl, np.asarray(a), np.shape(a)), tree)


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

  One step = one L-BFGS direction and its zoom line search (several loss evaluations):
  ``style_jax.lbfgs.projected_step`` on the pixels, projected onto the image of RGB 0..255.
  """
  total = lambda x, vgg_state, targets: loss_terms(vgg_state, targets, x)["total"]
  pixels_step = lbfgs.projected_step(total, tx, vgg_lib.caffe_bounds())

  def step(vgg_state, targets, state):
    image, opt_state, value = pixels_step(state["image"], state["opt_state"], vgg_state, targets)
    return {"step": state["step"] + 1, "image": image, "opt_state": opt_state}, value
  return step


@functools.lru_cache(maxsize=8)
def compiled_functions(graphdef: nnx.GraphDef, objective: cost.Objective,
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
  loss_terms = cost.make_loss_terms(graphdef, objective)
  make_step = make_adam_step if name == "adam" else make_lbfgs_step
  return (cost.make_features_fn(graphdef), jax.jit(loss_terms), jax.jit(make_step(loss_terms, tx)),
                                tx)


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


def check_sizes(config, objective: cost.Objective, content_path: str, content_shape,
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


@dataclasses.dataclass(frozen=True)
class Inputs:
  """A run's checked images: paths, RGB arrays, blend weights and the scales' (H, W)."""
  content_path: str
  content_rgb: np.ndarray
  style_paths: list[str]
  style_rgbs: list[np.ndarray]
  blend: list[float]
  sizes: list[tuple[int, int]]


def load_inputs(config: ml_collections.ConfigDict, objective: cost.Objective) -> Inputs:
  """Reads the content and style images and checks that every scale can use them."""
  content_path = os.path.abspath(os.path.expanduser(config.content))
  content = images.load_image(content_path, "config.content")
  style_paths = [os.path.abspath(os.path.expanduser(p)) for p in cost.comma_list(config.style)]
  styles = [images.load_image(p, "config.style") for p in style_paths]
  check_sizes(config, objective, content_path, content.shape, style_paths,
              [s.shape for s in styles])
  blend = cost.weight_list(config.style_blend_weights, "config.style_blend_weights", len(styles))
  return Inputs(content_path, content, style_paths, styles, blend,
                scale_sizes(config, content.shape))


@dataclasses.dataclass(frozen=True)
class Network:
  """The VGG's weights and the jitted functions of (network, objective, optimizer)."""
  vgg_state: Any
  features_fn: Callable
  terms_fn: Callable
  step_fn: Callable
  tx: optax.GradientTransformation


def load_network(config: ml_collections.ConfigDict, objective: cost.Objective) -> Network:
  """The VGG of ``config`` (weights checked) and its compiled functions (cached per process)."""
  model = vgg_lib.load_vgg(config.weights, config.depth, config.pooling,
                           cache_dir=config.weights_cache or None, remat=config.remat,
                           seed=config.seed)
  graphdef, vgg_state = nnx.split(model)
  features_fn, terms_fn, step_fn, tx = compiled_functions(
      graphdef, objective, (config.optimizer, float(config.learning_rate),
                            int(config.lbfgs_memory), int(config.lbfgs_linesearch_steps)))
  return Network(vgg_state, features_fn, terms_fn, step_fn, tx)


def scale_targets(config: ml_collections.ConfigDict, objective: cost.Objective, inputs: Inputs,
                  net: Network, k: int) -> tuple[jax.Array, dict]:
  """Scale k's preprocessed content image and its targets (content activations, style Grams)."""
  hw = inputs.sizes[k]
  cx = vgg_lib.preprocess_caffe(images.resize(inputs.content_rgb, hw))
  sxs = [vgg_lib.preprocess_caffe(images.resize(s, style_size(config, s.shape, hw)))
         for s in inputs.style_rgbs]
  return cx, cost.compute_targets(net.features_fn, net.vgg_state, objective, cx, sxs, inputs.blend)


class StyleRun:
  """One ``stylize`` run in its workdir: the scales' loops and everything they write.

  Steps count over all scales: scale k runs steps k n + 1 .. (k + 1) n (n = num_steps), so
  a checkpoint at step t in (k n, (k + 1) n] holds an image of scale k, and every scale ends
  with a checkpoint and a log line.
  """

  def __init__(self, config: ml_collections.ConfigDict, objective: cost.Objective, workdir: str,
               inputs: Inputs, net: Network):
    self.config, self.objective, self.workdir = config, objective, workdir
    self.inputs, self.net = inputs, net
    self.total_steps = config.num_steps * len(inputs.sizes)
    self.ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         every=config.checkpoint_every,
                                         keep=config.keep_checkpoints)
    # several processes (scripts/stylize.py under a multi-process launch): each computes the
    # same image on its own device; process 0 writes the files, all take part in checkpoints
    self.lead = distributed.is_lead()
    self.mesh = mesh_lib.make_data_mesh() if jax.process_count() > 1 else None
    self.writer = MetricWriter(workdir, enabled=self.lead)
    self.initial: dict[str, float] | None = None   # loss terms at step 0, on the first scale
    self.scale = 0
    self.targets: dict = {}
    self.logged: dict[str, float] = {}   # loss terms at the image of the step being logged
    self.linesearch_steps: int | None = None   # L-BFGS: evaluations of that step's search
    self.seconds, self.steps_timed = 0.0, 0   # after each scale's first (compiling) step

  def host_terms(self, x: jax.Array) -> dict[str, float]:
    """The loss terms of image x against the current scale's targets, as floats."""
    terms = self.net.terms_fn(self.net.vgg_state, self.targets, x)
    return {k: float(v) for k, v in jax.device_get(terms).items()}

  def rgb(self, x: jax.Array) -> np.ndarray:
    """The image to save: RGB 0..255, with the content's colours if preserve_colors."""
    rgb = to_rgb(x)
    if self.config.preserve_colors:
      rgb = images.preserve_colors(rgb, self.inputs.content_rgb)
    return rgb

  def restore(self) -> tuple[State | None, int]:
    """The latest checkpoint's state and step, or (None, 0); sets ``initial`` and ``scale``."""
    start = self.ckpt.latest_step() or 0
    if start > self.total_steps:
      raise cost.StyleConfigError(f"{self.ckpt.directory} holds step {start}, beyond this config's "
                                  f"{self.total_steps} steps (num_steps x num_scales): use a new "
                                  f"workdir")
    self.writer.restart_at(start + 1 if start else 0)   # a killed run's rows past it: logged again
    if not start:
      return None, 0
    self.scale = (start - 1) // self.config.num_steps
    target = init_state(self.net.tx, jnp.zeros(self.inputs.sizes[self.scale] + (3,),
                                               jnp.float32), start)
    target = replicated_copies(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                            target) if self.mesh else target, self.mesh)
    _, state, meta = self.ckpt.restore(target)
    self.initial = meta.get("initial")
    print(f"resumed from {self.ckpt.directory}/{start}", flush=True)
    return _strong(state), start

  def optimize(self, state: State | None, step: int) -> State:
    """Runs the scales from the one ``step`` lies in to the last; returns the final state.

    A scale starts from the restored state, else from ``initial_image`` (the first scale)
    or from the previous scale's result upsampled.
    """
    first = self.scale
    progress = Progress(self.total_steps, step, unit="it")
    with stop_requests() as stop:
      for k in range(first, len(self.inputs.sizes)):
        self.scale = k
        content_x, self.targets = scale_targets(self.config, self.objective, self.inputs,
                                                self.net, k)
        if state is None:
          state = init_state(self.net.tx, initial_image(self.config, content_x), step)
        elif k > first:
          state = init_state(self.net.tx, upsample(state["image"], self.inputs.sizes[k]), step)
        if self.initial is None:
          self.initial = self.host_terms(state["image"])
          self.writer.write_scalars(0, {f"loss/{t}": v for t, v in self.initial.items()})
        state = self.run_scale(state, step, (k + 1) * self.config.num_steps, progress, stop)
        step = (k + 1) * self.config.num_steps
    return state

  def run_scale(self, state: State, start: int, end: int, progress: Progress,
                stop: StopFlag) -> State:
    """Steps ``start .. end`` of the current scale through ``infra.loop.run_loop``."""
    c = self.config
    # run_loop's periodic evaluation of a style run: its intermediate image (save_image)
    periods = loop.Periods(c.log_every, c.save_every or 1, c.checkpoint_every)
    step_fn = lambda state, targets: self.net.step_fn(self.net.vgg_state, targets, state)
    state = loop.run_loop(
        state, start, end, periods, step_fn=step_fn, make_batch=lambda s, st: self.targets,
        on_log=self.on_log, on_checkpoint=self.on_checkpoint, check=self.measure,
        on_eval=self.save_image if c.save_every else None, writers=[self.writer],
        closeables=[self.ckpt], progress=progress, stop=stop)
    timed = end - (start + 1)   # the progress' rate leaves out the scale's compiling step
    if timed > 0:   # timed / rate: the seconds since that first step ended
      self.seconds += timed / progress.rate(end)
      self.steps_timed += timed
    if end > start and end != self.total_steps:   # run_loop leaves its last step to us
      exit_if_stopped(stop, end, self.writer, self.ckpt)
    return state

  def measure(self, state: State, where: str) -> None:
    """The loss terms at the new image, kept for ``on_log``; NonFiniteLossError if one is not
    finite (run_loop's check, before every log)."""
    self.logged = self.host_terms(state["image"])
    if not all(math.isfinite(v) for v in self.logged.values()):
      raise self.non_finite(where)
    if self.config.optimizer == "lbfgs":
      info = optax.tree.get(state["opt_state"], "info")
      self.linesearch_steps = int(info.num_linesearch_steps)

  def non_finite(self, where: str) -> NonFiniteLossError:
    """The error for a NaN/Inf loss found at ``where``, naming the last good checkpoint."""
    last = self.ckpt.latest_step()
    kept = ("no checkpoint was written" if last is None
            else f"no checkpoint after step {last} was written")
    return NonFiniteLossError(f"loss became NaN/Inf by {where} ({self.logged}); {kept}. Lower "
                              "learning_rate or the loss weights.")

  def on_log(self, step: int, losses_before: list, progress: Progress) -> None:
    """NaN guard on the last step's loss, then TensorBoard scalars and a progress line."""
    if not np.isfinite(float(losses_before[-1])):
      raise self.non_finite(f"step {step}")
    values = {t: self.logged[t] for t in cost.TERMS}
    extra = {"it_per_sec": progress.rate(step), "scale": self.scale}
    ls = {}
    if self.linesearch_steps is not None:
      extra["linesearch_steps"] = ls["ls"] = self.linesearch_steps
    self.writer.write_scalars(step, {f"loss/{t}": v for t, v in values.items()} | extra)
    progress.report(step, values | ls)

  def save_image(self, step: int, state: State) -> None:
    """``iter_NNNNNN.png`` and a TensorBoard image every ``save_every`` steps but the last."""
    if step % self.config.save_every or step == self.total_steps:
      return
    rgb = self.rgb(state["image"])
    if self.lead:
      images.save_png(os.path.join(self.workdir, f"iter_{step:06d}.png"), rgb)
    self.writer.write_images(step, {"generated": images.to_uint8(rgb)})

  def on_checkpoint(self, step: int, state: State) -> None:
    """Saves ``state`` with the initial loss terms and the scale (forced: run_loop decides)."""
    self.ckpt.save(step, replicated_copies(state, self.mesh), {"initial": self.initial, "scale": self.scale,
                                 "variant": self.config.variant}, force=True)

  def finish(self, state: State, t_start: float) -> dict:
    """Saves the output PNG and ``results.json``, closes the writers; returns the results."""
    final_x = state["image"]
    rgb = self.rgb(final_x)
    # "final": the saved PNG's pixels (8-bit, recoloured with preserve_colors); "final_unclipped":
    # the last iterate (in the pixel box, unrounded, not recoloured)
    final = self.host_terms(vgg_lib.preprocess_caffe(images.to_uint8(rgb).astype(np.float32)))
    final_unclipped = self.host_terms(final_x)
    out_path = os.path.join(self.workdir, self.config.output)
    if self.lead:
      images.save_png(out_path, rgb)
    self.writer.write_images(self.total_steps, {"generated": images.to_uint8(rgb)})
    results = {
        "config": self.config.to_dict(),
        "step": int(jax.device_get(state["step"])),
        "sizes": [list(s) for s in self.inputs.sizes],
        "initial": self.initial,
        "final": final,
        "final_unclipped": final_unclipped,
        "output": out_path,
        "content": self.inputs.content_path,
        "style": self.inputs.style_paths,
        "seconds_per_step": self.seconds / self.steps_timed if self.steps_timed else None,
        "platform": jax.devices()[0].platform,
        "wall_seconds": time.time() - t_start,
    }
    if self.lead:
      files.write_json_atomic(os.path.join(self.workdir, "results.json"), results)
    self.writer.close()
    self.ckpt.close()
    return results


def stylize(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Optimizes the pixels of a generated image; resumes from ``workdir`` if checkpointed.

  Writes to ``workdir``: ``config.output`` (final PNG), ``iter_NNNNNN.png`` every
  ``save_every`` steps, TensorBoard events and ``metrics.jsonl``, ``checkpoints/``,
  ``config.json`` and ``inputs.json`` (what a resume must match: ``style_jax.workdir``) and
  ``results.json`` = ``{config, step, sizes, initial: {content, style, tv, total},
  final: {...}, output, seconds_per_step, wall_seconds, ...}`` (initial: at step 0, on the
  first scale, ``sizes[0]``; final: the saved image's pixels, ``sizes[-1]``, and
  final_unclipped: the optimizer's last iterate, before rounding and ``preserve_colors``' recolouring
  (every step keeps it in the pixel box; the name is historical); with ``num_scales`` > 1
  the two are sums over images of different sizes and do not compare). Returns the same dict.

  Raises:
    FileNotFoundError / images.ImageError: unreadable or too small inputs (naming the field).
    cost.StyleConfigError: an unusable config value, one this config never reads (a new run;
      a resume keeps it, noted: ``cost.check_config``), or a resume whose config or input files
      (content, style, weights: their SHA-256 in ``inputs.json``) differ from the run's.
    vgg_weights.WeightsError: a bad weights file.
    memory.TooLargeError: the largest scale would not fit in memory (checked first).
    NonFiniteLossError: the loss became NaN/Inf. Preempted: SIGTERM/SIGINT (checkpointed).
  """
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  # a workdir with a run in it (config.json, or checkpoints from before it): a resume, whose
  # config older code may have accepted with a setting it never reads; it keeps it, noted
  continuing = any(os.path.exists(os.path.join(workdir, n))
                   for n in (workdir_lib.CONFIG_FILE, "checkpoints"))
  unread = cost.check_config(config, continuing)
  objective = cost.objective_from_config(config)
  inputs = load_inputs(config, objective)
  # before the VGG is built and any image resized: the largest scale must fit in memory
  memory.check_fits(config.image_size, inputs.content_rgb.shape[:2], inputs.sizes[-1],
                    objective.layers, config.depth,
                    config.lbfgs_memory if config.optimizer == "lbfgs" else 0)
  files.check_directory(workdir, "workdir")
  changes = workdir_lib.check_continuation(config, workdir)   # a resume is the same run
  digests = workdir_lib.input_digests(inputs.content_path, inputs.style_paths, config.weights)
  workdir_lib.check_inputs(digests, workdir)   # ... of the same files' bytes, not just paths
  # every process computes the same image: they must share its config and input files
  distributed.check_same_everywhere("the config and inputs", json.dumps(
      {"config": config.to_dict(), "inputs": digests}, sort_keys=True, default=str))
  net = load_network(config, objective)
  os.makedirs(workdir, exist_ok=True)   # only once the inputs, config and weights are good
  # and one process at a time runs here
  with files.hold_lock(workdir, "workdir", enabled=distributed.is_lead()):
    run = StyleRun(config, objective, workdir, inputs, net)
    state, start = run.restore()
    if run.lead:
      workdir_lib.save_config(config, workdir)
      workdir_lib.save_inputs(digests, workdir)
    if changes:
      print(f"continuing {workdir} with changed " + "; ".join(changes), flush=True)
    if unread:
      print(f"note: continuing {workdir}, whose config sets what it never reads (kept, as a "
            f"resume must): {'; '.join(unread)}", file=sys.stderr, flush=True)
    print(f"stylizing {os.path.basename(inputs.content_path)} with "
          f"{', '.join(os.path.basename(p) for p in inputs.style_paths)}: scales "
          f"{[f'{w}x{h}' for h, w in inputs.sizes]}, {config.optimizer}, {config.num_steps} "
          f"steps per scale, VGG{config.depth} ({config.pooling} pooling) from {config.weights}",
          flush=True)
    return run.finish(run.optimize(state, start), t_start)
