"""Where a benchmark's numbers came from: the commit and the machine, recorded beside each result.

benchmarks/RESULTS.md asks every table to name both; the scripts here take them from this one place
(imported as ``provenance``: a benchmark run as a file has this folder on its path).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(rev: str = "HEAD") -> str:
  """The short hash of ``rev`` in this checkout, or "?" outside a git checkout (a copied tree).

  For HEAD, " + uncommitted changes" is added when a tracked file differs from it: a number
  measured on such a tree is not that commit's (a tree copied to another machine can carry an
  older .git beside newer files; the H200 runs of RESULTS.md section 9 did)."""
  try:
    run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    short = run("rev-parse", "--short", rev).stdout.strip()
    if not short:
      return "?"
    if rev == "HEAD" and run("status", "--porcelain", "--untracked-files=no").stdout.strip():
      short += " + uncommitted changes"
    return short
  except OSError:   # no git on the machine
    return "?"


INSTALL = (".venv/bin/pip install -r benchmarks/requirements.txt && .venv/bin/pip install "
           "--no-deps facenet-pytorch")


def require(modules: tuple[str, ...], peer: str) -> None:
  """Exits with one line naming the missing benchmark-only ``modules`` and the install
  command, before any work (a benchmark without its peer ended in a ModuleNotFoundError
  traceback, some after timing ours). ``peer``: what the benchmark compares against."""
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    raise SystemExit(f"{', '.join(missing)} not installed: this benchmark compares against "
                     f"{peer} ({INSTALL})")


def positive_int(text: str) -> int:
  """An argparse ``type``: an integer >= 1 (0 or -5 failed inside the benchmark, a traceback)."""
  import argparse
  if not text.strip().isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
  return int(text)


def batch_shape(text: str) -> tuple[int, int]:
  """An argparse ``type``: ``PxK`` of two integers >= 1 (e.g. 56x32)."""
  import argparse
  p, x, k = text.partition("x")
  if not x or not p.isdigit() or not k.isdigit() or int(p) < 1 or int(k) < 1:
    raise argparse.ArgumentTypeError(f"expected PxK, two integers >= 1 (e.g. 56x32), got {text!r}")
  return int(p), int(k)


def facenet_variant(text: str) -> str:
  """An argparse ``type``: a variant of configs/facenet.py (an unknown one was a traceback)."""
  import argparse
  import sys
  sys.path.insert(0, ROOT)
  from configs import facenet
  if text not in facenet.VARIANTS:
    raise argparse.ArgumentTypeError(f"expected a configs/facenet.py variant {sorted(facenet.VARIANTS)}, "
                                     f"got {text!r}")
  return text


def machine() -> str:
  """Host name, processor and core count, e.g. "vm-12 x86_64, 2 cpus"."""
  return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
