"""Inception-ResNet-v1 train-step throughput: ours (JAX/Flax) vs facenet-pytorch, on CPU.

  .venv/bin/python benchmarks/train_step.py            # 32 images (P=8 x K=4) at 160x160
  .venv/bin/python benchmarks/train_step.py --quick    # 8 images at 96x96, 2 steps

One step = forward in train mode (batch-statistics BatchNorm), semi-hard triplet loss on
the batch's embeddings, backward, optimizer update, on the same random uint8 images and
P x K labels.

* ours: ``jax.jit(make_train_step(...))`` of ``configs/facenet.py:get_config("inception")``
  (Inception-ResNet-v1, 128-d embedding, online semi-hard mining, AdamW + global-norm clip;
  the step also runs its random flip + pad-and-crop augmentation and the NaN guard).
* facenet-pytorch: ``InceptionResnetV1(classify=False)`` randomly initialised, in train
  mode (dropout 0.6 before the last linear), with its 512-d head swapped for a 128-d one
  to match; pytorch-metric-learning's semi-hard ``TripletMarginMiner`` +
  ``TripletMarginLoss`` (margin 0.2); ``clip_grad_norm_`` + ``AdamW``;
  ``torch.set_num_threads(<cores>)``; NCHW float32 input converted from uint8 in the step.
  Its model file is loaded by path (the package ``__init__`` imports MTCNN/torchvision).

Each library runs in its own subprocess. Timing: median over ``--steps`` steps after
``--warmup`` steps (JAX compilation excluded and reported on its own).

MFU = model FLOP/s / matmul peak: the FLOPs of one step are ``step_flops``: XLA's
``cost_analysis()['flops']`` of our step lowered with plain lax convolutions, the same
definition accelerator.py uses (the compiled CPU program's count, about 3% more with the CPU
conv kernels, and an analytic count from forward hooks on the PyTorch model, x3 for
forward + backward, are printed next to it); the peak is
a jitted 2048 x 2048 float32 matmul on this CPU. The same FLOP count is used for both
libraries (same architecture).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import provenance   # this folder

MARGIN = 0.2
TARGET_RATIO = 1.0   # ours at least as fast as facenet-pytorch


# ----------------------------------------------------------------------------- inputs


def make_batch(P: int, K: int, size: int, seed: int = 0) -> dict:
  """Random uint8 (P*K, size, size, 3) images, labels of P identities x K, all-real mask."""
  rng = np.random.default_rng(seed)
  B = P * K
  return {"images": rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8),
          "labels": np.repeat(np.arange(P), K).astype(np.int32),
          "mask": np.ones(B, bool)}


def call_times(step, n_warmup: int, n_steps: int) -> list[float]:
  """Runs ``step()`` (which must block until done) and returns the timed durations."""
  for _ in range(n_warmup):
    step()
  times = []
  for _ in range(n_steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


# ----------------------------------------------------------------------------- ours (JAX)


FLOPS_DEFINITION = ("XLA cost_analysis of the train step lowered with plain lax convolutions "
                    "(not the compiled CPU program)")


def step_flops(graphdef, tx, config, state, batch: dict) -> float | None:
  """XLA's FLOP count of one train step as an accelerator runs it (plain convolutions), counted
  by the CPU client from the step lowered for the CPU with the CPU kernels swapped out: the same
  count on every host. Not the device's own count: on a GPU the compiled program's cost
  analysis leaves out the cuDNN convolutions (the H200 run printed MFU 0.0-0.1% for a step at
  about 7-8%), and the lowered program's has no FLOPs there. Inception at 160 px, 64 per
  or 256 per batch: 8.24 GFLOP per image. The one FLOP definition of accelerator.py and
  train_step.py (FLOPS_DEFINITION names it in their outputs)."""
  import jax
  from facenet_jax import steps
  from plain_convs import plain_convs   # this folder
  cpu = jax.devices("cpu")[0]
  step = steps.make_train_step(graphdef, tx, config)
  with plain_convs():
    lowered = jax.jit(lambda s, b: step(s, b, config.margin)).lower(
        *jax.device_put((state, batch), cpu))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and cost.get("flops") else None



def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a jitted n x n float32 matmul (median of ``repeats``)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  times = call_times(lambda: f(a, b).block_until_ready(), 2, repeats)
  return 2 * n**3 / float(np.median(times)) / 1e9


def run_ours(batch: dict, n_warmup: int, n_steps: int) -> dict:
  """Compiles and times our train step; returns times, compile time, XLA FLOPs, loss."""
  import jax
  from configs.facenet import get_config
  from facenet_jax import steps

  config = get_config("inception")
  res = {"matmul_gflops": matmul_peak_gflops()}
  graphdef, tx, state = steps.create_train_state(config, in_channels=batch["images"].shape[-1])
  train_step = steps.make_train_step(graphdef, tx, config)
  step = jax.jit(lambda s, b: train_step(s, b, config.margin), donate_argnums=0)
  res["xla_flops"] = step_flops(graphdef, tx, config, state, batch)   # MFU's numerator
  batch = jax.device_put(batch)
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  res["compile_s"] = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # the compiled CPU program's count (CPU conv kernels), printed beside the MFU's, not used
  res["compiled_flops"] = float(cost["flops"]) if cost and "flops" in cost else None

  box = {"state": state}

  def one_step():
    box["state"], metrics = compiled(box["state"], batch)
    box["metrics"] = jax.block_until_ready(metrics)

  res["times"] = call_times(one_step, n_warmup, n_steps)
  res["loss"] = float(box["metrics"]["loss"])
  return res


# ----------------------------------------------------------------------------- facenet-pytorch


def load_facenet_pytorch_model():
  """``facenet_pytorch/models/inception_resnet_v1.py`` as a module, without the package
  ``__init__`` (which imports MTCNN and torchvision): the top-level package is replaced by
  an empty stub whose ``__path__`` lets the file's relative imports resolve."""
  import importlib.util
  import types

  spec = importlib.util.find_spec("facenet_pytorch")   # locates, does not execute
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch")
  pkg_dir = list(spec.submodule_search_locations)[0]
  if "facenet_pytorch" not in sys.modules:
    stub = types.ModuleType("facenet_pytorch")
    stub.__path__ = [pkg_dir]
    sys.modules["facenet_pytorch"] = stub
  name = "facenet_pytorch.models.inception_resnet_v1"
  path = os.path.join(pkg_dir, "models", "inception_resnet_v1.py")
  mod_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(mod_spec)
  sys.modules[name] = module
  mod_spec.loader.exec_module(module)
  return module


