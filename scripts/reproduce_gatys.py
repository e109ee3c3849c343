"""Gatys, Ecker & Bethge (2015, arXiv 1508.06576) reconstruction and trade-off grids.

  .venv/bin/python scripts/reproduce_gatys.py --out runs/gatys            # ~10 min on 2 CPU cores
  .venv/bin/python scripts/reproduce_gatys.py --image_size 192 --num_steps 300   # closer to the paper

Writes three PNG grids (and ``results.json`` with the loss of every panel) into ``--out``:

* ``fig2_style.png`` -- style reconstructions: white noise optimized to match only the Gram
  matrices of the style image in conv1_1; conv1_1 + conv2_1; ...; conv1_1 .. conv5_1 (equal
  weights 1/L). Deeper layer sets reproduce the style at larger scales.
* ``fig2_content.png`` -- content reconstructions: white noise optimized to match only the
  activations of one layer (conv1_2, conv2_2, conv3_2, conv4_2, conv5_2). Low layers keep
  the exact pixels; higher ones keep the arrangement of the scene but not the pixel values.
* ``fig3.png`` -- the combination (content at conv4_2, ``alpha J_content + beta J_style``):
  rows = the style layer sets above, columns = alpha/beta in 1e-5, 1e-4, 1e-3, 1e-2
  (alpha = 1, beta = 1 / ratio). More weight on content (right) keeps more of the photo.

Costs are ``style_jax.losses`` (Gatys eq. 1, 4, 5); the network is the VGG19 of ``infra/vgg.py``
with average pooling, as in the paper. Each figure is one batch: the generated images of a
grid share their targets (one content image, one style image) and differ only in per-image
weights (the layer weights, alpha and beta), so all panels are optimized together: one VGG
pass over the batch (N = panels), per-image costs, and one L-BFGS per panel
(``style_jax.lbfgs.batched``: the L-BFGS direction of ``stylize`` with per-image memory,
a weak-Wolfe line search with per-image step sizes). Pixels are not clipped while
optimizing (the paper does not constrain them); the PNGs are clipped to 0..255. All panels
start from the same seeded white noise.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra import vgg as vgg_lib
from style_jax import images, lbfgs, losses, optimize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_RECON_LAYERS = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")
CONTENT_LAYER = "conv4_2"
RATIOS = (1e-5, 1e-4, 1e-3, 1e-2)


def _layer_set_label(style_layers, k: int) -> str:
  return style_layers[0] if k == 1 else f"{style_layers[0]} .. {style_layers[k - 1]}"


def panels(args) -> dict[str, dict]:
  """Per figure: labels and per-image weights. ``c``: content layer weights (over the figure's
  ``content_layers``), ``s``: style layer weights (over ``style_layers``), ``alpha``, ``beta``."""
  style_layers = tuple(args.style_layers.split(","))
  content_layer = args.fig3_content_layer
  n = len(style_layers)
  cum = [np.array([1.0 / k if i < k else 0.0 for i in range(n)], np.float32) for k in range(1, n + 1)]
  recon = tuple(args.content_layers.split(","))
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
    for r in RATIOS:
      s.append(cum[k - 1])
      alpha.append(1.0)
      beta.append(1.0 / r)
  figs["fig3"] = dict(
      content_layers=(content_layer,), style_layers=style_layers, rows=rows,
      cols=[f"alpha/beta = {r:g}" for r in RATIOS],
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


def run_figure(name: str, fig: dict, args, model_state, content_x, style_x, log) -> dict:
  """Optimizes the panels of ``fig`` together from the same seeded noise; returns their RGB
  images, initial and final losses, evaluations and timings."""
  graphdef, vgg_state = model_state
  content_layers = fig["content_layers"]
  style_layers = fig["style_layers"]   # () for content only: a shorter VGG
  feats_fn = optimize.make_features_fn(graphdef)
  targets = {"content": dict(feats_fn(vgg_state, content_x, tuple(content_layers))
                             if content_layers else {}),
             "style": {n: losses.normalized_gram(a) for n, a in
                       (feats_fn(vgg_state, style_x, style_layers) if style_layers else {}).items()}}
  w = {k: jnp.asarray(fig[k]) for k in ("c", "s", "alpha", "beta")}
  b = len(fig["alpha"])
  init, step = lbfgs.batched(make_panel_loss(graphdef, content_layers, style_layers),
                            args.lbfgs_memory, args.linesearch_steps)
  init, step = jax.jit(init), jax.jit(step)
  lo, hi = vgg_lib.caffe_bounds()
  noise = np.random.default_rng(args.seed).uniform(-args.noise_scale, args.noise_scale,
                                                   content_x.shape).astype(np.float32)
  x = jnp.asarray(np.broadcast_to(np.clip(noise, lo, hi), (b,) + content_x.shape))
  t0 = time.perf_counter()
  state = init(x, vgg_state, targets, w)
  initial = np.asarray(state["f"])
  state, value = step(state, vgg_state, targets, w)
  jax.block_until_ready(state)
  t_first = time.perf_counter() - t0
  t1 = time.perf_counter()
  for it in range(2, args.num_steps + 1):
    state, value = step(state, vgg_state, targets, w)
    if it % args.log_every == 0 or it == args.num_steps:
      v = np.asarray(state["f"])
      r = np.asarray(state["f"]) / initial
      log(f"  {name} iteration {it}/{args.num_steps}: loss / initial: median {np.median(r):.1e} "
          f"(min {r.min():.1e}, max {r.max():.1e}); {int(state['evals'])} evaluations; "
          f"{(time.perf_counter() - t1) / (it - 1):.2f} s/it")
  x = state["x"]
  final = np.asarray(state["f"])   # the loss at x
  rgb = np.stack([np.clip(np.asarray(vgg_lib.deprocess_caffe(xi)), 0, 255) for xi in x])
  return {"images": rgb, "initial": initial.tolist(), "final": final.tolist(),
          "first_step_s": t_first, "evaluations": int(state["evals"]),
          "s_per_iteration": (time.perf_counter() - t1) / max(1, args.num_steps - 1)}


def save_grid(path: str, fig: dict, rgb: np.ndarray, content_rgb, style_rgb, args) -> None:
  """One PNG: the panels in a rows x cols grid, with the content and style images on the left."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows, cols = fig["rows"], fig["cols"]
  nr, nc = len(rows), len(cols)
  h, w = rgb.shape[1:3]
  panel = args.panel_inches
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
        np.clip(_fit(style_rgb, (h, w)), 0, 255).astype(np.uint8)], 0))
    axes[0, 0].set_title("content / style", fontsize=8)
  f.suptitle(fig["title"], fontsize=9)
  f.savefig(path, dpi=args.dpi, bbox_inches="tight")
  plt.close(f)
  # 256-colour palette: a third of the bytes, small enough for the README's docs/
  from PIL import Image
  with Image.open(path) as im:
    q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
  q.save(path, optimize=True)


