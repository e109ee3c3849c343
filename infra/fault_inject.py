"""Fault injection: kill real training / style runs at random moments and check that the
restarted runs end exactly where an uninterrupted run ends.

A *program* is a command line (``scripts/train_facenet.py`` or ``scripts/stylize.py``) with
a fixed config; it is run as a subprocess, with ``--workdir``:

1. once without faults (the reference);
2. in *cycles*: a fresh workdir, then runs that are each interrupted once, restarted with
   the same workdir until one finishes. Each interruption is one of

   * ``step``: SIGKILL at a random moment in a random step (after the progress line of a
     randomly chosen step, a uniform fraction of a step's time later);
   * ``checkpoint``: SIGKILL inside a checkpoint write. The run gets
     ``$INFRA_CHECKPOINT_WRITE_DELAY`` (``infra/checkpoints.py``: a test-only pause in the
     middle of the write: arrays in the temporary directory, nothing renamed yet) and is
     killed a uniform fraction of that pause after it announces the write;
   * ``sigterm`` / ``sigint``: a polite stop at a random step; the run must checkpoint that
     step, exit with status 128 + the signal, and lose no step.

After every interruption every checkpoint the directory lists is read back in full
(``Checkpointer.verify``: Orbax restore plus the SHA-256 recorded at save time); one that
fails counts as corrupt. The next run must resume from the newest checkpoint (it prints
``resumed from .../STEP``): the steps lost to the interruption are the last step the killed
run reported minus that step. At the end of a cycle the final checkpoint's arrays (the
parameters and optimizer state, or the image and L-BFGS/Adam state), ``results.json``
(minus timing fields) and, for style, ``final.png`` must equal the reference's bit for bit.

``run_soak`` returns and ``scripts/soak.py`` prints/writes the report: interruptions of each
kind, resumes that succeeded, the most steps lost to one interruption, checkpoints found
corrupt, and whether every cycle ended identical to the reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("step", "checkpoint", "sigterm", "sigint")
TIMING = {"wall_seconds", "steps_per_sec", "seconds_per_step", "it_per_sec"}

_STEP = re.compile(r"^step (\d+)/(\d+)\b")
_RESUMED = re.compile(r"^resumed from .*/(\d+)\s*$")
_WINDOW = re.compile(r"^checkpoint-write-window step=(\d+) seconds=([0-9.]+)")


@dataclasses.dataclass(frozen=True)
class Program:
  """A run to interrupt: ``argv`` without ``--workdir``; ``num_steps`` its last step;
  ``checkpoint_every`` its checkpoint period; ``files`` outputs compared byte for byte."""
  name: str
  argv: tuple[str, ...]
  num_steps: int
  checkpoint_every: int
  files: tuple[str, ...] = ()


def facenet_program(num_steps: int = 24, checkpoint_every: int = 3) -> Program:
  """The tiny FaceNet config (synthetic identities), a progress line per step."""
  return Program(
      "train",
      (sys.executable, os.path.join(ROOT, "scripts", "train_facenet.py"),
       "--config=" + os.path.join(ROOT, "configs", "facenet.py") + ":tiny",
       f"--config.num_steps={num_steps}", f"--config.checkpoint_every={checkpoint_every}",
       "--config.log_every=1", f"--config.eval_every={num_steps}", "--config.keep_checkpoints=3"),
      num_steps, checkpoint_every)


def write_style_inputs(directory: str) -> tuple[str, str]:
  """A seeded 32x32 content and 40x32 style PNG (the tiny style preset's inputs)."""
  from PIL import Image
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for name, shape in (("content.png", (32, 32, 3)), ("style.png", (40, 32, 3))):
    p = os.path.join(directory, name)
    if not os.path.exists(p):
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(p)
    paths.append(p)
  return paths[0], paths[1]


def style_program(inputs_dir: str, steps_per_scale: int = 12, checkpoint_every: int = 3) -> Program:
  """The tiny style preset over two scales (16 then 32 px), a progress line per step."""
  content, style = write_style_inputs(inputs_dir)
  return Program(
      "style",
      (sys.executable, os.path.join(ROOT, "scripts", "stylize.py"),
       "--config=" + os.path.join(ROOT, "configs", "style.py") + ":tiny",
       f"--config.content={content}", f"--config.style={style}", "--config.num_scales=2",
       f"--config.num_steps={steps_per_scale}", f"--config.checkpoint_every={checkpoint_every}",
       "--config.log_every=1", "--config.save_every=0", "--config.keep_checkpoints=3"),
      2 * steps_per_scale, checkpoint_every, files=("final.png",))


# ------------------------------------------------------------------------------- one process


class _Run:
  """One subprocess of a program, its output read line by line in a thread."""

  def __init__(self, program: Program, workdir: str, env: dict[str, str]):
    self.lines: "queue.Queue[tuple[float, str | None]]" = queue.Queue()
    self.log: list[str] = []
    self.last_step = 0
    self.resumed_from: int | None = None
    self.proc = subprocess.Popen(list(program.argv) + [f"--workdir={workdir}"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put((time.monotonic(), line.rstrip("\n")))
    self.lines.put((time.monotonic(), None))

  def next_line(self, timeout: float) -> tuple[float, str | None] | None:
    """The next (time, line) (line None at the end of output), or None on timeout."""
    try:
      t, line = self.lines.get(timeout=timeout)
    except queue.Empty:
      return None
    if line is not None:
      self.log.append(line)
      m = _STEP.match(line)
      if m:
        self.last_step = int(m.group(1))
      m = _RESUMED.match(line)
      if m:
        self.resumed_from = int(m.group(1))
    return t, line

  def drain(self, timeout: float) -> int:
    """Reads the rest of the output; returns the exit status."""
    deadline = time.monotonic() + timeout
    while True:
      got = self.next_line(max(0.0, deadline - time.monotonic()))
      if got is None:
        self.proc.kill()
        raise TimeoutError("run did not finish in time:\n" + "\n".join(self.log[-30:]))
      if got[1] is None:
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))


def _env(delay: float = 0.0) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, "runs", ".fault_inject_jax_cache"))
  env.pop("INFRA_CHECKPOINT_WRITE_DELAY", None)
  if delay:
    env["INFRA_CHECKPOINT_WRITE_DELAY"] = str(delay)
  return env


