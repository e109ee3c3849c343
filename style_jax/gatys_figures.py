"""Gatys, Ecker & Bethge (2015, arXiv 1508.06576), Figures 2 and 3: panels, one joint L-BFGS
per figure, checkpointed so that a killed figure run continues where it stopped.

* ``fig2_style``: white noise optimized to match only the Gram matrices of conv1_1;
  conv1_1 + conv2_1; ...; conv1_1 .. conv5_1 (equal weights 1/L).
* ``fig2_content``: white noise optimized to match only one layer's activations (conv1_2 ..
  conv5_2).
* ``fig3``: ``alpha J_content + beta J_style`` (content at conv4_2); rows = the style layer
  sets above, columns = alpha/beta in 1e-5, 1e-4, 1e-3, 1e-2 (alpha = 1, beta = 1 / ratio).

Each figure is one batch: its panels share the targets (one content image, one style image)
and differ only in per-panel weights, so they are optimized together (one VGG pass over the
batch, per-panel costs, per-panel L-BFGS memory and step sizes: ``style_jax.lbfgs.batched``).
The loop is ``infra.loop.run_loop``, as for ``stylize``: progress with ETA, a checkpoint every
``checkpoint_every`` iterations and on SIGTERM / SIGINT (``out/<figure>/checkpoints``), and a
rerun with the same settings (or more ``num_steps``) resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra import checkpoints, files, loop, outdirs
from infra import vgg as vgg_lib
from infra.errors import NonFiniteLossError, UserError
from infra.progress import Progress
from style_jax import cost, images, lbfgs, losses

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_RECON_LAYERS = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")
CONTENT_LAYER = "conv4_2"
RATIOS = (1e-5, 1e-4, 1e-3, 1e-2)
FIGURES = ("fig2_style", "fig2_content", "fig3")
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.json"
VGG_LAYERS = vgg_lib.layer_names(19)   # what features() takes: conv1_1 .. conv5_4, pool1 .. pool5
# matplotlib's Agg renderer refuses a figure of 2**16 px or more per side (after the optimization)
MAX_FIGURE_PX = 2 ** 16


class GatysSettingsError(UserError, ValueError):
  """Settings that cannot be used, or that differ from those of the run already in ``out``."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a figure run depends on. ``RESUMABLE`` fields may change between a run and its
  resumption (more iterations, other figures, logging and plotting); the others fix the
  optimization and must match the run's ``settings.json``."""
  content: str
  style: str
  weights: str   # Keras VGG19 notop HDF5, 'download', or 'random' (tests)
  image_size: int = 96   # longest side of the generated images (px)
  num_steps: int = 100   # L-BFGS iterations per figure
  figures: tuple[str, ...] = FIGURES
  content_layers: tuple[str, ...] = CONTENT_RECON_LAYERS
  style_layers: tuple[str, ...] = STYLE_LAYERS
  fig3_content_layer: str = CONTENT_LAYER
  ratios: tuple[float, ...] = RATIOS   # fig3's columns: alpha / beta (the paper: 1e-5 .. 1e-2)
  lbfgs_memory: int = 10
  linesearch_steps: int = 10
  noise_scale: float = 20.0
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 25
  panel_inches: float = 1.6
  dpi: int = 100

  RESUMABLE = ("num_steps", "figures", "log_every", "checkpoint_every", "panel_inches", "dpi")

  def __post_init__(self):
    for name in ("image_size", "num_steps", "lbfgs_memory", "linesearch_steps", "log_every",
                 "checkpoint_every"):
      if int(getattr(self, name)) < 1:
        raise GatysSettingsError(f"--{name}: expected a positive integer, got {getattr(self, name)}")
    if not self.ratios or any(not r > 0 for r in self.ratios):
      raise GatysSettingsError(f"--ratios: expected positive alpha/beta values, got {list(self.ratios)}")
    if len(set(self.ratios)) != len(self.ratios):   # the same column optimized twice
      raise GatysSettingsError(f"--ratios: {list(self.ratios)} repeats a value")
    unknown = sorted(set(self.figures) - set(FIGURES))
    if unknown or not self.figures:
      raise GatysSettingsError(f"--figures: unknown {unknown or 'empty list'}; expected among "
                               f"{list(FIGURES)}")
    # here, not at VGG's features(): that raised a traceback after the network had loaded and
    # settings.json (which then refused the corrected rerun) had been written, and a deep
    # unknown name (conv9_1) was first reported as too small an --image_size
    for flag, names in (("content_layers", self.content_layers),
                        ("style_layers", self.style_layers),
                        ("fig3_content_layer", (self.fig3_content_layer,))):
      unknown = [n for n in names if n not in VGG_LAYERS]
      if unknown or not names:
        what = f"unknown layer(s) {unknown}" if unknown else "empty"
        raise GatysSettingsError(f"--{flag}: {what}; expected comma-separated VGG19 layers "
                                 f"among {list(VGG_LAYERS)}")
      repeated = sorted({n for n in names if names.count(n) > 1})
      if repeated:   # one panel twice (content), or a style layer weighted twice
        raise GatysSettingsError(f"--{flag}: {repeated} listed more than once")
    check_figure_size(self.panel_inches, self.dpi, self._largest_grid())

  def _largest_grid(self) -> tuple[int, int]:
    """(rows, columns + 1 for the references) of the largest grid among the run's figures."""
    n, m = len(self.style_layers), len(self.content_layers)
    grids = {"fig2_style": (1, n + 1), "fig2_content": (1, m + 1),
             "fig3": (n, len(self.ratios) + 1)}
    return max((grids[f] for f in self.figures), key=lambda g: max(g))

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def check_figure_size(panel_inches: Any, dpi: Any, grid: tuple[int, int] | None = None) -> None:
  """Raises GatysSettingsError for a --panel_inches that is not a positive finite number or a
  --dpi below 1, and (given the largest ``grid``'s rows and columns) for a grid of
  MAX_FIGURE_PX or more per side. Checked before any optimization: matplotlib refused them
  only in save_grid, after the figure's whole optimization, with a traceback."""
  if isinstance(panel_inches, bool) or not isinstance(panel_inches, (int, float)) \
      or not math.isfinite(panel_inches) or panel_inches <= 0:
    raise GatysSettingsError(f"--panel_inches: expected a positive number of inches per panel, "
                             f"got {panel_inches}")
  if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
    raise GatysSettingsError(f"--dpi: expected a positive integer, got {dpi}")
  if grid is not None:
    rows, cols = grid   # the figure size of save_grid with square panels (its largest)
    side = max(panel_inches * cols + 0.8, panel_inches * rows + 1.0) * dpi
    if side >= MAX_FIGURE_PX:
      raise GatysSettingsError(f"--panel_inches {panel_inches:g} at --dpi {dpi} makes a {rows}x"
                               f"{cols} grid about {side:.0f} px wide; matplotlib draws less "
                               f"than {MAX_FIGURE_PX} px per side: lower one of them")


