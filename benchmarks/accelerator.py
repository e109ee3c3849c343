"""One prepared run for a GPU / TPU machine: the numbers that need an accelerator, one table.

  .venv/bin/python benchmarks/accelerator.py            # on the accelerator (< 8 minutes)
  .venv/bin/python benchmarks/accelerator.py --quick    # tiny sizes, any machine (CPU: < 1 min)

Rows:

* Inception-ResNet-v1 train step (``configs/facenet.py:inception``, 160 px) under
  ``jax.default_matmul_precision("bfloat16")`` (convolutions and matmuls in one bfloat16
  pass, float32 parameters: the model has no dtype setting) at per-device batch 64 and 256:
  images/s and MFU = XLA's FLOPs of the step / step time / the device's measured bfloat16
  matmul peak (a jitted 8192 x 8192 matmul). CPUs ignore the precision setting.
* The K = 8 margin program (``steps.make_member_step``) against 8 sequential single-margin
  steps on the same batches (small ConvNet): the median over interleaved rounds (one vmapped
  step, then the 8 sequential ones) of the per-round step-time ratio.
* Style transfer at 512 px, 500 L-BFGS iterations (``configs/style.py`` gatys2015 with the
  shared VGG19): wall time of ``style_jax.optimize.stylize``, compilation included.
* An in-memory batch gather: images/s of building this process's rows of a batch of the
  first train row's global batch (``RunData.batch`` + ``mesh.assemble_batch``) from the
  variant's synthetic, in-memory source with no loader workers, against the images/s the train
  step consumes. It is not the record pipeline (decode, augmentation, workers); for that see
  ``benchmarks/input_pipeline.py`` and RESULTS.md section 7a.

``--quick``: the tiny config's small ConvNet in place of Inception-ResNet-v1 (whose step takes
over 3 minutes to compile on a CPU), per-device batches 4 and 8, the tiny style preset for 5 iterations,
2 timed steps: checks that every row runs (tests/test_multihost.py runs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import provenance, train_step as train_step_bench   # noqa: E402  (make_batch)
from configs.facenet import get_config   # noqa: E402
from facenet_jax import steps, train   # noqa: E402
from infra import mesh as mesh_lib, overrides   # noqa: E402


def timed(fn, warmup: int, n: int) -> float:
  """Median seconds of ``fn()`` (which blocks until done) over ``n`` runs after ``warmup``."""
  return float(np.median(train_step_bench.call_times(fn, warmup, n)))


def matmul_peak(dtype, n: int) -> float:
  """FLOP/s of a jitted n x n matmul in ``dtype`` on the default device (the MFU denominator)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / timed(lambda: f(a).block_until_ready(), 2, 5)


