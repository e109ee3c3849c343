"""Evaluate a trained FaceNet workdir with the standard protocols; print a table.

  python scripts/evaluate_facenet.py --workdir=runs/orl --eval=orl
  python scripts/evaluate_facenet.py --workdir=runs/lfw_fold3 --eval=lfw --data_dir=/data/lfw
  python scripts/evaluate_facenet.py --workdir=runs/x --eval=one_shot,clustering

``--eval`` takes evaluator names (pairs, lfw_view2, one_shot, omniglot_runs, episodes,
clustering) or dataset names (lfw, orl, omniglot, folder: their usual protocols); default:
the run's ``config.evals``. ``--data_dir`` (and ``--source`` for ``folder``) point the
run's config at another copy of the data. ``--set=evaluation.[EVALUATOR.]FIELD=VALUE``
(repeatable) changes an evaluation setting, e.g. ``--set=evaluation.flip_tta=True`` (embed
each image with its mirror image, for every evaluator) or
``--set=evaluation.one_shot.repeats=20`` (one evaluator's setting); ``--set=data.FIELD=VALUE``
evaluates on other data with its own split, e.g. another identity folder of 15 people:
``--source=folder --data_dir=/photos --set=data.train_identities=5
--set=data.eval_identities=10`` (``facenet_jax/workdir.py`` EVALUATION_DATA_FIELDS lists
the data fields that may change, EVALUATION_DATA_READERS which sources and evaluators read
them: a setting nothing reads is refused, as is an evaluator's that is not run; the run's
config.json is never edited). Writes
``eval_<name>.json`` (``eval_<name>@<settings>.json`` with ``--set``, ``--source`` or
``--data_dir``, so the run's own evaluation is not overwritten) and ROC PNGs into the workdir.
"""

import os

from absl import app, flags, logging

from infra import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train_facenet.py.", required=True)
_EVAL = flags.DEFINE_string("eval", "", "Comma-separated evaluator or dataset names.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Override config.data.data_dir.")
_SOURCE = flags.DEFINE_string("source", "", "Override config.data.source (e.g. folder).")
_SET = flags.DEFINE_multi_string("set", [], "evaluation.[EVALUATOR.]FIELD=VALUE or data.FIELD=VALUE: "
                                  "an evaluation setting, or the data to evaluate on, to change.")

DATASET_SOURCES = {"lfw": "lfw", "orl": "orl", "omniglot": "omniglot", "folder": "folder"}


def format_table(results: dict[str, dict[str, float]]) -> str:
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name, metrics in results.items():
    for k, v in metrics.items():
      lines.append(f"| {name} | {k} | {v:.4f} |")
  return "\n".join(lines)


def check_same_data(workdir: str, train_ds, given: dict) -> None:
  """SystemExit when the run's own data (no --source / --data_dir given) is not the data it
  trained on: the files under a folder / RecordIO data_dir changed in place since (it was
  prepared again and evaluated, exit 0, under the run's own eval file names)."""
  from facenet_jax.data import streamed
  from infra import files as files_lib
  path = os.path.join(workdir, "results.json")
  if given or not os.path.exists(path):
    return
  was, now = files_lib.read_json(path).get("prepared_data"), streamed.prepared_name(train_ds)
  if was and now and was != now:
    raise SystemExit(f"{workdir} trained on {was} (results.json: prepared_data), but its "
                     f"data_dir now prepares as {now}: the files changed since; pass --data_dir "
                     "to evaluate on them as other data (its own eval file)")


def evaluate(workdir: str, spec: str = "", data_dir: str = "", source: str = "",
             settings: dict[str, str] | None = None) -> dict:
  """Evaluates the run in ``workdir`` with the evaluators of ``spec`` (default: its
  ``config.evals``) on its data, or on another dataset given by ``source`` / ``data_dir`` /
  ``data.*`` settings split by their own ``data.train_identities`` / ``eval_identities``.
  Every setting and input is checked (the config, then the data files) before the model is
  restored; nothing is written before the metrics exist. Returns ``{step, results, skipped}``."""
  from facenet_jax import evaluators, inference, workdir as workdir_lib
  from facenet_jax.config_checks import check_config
  from facenet_jax.data import sources
  from infra import overrides
  from infra.files import write_json_atomic
  config = workdir_lib.load_config(workdir)
  settings = dict(settings or {})
  workdir_lib.check_evaluation_settings(settings)
  for n in [p.strip() for p in spec.split(",") if p.strip()]:   # a dataset name selects its source
    need = DATASET_SOURCES.get(n) or evaluators.SOURCE_OF.get(n)   # lfw_view2: LFW's own pairs
    if need and not source and config.data.source != need and settings.get("data.source") != need:
      raise SystemExit(f"--eval={n} but the run was trained on data.source="
                       f"{config.data.source!r}; pass --source={need} to evaluate it on that "
                       "data anyway")
  given = {k: v for k, v in {"data.source": source, "data.data_dir": data_dir}.items() if v}
  changed = {**given, **settings}
  # the run's own evaluation (eval_<name>.json) is kept: other settings or data get their own file
  suffix = f"@{overrides.point_name(changed)}" if changed else ""
  run_config, config = config, overrides.with_overrides(config, changed)
  workdir_lib.check_held_out_people(run_config, config)
  if spec.strip(",").strip():   # checked as the run's evaluators would be (names, data.source)
    config = overrides.with_overrides(config, {"evals": spec})
  check_config(config)
  running = evaluators.names(spec or config.evals)
  unused = [k for k in settings if k.count(".") == 2 and k.split(".")[0] == "evaluation"
            and k.split(".")[1] in evaluators.EVALUATORS and k.split(".")[1] not in running]
  if unused:   # it had no effect, yet named the results file it wrote
    raise SystemExit(f"--set={unused[0]}: evaluator {unused[0].split('.')[1]!r} is not run "
                     f"(--eval={spec or config.evals!r} runs {running})")
  if not running:   # unknown names before any data is read
    raise SystemExit(f"--eval={spec!r} names no evaluator (the run's config.evals is "
                     f"{config.evals!r}); give evaluator or dataset names")
  # a data field this source and these evaluators never read: the same, for data.* settings
  workdir_lib.check_evaluation_data_read(settings, config, running)
  train_ds, held_out = sources.load(config)   # the data's files, before the model
  check_same_data(workdir, train_ds, given)
  trained = inference.load(workdir, config)
  ctx = evaluators.Context(config=config, embed=trained.embed, held_out=held_out, train=train_ds,
                           workdir=workdir, suffix=suffix)
  skipped = evaluators.skipped(spec or config.evals, held_out)
  results = evaluators.run(spec or config.evals, ctx)
  for name, metrics in results.items():
    write_json_atomic(os.path.join(workdir, f"eval_{name}{suffix}.json"),
                      {"step": trained.step, "data": config.data.to_dict(),
                       "evaluation": config.evaluation.to_dict(), "metrics": metrics})
  return {"step": trained.step, "results": results, "skipped": skipped}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  settings = {}
  for kv in _SET.value:
    if "=" not in kv:
      raise app.UsageError(f"--set={kv}: expected evaluation.[EVALUATOR.]FIELD=VALUE or "
                           "data.FIELD=VALUE")
    k, v = kv.split("=", 1)
    settings[k] = v
  out = evaluate(_WORKDIR.value, _EVAL.value, _DATA_DIR.value, _SOURCE.value, settings)
  print(f"{_WORKDIR.value} (step {out['step']})")
  print(format_table(out["results"]))
  for name, why in out["skipped"].items():
    print(f"{name}: skipped, {why}")


if __name__ == "__main__":
  cli.run(main)
