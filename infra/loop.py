"""The one step loop of both wings: steps, logs, evaluations, checkpoints, preemption.

FaceNet training (facenet_jax/train.py) and style transfer (style_jax/optimize.py) both run
``state = step_fn(state, make_batch(step, state))`` from ``start`` to ``num_steps`` through
:func:`run_loop`; what differs (the step, the batch, what is logged, what a checkpoint holds)
comes in as arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Sequence

import jax

from infra.preemption import StopFlag, exit_if_stopped, stop_requests
from infra.progress import Progress


@dataclasses.dataclass(frozen=True)
class Periods:
  """How often the loop logs, evaluates and checkpoints (in steps; the last step does all)."""
  log_every: int
  eval_every: int
  checkpoint_every: int


def run_loop(state: Any, start: int, num_steps: int, periods: Periods, *,
             step_fn: Callable[[Any, Any], tuple[Any, Any]],
             make_batch: Callable[[int, Any], Any],
             on_log: Callable[[int, list, Progress], None],
             on_checkpoint: Callable[[int, Any], None],
             on_eval: Callable[[int, Any], None] | None = None,
             check: Callable[[Any, str], None] | None = None,
             writers: tuple | list = (), closeables: tuple | list = (),
             unit: str = "steps", progress: Progress | None = None,
             stop: StopFlag | None = None,
             unlogged: Sequence = (),
             on_unlogged: Callable[[int, list], None] | None = None) -> Any:
  """Steps ``start .. num_steps`` of ``state, metrics = step_fn(state, batch)``; returns the state.

  The batch of step s is ``make_batch(s, state)`` (already placed on devices). Every
  ``log_every`` steps (and at the last step, or when a stop signal arrived) ``check(state,
  where)`` runs (it raises on a non-finite state) and ``on_log(step, host_metrics, progress)``
  gets the steps' metrics since the last log, fetched to the host in one transfer; every
  ``eval_every`` steps and at the last ``on_eval(step, state)``; every ``checkpoint_every``
  steps, at the last and on a stop ``on_checkpoint(step, state)``. Then ``writers`` are
  flushed, and a stop request (SIGTERM / SIGINT) raises ``Preempted`` after closing
  ``writers`` and ``closeables`` once the step is checkpointed.

  A caller that runs several loops in a row (style transfer: one per scale) passes them one
  ``progress`` (a Progress over all the loops: the lines count to the end of the run, not of
  this loop; default: one over ``start .. num_steps`` in ``unit``) and the ``stop`` flag of
  its own ``stop_requests()`` (default: the loop's own): a signal that lands in the last step
  of one loop, or between two, then still stops the run, through the caller's own
  ``exit_if_stopped`` after this loop returns.

  A caller that passes ``on_unlogged`` keeps its logs those of an uninterrupted run: before
  every ``on_checkpoint`` it gets ``on_unlogged(step, host_metrics)``, the metrics of the
  steps since the last log (``[]`` at a log step), for the checkpoint to carry; a run resumed
  from that checkpoint passes them back as ``unlogged``, and its first log averages the same
  ``log_every`` steps. A stop then logs nothing between two log steps (a partial window
  would add a row and shorten the next). Without it, a stop logs the partial window.
  """
  if progress is None:
    progress = Progress(num_steps, start, unit=unit)
  pending: list = list(unlogged)
  with (contextlib.nullcontext(stop) if stop is not None else stop_requests()) as stop:
    step = start
    while step < num_steps:
      state, metrics = step_fn(state, make_batch(step, state))
      pending.append(metrics)
      step += 1
      if step == start + 1:
        jax.block_until_ready(metrics)
        progress.mark_compiled(step)
      last = step == num_steps
      stopping = stop.poll(step) is not None   # agreed by every process (infra/preemption.py)
      if step % periods.log_every == 0 or last or (stopping and on_unlogged is None):
        if check is not None:
          check(state, f"step {step}")
        host, pending = jax.device_get(pending), []
        on_log(step, host, progress)
      if on_eval is not None and (step % periods.eval_every == 0 or last):
        on_eval(step, state)
      if step % periods.checkpoint_every == 0 or last or stopping:
        if on_unlogged is not None:
          pending = jax.device_get(pending)   # host values: fetched once, logged later
          on_unlogged(step, pending)
        on_checkpoint(step, state)
      for w in writers:
        w.flush()
      if not last:
        exit_if_stopped(stop, step, *writers, *closeables)
  return state
