"""Neural style transfer on CPU: ours (JAX/Flax NNX) vs the same costs in PyTorch.

  .venv/bin/python benchmarks/style_vs_torch.py                 # check + 256/512 timings + memory
  .venv/bin/python benchmarks/style_vs_torch.py --profile       # + per-layer conv / fwd-vs-grad tables
  .venv/bin/python benchmarks/style_vs_torch.py --quick         # 64/96 px, 2 steps: a smoke test

Both sides compute the ``gatys2015`` objective of ``configs/style.py`` on the same VGG19
weights (the Keras HDF5 file, HWIO kernels loaded into ``torch.nn.functional.conv2d`` as
OIHW), with average pooling, on the same Caffe-preprocessed (BGR minus the ImageNet mean)
images:

  total = alpha * 1/2 sum (a_G - a_C)^2 at conv4_2
        + beta * sum_l 1/5 * 1/(4 C_l^2) sum (G_l(G)/M_l - G_l(S)/M_l)^2, l = conv1_1 .. conv5_1

(style_jax/losses.py; alpha = 1, beta = 1e3). The PyTorch code here is benchmark-only.

1. Agreement: content, style and total for the same inputs (the tubingen / starry night
   images resized to the first size, and the seeded noise init of ``stylize``) must agree
   within 1e-4 relative; the relative L2 difference of the pixel gradients is printed too.
2. Time per Adam iteration (forward + backward w.r.t. the pixels + Adam update + clip to the
   valid pixel range) at each size, ours and PyTorch (``torch.set_num_threads(2)`` by
   default: the cores of the machine this was written for) in one process, interleaved in
   rounds so that both see the same machine load; median over ``--steps`` iterations after
   ``--warmup``. Ours is ``style_jax.optimize``'s jitted Adam step (``compiled_functions``);
   its compile time is reported separately. "ours, lax conv" is the same step with
   the CPU kernels of ``infra.convolution`` swapped for plain
   ``lax.conv_general_dilated`` while tracing (benchmarks/plain_convs.py): the
   state before the Winograd convolutions were added.
3. Memory at ``--memory_size``: each variant in its own subprocess; peak RSS above a
   baseline taken after initialization (model, targets and, for ours, compilation done; the
   kernel's high-water mark is reset through /proc/self/clear_refs), and XLA's
   ``compile().memory_analysis()`` temp bytes; ours with and without ``remat=True``.

Targets (from the issue): ours at least as fast as PyTorch at 256x256, >= 1.2x faster at
512x512. Prints a markdown table and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import provenance   # this folder

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
DEFAULT_WEIGHTS = os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5")
DEFAULT_CONTENT = os.path.join(SHARED, "data", "style_images", "content", "tubingen.jpg")
DEFAULT_STYLE = os.path.join(SHARED, "data", "style_images", "style", "starry_night_vangogh.jpg")

LOSS_RTOL = 1e-4
TARGETS = {256: 1.0, 512: 1.2}   # size -> required torch_time / ours_time
_CFG19 = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


# ------------------------------------------------------------------------- PyTorch side


def torch_weights(path: str) -> dict:
  """``{"conv1_1": (kernel OIHW, bias)}`` from the Keras HDF5 file (kernels HWIO -> OIHW)."""
  import h5py
  import torch
  out = {}
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    for b, block in enumerate(_CFG19, start=1):
      for c in range(1, len(block) + 1):
        g = root[f"block{b}_conv{c}"]
        arrays = [np.asarray(g[n.decode() if isinstance(n, bytes) else n], np.float32)
                  for n in g.attrs["weight_names"]]
        kernel = next(a for a in arrays if a.ndim == 4)
        bias = next(a for a in arrays if a.ndim == 1)
        out[f"conv{b}_{c}"] = (torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
                               torch.from_numpy(bias))
  return out


def torch_features(weights: dict, x, layers):
  """Post-ReLU activations (NCHW) of a preprocessed (1, 3, H, W) image; average pooling."""
  import torch.nn.functional as F
  order = [f"conv{b}_{c}" for b, block in enumerate(_CFG19, start=1)
           for c in range(1, len(block) + 1)]
  last = max(order.index(n) for n in layers)
  out = {}
  for name in order[:last + 1]:
    if name.endswith("_1") and name != "conv1_1":
      x = F.avg_pool2d(x, 2)
    k, b = weights[name]
    x = F.relu(F.conv2d(x, k, b, padding=1))
    if name in layers:
      out[name] = x
  return out


def _torch_gram(a):
  """Normalized Gram G / M of an (1, C, H, W) activation: (C, C)."""
  f = a.reshape(a.shape[1], -1)
  return (f @ f.T) / f.shape[1]


class TorchStyle:
  """The same objective in PyTorch, and an Adam step on the pixels."""

  def __init__(self, weights: dict, objective, content_x: np.ndarray, style_x: np.ndarray,
               lr: float):
    import torch
    self.torch, self.w, self.obj = torch, weights, objective
    self.style_names = [n for n, _ in objective.style_layers]
    self.layers = list(dict.fromkeys(list(objective.content_layers) + self.style_names))
    with torch.no_grad():
      self.a_c = torch_features(weights, self.nchw(content_x), objective.content_layers)
      feats = torch_features(weights, self.nchw(style_x), self.style_names)
      self.g_s = {n: _torch_gram(feats[n]) for n in self.style_names}
    lo = -np.array([103.939, 116.779, 123.68], np.float32)
    self.lo = torch.from_numpy(lo).view(1, 3, 1, 1)
    self.hi = self.lo + 255.0
    self.lr = lr
    self.x = None

  def nchw(self, x_hwc: np.ndarray):
    return self.torch.from_numpy(np.ascontiguousarray(np.asarray(x_hwc, np.float32).transpose(2, 0, 1)[None]))

  def terms(self, x):
    f = torch_features(self.w, x, self.layers)
    content = sum(0.5 * ((f[n] - self.a_c[n]) ** 2).sum() for n in self.obj.content_layers)
    style = 0.0
    for n, lam in self.obj.style_layers:
      c = f[n].shape[1]
      style = style + lam * ((_torch_gram(f[n]) - self.g_s[n]) ** 2).sum() / (4.0 * c * c)
    total = self.obj.alpha * content + self.obj.beta * style
    return {"content": content, "style": style, "total": total}

  def value_and_grad(self, x_hwc: np.ndarray):
    x = self.nchw(x_hwc).requires_grad_(True)
    t = self.terms(x)
    t["total"].backward()
    return ({k: float(v.detach()) for k, v in t.items()},
            x.grad[0].permute(1, 2, 0).numpy())

  def init(self, x_hwc: np.ndarray):
    self.x = self.nchw(x_hwc).requires_grad_(True)
    self.opt = self.torch.optim.Adam([self.x], lr=self.lr)

  def step(self) -> float:
    self.opt.zero_grad(set_to_none=True)
    total = self.terms(self.x)["total"]
    total.backward()
    self.opt.step()
    with self.torch.no_grad():
      self.x.copy_(self.torch.maximum(self.torch.minimum(self.x, self.hi), self.lo))
    return float(total)

  def forward(self) -> float:
    with self.torch.no_grad():
      return float(self.terms(self.x)["total"])


# ----------------------------------------------------------------------------- our side


class Ours:
  """``style_jax.optimize``'s objective and jitted Adam step, compiled ahead of time."""

  def __init__(self, weights: str, objective, content_x, style_x, lr: float, *,
               winograd: bool = True, remat: bool = False):
    import jax
    from flax import nnx
    from infra import vgg as vgg_lib
    from plain_convs import plain_convs
    from style_jax import cost, optimize
    self.jax, self.optimize = jax, optimize
    model = vgg_lib.load_vgg(weights, 19, "avg", remat=remat)
    self.graphdef, self.vgg_state = nnx.split(model)
    self.objective = objective
    self.tx = optimize.make_optimizer(_adam_config(lr))
    self.winograd = winograd
    self.plain_convs = plain_convs
    with plain_convs(not winograd):
      features_fn = cost.make_features_fn(self.graphdef)
      self.targets = cost.compute_targets(features_fn, self.vgg_state, objective,
                                          content_x, [style_x], [1.0])
    self.loss_terms = cost.make_loss_terms(self.graphdef, objective)
    loss_terms = self.loss_terms
    self._value_and_grad = jax.jit(lambda s, t, x: (
        loss_terms(s, t, x), jax.grad(lambda x: loss_terms(s, t, x)["total"])(x)))
    self.state = None

  def compile_step(self, x0) -> float:
    """Compiles the Adam step for ``x0``'s shape; returns the seconds it took."""
    jax = self.jax
    self.state = self.optimize.init_state(self.tx, x0, 0)
    step = jax.jit(self.optimize.make_adam_step(self.loss_terms, self.tx))
    t = time.perf_counter()
    with self.plain_convs(not self.winograd):
      self.compiled = step.lower(self.vgg_state, self.targets, self.state).compile()
    return time.perf_counter() - t

  def step(self) -> float:
    self.state, value = self.compiled(self.vgg_state, self.targets, self.state)
    self.jax.block_until_ready(self.state)
    return float(value)

  def value_and_grad(self, x):
    with self.plain_convs(not self.winograd):
      terms, grad = self._value_and_grad(self.vgg_state, self.targets, x)
    return {k: float(terms[k]) for k in ("content", "style", "total")}, np.asarray(grad)

  def forward_fn(self):
    jax = self.jax
    with self.plain_convs(not self.winograd):
      f = jax.jit(lambda s, t, x: self.loss_terms(s, t, x)["total"]).lower(
          self.vgg_state, self.targets, self.state["image"]).compile()
    return lambda: float(f(self.vgg_state, self.targets, self.state["image"]))


