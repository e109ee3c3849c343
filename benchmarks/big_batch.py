"""FaceNet-sized batches with chunked exact gradients (``config.batch_chunk``), on this CPU.

  .venv/bin/python benchmarks/big_batch.py              # all three parts (~15 min on 2 cores)
  .venv/bin/python benchmarks/big_batch.py --quick      # small sizes, seconds

1. Memory: XLA's compiled temporary buffers (``lower().compile().memory_analysis()``, nothing
   is run) of the Inception-ResNet-v1 train step at 160 px for a FaceNet-sized global batch
   (``--big``, default 1,792 = 56 identities x 32 images: 1,800 rounded so that 16, 32 and 64
   divide it) without chunking and with chunks of 16, 32 and 64 images.
2. Time: seconds per image of the chunked step (c = 32) against the plain step at a batch both
   run (``--time_batch``, default 128), interleaved, median of ``--steps``; target overhead at
   most 1.4x (the chunked step runs the forward pass twice: ~1.33x the FLOPs).
3. One real step at the big batch: the small ConvNet (32 px) and Inception-ResNet-v1 at
   ``--real_size`` px (96 by default: 160 px would take minutes per step here), each in its own
   process: seconds per step and peak RSS.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import provenance   # this folder


def _setup(variant: str, p: int, k: int, chunk: int, size: int):
  """(config, graphdef, tx, state, host batch) for a P x K batch of random images."""
  from configs.facenet import get_config
  from facenet_jax import steps
  from infra.overrides import with_overrides
  config = with_overrides(get_config(variant), {
      "identities_per_batch": p, "images_per_identity": k, "batch_chunk": chunk,
      "data.image_size": size})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (p * k, size, size, 3), dtype=np.uint8),
           "labels": np.repeat(np.arange(p, dtype=np.int32), k), "mask": np.ones(p * k, bool)}
  return config, graphdef, tx, state, batch


def _jit_step(config, graphdef, tx):
  import jax
  from facenet_jax import steps
  step = steps.make_train_step(graphdef, tx, config)
  return jax.jit(lambda s, b: step(s, b, config.margin), donate_argnums=0)


def temp_mib(variant: str, p: int, k: int, chunk: int, size: int) -> float:
  """MiB of compiled temporary buffers of the train step (compiled, never run)."""
  import jax
  config, graphdef, tx, state, batch = _setup(variant, p, k, chunk, size)
  spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
  compiled = _jit_step(config, graphdef, tx).lower(state, spec).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def time_per_image(variant: str, p: int, k: int, chunk: int, size: int, steps: int) -> dict:
  """Median seconds per image of plain and chunked steps, interleaved step by step."""
  import jax
  runs = {}
  for c in (0, chunk):
    config, graphdef, tx, state, batch = _setup(variant, p, k, c, size)
    fn = _jit_step(config, graphdef, tx)
    state, m = fn(state, batch)   # compile + warm-up
    jax.block_until_ready(m)
    runs[c] = [fn, state, batch, []]
  for _ in range(steps):
    for c, r in runs.items():
      t = time.perf_counter()
      r[1], m = r[0](r[1], r[2])
      jax.block_until_ready(m)
      r[3].append((time.perf_counter() - t) / (p * k))
  return {c: float(np.median(r[3])) for c, r in runs.items()}


def real_step(variant: str, p: int, k: int, chunk: int, size: int) -> dict:
  """One compiled step at the big batch, then one timed step; peak RSS of this process."""
  import jax
  config, graphdef, tx, state, batch = _setup(variant, p, k, chunk, size)
  fn = _jit_step(config, graphdef, tx)
  t = time.perf_counter()
  state, m = fn(state, batch)
  jax.block_until_ready(m)
  first = time.perf_counter() - t
  t = time.perf_counter()
  state, m = fn(state, batch)
  jax.block_until_ready(m)
  return {"first_s": first, "step_s": time.perf_counter() - t, "loss": float(m["loss"]),
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(fn: str, *args) -> dict:
  """Runs ``fn(*args)`` of this file in a fresh process (own peak RSS, own memory)."""
  out = subprocess.run([sys.executable, __file__, "--child", json.dumps([fn, list(args)])],
                       capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{fn}{args} failed:\n{out.stderr[-3000:]}")
  return json.loads(lines[-1][7:])


def chunk_list(text: str) -> list[int]:
  """--chunks: comma-separated integers >= 1 ("16,,x" was a traceback after the first rows)."""
  return [provenance.positive_int(t) for t in text.split(",")]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sizes = {"big": (56, 32), "chunks": [16, 32, 64], "time_batch": (16, 8), "steps": 3, "real_size": 96}
  quick = {"big": (8, 4), "chunks": [8, 16], "time_batch": (4, 4), "steps": 2, "real_size": 80}
  ap.add_argument("--big", type=provenance.batch_shape, help="P x K of the FaceNet-sized batch (56x32)")
  ap.add_argument("--chunks", type=chunk_list, help="batch_chunk values, comma-separated (16,32,64)")
  ap.add_argument("--time_batch", type=provenance.batch_shape, help="P x K of the timing batch (16x8)")
  ap.add_argument("--steps", type=provenance.positive_int, help="timed steps (3)")
  ap.add_argument("--real_size", type=provenance.positive_int, help="px of the real-step row (96)")
  ap.add_argument("--quick", action="store_true", help=f"tiny sizes, a smoke run: {quick}")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    fn, fargs = json.loads(args.child)
    print("RESULT " + json.dumps(globals()[fn](*fargs), default=str))
    return
  given = [f"--{k}" for k in sizes if getattr(args, k) is not None]
  if args.quick and given:   # --quick used to replace them without a word
    ap.error(f"--quick sets its own sizes; {', '.join(given)} would be ignored: give one or the other")
  for k, v in (quick if args.quick else sizes).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  p, k = args.big
  chunks = args.chunks
  size = 80 if args.quick else 160
  print(f"# commit {provenance.commit()}, {provenance.machine()}, load {os.getloadavg()[0]:.2f}; "
        f"Inception-ResNet-v1, global batch {p * k} ({p} x {k})")
  print(f"\n| chunk | compiled temp MiB at {size} px |\n|---|---|")
  for c in [0] + chunks:
    print(f"| {c or 'none'} | {_child('temp_mib', 'inception', p, k, c, size):.0f} |", flush=True)
  tp, tk = args.time_batch
  tc = chunks[1] if len(chunks) > 1 else chunks[0]
  t = _child("time_per_image", "inception", tp, tk, tc, size, args.steps)
  plain, chunked = t["0"], t[str(tc)]
  print(f"\n| batch {tp * tk} at {size} px | s / image |\n|---|---|\n| plain | {plain:.4f} |\n"
        f"| chunk {tc} | {chunked:.4f} |\n| chunked / plain | {chunked / plain:.2f} (target <= 1.4) |",
        flush=True)
  print(f"\n| one step at batch {p * k} | chunk | s / step | first (compile + step) s | peak RSS MiB | loss |"
        "\n|---|---|---|---|---|---|")
  for variant, s in (("synthetic", 32), ("inception", args.real_size)):
    r = _child("real_step", variant, p, k, chunks[-1], s)
    name = "small ConvNet, 32 px" if variant == "synthetic" else f"Inception-ResNet-v1, {s} px"
    print(f"| {name} | {chunks[-1]} | {r['step_s']:.1f} | {r['first_s']:.1f} | "
          f"{r['peak_rss_mib']:.0f} | {r['loss']:.4f} |", flush=True)


if __name__ == "__main__":
  main()
