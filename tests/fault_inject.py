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

``run_soak`` returns and ``tests/soak.py`` prints/writes the report: interruptions of each
kind, resumes that succeeded, the most steps lost to one interruption, checkpoints found
corrupt, and whether every cycle ended identical to the reference.

Test support, not a test (pytest collects only ``test_*.py``): the tests import it as
``import fault_inject`` (``tests/`` is on their path, as for ``reference``) and so does
``tests/soak.py``, run from this folder.
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
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from PIL import Image

import multiproc
from infra import checkpoints

# the repository root: this file lies one folder below it (tests/)
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
  processes: int = 1   # > 1: each run is that many processes of one run, 1 CPU device each


def facenet_program(num_steps: int = 24, checkpoint_every: int = 3, processes: int = 1) -> Program:
  """The tiny FaceNet config (synthetic identities), a progress line per step; ``processes``
  > 1: a multi-process run (tests/multiproc.py), interrupted in one process or all."""
  return Program(
      "train",
      (sys.executable, os.path.join(ROOT, "scripts", "train_facenet.py"),
       "--config=" + os.path.join(ROOT, "configs", "facenet.py") + ":tiny",
       f"--config.num_steps={num_steps}", f"--config.checkpoint_every={checkpoint_every}",
       "--config.log_every=1", f"--config.eval_every={num_steps}", "--config.keep_checkpoints=3"),
      num_steps, checkpoint_every, processes=processes)


def write_style_inputs(directory: str) -> tuple[str, str]:
  """A seeded 32x32 content and 40x32 style PNG (the tiny style preset's inputs)."""
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
    argv = list(program.argv) + [f"--workdir={workdir}"]
    if program.processes > 1:   # process 0's lines drive the interruptions
      self.proc: Any = Group(argv, env, program.processes)
    else:
      self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
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


HEARTBEAT_S = 30   # a multi-process run whose process was killed ends within about this


class Group:
  """The processes of one multi-process run, handled as one process: ``stdout`` is process
  0's, ``send_signal`` reaches the processes in ``targets`` (all unless set), ``wait``
  returns one exit status (:func:`group_status`); the others' output goes to ``logs``."""

  def __init__(self, argv: list[str], env: dict[str, str], n: int):
    port = multiproc.free_port()
    self.procs = [subprocess.Popen(argv, cwd=ROOT, env=multiproc.env_for(i, n, 1, port, HEARTBEAT_S, env),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1) for i in range(n)]
    self.stdout = self.procs[0].stdout
    self.targets = list(range(n))
    self.logs: list[list[str]] = [[] for _ in range(n)]
    for i in range(1, n):
      threading.Thread(target=lambda i=i: self.logs[i].extend(self.procs[i].stdout),
                       daemon=True).start()

  def send_signal(self, sig: int) -> None:
    for i in self.targets:
      self.procs[i].send_signal(sig)

  def kill(self) -> None:
    for p in self.procs:
      p.kill()

  def wait(self, timeout: float | None = None) -> int | tuple[int, ...]:
    return group_status([p.wait(timeout=timeout) for p in self.procs])


def group_status(statuses: list[int]) -> int | tuple[int, ...]:
  """One status for a multi-process run: the common one; -SIGKILL when some were killed and
  every other one failed too (it must not finish alone); else all of them (a failure)."""
  if len(set(statuses)) == 1:
    return statuses[0]
  if -signal.SIGKILL in statuses and 0 not in statuses:
    return -signal.SIGKILL
  return tuple(statuses)


def _env(delay: float = 0.0) -> dict[str, str]:
  """The environment of a run: CPU, unbuffered output, a shared compilation cache, and the
  checkpoint write held open ``delay`` seconds (0: not at all)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, "runs", ".fault_inject_jax_cache"))
  env.pop("INFRA_CHECKPOINT_WRITE_DELAY", None)
  if delay:
    env["INFRA_CHECKPOINT_WRITE_DELAY"] = str(delay)
  return env


# ------------------------------------------------------------------------------ checks


def _quiet_absl() -> None:
  """Silences Orbax's notices about read-only managers (one per checkpoint read)."""
  absl_logging.set_verbosity(absl_logging.ERROR)


def listed_steps_ok(workdir: str, anywhere: bool = False) -> tuple[list[int], list[str]]:
  """(steps the checkpoint directory lists, one message per corrupt one). ``anywhere``: read
  each into this process's first device (:func:`read_checkpoint`; a checkpoint saved by
  several processes records their topology, which ``Checkpointer.verify`` must match) and
  check its SHA-256."""
  _quiet_absl()
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return [], []
  if anywhere:
    ck = checkpoints.Checkpointer(d, every=1, read_only=True)
    steps, bad = ck.all_steps(), []
    ck.close()
    for s in steps:
      try:
        state, meta = read_checkpoint(workdir, s)
        if meta.get(checkpoints.DIGEST_KEY) != checkpoints.state_digest(state):
          bad.append(f"checkpoint {s}: SHA-256 differs from the one recorded at save time")
      except Exception as e:   # noqa: BLE001 (any read failure is a corrupt checkpoint)
        bad.append(f"checkpoint {s} unreadable: {type(e).__name__}: {e}")
    return steps, bad
  ck = checkpoints.Checkpointer(d, every=1, read_only=True)
  steps, bad = ck.all_steps(), []
  for s in steps:
    try:
      ck.verify(s)
    except checkpoints.CheckpointError as e:
      bad.append(str(e))
  ck.close()
  return steps, bad


