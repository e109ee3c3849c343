"""Fault-injection soak: kill training and style runs at random moments, restart them until
they finish, and check that they end bit-identical to uninterrupted runs (tests/fault_inject.py).

  .venv/bin/python tests/soak.py --kills=50                 # 50 of each kind, both programs
  .venv/bin/python tests/soak.py --kills=3 --programs=train --kinds=step,checkpoint
  .venv/bin/python tests/soak.py --processes=2 --programs=train --kills=5   # 2-process runs

Kinds: ``step`` (SIGKILL during a step), ``checkpoint`` (SIGKILL inside a checkpoint write,
widened by $INFRA_CHECKPOINT_WRITE_DELAY), ``sigterm`` / ``sigint`` (preemption: checkpoint
and exit). Writes ``<out>/report.json``; exits 1 if any check failed.

``--processes=2``: every run is a 2-process run (1 CPU device each, gloo over loopback) and
each interruption reaches one process chosen at random or both: a SIGKILLed process must
take the other down with it (non-zero, within the heartbeat), a SIGTERM / SIGINT to one
must stop both at the same checkpointed step; the finished run must equal an uninterrupted
2-process run bit for bit.

It lives beside fault_inject.py in tests/ (run as a file, its folder is on the path) and is
not a test itself: pytest collects only ``test_*.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading

import fault_inject
from infra.files import write_json_atomic

PROGRAMS = ("train", "style")


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], list[str]]:
  """The flags, the kinds of interruption and the programs (both checked)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=50, help="interruptions of each kind per program")
  p.add_argument("--kinds", default="step,checkpoint,sigterm,sigint")
  p.add_argument("--programs", default="train,style")
  p.add_argument("--out", default=os.path.join(fault_inject.ROOT, "runs", "soak"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--processes", type=int, default=1, help="processes per run (train only)")
  p.add_argument("--write_delay", type=float, default=1.0,
                 help="seconds the checkpoint write is held open for 'checkpoint' kills")
  args = p.parse_args(argv)
  kinds = [k for k in args.kinds.split(",") if k]
  bad = sorted(set(kinds) - set(fault_inject.KINDS))
  if bad:
    p.error(f"--kinds: unknown {bad}; expected some of {fault_inject.KINDS}")
  names = args.programs.split(",")
  unknown = sorted(set(names) - set(PROGRAMS))
  if unknown:
    p.error(f"--programs: unknown {unknown}; expected some of {sorted(PROGRAMS)}")
  if args.processes < 1 or (args.processes > 1 and names != ["train"]):
    p.error("--processes: a positive count; more than 1 only with --programs=train")
  return args, kinds, names


def _program(name: str, out: str, processes: int = 1) -> fault_inject.Program:
  """The program ``name`` (one of PROGRAMS) run as ``processes`` processes; the style
  inputs are written under ``out``."""
  if name == "train":
    return fault_inject.facenet_program(processes=processes)
  return fault_inject.style_program(os.path.join(out, "style_inputs"))


def _git(*argv: str) -> str:
  """The output of a git command in the repository (its state goes into the report)."""
  return subprocess.run(["git", *argv], cwd=fault_inject.ROOT, capture_output=True,
                        text=True).stdout.strip()


def _summary(name: str, rep: fault_inject.Report) -> str:
  """One line of what the soak of ``name`` found."""
  return (f"{name}: kills {rep.kills}, resumes ok {rep.resumes_ok} (failed {rep.resumes_failed}), "
          f"most steps lost {rep.max_steps_lost} (by kind {rep.steps_lost}), corrupt checkpoints "
          f"{rep.corrupt_checkpoints}, cycles identical {rep.cycles_identical}/{rep.cycles}, "
          + (f"targets {rep.targets}, " if rep.targets else "") +
          f"{rep.seconds:.0f} s{'' if rep.ok else ', FAILED: ' + json.dumps(rep.failures[:3])}")


def main(argv: list[str] | None = None) -> int:
  args, kinds, names = _parse_args(argv)
  commit = _git("rev-parse", "--short", "HEAD")
  dirty = _git("status", "--porcelain", "--untracked-files=no")
  report = {"commit": commit, "worktree_modified": bool(dirty), "seed": args.seed,
            "processes": args.processes,
            "kills_requested": {k: args.kills for k in kinds}, "programs": {}}
  report["complete"] = False
  path = os.path.join(args.out, "report.json")
  lock = threading.Lock()

  def progress(rep):   # report.json after every cycle: a long soak stopped early still counts
    with lock:
      report["programs"][rep.program] = fault_inject.report_dict(rep)
      write_json_atomic(path, report)

  def soak(name):   # the programs run side by side (each run is one process on its own core)
    return fault_inject.run_soak(_program(name, args.out, args.processes),
                                 os.path.join(args.out, name),
                                 {k: args.kills for k in kinds}, seed=args.seed,
                                 write_delay=args.write_delay,
                                 log=lambda msg: print(msg, flush=True), on_cycle=progress)
  with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
    reps = dict(zip(names, pool.map(soak, names)))
  ok = True
  report["complete"] = True
  for name, rep in reps.items():
    report["programs"][name] = fault_inject.report_dict(rep)
    ok &= rep.ok
    write_json_atomic(path, report)
    print(_summary(name, rep), flush=True)
  print(f"report: {path} (commit {commit})")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
