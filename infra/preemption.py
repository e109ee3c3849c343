"""SIGTERM / SIGINT as a polite stop request (how clusters preempt jobs).

Inside ``stop_requests()`` the first SIGTERM or SIGINT only sets a flag; the training
or optimization loop polls it between steps, writes a checkpoint of the current step
and returns. A second SIGINT interrupts at once.

In a multi-process run the signal usually reaches one process (or all, seconds apart), but
every process must checkpoint the same step and stop there, or the others block in the next
collective. So the loop never reads the flag directly: ``StopFlag.poll(step)`` agrees on it
across processes once per step (``infra.distributed.agreed_signal``, a tiny all-gather) and
every decision of that step uses the agreed value.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from infra import distributed
from infra.checkpoints import Checkpointer
from infra.errors import Preempted


class StopFlag:
  """``signal``: what this process received (set by the handler); ``poll(step)``: what every
  process acts on at ``step``."""

  def __init__(self):
    self.signal: int | None = None
    self._polled: tuple[int, int | None] | None = None

  def __bool__(self) -> bool:
    return self.signal is not None

  def poll(self, step: int) -> int | None:
    """The signal all processes stop on after ``step`` (None: go on). The first call for a
    step agrees across processes (a collective every process makes at the same step); later
    calls for that step return the same answer, so a signal landing in between is acted on
    at the next step by everyone, never by one process alone."""
    if self._polled is None or self._polled[0] != step:
      self._polled = (step, distributed.agreed_signal(self.signal))
    return self._polled[1]


@contextlib.contextmanager
def stop_requests():
  flag = StopFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag   # signals can only be handled on the main thread
    return

  def handler(signum, frame):
    if flag and signum == signal.SIGINT:
      raise KeyboardInterrupt
    flag.signal = signum
    # not print(): the signal may arrive while the main thread is inside a write to the same
    # buffered stream, and a second write from the handler raises "reentrant call" and
    # kills the run before it checkpoints. os.write is a plain system call.
    msg = f"received {signal.Signals(signum).name}: checkpointing at the end of this step\n"
    try:
      os.write(sys.stderr.fileno(), msg.encode())
    except (OSError, ValueError, AttributeError):
      pass

  old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def exit_if_stopped(stop: StopFlag, step: int, *resources) -> None:
  """Call right after checkpointing ``step``: on a stop request, close and raise Preempted.

  The request is ``stop.poll(step)``, the value the loop's checkpoint decision of this step
  used, so a signal landing after that decision waits for the next step (which the loop then
  checkpoints). As a second guard the stop is honoured only once every Checkpointer among
  ``resources`` holds ``step``.
  """
  signum = stop.poll(step)
  if signum is None:
    return
  if any(isinstance(r, Checkpointer) and r.latest_step() != step for r in resources):
    return
  for r in resources:
    r.close()
  raise Preempted(f"stopped by signal {signum} after checkpointing step {step}; "
                  f"run again with the same workdir to resume", signum=signum, step=step)


def exit_status(e: BaseException) -> int:
  """The process exit status for a Preempted run: 128 + the signal (143 for SIGTERM, 130
  for SIGINT), the shell's convention for "ended by a signal", so a wrapper sees that the
  run did not finish."""
  return 128 + int(getattr(e, "signum", None) or signal.SIGTERM)