def read_checkpoint(workdir: str, step: int) -> tuple[Any, dict]:
  """(state, meta) of checkpoint ``step`` of ``workdir``, every array whole on this process's
  first device (the target built from the checkpoint's own metadata, so a checkpoint of any
  program, saved by any number of processes, can be read)."""
  _quiet_absl()
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  try:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                          manager.item_metadata(step).state)
    got = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return jax.tree.map(np.asarray, got.state), dict(got.meta or {})


def final_state(workdir: str, step: int) -> Any:
  """The saved state pytree of checkpoint ``step`` of ``workdir``, as numpy arrays
  (:func:`read_checkpoint`)."""
  return read_checkpoint(workdir, step)[0]


def final_arrays(workdir: str, step: int) -> list[np.ndarray]:
  """The leaves of ``final_state`` in pytree order."""
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
  """What one program's soak found (see the module docstring); ``ok``: nothing failed."""
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
  # multi-process runs: interruptions by kind and target ("sigterm: one" / "sigterm: all")
  targets: dict[str, int] = dataclasses.field(default_factory=dict)
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


@dataclasses.dataclass
class _Soak:
  """What the cycles of one soak share: the program, its report, the random source (one
  stream for the whole soak, so a seed fixes every target), timings and the log."""
  program: Program
  rep: Report
  rng: random.Random
  step_seconds: float
  write_delay: float
  timeout: float
  log: Callable[[str], None]


def _reference_run(program: Program, ref: str, timeout: float) -> float:
  """Runs ``program`` once without faults into ``ref``; returns its median seconds per step
  (the reference run also measures a step's duration)."""
  shutil.rmtree(ref, ignore_errors=True)
  first = _Run(program, ref, _env())
  stamps: list[float] = []
  while True:
    got = first.next_line(timeout)
    if got is None or got[1] is None:
      break
    if _STEP.match(got[1]):
      stamps.append(got[0])
  status = first.proc.wait(timeout=timeout)
  if status != 0:
    raise RuntimeError(f"{program.name}: reference run failed ({status}):\n"
                       + "\n".join(first.log[-40:]))
  return float(np.median(np.diff(stamps))) if len(stamps) > 2 else 0.1


def _check_resume(s: _Soak, run: _Run, resume_at: int, prev_kind: str, prev_last: int) -> None:
  """Counts whether ``run`` resumed from checkpoint ``resume_at`` after a ``prev_kind``
  interruption at step ``prev_last``, and the steps that interruption lost."""
  rep, cycle = s.rep, s.rep.cycles
  if (run.resumed_from or 0) != resume_at:
    rep.resumes_failed += 1
    rep.failures.append(f"cycle {cycle}: after a {prev_kind} interruption the run "
                        f"resumed from {run.resumed_from}, not from checkpoint {resume_at}")
    return
  rep.resumes_ok += 1
  lost = prev_last - resume_at
  s.log(f"{s.program.name} cycle {cycle}: resumed from {resume_at} after the {prev_kind} "
        f"interruption at step {prev_last}: {lost} step(s) lost")
  rep.steps_lost[prev_kind] = max(rep.steps_lost[prev_kind], lost)
  rep.max_steps_lost = max(rep.max_steps_lost, lost)
  if prev_kind in ("sigterm", "sigint") and lost != 0:   # a polite stop must lose nothing
    rep.failures.append(f"cycle {cycle}: {prev_kind} at step {prev_last} lost {lost} step(s)")


def _record_interruption(s: _Soak, run: _Run, kind: str, status: int, window: int,
                         target: int, faulted: str) -> tuple[int, int]:
  """Counts an interruption of ``kind``, checks the exit status and reads back every listed
  checkpoint. Returns (the step the next run must resume from, the last step reached)."""
  rep = s.rep
  rep.kills[kind] += 1
  last = max(run.last_step, window)
  if status != _EXPECTED_STATUS[kind]:
    rep.failures.append(f"cycle {rep.cycles}: {kind} interruption at step {last}: exit "
                        f"status {status}, expected {_EXPECTED_STATUS[kind]}:\n"
                        + "\n".join(run.log[-20:]))
  steps, bad = listed_steps_ok(faulted, anywhere=s.program.processes > 1)
  rep.corrupt_checkpoints += len(bad)
  rep.failures += [f"cycle {rep.cycles}: {b}" for b in bad]
  s.log(f"{s.program.name} cycle {rep.cycles}: {kind} at step {last} (aimed at {target}); "
        f"checkpoints now {steps}")
  return (max(steps) if steps else 0), last


