"""Train one run per value of a config field and report every metric as mean +- std.

  # LFW View 2: ten models, each trained on nine folds and tested on the tenth
  python scripts/cross_validate.py --config=configs/facenet.py:lfw_vgg --workdir=runs/lfw_vgg \
      --field=data.test_fold --values=0,1,2,3,4,5,6,7,8,9
  # ORL one-shot over five splits of the people
  python scripts/cross_validate.py --config=configs/facenet.py:orl --workdir=runs/orl \
      --field=data.split_seed --values=0,1,2,3,4

Each run lives in ``<workdir>/<field>=<value>`` and resumes (or is skipped when it has
``results.json``), so a killed cross-validation continues where it stopped. Writes
``<workdir>/summary.json`` (per-run and mean/std of every final metric) and, for LFW runs,
``<workdir>/roc_lfw.png`` (each scorer's ROC over the test folds' pairs, pooled; only when
``--field=data.test_fold``: runs over seeds or settings on one fold keep their own ROCs).
"""

import functools
import os

from absl import flags
from ml_collections import config_flags
import numpy as np

from infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/facenet.py", "FaceNet config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.", required=True)
_FIELD = flags.DEFINE_string("field", "data.test_fold", "Dotted config field to vary.")
_VALUES = flags.DEFINE_list("values", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
                            "Values of --field, one run each.")


RUN_SETTINGS = ("test_fold", "calibration_folds")   # evaluator outputs that are settings