def _fit(img, hw):
  return images.resize(np.asarray(img, np.float32), hw)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.path.join(REPO, "runs", "gatys"))
  p.add_argument("--content", default=os.path.join(SHARED, "data", "style_images", "content", "tubingen.jpg"))
  p.add_argument("--style", default=os.path.join(SHARED, "data", "style_images", "style", "starry_night_vangogh.jpg"))
  p.add_argument("--weights", default=os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5"),
                 help="Keras VGG19 notop HDF5, 'download', or 'random' (tests)")
  p.add_argument("--image_size", type=int, default=96, help="longest side of the generated images (px)")
  p.add_argument("--num_steps", type=int, default=100, help="L-BFGS iterations per figure")
  p.add_argument("--figures", default="fig2_style,fig2_content,fig3")
  p.add_argument("--content_layers", default=",".join(CONTENT_RECON_LAYERS),
                 help="layers of the content reconstructions (fig2_content), one panel each")
  p.add_argument("--style_layers", default=",".join(STYLE_LAYERS),
                 help="style layers; the panels of fig2_style and the rows of fig3 use the first "
                      "1, 2, ... of them with equal weights")
  p.add_argument("--fig3_content_layer", default=CONTENT_LAYER,
                 help="content layer of fig3's objective")
  p.add_argument("--lbfgs_memory", type=int, default=10)
  p.add_argument("--linesearch_steps", type=int, default=10, help="most evaluations per line search")
  p.add_argument("--noise_scale", type=float, default=20.0, help="uniform(-s, s) around the mean colour")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--panel_inches", type=float, default=1.6)
  p.add_argument("--dpi", type=int, default=100)
  args = p.parse_args(argv)

  os.makedirs(args.out, exist_ok=True)
  log = lambda s: print(s, flush=True)
  content = images.load_image(args.content, "--content")
  style = images.load_image(args.style, "--style")
  hw = images.size_for_longest(content.shape, args.image_size)
  shw = images.size_for_longest(style.shape, args.image_size)
  need = vgg_lib.min_input_size(tuple(args.style_layers.split(",")) + (args.fig3_content_layer,)
                                + tuple(args.content_layers.split(",")))
  if min(hw + shw) < need:
    raise SystemExit(f"--image_size {args.image_size} gives {hw[1]}x{hw[0]} (content) and "
                     f"{shw[1]}x{shw[0]} (style) px; the deepest layers need >= {need} px per side")
  content_rgb, style_rgb = images.resize(content, hw), images.resize(style, shw)
  content_x = vgg_lib.preprocess_caffe(content_rgb)
  style_x = vgg_lib.preprocess_caffe(style_rgb)
  model = vgg_lib.load_vgg(args.weights, 19, "avg", seed=args.seed)
  model_state = nnx.split(model)
  figs = panels(args)
  wanted = [f for f in args.figures.split(",") if f]
  unknown = set(wanted) - set(figs)
  if unknown:
    raise SystemExit(f"--figures: unknown {sorted(unknown)}; expected among {sorted(figs)}")
  log(f"{os.path.basename(args.content)} ({hw[1]}x{hw[0]}) and {os.path.basename(args.style)} "
      f"({shw[1]}x{shw[0]}); VGG19 (avg pooling) from {args.weights}; {args.num_steps} L-BFGS "
      f"iterations per figure")
  results = {"args": vars(args), "figures": {}}
  t_all = time.perf_counter()
  for name in wanted:
    fig = figs[name]
    t0 = time.perf_counter()
    log(f"{name}: {len(fig['alpha'])} images in one batch")
    r = run_figure(name, fig, args, model_state, content_x, style_x, log)
    path = os.path.join(args.out, f"{name}.png")
    rgb = r.pop("images")
    np.savez_compressed(os.path.join(args.out, f"{name}_panels.npz"),
                        panels=rgb.round().astype(np.uint8))
    save_grid(path, fig, rgb, content_rgb, style_rgb, args)
    r["seconds"] = time.perf_counter() - t0
    r["panels"] = [f"{row} | {col}" for row in fig["rows"] for col in fig["cols"]]
    results["figures"][name] = r
    log(f"{name}: wrote {path} ({r['seconds']:.0f} s; loss final/initial "
        f"{' '.join(f'{f / i:.1e}' for f, i in zip(r['final'], r['initial']))})")
  results["seconds"] = time.perf_counter() - t_all
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  log(f"done in {results['seconds']:.0f} s")
  return results


if __name__ == "__main__":
  main()
