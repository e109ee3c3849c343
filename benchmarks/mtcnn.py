"""MTCNN in JAX: images/s on 250x250 LFW photos one at a time vs in batches, and the
fraction of an LFW subset with a face found.

  python benchmarks/mtcnn.py --lfw=../shared/data/lfw/images --n=64 --batch=16

Timing excludes compilation: every shape is run once first (warm-up pass over the same
photos). Then ``--rounds`` alternating rounds, one pass of each mode per round; the medians. The subset is every k-th person's first photo (deterministic). Ours alone; the
comparison with the mtcnn package (agreement) and facenet-pytorch (speed, same run) is
benchmarks/mtcnn_reference.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from PIL import Image

from facenet_jax.faces import detect

import provenance   # this folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--lfw", default=os.path.join(SHARED, "data", "lfw", "images"))
  ap.add_argument("--weights", default=os.path.join(SHARED, "weights", "mtcnn_weights.npz"))
  ap.add_argument("--n", type=provenance.positive_int, default=64)
  ap.add_argument("--batch", type=provenance.positive_int, default=16)
  ap.add_argument("--rounds", type=provenance.positive_int, default=5,
                  help="alternating timed rounds (one pass of each mode each); medians reported")
  a = ap.parse_args()
  for flag, path in (("--lfw", a.lfw), ("--weights", a.weights)):   # tracebacks before
    if not os.path.exists(path):
      ap.error(f"{flag}={path}: no such file or folder")
  people = sorted(os.listdir(a.lfw))
  people = people[::max(1, len(people) // a.n)][:a.n]
  paths = [sorted(glob.glob(os.path.join(a.lfw, p, "*.jpg")))[0] for p in people]
  rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  det = detect.MTCNN(a.weights)

  def single():
    return [det(r) for r in rgbs]

  def batched():
    out = []
    for s in range(0, len(rgbs), a.batch):
      out += det.detect(rgbs[s:s + a.batch])
    return out

  modes = (("one at a time", single), (f"batches of {a.batch}", batched))
  for _, fn in modes:
    fn()   # compile every shape this run meets
  # --rounds alternating rounds (one pass of each mode per round, side by side), so a change
  # in the machine's load falls on both modes; the medians are reported
  secs = {name: [] for name, _ in modes}
  found = {}
  for _ in range(a.rounds):
    for name, fn in modes:
      t = time.perf_counter()
      res = fn()
      secs[name].append(time.perf_counter() - t)
      found[name] = sum(len(r) > 0 for r in res)
  print(f"MTCNN (JAX {jax.__version__}, {jax.devices()[0].platform}, commit {provenance.commit()}, "
        f"{provenance.machine()}), {len(rgbs)} LFW photos 250x250, min face 20 px, factor 0.709; "
        f"median of {a.rounds} alternating rounds")
  print("| mode | images/s (median) | per round | with a face |")
  print("| --- | --- | --- | --- |")
  for name, _ in modes:
    per = ", ".join(f"{len(rgbs) / s:.2f}" for s in secs[name])
    f = found[name]
    print(f"| {name} | {len(rgbs) / np.median(secs[name]):.2f} | {per} | {f}/{len(rgbs)} "
          f"({f / len(rgbs):.1%}) |")


if __name__ == "__main__":
  main()