def throughput_rows(variant: str, per_device: list[int], n: int, peak: float) -> list[tuple]:
  """(name, images/s, MFU, step s, FLOPs per image) of the Inception step at each per-device batch (call it
  under the matmul precision to measure)."""
  config = get_config(variant)
  size = config.data.image_size
  mesh = mesh_lib.make_data_mesh()
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  fn = train.jit_train_step(graphdef, tx, config, mesh)
  rows = []
  for b in per_device:
    B = b * mesh.devices.size
    K = config.images_per_identity
    host_batch = train_step_bench.make_batch(B // K, K, size)
    batch = mesh_lib.shard_batch(host_batch, mesh)
    compiled = fn.lower(state, batch).compile()
    box = {"s": jax.tree.map(lambda x: x.copy(), state)}

    def one():
      box["s"], m = compiled(box["s"], batch)
      jax.block_until_ready(m)
    dt = timed(one, 1, n)
    flops = train_step_bench.step_flops(graphdef, tx, config, state, host_batch)
    mfu = flops / dt / peak if flops else float("nan")
    rows.append((f"{config.model.name} {size} px, bf16 matmuls, {b}/device", B / dt, mfu, dt,
                 flops / B if flops else float("nan")))
  return rows


def margin_ratio(k: int, n: int) -> tuple[float, float, list[float]]:
  """(median vmapped s/step, median sequential s/step, per-round sequential / vmapped ratios)
  of K margins on the default small ConvNet, over ``n`` interleaved rounds (one vmapped step,
  then the K sequential steps, side by side as in margin_vmap.py), so that a change in the
  machine's load during the run falls on both sides of each ratio."""
  config = get_config("tiny" if n <= 2 else None)
  mesh = mesh_lib.make_data_mesh()
  data = train.prepare_data(config, mesh)
  graphdef, tx, state = steps.create_train_state(config, example_shape=data.train_ds.example_shape)
  batch = jax.device_put(data.batch(0))
  margins = np.linspace(0.05, 0.8, k).astype(np.float32)
  step = steps.make_train_step(graphdef, tx, config)
  multi = jax.jit(steps.make_member_step(step, margins))
  singles = [jax.jit(lambda s, b, m=float(m): step(s, b, m)) for m in margins]
  stacked = steps.stack([state] * k)
  run_v = lambda: jax.block_until_ready(multi(stacked, batch))
  run_s = lambda: [jax.block_until_ready(f(state, batch)) for f in singles]
  run_v(), run_s()   # compile and warm both sides
  tv, ts = [], []
  for _ in range(n):
    tv += train_step_bench.call_times(run_v, 0, 1)
    ts += train_step_bench.call_times(run_s, 0, 1)
  return float(np.median(tv)), float(np.median(ts)), [s / v for s, v in zip(ts, tv)]


def style_seconds(quick: bool) -> tuple[str, float, float]:
  """(what, wall seconds, seconds per iteration) of one style run: 512 px, 500 L-BFGS iterations
  with the shared VGG19 (quick: the tiny preset's random VGG at 32 px, 5 iterations). The wall
  time includes loading the weights and compiling; the per-iteration time is the run's own
  ``seconds_per_step`` (timed steps after compilation)."""
  from PIL import Image

  from configs.style import get_config as style_config
  from style_jax import optimize
  with tempfile.TemporaryDirectory() as tmp:
    if quick:
      rng = np.random.default_rng(0)
      paths = []
      for name in ("content.png", "style.png"):
        paths.append(os.path.join(tmp, name))
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
      config = overrides.with_overrides(style_config("tiny"), {
          "content": paths[0], "style": paths[1], "optimizer": "lbfgs", "num_steps": 5,
          "save_every": 0, "checkpoint_every": 1000})
    else:
      config = overrides.with_overrides(style_config("gatys2015"), {
          "image_size": 512, "num_steps": 500, "save_every": 0, "checkpoint_every": 1000})
    t = time.perf_counter()
    results = optimize.stylize(config, os.path.join(tmp, "run"))
    return (f"style transfer {config.image_size} px, {config.num_steps} L-BFGS iterations",
            time.perf_counter() - t, results["seconds_per_step"] or float("nan"))


def input_rate(variant: str, n: int, global_batch: int) -> float:
  """Images/s of building this process's rows of a ``global_batch``-image batch
  (``RunData.batch``) and assembling the global array (``mesh.assemble_batch``), over ``n``
  different steps. The variant's data source is synthetic, held in memory, with no loader
  workers: this times a NumPy gather from memory plus the host-to-device assembly, not the
  record pipeline (decode, augmentation, worker processes) of a real run; that one's rate is
  benchmarks/input_pipeline.py's (RESULTS.md section 7a)."""
  config = get_config(variant)
  # the train row's global batch, not the variant's; P >= 2 identities (the sampler needs
  # negatives), so a batch under 2 x K (--quick's 4 images, K = 4) takes fewer images each
  k = min(config.images_per_identity, global_batch // 2)
  if k < 1 or global_batch % k:
    raise ValueError(f"global batch {global_batch} is not P x K with P >= 2")
  config.identities_per_batch, config.images_per_identity = global_batch // k, k
  mesh = mesh_lib.make_data_mesh()
  data = train.prepare_data(config, mesh)
  rows = mesh_lib.process_slice(data.global_batch)
  build = lambda s: mesh_lib.assemble_batch(data.batch(s, rows), mesh, data.global_batch)
  jax.block_until_ready(build(0))
  t = time.perf_counter()
  for s in range(1, n + 1):
    jax.block_until_ready(build(s))
  return n * data.global_batch / (time.perf_counter() - t)


def guarded(what: str, fn, failures: list):
  """``fn()``, or None after printing a one-line failure (the traceback to stderr): each row
  is its own measurement, so one that breaks (a missing package, an out-of-memory) does not
  take the rows after it down in a run of minutes on a lent machine; main exits 1 at the end."""
  try:
    return fn()
  except Exception as e:   # noqa: BLE001  reported, counted, re-signalled by the exit code
    traceback.print_exc()
    failures.append(what)
    print(f"| {what} | FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} |",
          flush=True)
    return None


ROWS = ("train", "margins", "style", "input")


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny sizes: every row runs in seconds")
  ap.add_argument("--rows", type=row_list, default=ROWS,
                  help=f"comma-separated rows to measure, of {','.join(ROWS)} (default: all); "
                       "'input' compares with the train row's rate when both run")
  args = ap.parse_args(argv)
  q, rows = args.quick, args.rows
  dev = jax.devices()[0]
  # Inception-ResNet-v1 takes minutes to compile on a CPU: --quick times the small ConvNet
  variant, per_device, n = ("tiny", [4, 8], 2) if q else ("inception", [64, 256], 5)
  print(f"# {dev.platform} ({getattr(dev, 'device_kind', '')}) x {jax.device_count()}, "
        f"jax {jax.__version__}, commit {provenance.commit()}{', --quick' if q else ''}", flush=True)
  failures: list[str] = []
  # each row is printed when it is measured, so a run stopped at its time limit keeps its rows
  consumed = None
  with jax.default_matmul_precision("bfloat16"):
    peak = matmul_peak(jnp.bfloat16, 512 if q else 8192)
    print(f"measured bfloat16 matmul peak: {peak / 1e12:.3g} TFLOP/s", flush=True)
    print("| what | result |\n|---|---|", flush=True)
    for b in per_device if "train" in rows else []:
      row = guarded(f"{variant} step, {b}/device",
                    lambda b=b: throughput_rows(variant, [b], n, peak)[0], failures)
      if row:
        name, ips, mfu, dt, flops = row
        consumed = consumed or ips
        print(f"| {name} | {ips:.1f} images/s, {dt * 1e3:.1f} ms/step, {flops / 1e9:.3g} "
              f"GFLOP/image, MFU {100 * mfu:.1f}% |", flush=True)
  if "train" in rows:
    print(f"FLOPs: {train_step_bench.FLOPS_DEFINITION}, counted on the CPU client "
          "(train_step.step_flops, the same in train_step.py)", flush=True)
  k = 3 if q else 8   # --quick: 3 margins (4 compiles instead of 9), the same vmapped path
  what = f"K={k} margins, one vmapped program vs {k} sequential steps (small ConvNet)"
  times = guarded(what, lambda: margin_ratio(k, n), failures) if "margins" in rows else None
  if times:
    tv, ts, ratios = times
    print(f"| {what} | {tv * 1e3:.1f} vs {ts * 1e3:.1f} ms/step (medians): {np.median(ratios):.2f}x, "
          f"median of {len(ratios)} interleaved rounds ({', '.join(f'{r:.2f}' for r in ratios)}) |",
          flush=True)
  style = guarded("style transfer", lambda: style_seconds(q), failures) if "style" in rows else None
  if style:
    print(f"| {style[0]} | {style[1]:.1f} s wall (weights, compilation included), "
          f"{style[2] * 1e3:.2f} ms/iteration compiled |", flush=True)
  global_batch = per_device[0] * jax.device_count()   # the first train row's global batch
  what = (f"in-memory batch gather (synthetic source, no loader workers; not the record pipeline, "
          f"see RESULTS.md 7a) vs train step, global batch {global_batch} ({per_device[0]}/device)")
  produced = (guarded(what, lambda: input_rate("tiny" if q else "inception", 3 if q else 10,
                                               global_batch),
                      failures) if "input" in rows else None)
  if produced and consumed:
    print(f"| {what} | {produced:.0f} images/s gathered vs {consumed:.0f} consumed: "
          f"{produced / consumed:.1f}x |", flush=True)
  elif produced:
    print(f"| {what} | {produced:.0f} images/s gathered (no train row to compare) |", flush=True)
  if failures:
    print(f"{len(failures)} row(s) failed: {'; '.join(failures)}", file=sys.stderr)
    return 1
  return 0


def row_list(text: str) -> tuple[str, ...]:
  """--rows: a comma-separated, non-empty subset of ROWS, each once."""
  names = tuple(t.strip() for t in text.split(","))
  bad = [t for t in names if t not in ROWS]
  if bad or not names or len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(f"expected distinct names of {','.join(ROWS)}, got {text!r}")
  return names


if __name__ == "__main__":
  sys.exit(main())