# ------------------------------------------------------------------------------ checks


def _quiet_absl():
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)   # Orbax's read-only notices


def listed_steps_ok(workdir: str) -> tuple[list[int], list[str]]:
  """(steps the checkpoint directory lists, one message per corrupt one)."""
  _quiet_absl()
  from infra import checkpoints
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return [], []
  ck = checkpoints.Checkpointer(d, every=1, read_only=True)
  steps, bad = ck.all_steps(), []
  for s in steps:
    try:
      ck.verify(s)
    except checkpoints.CheckpointError as e:
      bad.append(str(e))
  ck.close()
  return steps, bad


def final_state(workdir: str, step: int):
  """The saved state pytree of checkpoint ``step`` of ``workdir``, as numpy arrays, read
  without a target (so any program's checkpoint can be compared)."""
  _quiet_absl()
  import jax
  import orbax.checkpoint as ocp

  from infra import checkpoints
  ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, read_only=True)
  state = ck._manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())).state
  ck.close()
  return jax.tree.map(np.asarray, state)


def final_arrays(workdir: str, step: int) -> list[np.ndarray]:
  import jax
  return jax.tree.leaves(final_state(workdir, step))


def without_timing(x):
  """``x`` (parsed results.json) without its TIMING fields, at any depth."""
  if isinstance(x, dict):
    return {k: without_timing(v) for k, v in x.items() if k not in TIMING}
  if isinstance(x, list):
    return [without_timing(v) for v in x]
  return x


def differences(program: Program, ref: str, got: str) -> list[str]:
  """What differs between two finished workdirs (empty: bit-identical)."""
  out = []
  a, b = final_arrays(ref, program.num_steps), final_arrays(got, program.num_steps)
  if len(a) != len(b):
    out.append(f"{len(a)} vs {len(b)} arrays in the final checkpoint")
  for k, (x, y) in enumerate(zip(a, b)):
    if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
      out.append(f"final checkpoint array {k} differs")
  ra, rb = (without_timing(json.load(open(os.path.join(d, "results.json")))) for d in (ref, got))
  for r in (ra, rb):   # paths name the workdir
    r.pop("output", None)
  if ra != rb:
    out.append("results.json differs (timing fields excluded)")
  for f in program.files:
    if open(os.path.join(ref, f), "rb").read() != open(os.path.join(got, f), "rb").read():
      out.append(f"{f} differs")
  return out


# ----------------------------------------------------------------------------------- soak