def _adam_config(lr: float):
  import ml_collections
  return ml_collections.ConfigDict(dict(optimizer="adam", learning_rate=lr, lbfgs_memory=10,
                                        lbfgs_linesearch_steps=20))


def _objective():
  from configs.style import get_config
  from style_jax import cost
  config = get_config("gatys2015")
  return cost.objective_from_config(config), config


def _inputs(args, size: int):
  """(content_x, style_x, x0): preprocessed (size, size, 3) float32 arrays (x0: noise init)."""
  from infra import vgg as vgg_lib
  from style_jax import images, optimize
  _, config = _objective()
  if os.path.exists(args.content) and os.path.exists(args.style):
    c = images.resize(images.load_image(args.content), (size, size))
    s = images.resize(images.load_image(args.style), (size, size))
  else:   # no shared data: seeded random images (same code path)
    rng = np.random.default_rng(0)
    c, s = (rng.uniform(0, 255, (size, size, 3)).astype(np.float32) for _ in range(2))
  cx = np.asarray(vgg_lib.preprocess_caffe(c))
  sx = np.asarray(vgg_lib.preprocess_caffe(s))
  x0 = np.asarray(optimize.initial_image(config, cx))
  return cx, sx, x0


# --------------------------------------------------------------------------------- parts


def check_losses(args, size: int) -> tuple[bool, list[str]]:
  """Our loss terms and gradient vs PyTorch's, for two generated images; returns (ok, lines)."""
  obj, config = _objective()
  cx, sx, x0 = _inputs(args, size)
  tw = torch_weights(args.weights)
  ref = TorchStyle(tw, obj, cx, sx, config.learning_rate)
  lines, ok = [], True
  variants = [("ours", True), ("ours, lax conv", False)]
  for wname, on in variants:
    ours = Ours(args.weights, obj, cx, sx, config.learning_rate, winograd=on)
    for xname, x in (("noise init", x0), ("content + 0.5 x noise", 0.5 * x0 + 0.5 * cx)):
      t_ours, g_ours = ours.value_and_grad(x)
      t_ref, g_ref = ref.value_and_grad(x)
      rel = {k: abs(t_ours[k] - t_ref[k]) / abs(t_ref[k]) for k in t_ref}
      grel = float(np.linalg.norm(g_ours - g_ref) / np.linalg.norm(g_ref))
      good = all(v <= LOSS_RTOL for v in rel.values())
      ok &= good
      lines.append(f"| {wname} | {xname} | " + " | ".join(
          f"{t_ours[k]:.6e} / {t_ref[k]:.6e} ({rel[k]:.1e})" for k in ("content", "style", "total"))
          + f" | {grel:.1e} | {'PASS' if good else 'FAIL'} |")
  return ok, lines


