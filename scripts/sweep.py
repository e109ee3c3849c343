"""Run every point of a sweep of ``configs/sweeps.py``, one directory per point.

  # all points, one after another (skips finished points, resumes half-finished ones)
  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=runs/orl_margin \
      --config.num_steps=300
  # one command per point, for any scheduler; or a SLURM array-job script (ROOT/sweep.slurm)
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

``--dry_run`` and ``--emit=slurm`` run every check a point's run makes before it trains (the
config, the point folders, a ``sweep.json`` of another sweep) and write nothing when one
fails. Their commands run from the directory sweep.py was run from (``cd DIR && ...``; the
job script ``cd``s there), with the script, ``--config`` file and ``--workdir`` absolute:
relative paths, in ``--config.x=y`` flags or in the config file, mean what they meant here
(a flag's value is kept as given: it is recorded in each point's config.json, which a
resumed point must match).
"""

import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from configs import sweeps as config_sweeps
from infra import cli
from infra.distributed import maybe_initialize

_CONFIG = config_flags.DEFINE_config_file("config", "configs/facenet.py", "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: one directory per point, sweep.json.",
                               required=True)
_SWEEP = flags.DEFINE_string("sweep", "margin", "A sweep of configs/sweeps.py (SWEEPS).")
_INDEX = flags.DEFINE_integer("index", -1, "Run only this point (0-based; -1: all); with "
                               "--dry_run, print only its command. Not with --emit.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one command per point (run from any "
                             "directory) and exit. Not with --emit.")
_EMIT = flags.DEFINE_enum("emit", "", ["", "slurm"], "Write ROOT/sweep.slurm (an array job, "
                          "one task per point) and exit. An existing sweep.slurm is left as it "
                          "is: the same script again is not rewritten, another one (edited, or "
                          "of other flags) is refused; remove or rename it to write a new one.")
_SLURM = flags.DEFINE_list("slurm_options", [], "Extra #SBATCH options, e.g. "
                           "--gres=gpu:1,--time=4:00:00 (with --emit=slurm).")
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


def check_modes() -> None:
  """Refuses flags that would be ignored: ``--emit`` writes a job of every point (an
  ``--index`` was dropped) and ``--dry_run`` printed commands in place of the job script."""
  from facenet_jax.sweep import SweepError
  if _EMIT.value and _DRY_RUN.value:
    raise SweepError(f"--dry_run --emit={_EMIT.value}: give one of them (--dry_run prints the "
                     "commands, --emit writes the job script)")
  if _EMIT.value and _INDEX.value != -1:
    raise SweepError(f"--index={_INDEX.value} --emit={_EMIT.value}: the job script runs every "
                     "point, one array task each; drop --index (or use --dry_run --index=N for "
                     "one point's command)")
  if _SLURM.value and _EMIT.value != "slurm":
    raise SweepError(f"--slurm_options={','.join(_SLURM.value)}: only used with --emit=slurm")


def _point_args(config_arg: str, base: dict) -> list[str]:
  """The command of a point but its ``--index``, every path in it absolute (``--config``'s
  relative file failed in the job script, which cd's elsewhere: No such file or directory)."""
  from facenet_jax.sweep import config_file_arg
  from infra.overrides import to_flags
  return [sys.executable, os.path.abspath(__file__), f"--config={config_file_arg(config_arg)}",
          f"--sweep={_SWEEP.value}", f"--workdir={os.path.abspath(_WORKDIR.value)}",
          *to_flags(base)]


def point_command(config_arg: str, base: dict, index: int) -> str:
  """The shell command that runs point ``index`` of this sweep (with the same overrides),
  from any directory: it cd's to this one, where relative paths in the overrides and the
  config file mean what they meant here."""
  args = _point_args(config_arg, base) + [f"--index={index}"]
  return f"cd {shlex.quote(os.getcwd())} && " + " ".join(shlex.quote(a) for a in args)


def slurm_script(config_arg: str, base: dict, n: int) -> str:
  """An array job: task ``$SLURM_ARRAY_TASK_ID`` runs that point, from this directory."""
  root = os.path.abspath(_WORKDIR.value)
  # the task id unquoted, for the shell to expand (a str.replace on the quoted command also
  # rewrote an override value holding "--index=0")
  cmd = " ".join(shlex.quote(a) for a in _point_args(config_arg, base))
  lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{_SWEEP.value}", f"#SBATCH --array=0-{n - 1}",
           f"#SBATCH --output={root}/slurm-%A_%a.out"]
  lines += [f"#SBATCH {o}" for o in _SLURM.value]
  lines += [f"cd {shlex.quote(os.getcwd())}", f"srun {cmd} --index=$SLURM_ARRAY_TASK_ID", ""]
  return "\n".join(lines)


def check_slurm_file(path: str, text: str) -> bool:
  """Whether ``path`` must be written: False when it holds ``text`` already. Raises
  SweepError when it holds something else (a user's edits, a job of other flags: it was
  overwritten, exit 0)."""
  from facenet_jax.sweep import SweepError
  if not os.path.lexists(path):
    return True
  if not os.path.isfile(path):
    raise SweepError(f"--emit=slurm: {path} exists and is not a file; remove or rename it")
  with open(path) as f:
    if f.read() == text:
      return False
  raise SweepError(f"--emit=slurm: {path} exists and differs from the job script this command "
                   "writes (edited, or written for other flags); remove or rename it to write "
                   "this one, or submit it as it is")


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
  check_modes()
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
  # the config file as the array tasks and printed commands give it (absolute), so their
  # headers equal this one
  header = {"kind": "sweep", "config_file": sweep.config_file_arg(config_arg),
            "sweep": _SWEEP.value, "base_overrides": base}
  # before any point trains, a command is printed or a job written (each of its tasks was
  # refused on the cluster): this root may hold another sweep's index
  sweep.check_same_sweep(root, header)
  if _DRY_RUN.value:
    for i in todo:
      print(point_command(config_arg, base, i))
    return
  if _EMIT.value == "slurm":
    from infra import files
    path = os.path.join(root, "sweep.slurm")
    files.check_directory(root, "--workdir")
    text = slurm_script(config_arg, base, len(named))
    if check_slurm_file(path, text):
      files.write_text_atomic(path, text)
      print(f"wrote {path}: sbatch {shlex.quote(path)}  ({len(named)} array tasks)")
    else:
      print(f"{path} is this job script already (unchanged): sbatch {shlex.quote(path)}  "
            f"({len(named)} array tasks)")
    return

  maybe_initialize()
  import jax
  from facenet_jax import train
  from infra.errors import NonFiniteLossError
  lead = jax.process_index() == 0
  errors: dict[str, str] = {}
  mine = [named[i][0] for i in todo]
  # with other points' recorded failures (other array tasks), read again at each write
  update = lambda: sweep.update_index(root, points, header=header, errors=errors, runs_here=mine)
  if lead:
    update()
  for i in todo:
    name, point = named[i]
    try:
      train.run_sweep_point(_CONFIG.value, point, root)
    except (NonFiniteLossError, ValueError) as e:   # this point's fault: record it, go on
      errors[name] = f"{type(e).__name__}: {e}"
      print(f"{name}: FAILED: {errors[name]}", flush=True)
    if lead:
      update()
  index = update() if lead else None
  if index:
    print(f"\n{os.path.join(root, sweep.INDEX)}:")
    print(index_table(index))
  if errors:
    raise SystemExit(f"{len(errors)} point(s) failed: {sorted(errors)}")


if __name__ == "__main__":
  cli.run(main)
