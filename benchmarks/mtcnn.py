"""MTCNN in JAX: images/s on 250x250 LFW photos one at a time vs in batches, and the
fraction of an LFW subset with a face found.

  python benchmarks/mtcnn.py --lfw=../shared/data/lfw/images --n=64 --batch=16

Timing excludes compilation: every shape is run once first (warm-up pass over the same
photos). The subset is every k-th person's first photo (deterministic). Ours alone; the
comparison with the mtcnn package (agreement) and facenet-pytorch (speed, same run) is
benchmarks/mtcnn_reference.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
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

  rows = []
  for name, fn in (("one at a time", single), (f"batches of {a.batch}", batched)):
    fn()   # compile every shape this run meets
    t = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t
    rows.append((name, len(rgbs) / dt, sum(len(r) > 0 for r in res)))
  print(f"MTCNN (JAX {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cpus), {len(rgbs)} LFW photos 250x250, min face 20 px, factor 0.709")
  print("| mode | images/s | with a face |")
  print("| --- | --- | --- |")
  for name, ips, found in rows:
    print(f"| {name} | {ips:.2f} | {found}/{len(rgbs)} ({found / len(rgbs):.1%}) |")


if __name__ == "__main__":
  main()