def check_resumable(settings: Settings, saved: dict, path: str) -> None:
  """Raises GatysSettingsError naming every field that differs from the saved run's ``path``
  in a way a resumption cannot honour."""
  now = settings.to_json()
  # a field added since the run started had its default there
  defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
              for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
  saved = {**defaults, **saved}
  diff = [f"{k}: {saved.get(k)!r} there, {now[k]!r} now" for k in now
          if k not in Settings.RESUMABLE and saved.get(k) != now[k]]
  if diff:
    # a settings.json naming a layer VGG19 lacks was left by a run that failed on it (before
    # layer names were checked, settings.json was written first): say so, nothing is removed
    bad = sorted({n for k in ("content_layers", "style_layers", "fig3_content_layer")
                  for n in ([saved.get(k)] if isinstance(saved.get(k), str) else saved.get(k) or [])
                  if n not in VGG_LAYERS})
    hint = (f"; it names layer(s) {bad} that VGG19 lacks, so it was left by a run that failed "
            f"on them: delete it if nothing else in that folder is wanted" if bad else "")
    raise GatysSettingsError(f"{path} belongs to a run with other settings ({'; '.join(diff)}); "
                             f"use a new --out or the same settings (only "
                             f"{', '.join(Settings.RESUMABLE)} may change){hint}")


def _layer_set_label(style_layers, k: int) -> str:
  return style_layers[0] if k == 1 else f"{style_layers[0]} .. {style_layers[k - 1]}"


