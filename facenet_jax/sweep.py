"""Sweeps: many runs of one config, one directory per point, and their index ``sweep.json``.

A sweep is a list of points, each a dict of dotted config overrides (``{"margin": 0.2,
"seed": 1}``; build grids with ``infra.overrides.product / zipped / chain / cross``). Point
``p`` of a sweep rooted at ``ROOT`` trains into ``ROOT/<point_name(p)>/`` with
``train.train_and_evaluate`` (``train.run_sweep_point``), so it resumes from its checkpoints and is done once its
``results.json`` exists. ``ROOT/sweep.json``:

  {"kind", "config", ..., "points": [{"name", "overrides", "workdir", "status", "step",
                                      "metrics", "error"?}, ...]}

``status`` is ``done`` (results.json), ``partial`` (checkpoints up to ``step``),
``pending`` or ``failed`` (with the error). A point directory that is itself a sweep (a
vmapped ``margins`` run writes its own sweep.json) is expanded by :func:`collect_runs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from facenet_jax import evaluators
from infra import files, overrides
from infra.errors import MissingFileError, UserError

INDEX = "sweep.json"
RESULTS = "results.json"


class SweepError(UserError, ValueError):
  """A sweep that cannot run as asked: its root indexes another sweep, flags that contradict
  each other, a job script that would replace another one (the message names which)."""


def named_points(points: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
  """``[(point_name, overrides)]``; two points with the same name are an error."""
  out, seen = [], {}
  for p in points:
    name = overrides.point_name(p)
    if name in seen:
      raise ValueError(f"sweep points {seen[name]} and {dict(p)} share the directory name {name!r}")
    seen[name] = dict(p)
    out.append((name, dict(p)))
  return out


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of ``workdir/checkpoints``, sorted (read from the folder names)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _margins_of(workdir: str, point: Mapping[str, Any] | None = None) -> list[float]:
  """The margins of a K-margin run in ``workdir``: its point's ``margins`` override, else its
  config.json's (a run not started yet, or a single model: [])."""
  margins = list((point or {}).get("margins") or ())
  cfg = os.path.join(workdir, "config.json")
  if not margins and os.path.exists(cfg):
    margins = list(files.read_json(cfg).get("margins") or ())
  return margins


def _member_steps(workdir: str) -> list[int]:
  """The steps every member of the K-margin run in ``workdir`` has checkpointed (its members
  keep them in ``margin=<a>/checkpoints``; it resumes from the latest of these)."""
  margins = _margins_of(workdir)
  if not margins:
    return []
  common = set.intersection(*(set(checkpoint_steps(os.path.join(workdir, _member_name(m))))
                              for m in margins))
  return sorted(common)


def _results_at_config_steps(workdir: str, results: dict) -> bool:
  """Whether ``results`` are of the ``num_steps`` of the run's config.json: a continuation
  with more steps that stopped before its end (older code left its old results in place)
  is a partial point, not a done one."""
  cfg = os.path.join(workdir, "config.json")
  want = files.read_json(cfg).get("num_steps") if os.path.exists(cfg) else None
  return want is None or results.get("step") == want


def _member_name(margin: float) -> str:
  # members.member_name, without importing the training code into every reader of a sweep
  return overrides.point_name({"margin": float(margin)})


def point_status(workdir: str) -> dict[str, Any]:
  """``{status, step, metrics}`` of one point directory (metrics: flat final metrics; a
  K-margin run also gives its ``margins``, the order of its members)."""
  res = os.path.join(workdir, RESULTS)
  if os.path.exists(res) and _results_at_config_steps(workdir, files.read_json(res)):
    r = files.read_json(res)
    if "evals" in r:
      return {"status": "done", "step": r.get("step"), "metrics": evaluators.flatten(r["evals"])}
    # a vmapped margins run: its members' pair metrics, in the run's margins order (results.json
    # keeps its keys sorted: margin=0.5, margin=10, margin=2), and that order itself
    members = r.get("members", {})
    order = [n for n in (_member_name(m) for m in r.get("margins", ())) if n in members]
    order += [n for n in members if n not in order]
    metrics = {f"{n}/{k}": v for n in order for k, v in members[n].items()}
    return {"status": "done", "step": r.get("step"), "metrics": metrics,
            "margins": list(r.get("margins", ()))}
  # a K-margin run's checkpoints are its members' (it was "pending", with no step, until done)
  steps = checkpoint_steps(workdir) or _member_steps(workdir)
  if steps:
    return {"status": "partial", "step": steps[-1], "metrics": {}}
  return {"status": "pending", "step": None, "metrics": {}}


def write_index(root: str, points: Sequence[Mapping[str, Any]], *, header: Mapping | None = None,
                errors: Mapping[str, str] | None = None) -> dict:
  """Scans every point's directory and writes ``root/sweep.json`` (atomically); returns it."""
  entries = []
  for name, ov in named_points(points):
    e = {"name": name, "overrides": ov, "workdir": name, **point_status(os.path.join(root, name))}
    if errors and name in errors and e["status"] != "done":
      e.update(status="failed", error=errors[name])
    entries.append(e)
  index = dict(header or {}, points=entries)
  files.write_json_atomic(os.path.join(root, INDEX), index)
  return index


def update_index(root: str, points: Sequence[Mapping[str, Any]], *, header: Mapping[str, Any],
                 errors: Mapping[str, str], runs_here: Sequence[str]) -> dict:
  """:func:`write_index` with this process's ``errors`` and the failures other processes (the
  other tasks of an array job) recorded for points not in ``runs_here``, read and written under
  one lock (``root/.sweep.lock``): a failure another task wrote between this one's read and
  its write was lost."""
  os.makedirs(root, exist_ok=True)
  with files.waiting_lock(os.path.join(root, ".sweep.lock")):
    known = {**recorded_failures(root, skip=runs_here), **errors}
    return write_index(root, points, header=header, errors=known)


