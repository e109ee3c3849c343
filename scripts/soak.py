"""Fault-injection soak: kill training and style runs at random moments, restart them until
they finish, and check that they end bit-identical to uninterrupted runs (infra/fault_inject.py).

  .venv/bin/python scripts/soak.py --kills=50                 # 50 of each kind, both programs
  .venv/bin/python scripts/soak.py --kills=3 --programs=train --kinds=step,checkpoint

Kinds: ``step`` (SIGKILL during a step), ``checkpoint`` (SIGKILL inside a checkpoint write,
widened by $INFRA_CHECKPOINT_WRITE_DELAY), ``sigterm`` / ``sigint`` (preemption: checkpoint
and exit). Writes ``<out>/report.json``; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading

from infra import fault_inject
from infra.files import write_json_atomic


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=50, help="interruptions of each kind per program")
  p.add_argument("--kinds", default="step,checkpoint,sigterm,sigint")
  p.add_argument("--programs", default="train,style")
  p.add_argument("--out", default=os.path.join(fault_inject.ROOT, "runs", "soak"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--write_delay", type=float, default=1.0,
                 help="seconds the checkpoint write is held open for 'checkpoint' kills")
  args = p.parse_args(argv)
  kinds = [k for k in args.kinds.split(",") if k]
  bad = sorted(set(kinds) - set(fault_inject.KINDS))
  if bad:
    p.error(f"--kinds: unknown {bad}; expected some of {fault_inject.KINDS}")
  programs = {"train": lambda: fault_inject.facenet_program(),
              "style": lambda: fault_inject.style_program(os.path.join(args.out, "style_inputs"))}
  unknown = sorted(set(args.programs.split(",")) - set(programs))
  if unknown:
    p.error(f"--programs: unknown {unknown}; expected some of {sorted(programs)}")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=fault_inject.ROOT,
                          capture_output=True, text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                         cwd=fault_inject.ROOT, capture_output=True, text=True).stdout.strip()
  report = {"commit": commit, "worktree_modified": bool(dirty), "seed": args.seed,
            "kills_requested": {k: args.kills for k in kinds}, "programs": {}}
  names = args.programs.split(",")
  report["complete"] = False
  lock = threading.Lock()

  def progress(rep):   # report.json after every cycle: a long soak stopped early still counts
    with lock:
      report["programs"][rep.program] = fault_inject.report_dict(rep)
      write_json_atomic(os.path.join(args.out, "report.json"), report)

  def soak(name):   # the programs run side by side (each run is one process on its own core)
    return fault_inject.run_soak(programs[name](), os.path.join(args.out, name),
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
    write_json_atomic(os.path.join(args.out, "report.json"), report)
    print(f"{name}: kills {rep.kills}, resumes ok {rep.resumes_ok} (failed {rep.resumes_failed}), "
          f"most steps lost {rep.max_steps_lost} (by kind {rep.steps_lost}), corrupt checkpoints "
          f"{rep.corrupt_checkpoints}, cycles identical {rep.cycles_identical}/{rep.cycles}, "
          f"{rep.seconds:.0f} s{'' if rep.ok else ', FAILED: ' + json.dumps(rep.failures[:3])}",
          flush=True)
  print(f"report: {os.path.join(args.out, 'report.json')} (commit {commit})")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