def summarize(per_run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
  """``{metric: {mean, std, std_ddof, n}}`` over runs (a metric missing from a run is
  skipped). The std is the population std (ddof 0, as the published tables use), said so in
  ``std_ddof`` and in the printed header: over 10 folds it is ~5% below the sample std.
  Settings an evaluator reports (RUN_SETTINGS) stay in each run's values, not averaged."""
  # what a run was asked for, not what it measured: a "mean test_fold 4.5" read as a metric
  names = sorted({k for m in per_run.values() for k in m
                  if k.rsplit("/", 1)[-1] not in RUN_SETTINGS})
  out = {}
  for k in names:
    v = np.asarray([m[k] for m in per_run.values() if k in m], np.float64)
    out[k] = {"mean": float(v.mean()), "std": float(v.std()), "std_ddof": 0, "n": int(v.size)}
  return out


def check_summary(path: str, field: str, values: list[str]) -> None:
  """SystemExit when ``path`` (the workdir's summary.json) would lose what it holds: it is not a
  cross-validation summary, or one over another field, or over values this call leaves out
  (``--values=0`` replaced a ten-fold summary with a one-fold one, exit 0). A call over the
  same or more values rewrites it."""
  if not os.path.exists(path):
    return
  from infra import files
  try:
    old = files.read_json(path)
  except (OSError, ValueError):
    old = None
  if not (isinstance(old, dict) and isinstance(old.get("values"), list) and "field" in old):
    raise SystemExit(f"{path} is not a cross_validate.py summary; this call would replace it: "
                     f"use another --workdir")
  if old["field"] != field:
    raise SystemExit(f"{path} summarizes --field={old['field']} (--values={','.join(old['values'])}); "
                     f"--field={field} would replace it: use another --workdir")
  dropped = [v for v in old["values"] if v not in values]
  if dropped:
    raise SystemExit(f"{path} summarizes --values={','.join(old['values'])}; this call would drop "
                     f"{','.join(dropped)} from it: give those values too, or another --workdir")


def field_value(config, field: str):
  """The value of the dotted ``field`` in ``config``."""
  return functools.reduce(lambda c, k: c[k], field.split("."), config)


def pooled_lfw_roc(run_dirs: list[str], path: str, field: str) -> str | None:
  """Each scorer's ROC over the runs' LFW test pairs, pooled, written to ``path``; None when
  the runs hold no LFW scores or vary another ``field`` than ``data.test_fold`` (runs over
  seeds or settings share their test fold, and a pool would count its pairs more than once;
  each run has its own ``roc_lfw_fold<k>.png``)."""
  from facenet_jax import evaluators, lfw_runs, verification
  if field != "data.test_fold":
    return None
  pooled, folds = lfw_runs.pooled_scores(run_dirs)
  if not pooled:
    return None
  roc = {name: verification.roc(dist, same)[:2] for name, (dist, same) in pooled.items()}
  return evaluators.plot_roc(path, roc, f"LFW View 2, {len(folds)} test folds pooled")


def main(argv):
  del argv
  from facenet_jax import config_usage, evaluators, train, workdir as workdir_lib
  from facenet_jax.config_checks import check_config
  from facenet_jax.data import real, sources
  from infra.files import write_json_atomic
  from infra.overrides import OverrideError, with_overrides
  base, values = _CONFIG.value, _VALUES.value
  if not values:
    raise SystemExit("--values is empty: give the comma-separated values of --field to run")
  if not all(v.strip() for v in values):
    raise SystemExit(f"--values={','.join(values)!r}: an empty value (a comma too many?)")
  twice = sorted({v for v in values if values.count(v) > 1})
  if twice:
    raise SystemExit(f"--values: {', '.join(twice)} given twice (each value is one run directory)")
  sources.check_split_field(base.data.source, _FIELD.value)
  configs = {}
  for value in values:   # every value's config is checked before the first run starts
    try:
      configs[value] = with_overrides(base, {_FIELD.value: value})
    except OverrideError as e:
      raise SystemExit(f"--field={_FIELD.value}: {e}") from e
    check_config(configs[value])
    if configs[value].data.source == "lfw":   # a fold pairs.txt does not have, not at its turn
      real.check_lfw_folds(configs[value])
  # two spellings of one value (0.1 and 0.10, 0 and 00) trained the same run twice and counted
  # it as two in the mean and std
  seen = {}
  for value, config in configs.items():
    parsed = repr(field_value(config, _FIELD.value))
    if parsed in seen:
      raise SystemExit(f"--values: {seen[parsed]} and {value} are the same value of "
                       f"{_FIELD.value} ({parsed}); each value is one run")
    seen[parsed] = value
  check_summary(os.path.join(_WORKDIR.value, "summary.json"), _FIELD.value, values)
  per_run, dirs = {}, []
  wd_of = lambda value: os.path.join(_WORKDIR.value, f"{_FIELD.value}={value}")
  # every value's folder before one trains: a run there of another config (other flags, or
  # an older version of this cross-validation) is refused; its old results were read as new
  for value, config in configs.items():   # a setting the runs would not read: before any trains
    config_usage.check_settings_read(config, wd_of(value))
  finished = {value: workdir_lib.finished_results(config, wd_of(value))
              for value, config in configs.items()}
  for value, config in configs.items():
    wd = wd_of(value)
    dirs.append(wd)
    results = finished[value]
    if results is not None:
      print(f"{wd}: done before, read {os.path.join(wd, 'results.json')}", flush=True)
    else:
      print(f"=== {_FIELD.value}={value} -> {wd}", flush=True)
      results = train.train_and_evaluate(config, wd)
    per_run[value] = evaluators.flatten(results["evals"])
  summary = summarize(per_run)
  roc = pooled_lfw_roc(dirs, os.path.join(_WORKDIR.value, "roc_lfw.png"), _FIELD.value)
  write_json_atomic(os.path.join(_WORKDIR.value, "summary.json"),
                    {"field": _FIELD.value, "values": _VALUES.value, "runs": per_run,
                     "summary": summary, "roc": roc})
  print(f"\n{len(per_run)} runs over {_FIELD.value}; mean +- std (population std, ddof 0) (n)")
  print("| metric | mean | std | n |\n|---|---|---|---|")
  for k, s in summary.items():
    print(f"| {k} | {s['mean']:.4f} | {s['std']:.4f} | {s['n']} |")
  if roc:
    print(f"pooled ROC: {roc}")


if __name__ == "__main__":
  cli.run(main)
