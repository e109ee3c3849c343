"""Progress lines for long loops: step, rate, ETA and a few named values."""

from __future__ import annotations

import sys
import time
from typing import Mapping


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _fmt_value(v: float) -> str:
  v = float(v)
  return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


class Progress:
  """Prints ``step s/N  rate u/s  eta  k=v ...``; the rate excludes the first (compiling) call.

  Args:
    total: the last step.
    start: the step the loop starts from (after a resume), so rate and ETA are honest.
    unit: what a step is called in the rate ("steps", "it", "images").
    what: the counter's name at the start of the line ("step", "images").
  """

  def __init__(self, total: int, start: int = 0, *, unit: str = "steps", what: str = "step",
               stream=None):
    self.total, self.unit, self.what = int(total), unit, what
    self.stream = stream or sys.stdout
    self._t0: float | None = None
    self._s0 = int(start)

  def mark_compiled(self, step: int) -> None:
    """Call after the first step finished: timing starts here, compile time excluded."""
    self._t0, self._s0 = time.perf_counter(), int(step)

  def rate(self, step: int) -> float:
    if self._t0 is None or step <= self._s0:
      return float("nan")
    return (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)

  def line(self, step: int, values: Mapping[str, float] | None = None) -> str:
    r = self.rate(step)
    eta = (self.total - step) / r if r == r and r > 0 else float("nan")
    parts = [f"{self.what} {step}/{self.total}",
             f"{r:.2f} {self.unit}/s" if r == r else f"-- {self.unit}/s",
             f"eta {_fmt_seconds(eta)}" if eta == eta else "eta --"]
    parts += [f"{k}={_fmt_value(v)}" for k, v in (values or {}).items()]
    return "  ".join(parts)

  def report(self, step: int, values: Mapping[str, float] | None = None) -> None:
    print(self.line(step, values), file=self.stream, flush=True)