def _interleaved(fns: dict, warmup: int, steps: int, block: int = 1) -> dict:
  """Runs each fn ``warmup`` times, then ``steps`` timed times in rounds (fn A x block, fn B x
  block, ...; the order rotates every round) so that all see the same machine load."""
  for f in fns.values():
    for _ in range(warmup):
      f()
  times = {n: [] for n in fns}
  names = list(fns)
  r = 0
  while min(len(v) for v in times.values()) < steps:
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
      for _ in range(block):
        if len(times[n]) < steps:
          t = time.perf_counter()
          fns[n]()
          times[n].append(time.perf_counter() - t)
    r += 1
  return times


def time_steps(args, size: int) -> dict:
  import torch
  obj, config = _objective()
  cx, sx, x0 = _inputs(args, size)
  ref = TorchStyle(torch_weights(args.weights), obj, cx, sx, config.learning_rate)
  ref.init(x0)
  runs, compile_s = {}, {}
  variants = {"ours": True}
  if not args.no_lax:
    variants["ours, lax conv"] = False
  for name, on in variants.items():
    ours = Ours(args.weights, obj, cx, sx, config.learning_rate, winograd=on)
    compile_s[name] = ours.compile_step(x0)
    runs[name] = ours
  fns = {name: o.step for name, o in runs.items()}
  fns["torch"] = ref.step
  t0 = time.perf_counter()
  times = _interleaved(fns, args.warmup, args.steps)
  out = {"size": size, "compile_s": compile_s, "torch_threads": torch.get_num_threads(),
         "times": times, "median": {n: float(np.median(v)) for n, v in times.items()},
         "wall_s": time.perf_counter() - t0}
  if args.profile:   # forward only (the loss value), same interleaving
    f_fns = {name: o.forward_fn() for name, o in runs.items()}
    f_fns["torch"] = ref.forward
    ft = _interleaved(f_fns, 1, max(3, args.steps // 2))
    out["forward_median"] = {n: float(np.median(v)) for n, v in ft.items()}
  return out


def _peak_child(args) -> None:
  """Subprocess: one variant at --memory_size; prints a JSON line."""
  obj, config = _objective()
  size = args.memory_size
  cx, sx, x0 = _inputs(args, size)

  def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
    raise RuntimeError(field)

  res = {"variant": args.child, "size": size}
  if args.child == "torch":
    import torch
    torch.set_num_threads(args.threads)
    ref = TorchStyle(torch_weights(args.weights), obj, cx, sx, config.learning_rate)
    ref.init(x0)
    step = ref.step
  else:
    ours = Ours(args.weights, obj, cx, sx, config.learning_rate, remat=args.child == "ours_remat")
    ours.compile_step(x0)
    mem = ours.compiled.memory_analysis()
    res["xla_temp_mib"] = mem.temp_size_in_bytes / 2**20
    res["xla_argument_mib"] = mem.argument_size_in_bytes / 2**20
    step = ours.step
  base = rss_kb("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:   # reset VmHWM to the current RSS
    f.write("5")
  for _ in range(args.memory_steps):
    step()
  res["baseline_mib"] = base / 1024
  res["peak_above_baseline_mib"] = (rss_kb("VmHWM") - base) / 1024
  print("RESULT " + json.dumps(res), flush=True)


def measure_memory(args) -> list[dict]:
  out = []
  for child in ("ours", "ours_remat", "torch"):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", child,
           "--memory_size", str(args.memory_size), "--weights", args.weights,
           "--content", args.content, "--style", args.style, "--threads", str(args.threads),
           "--memory_steps", str(args.memory_steps)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
      raise RuntimeError(f"memory subprocess {child} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    out.append(json.loads(line[len("RESULT "):]))
  return out


def conv_layer_table(args, size: int) -> list[str]:
  """Per-layer time (ms, min of interleaved runs) of one 3x3 conv forward and its input
  gradient: lax (XLA:CPU), our Winograd, and PyTorch, at the VGG19 shapes of a size x size input."""
  import jax
  import jax.numpy as jnp
  import torch
  from infra import convolution
  shapes = [(size, 3, 64), (size, 64, 64), (size // 2, 64, 128), (size // 2, 128, 128),
            (size // 4, 128, 256), (size // 4, 256, 256), (size // 8, 256, 512),
            (size // 8, 512, 512), (size // 16, 512, 512)]
  lines = ["| layer shape (H=W, Cin -> Cout) | GFLOP | lax fwd | lax dx | Winograd fwd | "
           "Winograd dx | torch fwd | torch dx |", "|---|---|---|---|---|---|---|---|"]
  rng = np.random.default_rng(0)
  for h, cin, cout in shapes:
    x = rng.normal(size=(1, h, h, cin)).astype(np.float32)
    k = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    dy = rng.normal(size=(1, h, h, cout)).astype(np.float32)
    jx, jk, jdy = jnp.asarray(x), jnp.asarray(k), jnp.asarray(dy)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    tdy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
    fns = {}
    for name, conv in (("lax", convolution.lax_conv3x3), ("wg", convolution.winograd_conv3x3)):
      f = jax.jit(conv)
      g = jax.jit(lambda x, k, dy, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0])
      fns[name] = lambda f=f: f(jx, jk).block_until_ready()
      fns[name + "_dx"] = lambda g=g: g(jx, jk, jdy).block_until_ready()

    def t_fwd():
      with torch.no_grad():
        torch.nn.functional.conv2d(tx, tk, padding=1)

    def t_dx():
      with torch.no_grad():
        torch.nn.grad.conv2d_input(tx.shape, tk, tdy, padding=1)
    fns["torch"], fns["torch_dx"] = t_fwd, t_dx
    t = _interleaved(fns, 1, 4)
    ms = {n: 1e3 * min(v) for n, v in t.items()}
    gflop = 2 * h * h * 9 * cin * cout / 1e9
    lines.append(f"| {h}, {cin} -> {cout} | {gflop:.2f} | " + " | ".join(
        f"{ms[n]:.0f}" for n in ("lax", "lax_dx", "wg", "wg_dx", "torch", "torch_dx")) + " |")
  return lines


# ---------------------------------------------------------------------------------- main


def machine() -> dict:
  cpu = "?"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import jax
  import jaxlib
  import flax
  import optax
  import torch
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "torch": torch.__version__, "commit": provenance.commit(),
          "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
          "loadavg": os.getloadavg()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--weights", default=DEFAULT_WEIGHTS)
  p.add_argument("--content", default=DEFAULT_CONTENT)
  p.add_argument("--style", default=DEFAULT_STYLE)
  p.add_argument("--sizes", default="256,512")
  p.add_argument("--steps", type=int, default=5, help="timed iterations per size and variant")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--memory_size", type=int, default=512)
  p.add_argument("--memory_steps", type=int, default=2)
  p.add_argument("--no_memory", action="store_true")
  p.add_argument("--no_lax", action="store_true", help="skip the 'ours, lax conv' variant")
  p.add_argument("--profile", action="store_true",
                 help="also forward-only times and a per-layer conv table at the first size")
  p.add_argument("--quick", action="store_true", help="64,96 px, 2 steps, memory at 96 px")
  p.add_argument("--json", default="", help="also write all numbers to this JSON file")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.quick:
    args.sizes, args.steps, args.warmup, args.memory_size = "64,96", 2, 1, 96
  if not os.path.exists(args.weights):
    sys.exit(f"VGG19 weights {args.weights} not found; pass --weights PATH (Keras notop HDF5)")
  provenance.require(("torch",), "PyTorch's VGG19")
  import torch
  torch.set_num_threads(args.threads)
  if args.child:
    _peak_child(args)
    return
  sizes = [int(s) for s in args.sizes.split(",")]
  info = machine()
  print(f"# {info['cpu']}, {info['cores']} cores, load {info['loadavg']}; jax {info['jax']}, "
        f"flax {info['flax']}, torch {info['torch']} ({args.threads} threads); commit {info['commit']}",
        flush=True)

  print(f"\n## Loss agreement at {sizes[0]}x{sizes[0]} (ours / torch (relative difference))\n")
  ok_loss, lines = check_losses(args, sizes[0])
  print("| ours | generated image | content | style | total | grad rel. L2 diff. | |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(lines), flush=True)
  print(f"\nloss agreement within {LOSS_RTOL:g}: {'PASS' if ok_loss else 'FAIL'}", flush=True)

  results = []
  for size in sizes:
    r = time_steps(args, size)
    results.append(r)
    print(f"\n{size}x{size}: median s/iteration " + ", ".join(
        f"{n} {v:.3f}" for n, v in r["median"].items()) + "; compile " + ", ".join(
        f"{n} {v:.1f} s" for n, v in r["compile_s"].items()), flush=True)
    if "forward_median" in r:
      print("  forward only: " + ", ".join(f"{n} {v:.3f}" for n, v in r["forward_median"].items()))

  print("\n## Time per Adam iteration (median; forward + pixel gradient + update)\n")
  has_lax = not args.no_lax
  print("| size | ours (s) | " + ("ours, lax conv (s) | " if has_lax else "") +
        "PyTorch (s) | PyTorch / ours | target | | our compile (s) |")
  print("|---|---|" + ("---|" if has_lax else "") + "---|---|---|---|---|")
  ok_time = True
  for r in results:
    m = r["median"]
    ratio = m["torch"] / m["ours"]
    target = TARGETS.get(r["size"])
    good = target is None or ratio >= target
    ok_time &= good
    print(f"| {r['size']}x{r['size']} | {m['ours']:.3f} | " +
          (f"{m['ours, lax conv']:.3f} | " if has_lax else "") +
          f"{m['torch']:.3f} | {ratio:.2f}x | " + (f">= {target:g}x | {'PASS' if good else 'FAIL'}"
                                                    if target else "- | -") +
          f" | {r['compile_s']['ours']:.1f} |")
  if args.profile:
    print("\nForward only (loss value, no gradient), median s: ")
    for r in results:
      print(f"  {r['size']}: " + ", ".join(f"{n} {v:.3f}" for n, v in r["forward_median"].items()))

  mem = []
  if not args.no_memory:
    mem = measure_memory(args)
    print(f"\n## Peak memory at {args.memory_size}x{args.memory_size} "
          "(each in its own process; MiB)\n")
    print("| variant | peak RSS above baseline | XLA temp (compile().memory_analysis()) | baseline RSS |")
    print("|---|---|---|---|")
    for m in mem:
      temp = f"{m['xla_temp_mib']:.0f}" if "xla_temp_mib" in m else "-"
      name = {"ours": "ours", "ours_remat": "ours, remat=True", "torch": "PyTorch"}[m["variant"]]
      print(f"| {name} | {m['peak_above_baseline_mib']:.0f} | {temp} | {m['baseline_mib']:.0f} |")

  if args.profile:
    print(f"\n## Per-layer conv time at a {sizes[-1]}x{sizes[-1]} input (ms, min of 4)\n")
    print("\n".join(conv_layer_table(args, sizes[-1])))

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": info, "loss_ok": ok_loss, "timing": results, "memory": mem}, f, indent=1)
  print(f"\nloss agreement: {'PASS' if ok_loss else 'FAIL'}; speed targets "
        f"({', '.join(f'{s}: >= {t:g}x' for s, t in TARGETS.items())}): "
        f"{'PASS' if ok_time else 'FAIL'}")
  sys.exit(0 if ok_loss and ok_time else 1)


if __name__ == "__main__":
  main()
