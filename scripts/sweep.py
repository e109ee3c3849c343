"""Run every point of a sweep of ``configs/sweeps.py``, one directory per point.

  # all points, one after another (skips finished points, resumes half-finished ones)
  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=runs/orl_margin \
      --config.num_steps=300
  # one command per point, for any scheduler; or a SLURM array-job script
  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=ROOT --dry_run
  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=ROOT --emit=slurm
  # what one of those commands runs: point 3 only
  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=ROOT --index=3

``configs/sweeps.py``'s ``sweep(name)`` returns the points (dicts of dotted overrides) applied
to the ``--config`` variant; ``--config.x=y`` flags apply to every point. Point ``p`` trains into
``ROOT/<name of p>/`` (e.g. ``ROOT/margin=0.2``); ``ROOT/sweep.json`` lists every point with
its status (done / partial / pending / failed) and final metrics, rewritten after each
point. Under ``srun`` with several tasks, or with ``JAX_COORDINATOR_ADDRESS`` set, each
point runs multi-host through ``jax.distributed`` (infra/distributed.py); only process 0
writes files.
"""

import os
import shlex
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

from absl import flags
from ml_collections import config_flags

from configs import sweeps as config_sweeps
from infra import cli
from infra.distributed import maybe_initialize

_CONFIG = config_flags.DEFINE_config_file("config", "configs/facenet.py", "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: one directory per point, sweep.json.",
                               required=True)
_SWEEP = flags.DEFINE_string("sweep", "margin", "A sweep of configs/sweeps.py (SWEEPS).")
_INDEX = flags.DEFINE_integer("index", -1, "Run only this point (0-based; -1: all).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one command per point and exit.")
_EMIT = flags.DEFINE_enum("emit", "", ["", "slurm"], "Write ROOT/sweep.slurm (an array job) and exit.")
_SLURM = flags.DEFINE_list("slurm_options", [], "Extra #SBATCH options, e.g. --gres=gpu:1,--time=4:00:00.")
# an entry that is blank (a comma too many) or not an option became a '#SBATCH ' line sbatch
# ignores or rejects, found only when the job was submitted
flags.register_validator("slurm_options", lambda opts: all(o.strip().startswith("-") for o in opts),
                         "every entry must be an #SBATCH option starting with '-' (e.g. "
                         "--time=4:00:00); an empty one is a comma too many")


def load_points(name: str) -> list[dict]:
  """The points of ``configs/sweeps.py``'s ``sweep(name)``; SystemExit for an unknown name."""
  try:
    return list(config_sweeps.sweep(name))
  except ValueError as e:
    raise SystemExit(f"--sweep={name}: {e}") from e


def point_command(config_arg: str, base: dict, index: int) -> str:
  """The shell command that runs point ``index`` of this sweep (with the same overrides)."""
  from infra.overrides import to_flags
  args = [sys.executable, os.path.join("scripts", "sweep.py"), f"--config={config_arg}",
          f"--sweep={_SWEEP.value}", f"--workdir={os.path.abspath(_WORKDIR.value)}",
          f"--index={index}", *to_flags(base)]
  return " ".join(shlex.quote(a) for a in args)


def slurm_script(config_arg: str, base: dict, n: int) -> str:
  """An array job: task ``$SLURM_ARRAY_TASK_ID`` runs that point."""
  root = os.path.abspath(_WORKDIR.value)
  cmd = point_command(config_arg, base, 0).replace("--index=0", "--index=$SLURM_ARRAY_TASK_ID")
  lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{_SWEEP.value}", f"#SBATCH --array=0-{n - 1}",
           f"#SBATCH --output={root}/slurm-%A_%a.out"]
  lines += [f"#SBATCH {o}" for o in _SLURM.value]
  lines += [f"cd {shlex.quote(os.path.abspath(REPO))}", f"srun {cmd}", ""]
  return "\n".join(lines)


def _member_name(margin: float) -> str:
  from infra.overrides import point_name
  return point_name({"margin": float(margin)})   # a K-margin member's name (members.member_name)


def accuracy_cell(entry: dict) -> str:
  """A point's verification accuracies, each named by what it is of when there are several:
  a K-margin run's members in the run's margins order (``margin=0.5: 0.7000, margin=2: ...``;
  unnamed, in the sorted order of sweep.json's keys, they read as the wrong margins)."""
  suffix = "verification_accuracy"
  acc = {k[:-len(suffix)].rstrip("/"): v for k, v in entry["metrics"].items() if k.endswith(suffix)}
  if not acc:
    return "-"
  if "margins" in entry:
    order = {_member_name(m): i for i, m in enumerate(entry["margins"])}
    acc = dict(sorted(acc.items(), key=lambda kv: order.get(kv[0].split("/")[0], len(order))))
  elif len(acc) == 1:
    return f"{next(iter(acc.values())):.4f}"
  return ", ".join(f"{k}: {v:.4f}" for k, v in acc.items())


