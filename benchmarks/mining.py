"""Online semi-hard mining + triplet loss, forward only: ours (JAX) vs pytorch-metric-learning.

  .venv/bin/python benchmarks/mining.py             # B = 128, 504, 512, 1800 (about 3 minutes)
  .venv/bin/python benchmarks/mining.py --quick     # smoke test, seconds
  .venv/bin/python benchmarks/mining.py --sizes 512,1800

Both sides get the same random L2-normalised embeddings (D=128) of P x K batches (K=8).

* ours: ``jax.jit`` of ``facenet_jax.mining.batch_loss(loss="triplet", miner="semi_hard",
  margin=0.2)``: squared L2 distances; per (anchor, positive) pair the closest negative
  farther than the positive if within the margin, else the farthest negative ("easiest"
  fallback); mean over the pairs. O(B^2) memory (a loop over the K - 1 positive slots).
* PML: ``miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")`` +
  ``losses.TripletMarginLoss(margin=0.2)`` with their defaults: *non-squared* Euclidean
  distance, *every* semi-hard triplet (0 < d_an - d_ap <= margin), mean over the triplets
  with a positive loss. It enumerates all B^3 triplets. The two losses therefore differ in
  value by design; what is compared is the cost of online semi-hard mining + loss.

Timing: median of ``--repeats`` calls after warm-up, ``jax.block_until_ready``; JAX compile
(``lower().compile()``) is excluded and reported on its own. A PML call slower than
``--slow-s`` is timed once, without repeats (B=1800 takes many seconds).

Memory: one subprocess per (library, B, measurement). ``peak MB`` is the peak RSS
(``ru_maxrss``) during one call minus the RSS just before it, measured after the runtime
is initialised, the inputs exist and (JAX) the function is compiled, i.e. above the
runtime's own footprint. The peak is reset with ``/proc/self/clear_refs`` and malloc is
told to mmap every block >= 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed compiler
memory cannot hide the call's allocations. For JAX the peak including compilation and
XLA's own estimate (``compiled.memory_analysis().temp_size_in_bytes``) are reported too.
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

MARGIN = 0.2
LIBS = ("pml", "ours")
TARGET_SPEEDUP_AT = (512, 50.0)       # >= 50x faster than PML at B=512
TARGET_1800 = (1800, 150.0, 200.0)    # B=1800: < 150 ms and < 200 MB above the runtime


# ----------------------------------------------------------------------------- inputs


def make_batch(B: int, K: int, D: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random unit-norm (B, D) float32 embeddings and P = B // K identities of K images each."""
  if B % K:
    raise ValueError(f"batch {B} is not a multiple of K={K}")
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(B, D)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return emb, np.repeat(np.arange(B // K), K).astype(np.int32)


# ----------------------------------------------------------------------------- memory


def load_average() -> str:
  """The 1/5/15-minute load averages: other processes on the machine skew timings."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rss_mb() -> float:
  """Current resident set size in MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
  """Peak RSS of this process in MiB (since start or the last ``reset_peak_rss``)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ----------------------------------------------------------------------------- the two sides


def jax_setup(lib: str, emb: np.ndarray, labels: np.ndarray):
  """(jitted fn, device args, loss_and_count fn) for ours."""
  import jax
  import jax.numpy as jnp
  from facenet_jax import mining

  del lib

  def objective(e, l, m):
    return mining.batch_loss(e, l, m, loss="triplet", miner="semi_hard", margin=MARGIN)

  fn = jax.jit(lambda e, l, m: objective(e, l, m)[0])
  args = jax.block_until_ready((jnp.asarray(emb), jnp.asarray(labels),
                                jnp.ones(labels.shape, bool)))

  def describe():
    loss, stats = jax.jit(objective)(*args)
    return float(loss), int(stats["num_valid"])
  return fn, args, describe


def pml_setup(emb: np.ndarray, labels: np.ndarray, threads: int):
  """(fn, args, describe) for pytorch-metric-learning's semi-hard miner + triplet loss."""
  import torch
  from pytorch_metric_learning import losses, miners

  torch.set_num_threads(threads)
  miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
  loss_fn = losses.TripletMarginLoss(margin=MARGIN)

  @torch.no_grad()
  def fn(e, l):
    return loss_fn(e, l, miner(e, l))

  args = (torch.from_numpy(emb), torch.from_numpy(labels).long())

  @torch.no_grad()
  def describe():
    trip = miner(*args)
    return float(loss_fn(*args, trip)), int(trip[0].numel())
  return fn, args, describe


# ----------------------------------------------------------------------------- worker


def _time_calls(call, repeats: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    call()
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    call()
    out.append(time.perf_counter() - t)
  return out


def worker(lib: str, mode: str, B: int, K: int, D: int, repeats: int, slow_s: float,
           torch_threads: int) -> dict:
  """One measurement of one library at one batch size, in this (fresh) process."""
  emb, labels = make_batch(B, K, D)
  res: dict = {"lib": lib, "mode": mode, "B": B}
  if lib == "pml":
    fn, args, describe = pml_setup(emb, labels, torch_threads)
    call = lambda: fn(*args)
  else:
    import jax
    fn, args, describe = jax_setup(lib, emb, labels)
    rss0 = rss_mb()
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    res["compile_s"] = time.perf_counter() - t
    res["peak_incl_compile_mb"] = peak_rss_mb() - rss0
    stats = compiled.memory_analysis()
    if stats is not None:
      res["xla_temp_mb"] = stats.temp_size_in_bytes / 2**20
    call = lambda: jax.block_until_ready(compiled(*args))

  if mode == "memory":
    res["peak_reset"] = reset_peak_rss()
    base = rss_mb()
    t = time.perf_counter()
    call()
    res["first_call_s"] = time.perf_counter() - t
    res["baseline_mb"] = base
    res["peak_mb"] = peak_rss_mb() - base
    return res

  t = time.perf_counter()
  call()
  first = time.perf_counter() - t
  if first > slow_s:       # too slow for repeats: one timed call (after no warm-up)
    times = [first]
  else:
    times = _time_calls(call, repeats, warmup=2)
  res["time_ms"] = 1e3 * float(np.median(times))
  res["n"] = len(times)
  res["loss"], res["count"] = describe()
  return res


def run_worker(lib: str, mode: str, B: int, args) -> dict:
  """Runs ``worker`` in a fresh interpreter and returns its result dict."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if mode == "memory":
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--mode", mode,
         "--sizes", str(B), "--k", str(args.k), "--dim", str(args.dim),
         "--repeats", str(args.repeats), "--slow-s", str(args.slow_s),
         "--torch-threads", str(args.torch_threads)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"worker {lib}/{mode}/B={B} failed (rc {out.returncode}):\n"
                     f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")





# ----------------------------------------------------------------------------- report


def _fmt(x, spec=".1f"):
  return "-" if x is None else format(x, spec)


def print_tables(rows: dict, sizes: list[int], libs: list[str], K: int) -> None:
  """Markdown tables: timing and memory, then the loss values each side computed."""
  get = lambda lib, B, key: rows.get((lib, B), {}).get(key)
  head = ["B", "P x K", "PML ms", "ours ms", "speedup", "PML peak MB", "ours peak MB",
          "ours XLA temp MB", "ours peak during compile MB", "ours compile s"]
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for B in sizes:
    pml, ours = (get(lib, B, "time_ms") for lib in LIBS)
    pml_n = get("pml", B, "n")
    cells = [str(B), f"{B // K} x {K}",
             _fmt(pml) + (f" (n={pml_n})" if pml_n == 1 else ""), _fmt(ours, ".2f"),
             _fmt(pml / ours if pml and ours else None, ".0f") + ("x" if pml and ours else ""),
             _fmt(get("pml", B, "peak_mb")), _fmt(get("ours", B, "peak_mb")),
             _fmt(get("ours", B, "xla_temp_mb")), _fmt(get("ours", B, "peak_incl_compile_mb")),
             _fmt(get("ours", B, "compile_s"), ".2f")]
    print("| " + " | ".join(cells) + " |")
  print()
  print("| B | PML loss (Euclidean, mean over non-zero) | PML semi-hard triplets | "
        "ours loss (squared L2, mean) | ours triplets (one per a,p pair) |")
  print("|---|---|---|---|---|")
  for B in sizes:
    print(f"| {B} | {_fmt(get('pml', B, 'loss'), '.4f')} | {get('pml', B, 'count') or '-'} | "
          f"{_fmt(get('ours', B, 'loss'), '.4f')} | {get('ours', B, 'count') or '-'} |")


def check_targets(rows: dict, libs: list[str]) -> bool | None:
  """Prints PASS/FAIL per target for ours; returns the overall result
  (None when some target was not measured)."""
  ok, measured = True, True
  for lib in [l for l in ("ours",) if l in libs]:
    B, want = TARGET_SPEEDUP_AT
    r, p = rows.get((lib, B)), rows.get(("pml", B))
    if r and p and r.get("time_ms") and p.get("time_ms"):
      s = p["time_ms"] / r["time_ms"]
      print(f"[{'PASS' if s >= want else 'FAIL'}] {lib}: >= {want:.0f}x faster than PML at B={B}: {s:.0f}x")
      ok &= lib != "ours" or s >= want
    else:
      print(f"[n/a ] {lib}: speedup at B={B} not measured")
      measured &= lib != "ours"
    B, ms, mb = TARGET_1800
    r = rows.get((lib, B))
    if r and "time_ms" in r:
      print(f"[{'PASS' if r['time_ms'] < ms else 'FAIL'}] {lib}: B={B} in < {ms:.0f} ms: {r['time_ms']:.1f} ms")
      ok &= lib != "ours" or r["time_ms"] < ms
    else:
      print(f"[n/a ] {lib}: B={B} time not measured")
      measured &= lib != "ours"
    if r and "peak_mb" in r:
      print(f"[{'PASS' if r['peak_mb'] < mb else 'FAIL'}] {lib}: B={B} peak < {mb:.0f} MB above "
            f"the runtime: {r['peak_mb']:.1f} MB (during compilation: {r['peak_incl_compile_mb']:.1f} MB)")
      ok &= lib != "ours" or r["peak_mb"] < mb
    else:
      print(f"[n/a ] {lib}: B={B} memory not measured")
      measured &= lib != "ours"
  return ok if measured or not ok else None


# ----------------------------------------------------------------------------- main


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                  default=[128, 504, 512, 1800], help="comma-separated batch sizes")
  ap.add_argument("--k", type=int, default=8, help="images per identity")
  ap.add_argument("--dim", type=int, default=128, help="embedding dimension")
  ap.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
  ap.add_argument("--slow-s", type=float, default=3.0, help="time a call this slow only once")
  ap.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                  help="torch.set_num_threads for PML (default: all cores)")
  ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
  ap.add_argument("--no-pml", action="store_true", help="skip pytorch-metric-learning")
  ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
  ap.add_argument("--mode", choices=("time", "memory"), help=argparse.SUPPRESS)
  args = ap.parse_args()

  if args.worker:
    res = worker(args.worker, args.mode, args.sizes[0], args.k, args.dim, args.repeats, args.slow_s,
                 args.torch_threads)
    print("RESULT " + json.dumps(res))
    return
  if args.quick:
    args.sizes, args.repeats = [64, 128], 5
  if not args.no_pml:   # before ours is timed, not after (--no-pml runs without it)
    provenance.require(("torch", "pytorch_metric_learning"), "pytorch-metric-learning")
  libs = [l for l in LIBS if not (l == "pml" and args.no_pml)]
  print(f"# semi-hard mining + triplet loss, forward; D={args.dim}, K={args.k}, margin={MARGIN}, "
        f"commit {provenance.commit()}, {provenance.machine()} (torch threads {args.torch_threads}), median of {args.repeats} after warm-up; "
        f"load average before: {load_average()}")
  rows: dict = {}
  for B in args.sizes:
    for lib in libs:
      r = run_worker(lib, "time", B, args)
      r.update({k: v for k, v in run_worker(lib, "memory", B, args).items()
                if k in ("peak_mb", "baseline_mb", "peak_reset", "peak_incl_compile_mb", "xla_temp_mb")})
      rows[(lib, B)] = r
      print(f"  B={B} {lib}: {r['time_ms']:.2f} ms (n={r['n']}), peak {r['peak_mb']:.1f} MB above "
            f"{r['baseline_mb']:.0f} MB" + ("" if r["peak_reset"] else " (peak reset unavailable)"),
            file=sys.stderr, flush=True)
  print()
  print_tables(rows, args.sizes, libs, args.k)
  print()
  ok = check_targets(rows, libs)
  verdict = {True: "all targets PASS", False: "some target FAILS", None: "targets not all measured"}
  print(f"\nours (facenet_jax.mining): {verdict[ok]}")
  print(f"load average after the run: {load_average()}")


if __name__ == "__main__":
  main()
