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
``--set=evaluation.one_shot.repeats=20`` (one evaluator's setting). Writes
``eval_<name>.json`` (``eval_<name>@<settings>.json`` with ``--set``, so the run's own
evaluation is not overwritten) and ROC PNGs into the workdir.
"""

import os

from absl import app, flags, logging

from configs import facenet as facenet_configs
from infra import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train_facenet.py.", required=True)
_EVAL = flags.DEFINE_string("eval", "", "Comma-separated evaluator or dataset names.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Override config.data.data_dir.")
_SOURCE = flags.DEFINE_string("source", "", "Override config.data.source (e.g. folder).")
_SET = flags.DEFINE_multi_string("set", [], "evaluation.[EVALUATOR.]FIELD=VALUE: an evaluation "
                                  "setting to change.")

DATASET_SOURCES = {"lfw": "lfw", "orl": "orl", "omniglot": "omniglot", "folder": "folder"}


def format_table(results: dict[str, dict[str, float]]) -> str:
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name, metrics in results.items():
    for k, v in metrics.items():
      lines.append(f"| {name} | {k} | {v:.4f} |")
  return "\n".join(lines)


def check_settings(settings: dict[str, str]) -> None:
  """SystemExit for a ``--set`` key outside ``evaluation.*``, or one spelled in the older flat
  layout (``evaluation.repeats``: the new spelling is named)."""
  for k in settings:
    if not k.startswith("evaluation."):
      raise SystemExit(f"--set={k}=...: only evaluation.* settings can change after training")
    field = k[len("evaluation."):]
    if field in facenet_configs.FLAT_EVALUATION_FIELDS:
      evaluator = facenet_configs.FLAT_EVALUATION_FIELDS[field]
      raise SystemExit(f"--set={k}=...: evaluator settings are under the evaluator's name: "
                       f"--set=evaluation.{evaluator}.{field}=...")


def evaluate(workdir: str, spec: str = "", data_dir: str = "", source: str = "",
             settings: dict[str, str] | None = None) -> dict:
  from facenet_jax import evaluators, inference, workdir as workdir_lib
  from facenet_jax.config_checks import check_config
  from facenet_jax.data import sources
  from infra import overrides
  from infra.files import write_json_atomic
  config = workdir_lib.load_config(workdir)
  settings = dict(settings or {})
  check_settings(settings)
  suffix = f"@{overrides.point_name(settings)}" if settings else ""
  config = overrides.with_overrides(config, settings)
  check_config(config)
  config.unlock()
  names = [p.strip() for p in spec.split(",") if p.strip()]
  for n in names:   # a dataset name also selects its source
    if n in DATASET_SOURCES and not source and config.data.source != DATASET_SOURCES[n]:
      raise SystemExit(f"--eval={n} but the run was trained on data.source="
                       f"{config.data.source!r}; pass --source={DATASET_SOURCES[n]} to evaluate "
                       "it on that data anyway")
  if source:
    config.data.source = source
  if data_dir:
    config.data.data_dir = data_dir
  trained = inference.load(workdir, config)
  train_ds, held_out = sources.load(config)
  ctx = evaluators.Context(config=config, embed=trained.embed, held_out=held_out, train=train_ds,
                           workdir=workdir)
  results = evaluators.run(spec or config.evals, ctx)
  for name, metrics in results.items():
    write_json_atomic(os.path.join(workdir, f"eval_{name}{suffix}.json"),
                      {"step": trained.step, "data": config.data.to_dict(),
                       "evaluation": config.evaluation.to_dict(), "metrics": metrics})
  return {"step": trained.step, "results": results}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  settings = {}
  for kv in _SET.value:
    if "=" not in kv:
      raise app.UsageError(f"--set={kv}: expected evaluation.[EVALUATOR.]FIELD=VALUE")
    k, v = kv.split("=", 1)
    settings[k] = v
  out = evaluate(_WORKDIR.value, _EVAL.value, _DATA_DIR.value, _SOURCE.value, settings)
  print(f"{_WORKDIR.value} (step {out['step']})")
  print(format_table(out["results"]))


if __name__ == "__main__":
  cli.run(main)