def index_table(index: dict) -> str:
  """The markdown table of sweep.json printed at the end: a partial or failed point's step is
  its last checkpoint's, and a failed point's error is in its status cell."""
  lines = ["| point | status | step | verification accuracy |", "|---|---|---|---|"]
  for p in index["points"]:
    status = f"failed: {p.get('error', '?')}" if p["status"] == "failed" else p["status"]
    step = "-" if p["step"] is None else (
        str(p["step"]) if p["status"] == "done" else f"{p['step']} (last checkpoint)")
    lines.append(f"| {p['name']} | {status.replace('|', '/')} | {step} | {accuracy_cell(p)} |")
  return "\n".join(lines)


def main(argv):
  del argv
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  base = config_flags.get_override_values(flags.FLAGS["config"])
  points = load_points(_SWEEP.value)
  from facenet_jax import sweep
  both = sorted({k for p in points for k in p} & set(base))
  if both:   # the point's value won: every run ignored the flag, exit 0
    raise SystemExit(f"--config.{both[0]}={base[both[0]]}: the sweep {_SWEEP.value!r} sets "
                     f"{', '.join(both)} at every point, so the flag would be ignored; drop it, "
                     f"or sweep another field")
  named = sweep.named_points(points)
  root = _WORKDIR.value
  if not 0 <= _INDEX.value < len(named) and _INDEX.value != -1:
    raise SystemExit(f"--index={_INDEX.value}: this sweep has points 0..{len(named) - 1}")
  todo = range(len(named)) if _INDEX.value < 0 else [_INDEX.value]
  from facenet_jax import config_usage, workdir as workdir_lib
  from facenet_jax.config_checks import ConfigError, check_config
  from infra.overrides import with_overrides
  for i in todo:   # every point's config before one runs, is printed or goes into a job
    name, point = named[i]
    try:
      check_config(with_overrides(_CONFIG.value, point))
      config_usage.check_settings_read(with_overrides(_CONFIG.value, point), os.path.join(root, name))
    except ConfigError as e:
      raise SystemExit(f"sweep point {name}: {e}") from None
    # a point folder holding a run of another config (another base flag, a changed sweep):
    # refused before any point runs (its old results were reported as this sweep's)
    workdir_lib.check_continuation(with_overrides(_CONFIG.value, point), os.path.join(root, name))
  if _DRY_RUN.value:
    for i in todo:
      print(point_command(config_arg, base, i))
    return
  if _EMIT.value == "slurm":
    path = os.path.join(root, "sweep.slurm")
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
      f.write(slurm_script(config_arg, base, len(named)))
    print(f"wrote {path}: sbatch {path}  ({len(named)} array tasks)")
    return

  maybe_initialize()
  import jax
  from facenet_jax import train
  from infra.errors import NonFiniteLossError
  lead = jax.process_index() == 0
  header = {"kind": "sweep", "config_file": config_arg, "sweep": _SWEEP.value,
            "base_overrides": base}
  try:   # before any point trains: this root may hold another sweep's index
    sweep.check_same_sweep(root, header)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  errors: dict[str, str] = {}
  mine = [named[i][0] for i in todo]
  # other points' recorded failures (other array tasks), read again before each write
  known = lambda: {**sweep.recorded_failures(root, skip=mine), **errors}
  if lead:
    sweep.write_index(root, points, header=header, errors=known())
  for i in todo:
    name, point = named[i]
    try:
      train.run_sweep_point(_CONFIG.value, point, root)
    except (NonFiniteLossError, ValueError) as e:   # this point's fault: record it, go on
      errors[name] = f"{type(e).__name__}: {e}"
      print(f"{name}: FAILED: {errors[name]}", flush=True)
    if lead:
      sweep.write_index(root, points, header=header, errors=known())
  index = sweep.write_index(root, points, header=header, errors=known()) if lead else None
  if index:
    print(f"\n{os.path.join(root, sweep.INDEX)}:")
    print(index_table(index))
  if errors:
    raise SystemExit(f"{len(errors)} point(s) failed: {sorted(errors)}")


if __name__ == "__main__":
  cli.run(main)