def _aim(s: _Soak, run: _Run) -> str:
  """A multi-process run: picks the processes the next interruption reaches (one of them at
  random, or all); returns "one" / "all" ("" for a single process)."""
  if s.program.processes == 1:
    return ""
  n = s.program.processes
  run.proc.targets = s.rng.choice([[i] for i in range(n)] + [list(range(n))])
  return "all" if len(run.proc.targets) == n else "one"


def _run_cycle(s: _Soak, faulted: str, this: list[str]) -> list[str]:
  """One cycle in a fresh ``faulted`` workdir: a run interrupted by each kind of ``this`` in
  turn, each restarted, then one left to finish. Returns the kinds not used, for a later
  cycle (too close to the end for their kind, or the run finished first)."""
  rep = s.rep
  shutil.rmtree(faulted, ignore_errors=True)
  resume_at, pending = 0, None   # pending: (kind, last step) of the previous interruption
  for i, kind in enumerate(this + [None]):
    left: list[str] = []
    if kind is not None and not _room_for(s.program, kind, resume_at):
      left, kind = this[i:], None
    run = _Run(s.program, faulted, _env(s.write_delay if kind == "checkpoint" else 0.0))
    interrupted, window, target = False, 0, 0
    if kind is not None:
      target = _target(s.program, kind, resume_at, s.rng)
      aimed = _aim(s, run)
      interrupted, window = _interrupt(run, kind, target, s.rng, s.timeout, s.step_seconds)
      if interrupted and aimed:
        rep.targets[f"{kind}: {aimed}"] = rep.targets.get(f"{kind}: {aimed}", 0) + 1
    status = run.drain(s.timeout)
    if pending is not None:   # did this run resume where the interruption left it?
      _check_resume(s, run, resume_at, *pending)
    if kind is None or not interrupted:
      if kind is not None:   # it finished first: try the rest in a later cycle
        rep.missed += 1
        left = this[i:]
      if status != 0:
        rep.failures.append(f"cycle {rep.cycles}: run ended with status {status}:\n"
                            + "\n".join(run.log[-30:]))
      return left
    resume_at, last = _record_interruption(s, run, kind, status, window, target, faulted)
    pending = (kind, last)
  raise AssertionError("unreachable: the last entry (None) always ends the cycle")


def _compare_cycle(s: _Soak, ref: str, faulted: str) -> bool:
  """Compares a cycle's finished run with the reference (a failure unless bit-identical).
  False: the run left no results.json (nothing to compare)."""
  rep = s.rep
  if not os.path.exists(os.path.join(faulted, "results.json")):
    rep.failures.append(f"cycle {rep.cycles}: no results.json")
    return False
  diff = differences(s.program, ref, faulted)
  if diff:
    rep.failures.append(f"cycle {rep.cycles}: differs from the reference: {diff}")
  else:
    rep.cycles_identical += 1
  s.log(f"{s.program.name} cycle {rep.cycles}: finished, "
        f"{'identical to' if not diff else 'DIFFERS from'} the reference; kills so far {rep.kills}")
  return True


def run_soak(program: Program, workdir: str, kills: dict[str, int], *, seed: int = 0,
             write_delay: float = 1.0, timeout: float = 300.0, per_cycle: int | None = None,
             log: Callable[[str], None] = print,
             on_cycle: Callable[[Report], None] | None = None) -> Report:
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
  step_seconds = _reference_run(program, ref, timeout)
  log(f"{program.name}: reference run done ({program.num_steps} steps, "
      f"{step_seconds * 1e3:.0f} ms per step)")
  s = _Soak(program, rep, rng, step_seconds, write_delay, timeout, log)
  plan = [k for k in KINDS for _ in range(kills.get(k, 0))]
  rng.shuffle(plan)
  per_cycle = per_cycle or max(1, program.num_steps // program.checkpoint_every - 2)
  faulted = os.path.join(workdir, "faulted")
  while plan and not rep.failures:
    rep.cycles += 1
    this, plan = plan[:per_cycle], plan[per_cycle:]
    plan = _run_cycle(s, faulted, this) + plan
    if rep.failures or not _compare_cycle(s, ref, faulted):
      break
    rep.seconds = time.monotonic() - t0
    if on_cycle is not None:
      on_cycle(rep)
  rep.seconds = time.monotonic() - t0
  return rep


def report_dict(rep: Report) -> dict[str, Any]:
  """``rep`` as JSON-ready data, with ``ok``."""
  d = dataclasses.asdict(rep)
  d["ok"] = rep.ok
  return d