def panels(settings: Settings) -> dict[str, dict]:
  """Per figure: labels and per-panel weights. ``c``: content layer weights (over the figure's
  ``content_layers``), ``s``: style layer weights (over ``style_layers``), ``alpha``, ``beta``."""
  style_layers = tuple(settings.style_layers)
  n = len(style_layers)
  cum = [np.array([1.0 / k if i < k else 0.0 for i in range(n)], np.float32) for k in range(1, n + 1)]
  recon = tuple(settings.content_layers)
  figs = {}
  figs["fig2_style"] = dict(
      content_layers=(), style_layers=style_layers, rows=["style only"],
      cols=[_layer_set_label(style_layers, k) for k in range(1, n + 1)],
      c=np.zeros((n, 0), np.float32), s=np.stack(cum),
      alpha=np.zeros(n, np.float32), beta=np.ones(n, np.float32),
      title="Style reconstructions (Gram matrices of the layers listed, white-noise start)")
  m = len(recon)
  figs["fig2_content"] = dict(
      content_layers=recon, style_layers=(), rows=["content only"], cols=list(recon),
      c=np.eye(m, dtype=np.float32), s=np.zeros((m, n), np.float32),
      alpha=np.ones(m, np.float32), beta=np.zeros(m, np.float32),
      title="Content reconstructions (activations of one layer, white-noise start)")
  rows, s, alpha, beta = [], [], [], []
  for k in range(1, n + 1):
    rows.append(_layer_set_label(style_layers, k))
    for r in settings.ratios:
      s.append(cum[k - 1])
      alpha.append(1.0)
      beta.append(1.0 / r)
  content_layer = settings.fig3_content_layer
  figs["fig3"] = dict(
      content_layers=(content_layer,), style_layers=style_layers, rows=rows,
      cols=[f"alpha/beta = {r:g}" for r in settings.ratios],
      c=np.ones((len(s), 1), np.float32), s=np.stack(s),
      alpha=np.asarray(alpha, np.float32), beta=np.asarray(beta, np.float32),
      title=f"Content ({content_layer}) + style: rows = style layers, columns = alpha/beta")
  return figs


def make_panel_loss(graphdef, content_layers, style_layers) -> Callable:
  """``loss(x, vgg_state, targets, w) -> (B,)``: per image of a batch x (B, H, W, 3),
  ``alpha sum_l c_l J_content^l + beta sum_l s_l J_style^l`` with the weights ``w`` (a dict
  of (B, ...) arrays). One VGG pass with N = B (not a vmap, so that infra.vgg sees the whole
  batch when it picks its convolution algorithm)."""
  layers = tuple(dict.fromkeys(tuple(content_layers) + tuple(style_layers)))
  content_cost = jax.vmap(losses.content_cost, in_axes=(None, 0))
  style_cost = jax.vmap(losses.style_cost_from_gram, in_axes=(None, 0))

  def loss(x, vgg_state, targets, w):
    feats = nnx.merge(graphdef, vgg_state).features(x, layers)
    content = sum(w["c"][:, i] * content_cost(targets["content"][n], feats[n])
                  for i, n in enumerate(content_layers))
    style = sum(w["s"][:, i] * style_cost(targets["style"][n], feats[n])
                for i, n in enumerate(style_layers))
    return w["alpha"] * content + w["beta"] * style
  return loss


@dataclasses.dataclass
class Inputs:
  """The network and the two images, at the run's size."""
  graphdef: Any
  vgg_state: Any
  content_rgb: np.ndarray
  style_rgb: np.ndarray
  content_x: jax.Array
  style_x: jax.Array


