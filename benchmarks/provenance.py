"""Where a benchmark's numbers came from: the commit and the machine, recorded beside each result.

benchmarks/RESULTS.md asks every table to name both; the scripts here take them from this one place
(imported as ``provenance``: a benchmark run as a file has this folder on its path).
"""

from __future__ import annotations

import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(rev: str = "HEAD") -> str:
  """The short hash of ``rev`` in this checkout, or "?" outside a git checkout (a copied tree)."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"
  except OSError:   # no git on the machine
    return "?"


def machine() -> str:
  """Host name, processor and core count, e.g. "vm-12 x86_64, 2 cpus"."""
  return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