def check_same_sweep(root: str, header: Mapping[str, Any]) -> None:
  """Raises SweepError (a ValueError) when ``root/sweep.json`` is the index of another
  sweep (other ``sweep``, ``config_file`` or ``base_overrides``): writing this one's index
  replaced it, and the other sweep's points, still on disk, were no longer listed."""
  try:
    was = files.read_json(os.path.join(root, INDEX))
  except (OSError, ValueError):
    return   # none yet (or unreadable: rewritten from the point folders)
  if not isinstance(was, dict):
    return
  keys = ("kind", "sweep", "config_file", "base_overrides")
  diff = [k for k in keys if k in was and _comparable(k, was.get(k)) != _comparable(k, header.get(k))]
  if diff:
    raise SweepError(f"{os.path.join(root, INDEX)} indexes another sweep ("
                     + "; ".join(f"{k}: {was.get(k)!r} there, {header.get(k)!r} now" for k in diff)
                     + "); use another --workdir for this one")


def config_file_arg(config_arg: str) -> str:
  """``--config``'s value with its file made absolute (against the current directory):
  ``configs/facenet.py:tiny`` -> ``/repo/configs/facenet.py:tiny``. ml_collections splits
  the variant off at the first colon, so this does too."""
  path, colon, variant = config_arg.partition(":")
  return os.path.abspath(path) + colon + variant   # as ml_collections opens it: no ~ expansion


def _comparable(key: str, value: Any) -> Any:
  """``value`` of a sweep.json header field as it compares: as JSON (base overrides of a tuple
  field, ``model.widths=(4, 8)``, came back from the file as a list, and every later run and
  array task of that sweep was refused as "another sweep"), and a config file by the file it
  names (an older index recorded ``--config`` as given, relative to the directory sweep.py
  ran from; the array tasks run from that directory too, with the path made absolute)."""
  if key == "config_file" and isinstance(value, str):
    path, colon, variant = config_file_arg(value).partition(":")
    return os.path.realpath(path) + colon + variant
  return json.loads(json.dumps(value, sort_keys=True, default=str))   # tuples -> lists


def recorded_failures(root: str, skip: Sequence[str] = ()) -> dict[str, str]:
  """``{point name: error}`` of the points ``root/sweep.json`` records as failed, but those in
  ``skip`` (the points this process runs again). An array job's task runs one point and
  rewrites the index: without these it erased the other tasks' failures, which then showed as
  partial points (or nothing readable: ``{}``)."""
  try:
    points = files.read_json(os.path.join(root, INDEX)).get("points", [])
  except (OSError, ValueError, AttributeError):
    return {}
  return {p["name"]: p.get("error", "failed") for p in points
          if isinstance(p, dict) and p.get("status") == "failed" and p.get("name") not in skip}


def read_index(root: str) -> dict:
  path = os.path.join(root, INDEX)
  if not os.path.exists(path):
    raise MissingFileError(f"{path} not found: is {root!r} a sweep root written by "
                           "scripts/sweep.py or a config.margins run?")
  return files.read_json(path)


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished or unfinished run of a sweep (nested sweeps flattened). ``step``: the
  results' step when done, the last checkpoint's when partial or failed (None: none);
  ``error``: why a failed run failed, as scripts/sweep.py recorded it in sweep.json."""
  name: str
  overrides: dict[str, Any]
  workdir: str
  status: str
  step: int | None = None
  error: str | None = None


def _with_recorded_failure(status: dict[str, Any], entry: Mapping[str, Any]) -> tuple[str, str | None]:
  """The status of a point from its directory, unless sweep.json records it failed and it has
  not finished since: the disk alone makes a point that died of a NaN loss look 'partial', as
  if it were still to be resumed, and loses the error."""
  if status["status"] != "done" and entry.get("status") == "failed":
    return "failed", entry.get("error")
  return status["status"], None


def collect_runs(root: str) -> list[Run]:
  """Every run under ``root``'s sweep.json, expanding points that are sweeps themselves
  (their overrides merged: ``{"miner": "batch_hard"}`` + ``{"margin": 0.2}``)."""
  out = []
  for p in read_index(root)["points"]:
    wd = os.path.join(root, p["workdir"])
    if os.path.exists(os.path.join(wd, INDEX)):
      for r in collect_runs(wd):
        merged = {k: v for k, v in p["overrides"].items() if k != "margins"}
        merged.update(r.overrides)
        status, error = _with_recorded_failure({"status": r.status}, p)
        out.append(dataclasses.replace(r, name=f"{p['name']}/{r.name}", overrides=merged,
                                       status=status, error=error or r.error))
    elif _margins_of(wd, p["overrides"]):   # an unfinished K-margin run: a row per member
      rest = {k: v for k, v in p["overrides"].items() if k != "margins"}
      for m in _margins_of(wd, p["overrides"]):
        name, mwd = _member_name(m), os.path.join(wd, _member_name(m))
        st = point_status(mwd)
        status, error = _with_recorded_failure(st, p)
        out.append(Run(f"{p['name']}/{name}", {**rest, "margin": float(m)}, mwd, status,
                       st["step"], error))
    else:
      st = point_status(wd)
      status, error = _with_recorded_failure(st, p)
      out.append(Run(p["name"], dict(p["overrides"]), wd, status, st["step"], error))
  return out


def swept_fields(points: Sequence[Mapping[str, Any]]) -> list[str]:
  """The override keys whose value is not the same in every point (in first-seen order)."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  missing = object()
  return [k for k in keys
          if len({repr(p.get(k, missing)) for p in points}) > 1]