@dataclasses.dataclass
class Report:
  program: str
  kills: dict[str, int] = dataclasses.field(default_factory=lambda: {k: 0 for k in KINDS})
  resumes_ok: int = 0
  resumes_failed: int = 0
  max_steps_lost: int = 0
  steps_lost: dict[str, int] = dataclasses.field(default_factory=lambda: {k: 0 for k in KINDS})
  corrupt_checkpoints: int = 0
  cycles: int = 0
  cycles_identical: int = 0
  missed: int = 0          # planned interruptions the run finished before
  failures: list[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  @property
  def ok(self) -> bool:
    return (not self.failures and self.corrupt_checkpoints == 0 and self.resumes_failed == 0
            and self.cycles_identical == self.cycles)


def _interrupt(run: _Run, kind: str, target: int, rng: random.Random, timeout: float,
               step_seconds: float) -> tuple[bool, int]:
  """Waits for the moment ``kind`` aims at (around step ``target``) and interrupts the run.

  Returns (interrupted, the step of the checkpoint write it was killed in, or 0). False:
  the run ended first.
  """
  deadline = time.monotonic() + timeout
  while True:
    got = run.next_line(max(0.0, deadline - time.monotonic()))
    if got is None:
      raise TimeoutError(f"no output for {timeout:.0f} s:\n" + "\n".join(run.log[-30:]))
    _, line = got
    if line is None:
      return False, 0
    if kind == "checkpoint":
      m = _WINDOW.match(line)
      if m and int(m.group(1)) >= target:
        time.sleep(rng.uniform(0.1, 0.9) * float(m.group(2)))
        run.proc.send_signal(signal.SIGKILL)
        return True, int(m.group(1))
      continue
    m = _STEP.match(line)
    if m and int(m.group(1)) >= target:
      if kind == "step":
        time.sleep(rng.uniform(0.0, 1.0) * step_seconds)
        run.proc.send_signal(signal.SIGKILL)
      else:
        run.proc.send_signal(signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
      return True, 0


_EXPECTED_STATUS = {"step": -signal.SIGKILL, "checkpoint": -signal.SIGKILL,
                    "sigterm": 128 + signal.SIGTERM, "sigint": 128 + signal.SIGINT}


def _room_for(program: Program, kind: str, resume_at: int) -> bool:
  """Whether the steps left after ``resume_at`` can hold an interruption of ``kind`` (a stop
  request during the last step is not acted on: the run just finishes)."""
  n = program.num_steps
  return resume_at + 1 <= (n - 1 if kind == "step" else n - 3 if kind in ("sigterm", "sigint")
                           else n)


def _target(program: Program, kind: str, resume_at: int, rng: random.Random) -> int:
  """A step past the resume point, near it (so that one cycle holds several interruptions)."""
  every, n = program.checkpoint_every, program.num_steps
  if kind == "checkpoint":   # the next checkpoint, or the one after (the final save included)
    nxt = (resume_at // every + 1) * every
    return min(nxt + every * rng.randint(0, 1), n)
  hi = n - 1 if kind == "step" else n - 3   # a stop request must land before the last step
  lo = min(resume_at + 1, hi)
  return rng.randint(lo, max(lo, min(hi, lo + 2 * every)))


def run_soak(program: Program, workdir: str, kills: dict[str, int], *, seed: int = 0,
             write_delay: float = 1.0, timeout: float = 300.0, per_cycle: int | None = None,
             log=print, on_cycle=None) -> Report:
  """Interrupts ``program`` ``kills[kind]`` times per kind (in as many cycles as needed).

  ``workdir`` gets ``reference/`` and ``faulted/`` (the last cycle's run, kept).
  ``per_cycle``: interruptions per cycle (default: checkpoints per run - 2).
  ``on_cycle(report)``: called after every cycle (progress reports of long soaks).
  """
  t0 = time.monotonic()
  rng = random.Random(seed)
  rep = Report(program.name)
  os.makedirs(workdir, exist_ok=True)
  ref = os.path.join(workdir, "reference")
  shutil.rmtree(ref, ignore_errors=True)
  first = _Run(program, ref, _env())
  stamps: list[float] = []
  while True:   # the reference run also measures a step's duration
    got = first.next_line(timeout)
    if got is None or got[1] is None:
      break
    if _STEP.match(got[1]):
      stamps.append(got[0])
  status = first.proc.wait(timeout=timeout)
  if status != 0:
    raise RuntimeError(f"{program.name}: reference run failed ({status}):\n"
                       + "\n".join(first.log[-40:]))
  step_seconds = float(np.median(np.diff(stamps))) if len(stamps) > 2 else 0.1
  log(f"{program.name}: reference run done ({program.num_steps} steps, "
      f"{step_seconds * 1e3:.0f} ms per step)")

  plan = [k for k in KINDS for _ in range(kills.get(k, 0))]
  rng.shuffle(plan)
  per_cycle = per_cycle or max(1, program.num_steps // program.checkpoint_every - 2)
  faulted = os.path.join(workdir, "faulted")
  while plan and not rep.failures:
    rep.cycles += 1
    shutil.rmtree(faulted, ignore_errors=True)
    this, plan = plan[:per_cycle], plan[per_cycle:]
    resume_at, pending = 0, None   # pending: (kind, last step) of the previous interruption
    for i, kind in enumerate(this + [None]):
      if kind is not None and not _room_for(program, kind, resume_at):
        plan = this[i:] + plan   # too close to the end for this kind: a later cycle
        kind = None
      run = _Run(program, faulted, _env(write_delay if kind == "checkpoint" else 0.0))
      interrupted, window = False, 0
      if kind is not None:
        target = _target(program, kind, resume_at, rng)
        interrupted, window = _interrupt(run, kind, target, rng, timeout, step_seconds)
      status = run.drain(timeout)
      if pending is not None:   # did this run resume where the interruption left it?
        prev_kind, prev_last = pending
        if (run.resumed_from or 0) != resume_at:
          rep.resumes_failed += 1
          rep.failures.append(f"cycle {rep.cycles}: after a {prev_kind} interruption the run "
                              f"resumed from {run.resumed_from}, not from checkpoint {resume_at}")
        else:
          rep.resumes_ok += 1
          lost = prev_last - resume_at
          log(f"{program.name} cycle {rep.cycles}: resumed from {resume_at} after the {prev_kind} "
              f"interruption at step {prev_last}: {lost} step(s) lost")
          rep.steps_lost[prev_kind] = max(rep.steps_lost[prev_kind], lost)
          rep.max_steps_lost = max(rep.max_steps_lost, lost)
          if prev_kind in ("sigterm", "sigint") and lost != 0:
            rep.failures.append(f"cycle {rep.cycles}: {prev_kind} at step {prev_last} lost "
                                f"{lost} step(s)")
        pending = None
      if kind is None or not interrupted:
        if kind is not None:   # it finished first: try the rest in a later cycle
          rep.missed += 1
          plan = this[i:] + plan
        if status != 0:
          rep.failures.append(f"cycle {rep.cycles}: run ended with status {status}:\n"
                              + "\n".join(run.log[-30:]))
        break
      rep.kills[kind] += 1
      last = max(run.last_step, window)
      if status != _EXPECTED_STATUS[kind]:
        rep.failures.append(f"cycle {rep.cycles}: {kind} interruption at step {last}: exit "
                            f"status {status}, expected {_EXPECTED_STATUS[kind]}:\n"
                            + "\n".join(run.log[-20:]))
      steps, bad = listed_steps_ok(faulted)
      rep.corrupt_checkpoints += len(bad)
      rep.failures += [f"cycle {rep.cycles}: {b}" for b in bad]
      resume_at = max(steps) if steps else 0
      pending = (kind, last)
      log(f"{program.name} cycle {rep.cycles}: {kind} at step {last} (aimed at {target}); "
          f"checkpoints now {steps}")
    if rep.failures:
      break
    if not os.path.exists(os.path.join(faulted, "results.json")):
      rep.failures.append(f"cycle {rep.cycles}: no results.json")
      break
    diff = differences(program, ref, faulted)
    if diff:
      rep.failures.append(f"cycle {rep.cycles}: differs from the reference: {diff}")
    else:
      rep.cycles_identical += 1
    log(f"{program.name} cycle {rep.cycles}: finished, {'identical to' if not diff else 'DIFFERS from'} "
        f"the reference; kills so far {rep.kills}")
    rep.seconds = time.monotonic() - t0
    if on_cycle is not None:
      on_cycle(rep)
  rep.seconds = time.monotonic() - t0
  return rep


def report_dict(rep: Report) -> dict[str, Any]:
  d = dataclasses.asdict(rep)
  d["ok"] = rep.ok
  return d