def reference_images(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
  """The content and style images (RGB float) at the run's size; checks the size first."""
  content = images.load_image(settings.content, "--content")
  style = images.load_image(settings.style, "--style")
  hw = images.size_for_longest(content.shape, settings.image_size)
  shw = images.size_for_longest(style.shape, settings.image_size)
  need = vgg_lib.min_input_size(tuple(settings.style_layers) + (settings.fig3_content_layer,)
                                + tuple(settings.content_layers))
  if min(hw + shw) < need:
    raise GatysSettingsError(
        f"--image_size {settings.image_size} gives {hw[1]}x{hw[0]} (content) and "
        f"{shw[1]}x{shw[0]} (style) px; the deepest layers need >= {need} px per side")
  return images.resize(content, hw), images.resize(style, shw)


def load_inputs(settings: Settings) -> Inputs:
  """Reads both images and the VGG19 (average pooling); checks the size before any work."""
  content_rgb, style_rgb = reference_images(settings)
  model = vgg_lib.load_vgg(settings.weights, 19, "avg", seed=settings.seed)
  graphdef, vgg_state = nnx.split(model)
  return Inputs(graphdef, vgg_state, content_rgb, style_rgb,
                vgg_lib.preprocess_caffe(content_rgb), vgg_lib.preprocess_caffe(style_rgb))


def figure_targets(inputs: Inputs, fig: dict) -> dict:
  """The content activations and style Gram matrices the figure's panels match."""
  feats_fn = cost.make_features_fn(inputs.graphdef)
  content_layers, style_layers = tuple(fig["content_layers"]), tuple(fig["style_layers"])
  content = feats_fn(inputs.vgg_state, inputs.content_x, content_layers) if content_layers else {}
  style = feats_fn(inputs.vgg_state, inputs.style_x, style_layers) if style_layers else {}
  return {"content": dict(content),
          "style": {n: losses.normalized_gram(a) for n, a in style.items()}}


def white_noise(settings: Settings, shape: tuple[int, ...], b: int) -> jax.Array:
  """The start of every panel: one seeded uniform(-s, s) image (Caffe-centred, so around the
  mean colour) repeated ``b`` times."""
  lo, hi = vgg_lib.caffe_bounds()
  noise = np.random.default_rng(settings.seed).uniform(
      -settings.noise_scale, settings.noise_scale, shape).astype(np.float32)
  return jnp.asarray(np.broadcast_to(np.clip(noise, lo, hi), (b,) + tuple(shape)))


def run_figure(name: str, fig: dict, settings: Settings, inputs: Inputs, out: str,
               log: Callable[[str], None]) -> dict:
  """Optimizes the panels of ``fig`` together from the same seeded noise, resuming from
  ``out/<name>/checkpoints``; returns their RGB images, initial and final losses, timings.

  Raises NonFiniteLossError if a panel's loss becomes NaN/Inf, and infra.errors.Preempted on
  SIGTERM / SIGINT once the current iteration is checkpointed.
  """
  targets = figure_targets(inputs, fig)
  w = {k: jnp.asarray(fig[k]) for k in ("c", "s", "alpha", "beta")}
  b = len(fig["alpha"])
  init, step = lbfgs.batched(make_panel_loss(inputs.graphdef, fig["content_layers"],
                                             fig["style_layers"]),
                             settings.lbfgs_memory, settings.linesearch_steps)
  init, step = jax.jit(init), jax.jit(step)
  x0 = white_noise(settings, inputs.content_x.shape, b)
  args = (inputs.vgg_state, targets, w)
  ckpt = checkpoints.Checkpointer(os.path.join(out, name, "checkpoints"),
                                  every=settings.checkpoint_every, keep=2)
  start = ckpt.latest_step() or 0   # <= num_steps: open_run checked every figure's checkpoints
  t0 = time.perf_counter()
  if start:
    _, state, meta = ckpt.restore(jax.eval_shape(init, x0, *args))
    initial, seconds_before = np.asarray(meta["initial"]), float(meta["seconds"])
    timed_before = tuple(meta.get("timed", (0, 0.0)))
    log(f"{name}: resumed from {ckpt.directory}/{start}")
  else:
    state = init(x0, *args)
    initial, seconds_before = np.asarray(state["f"]), 0.0
    timed_before = (0, 0.0)
  progress = Progress(settings.num_steps, start, unit="it")

  def timed(it):
    """(iterations, seconds) timed so far over every session, each session's compiling first
    iteration left out: the seconds per iteration of results.json."""
    n, r = it - (start + 1), progress.rate(it)
    if n > 0 and r == r and r > 0:
      return timed_before[0] + n, timed_before[1] + n / r
    return timed_before

  def step_fn(state, _):
    state, _ = step(state, *args)
    return state, {"f": state["f"], "evals": state["evals"]}

  def check(state, where):
    bad = np.flatnonzero(~np.isfinite(np.asarray(state["f"])))
    if bad.size:
      labels = [f"{r} | {c}" for r in fig["rows"] for c in fig["cols"]]
      raise NonFiniteLossError(
          f"{name}: the loss of panel(s) {[labels[i] for i in bad]} became NaN/Inf by {where}; "
          f"no checkpoint after iteration {ckpt.latest_step()} was written")

  def on_log(it, host, progress):
    r = host[-1]["f"] / initial
    progress.report(it, {"loss/initial median": float(np.median(r)), "max": float(r.max()),
                         "evals": int(host[-1]["evals"])})

  def on_checkpoint(it, state):
    ckpt.save(it, state, {"initial": initial.tolist(), "timed": list(timed(it)),
                          "seconds": seconds_before + time.perf_counter() - t0}, force=True)

  periods = loop.Periods(settings.log_every, settings.num_steps, settings.checkpoint_every)
  state = loop.run_loop(state, start, settings.num_steps, periods, step_fn=step_fn,
                        make_batch=lambda s, st: None, on_log=on_log,
                        on_checkpoint=on_checkpoint, check=check, closeables=[ckpt],
                        unit="it", progress=progress)
  ckpt.close()
  n_timed, s_timed = timed(settings.num_steps)
  rgb = np.stack([np.clip(np.asarray(vgg_lib.deprocess_caffe(xi)), 0, 255) for xi in state["x"]])
  # "final" is the loss of the panels as saved (clipped to 0..255: _panels.npz; the PNG rounds
  # them to 8 bits), not of the optimizer's unclipped iterate, whose loss was reported before
  # and lay 1-9% below the shown panels' (8-bit VGG19, 64 px, 30 iterations)
  shown = init(jnp.stack([vgg_lib.preprocess_caffe(r) for r in rgb]), *args)["f"]
  return {"images": rgb, "initial": initial.tolist(), "final": np.asarray(shown).tolist(),
          "final_unclipped": np.asarray(state["f"]).tolist(),
          "iterations": settings.num_steps, "evaluations": int(state["evals"]),
          "s_per_iteration": s_timed / n_timed if n_timed else None,
          "seconds": seconds_before + time.perf_counter() - t0,
          "panels": [f"{row} | {col}" for row in fig["rows"] for col in fig["cols"]]}


def save_panels(path: str, panels: np.ndarray) -> None:
  """``panels`` (uint8) as ``path`` (an .npz), atomically (--combine reads these)."""
  with files.replacing(path, ".npz") as tmp:
    np.savez_compressed(tmp, panels=panels)


def save_grid(path: str, fig: dict, rgb: np.ndarray, content_rgb, style_rgb,
              settings: Settings) -> None:
  """One PNG: the panels in a rows x cols grid, with the content and style images on the left,
  written atomically."""
  with files.replacing(path, ".png") as tmp:
    _draw_grid(tmp, fig, rgb, content_rgb, style_rgb, settings)


def _draw_grid(path: str, fig: dict, rgb: np.ndarray, content_rgb, style_rgb,
               settings: Settings) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows, cols = fig["rows"], fig["cols"]
  nr, nc = len(rows), len(cols)
  h, w = rgb.shape[1:3]
  panel = settings.panel_inches
  fig_w = panel * (nc + 1) * w / max(h, w) + 0.8
  fig_h = panel * nr * h / max(h, w) + 1.0
  f, axes = plt.subplots(nr, nc + 1, figsize=(fig_w, fig_h), squeeze=False,
                         gridspec_kw=dict(wspace=0.04, hspace=0.12))
  for r in range(nr):
    ref = axes[r, 0]
    if r == 0:
      ref.imshow(np.clip(content_rgb, 0, 255).astype(np.uint8))
      ref.set_title("content", fontsize=8)
    elif r == 1:
      ref.imshow(np.clip(style_rgb, 0, 255).astype(np.uint8))
      ref.set_title("style", fontsize=8)
    ref.axis("off")
    for c in range(nc):
      ax = axes[r, c + 1]
      ax.imshow(rgb[r * nc + c].round().astype(np.uint8))
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(cols[c], fontsize=8)
      if c == nc - 1 and nr > 1:   # right of the grid: the left is taken by the references
        ax.yaxis.set_label_position("right")
        ax.set_ylabel(rows[r], fontsize=8, rotation=0, ha="left", va="center")
  if nr == 1:   # the style image still belongs on the left: put it under the content one
    axes[0, 0].imshow(np.concatenate([
        np.clip(content_rgb, 0, 255).astype(np.uint8),
        np.full((max(2, h // 16), w, 3), 255, np.uint8),
        np.clip(images.resize(np.asarray(style_rgb, np.float32), (h, w)), 0, 255
                ).astype(np.uint8)], 0))
    axes[0, 0].set_title("content / style", fontsize=8)
  f.suptitle(fig["title"], fontsize=9)
  f.savefig(path, dpi=settings.dpi, bbox_inches="tight")
  plt.close(f)
  # 256-colour palette: a third of the bytes, small enough for the README's docs/
  from PIL import Image
  with Image.open(path) as im:
    q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
  q.save(path, optimize=True)


def open_run(settings: Settings, out: str) -> dict:
  """Checks ``out`` against ``settings`` (GatysSettingsError on a conflicting earlier run) and
  returns the results of the figures already finished there (``{}`` for a new run)."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise GatysSettingsError(f"--out {out} is a file, not a directory")
  outdirs.claim(out, "gatys", "--out")
  path = os.path.join(out, SETTINGS_FILE)
  if os.path.exists(path):
    check_resumable(settings, files.read_json(path), path)
  for name in settings.figures:   # before settings.json is rewritten (it was, then refused)
    ck = os.path.join(out, name, "checkpoints")
    held = [int(n) for n in os.listdir(ck) if n.isdigit()] if os.path.isdir(ck) else []
    if held and max(held) > settings.num_steps:
      raise GatysSettingsError(f"{ck} holds iteration {max(held)}, beyond --num_steps "
                               f"{settings.num_steps}; use a new --out or --num_steps >= {max(held)}")
  results = os.path.join(out, RESULTS_FILE)
  return files.read_json(results).get("figures", {}) if os.path.exists(results) else {}


def reproduce(settings: Settings, out: str, log: Callable[[str], None] = print) -> dict:
  """Runs ``settings.figures`` into ``out``: ``<figure>.png`` grids, ``<figure>_panels.npz``
  (uint8 panels), ``settings.json`` and ``results.json`` = ``{settings, figures: {name:
  {initial, final, panels, iterations, evaluations, s_per_iteration, seconds}}, seconds}``
  (one entry per panel, in grid order; figures finished by an earlier run in ``out`` with the
  same settings are kept). Every input is checked before ``out`` is written to."""
  done = open_run(settings, out)
  inputs = load_inputs(settings)
  figs = panels(settings)
  os.makedirs(out, exist_ok=True)
  files.write_json_atomic(os.path.join(out, SETTINGS_FILE), settings.to_json())
  (ch, cw), (sh, sw) = inputs.content_rgb.shape[:2], inputs.style_rgb.shape[:2]
  log(f"{os.path.basename(settings.content)} ({cw}x{ch}) and {os.path.basename(settings.style)} "
      f"({sw}x{sh}); VGG19 (avg pooling) from {settings.weights}; {settings.num_steps} L-BFGS "
      f"iterations per figure")
  t_all = time.perf_counter()
  for name in settings.figures:
    fig = figs[name]
    log(f"{name}: {len(fig['alpha'])} images in one batch")
    r = run_figure(name, fig, settings, inputs, out, log)
    rgb = r.pop("images")
    save_panels(os.path.join(out, f"{name}_panels.npz"), rgb.round().astype(np.uint8))
    path = os.path.join(out, f"{name}.png")
    save_grid(path, fig, rgb, inputs.content_rgb, inputs.style_rgb, settings)
    done[name] = r
    files.write_json_atomic(os.path.join(out, RESULTS_FILE),
                            {"settings": settings.to_json(), "figures": done})
    log(f"{name}: wrote {path} ({r['seconds']:.0f} s; loss final/initial "
        f"{' '.join(f'{f / i:.1e}' for f, i in zip(r['final'], r['initial']))})")
  results = {"settings": settings.to_json(), "figures": done,
             "seconds": time.perf_counter() - t_all}
  files.write_json_atomic(os.path.join(out, RESULTS_FILE), results)
  log(f"done in {results['seconds']:.0f} s")
  return results
