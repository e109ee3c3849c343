"""SIGTERM / SIGINT as a polite stop request (how clusters preempt jobs).

Inside ``stop_requests()`` the first SIGTERM or SIGINT only sets a flag; the training
or optimization loop polls it between steps, writes a checkpoint of the current step
and returns. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from infra.checkpoints import Checkpointer
from infra.errors import Preempted


class StopFlag:
  def __init__(self):
    self.signal: int | None = None

  def __bool__(self) -> bool:
    return self.signal is not None


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

  A signal can land after the loop decided not to checkpoint this step and before this
  call; exiting then would lose the step. So the stop is honoured only once every
  Checkpointer among ``resources`` holds ``step``; otherwise it waits one more step (the
  loop's ``or stop`` checkpoints that one).
  """
  if not stop:
    return
  if any(isinstance(r, Checkpointer) and r.latest_step() != step for r in resources):
    return
  for r in resources:
    r.close()
  raise Preempted(f"stopped by signal {stop.signal} after checkpointing step {step}; "
                  f"run again with the same workdir to resume", signum=stop.signal, step=step)


def exit_status(e: BaseException) -> int:
  """The process exit status for a Preempted run: 128 + the signal (143 for SIGTERM, 130
  for SIGINT), the shell's convention for "ended by a signal", so a wrapper sees that the
  run did not finish."""
  return 128 + int(getattr(e, "signum", None) or signal.SIGTERM)
