"""K margins in one vmapped program vs K sequential runs of the same steps, side by side.

  .venv/bin/python benchmarks/margin_vmap.py                 # K = 4, small network, CPU
  .venv/bin/python benchmarks/margin_vmap.py --variant=orl   # 64x64 grey faces (needs ../shared)
  .venv/bin/python benchmarks/margin_vmap.py --quick

Both sides train the default config's small ConvNet (``configs/facenet.py``, semi-hard
mining, AdamW, batch P = 8 x K = 4) on the same sampler batches, already on the device:

* vmapped: ``facenet_jax.steps.make_member_step`` (the train step vmapped over K
  stacked states and the margin vector), one call per step for all K models;
* sequential: K single-margin ``steps.make_train_step`` programs, one after another, each
  doing the same steps (what K separate runs compute).

Timing: after compiling and ``--warmup`` steps, ``--rounds`` alternating rounds of
``--steps`` steps each (vmapped, then sequential, so load changes hit both); the ratio is
the median over rounds of sequential / vmapped wall time.

Whole runs (``--run_steps`` > 0): what a researcher waits for. ``train.train_and_evaluate``
with ``config.margins`` (one K-margin run) against K ``train.train_and_evaluate`` runs with
``margin = alpha_k``, all in this process, each with its own temporary workdir, the same
steps, a checkpoint and the held-out evaluation at the end: data preparation, compilation,
the host-side sampler, evaluation and checkpoints included, interpreter start-up excluded
(which would only favour the K-margin run). ``--run_rounds`` alternating rounds.

Target (CPU, small network): the vmapped step at least 1.5x faster than the K sequential
steps. The whole-run ratio is printed for comparison, without a verdict: it falls from the
compile-dominated short run towards the step ratio as runs get longer, so any verdict on it
would be a choice of run length.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import jax
import numpy as np

import provenance   # this folder

TARGET = 1.5
MARGINS = (0.05, 0.1, 0.2, 0.5, 1.0, 0.3, 0.7, 0.02)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", type=provenance.facenet_variant, default="synthetic")
  ap.add_argument("--k", type=provenance.positive_int, default=4)
  ap.add_argument("--steps", type=provenance.positive_int, default=20)
  ap.add_argument("--rounds", type=provenance.positive_int, default=5)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--run_steps", type=int, default=200, help="whole runs of this many steps (0: skip)")
  ap.add_argument("--run_rounds", type=int, default=1)
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  if args.quick:
    args.steps, args.rounds, args.warmup, args.run_steps = 4, 2, 1, 20

  from configs.facenet import get_config
  from facenet_jax import steps, train
  from infra import mesh as mesh_lib

  margins = MARGINS[:args.k]
  config = get_config(args.variant)
  mesh = mesh_lib.make_data_mesh()
  data = train.prepare_data(config, mesh)
  graphdef, tx, state = steps.create_train_state(config, example_shape=data.train_ds.example_shape)
  n = args.warmup + args.steps
  batches = [jax.device_put(data.batch(s)) for s in range(n)]
  train_step = steps.make_train_step(graphdef, tx, config)
  multi = jax.jit(steps.make_member_step(train_step, np.asarray(margins, np.float32)),
                  donate_argnums=0)
  singles = [jax.jit(functools.partial(train_step, margin=m), donate_argnums=0) for m in margins]
  copy = lambda t: jax.tree.map(lambda x: x.copy(), t)

  def run_vmapped(bs):
    s = steps.stack([state] * len(margins))
    for b in bs:
      s, m = multi(s, b)
    jax.block_until_ready(s)

  def run_sequential(bs):
    for f in singles:
      s = copy(state)
      for b in bs:
        s, m = f(s, b)
      jax.block_until_ready(s)

  t = time.perf_counter()
  run_vmapped(batches[:1])
  c_v = time.perf_counter() - t
  t = time.perf_counter()
  run_sequential(batches[:1])
  c_s = time.perf_counter() - t
  run_vmapped(batches[:args.warmup])
  run_sequential(batches[:args.warmup])
  timed = batches[args.warmup:]
  tv, ts = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    run_vmapped(timed)
    tv.append(time.perf_counter() - t)
    t = time.perf_counter()
    run_sequential(timed)
    ts.append(time.perf_counter() - t)
  ratios = [s / v for s, v in zip(ts, tv)]
  ratio = float(np.median(ratios))
  dev = jax.devices()[0]
  print(f"# K={len(margins)} margins {margins}; config {args.variant} ({config.model.name} "
        f"{tuple(config.model.widths)}, {config.model.embedding_dim}-d, batch "
        f"{config.identities_per_batch}x{config.images_per_identity} of {data.train_ds.example_shape}, "
        f"miner {config.miner}); {args.steps} timed steps x {args.rounds} alternating rounds after "
        f"{args.warmup} warm-up; {dev.platform} ({getattr(dev, 'device_kind', '')}), "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; jax {jax.__version__}; "
        f"{platform.processor() or platform.machine()}; commit {provenance.commit()}")
  print("| | per step, all K models (median, ms) | compile (s) |")
  print("|---|---|---|")
  print(f"| vmapped, one program | {1e3 * np.median(tv) / args.steps:.1f} | {c_v:.1f} |")
  print(f"| {len(margins)} sequential runs | {1e3 * np.median(ts) / args.steps:.1f} | {c_s:.1f} |")
  print(f"\nratio sequential / vmapped per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {ratio:.2f}x (target >= {TARGET}x on CPU: {'PASS' if ratio >= TARGET else 'FAIL'})")
  if args.run_steps > 0:
    whole_runs(config, margins, args.run_steps, args.run_rounds)


def whole_runs(config, margins, steps: int, rounds: int) -> None:
  """K-margin run vs K runs, end to end in this process (see the module doc)."""
  import contextlib
  import io
  import shutil
  import tempfile

  from facenet_jax import train
  from infra import overrides

  base = overrides.with_overrides(config, {"num_steps": steps, "eval_every": steps,
                                           "checkpoint_every": steps, "log_every": steps})

  def timed(cfg, workdir):
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      results = train.train_and_evaluate(cfg, workdir)
    return time.perf_counter() - t, results

  tv, ts, acc = [], [], {}
  root = tempfile.mkdtemp(prefix="margin_vmap_")
  try:
    for r in range(rounds):
      t, res = timed(overrides.with_overrides(base, {"margins": margins}), os.path.join(root, f"v{r}"))
      tv.append(t)
      acc["vmapped"] = [m["verification_accuracy"] for m in res["members"].values()]
      t_seq, accs = 0.0, []
      for i, m in enumerate(margins):
        t, res = timed(overrides.with_overrides(base, {"margin": m}), os.path.join(root, f"s{r}_{i}"))
        t_seq += t
        accs.append(res["metrics"]["verification_accuracy"])
      ts.append(t_seq)
      acc["sequential"] = accs
  finally:
    shutil.rmtree(root, ignore_errors=True)
  ratios = [s / v for s, v in zip(ts, tv)]
  ratio = float(np.median(ratios))
  print(f"\n# whole runs: {steps} steps each, checkpoint + held-out evaluation at the end, "
        f"{rounds} round(s), load {os.getloadavg()[0]:.2f}")
  print("| | wall time (s) | held-out accuracy per margin |")
  print("|---|---|---|")
  print(f"| one run, config.margins = {margins} | {np.median(tv):.1f} | "
        f"{', '.join(f'{a:.4f}' for a in acc['vmapped'])} |")
  print(f"| {len(margins)} runs, one margin each | {np.median(ts):.1f} | "
        f"{', '.join(f'{a:.4f}' for a in acc['sequential'])} |")
  print(f"\nratio {len(margins)} runs / one K-margin run per round: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f}x (for comparison: the target "
        f"is on the step, above; a whole run's ratio depends on its length)")


if __name__ == "__main__":
  main()