def analytic_step_flops(model, x) -> float:
  """3 x the forward FLOPs of Conv2d and Linear layers (2 per multiply-add), via hooks."""
  import torch

  total = [0]

  def hook(mod, inp, out):
    if isinstance(mod, torch.nn.Conv2d):
      k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
    else:
      k = mod.in_features
    total[0] += 2 * out.numel() * k

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  was_training = model.training
  model.eval()   # batch of one: BatchNorm needs running statistics
  with torch.no_grad():
    model(x)
  model.train(was_training)
  for h in handles:
    h.remove()
  return 3.0 * total[0]


def run_torch(batch: dict, n_warmup: int, n_steps: int, threads: int, embedding_dim: int = 128) -> dict:
  """Times facenet-pytorch's InceptionResnetV1 with PML semi-hard triplet loss + AdamW."""
  import torch
  from pytorch_metric_learning import losses, miners

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  irv1 = load_facenet_pytorch_model()
  model = irv1.InceptionResnetV1(pretrained=None, classify=False)
  model.last_linear = torch.nn.Linear(1792, embedding_dim, bias=False)
  model.last_bn = torch.nn.BatchNorm1d(embedding_dim, eps=0.001, momentum=0.1, affine=True)
  model.train()
  miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
  loss_fn = losses.TripletMarginLoss(margin=MARGIN)
  opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
  images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous()   # uint8 NCHW
  labels = torch.from_numpy(batch["labels"]).long()
  res = {"params": sum(p.numel() for p in model.parameters()),
         "analytic_flops": analytic_step_flops(model, images[:1].float() / 127.5 - 1.0)
         * images.shape[0]}
  box = {}

  def one_step():
    x = images.float() / 127.5 - 1.0
    emb = model(x)
    loss = loss_fn(emb, labels, miner(emb, labels))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    box["loss"] = float(loss)

  res["times"] = call_times(one_step, n_warmup, n_steps)
  res["loss"] = box["loss"]
  return res


# ----------------------------------------------------------------------------- driver


def run_worker(lib: str, args) -> dict:
  """Runs one library's benchmark in a fresh interpreter; returns its result dict."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--p", str(args.p),
         "--k", str(args.k), "--size", str(args.size), "--steps", str(args.steps),
         "--warmup", str(args.warmup), "--threads", str(args.threads)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"worker {lib} failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n"
                     f"{out.stderr[-4000:]}")


def print_report(ours: dict, torch_: dict, B: int, size: int) -> bool:
  """Markdown table of images/s, step time, MFU; PASS/FAIL of the throughput target."""
  flops = ours["xla_flops"] or torch_["analytic_flops"]
  peak = ours["matmul_gflops"] * 1e9
  rows = []
  for name, r in (("facenet-pytorch (torch)", torch_), ("ours (JAX)", ours)):
    t = float(np.median(r["times"]))
    rows.append((name, t, B / t, flops / t / 1e9, flops / t / peak, len(r["times"]), r["loss"]))
  print("| implementation | step s (median of n) | images/s | model GFLOP/s | MFU | loss |")
  print("|---|---|---|---|---|---|")
  for name, t, ips, gf, mfu, n, loss in rows:
    print(f"| {name} | {t:.2f} (n={n}) | {ips:.1f} | {gf:.1f} | {100 * mfu:.1f}% | {loss:.4f} |")
  ratio = rows[1][2] / rows[0][2]
  print()
  print(f"- batch {B} images of {size}x{size}x3; ours / facenet-pytorch images/s: {ratio:.2f}x")
  print(f"- FLOPs per step: {FLOPS_DEFINITION} {_g(ours['xla_flops'])} GFLOP (as accelerator.py); "
        f"compiled CPU program {_g(ours.get('compiled_flops'))} GFLOP; analytic "
        f"(conv + linear, 3 x forward) {_g(torch_['analytic_flops'])} GFLOP; MFU uses "
        f"{'the first' if ours['xla_flops'] else 'analytic'}")
  print(f"- matmul peak (jitted 2048x2048 f32): {ours['matmul_gflops']:.1f} GFLOP/s, measured once, "
        "at the start of ours' subprocess; facenet-pytorch ran before it in its own subprocess "
        "(the two are not interleaved), so both MFUs divide by a peak taken later than torch's "
        "steps, under whatever load there was then")
  print(f"- ours compile: {ours['compile_s']:.1f} s (excluded); facenet-pytorch params "
        f"{torch_['params']:,}")
  ok = ratio >= TARGET_RATIO
  print(f"\n[{'PASS' if ok else 'FAIL'}] ours at least as fast as facenet-pytorch: {ratio:.2f}x")
  return ok


def _g(x):
  return "-" if x is None else f"{x / 1e9:.1f}"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--p", type=int, default=8, help="identities per batch")
  ap.add_argument("--k", type=int, default=4, help="images per identity")
  ap.add_argument("--size", type=int, default=160, help="image height = width")
  ap.add_argument("--steps", type=int, default=3, help="timed steps")
  ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  ap.add_argument("--quick", action="store_true", help="8 images of 96x96, 2 timed steps")
  ap.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.quick and not args.worker:
    args.p, args.k, args.size, args.steps, args.warmup = 4, 2, 96, 2, 1
  if args.worker:
    batch = make_batch(args.p, args.k, args.size)
    res = (run_ours(batch, args.warmup, args.steps) if args.worker == "ours"
           else run_torch(batch, args.warmup, args.steps, args.threads))
    print("RESULT " + json.dumps(res))
    return

  provenance.require(("torch", "facenet_pytorch"), "facenet-pytorch")   # before compiling ours
  B = args.p * args.k
  load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())
  print(f"# Inception-ResNet-v1 train step, {B} images ({args.p} x {args.k}) at "
        f"{args.size}x{args.size}, commit {provenance.commit()}, {provenance.machine()}, "
        f"torch threads {args.threads}; "
        f"median of {args.steps} after {args.warmup} warm-up; load average before: {load()}")
  torch_ = run_worker("torch", args)
  print(f"  facenet-pytorch: {np.median(torch_['times']):.2f} s/step", file=sys.stderr, flush=True)
  ours = run_worker("ours", args)
  print(f"  ours: {np.median(ours['times']):.2f} s/step", file=sys.stderr, flush=True)
  print()
  print_report(ours, torch_, B, args.size)
  print(f"load average after the run: {load()}")


if __name__ == "__main__":
  main()
