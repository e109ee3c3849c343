"""Choose among LFW View 2 cross-validations fold by fold on calibration pairs (nested selection).

  python scripts/select_lfw_model.py --runs=112px=runs/cv_aligned_112,224px=runs/cv_aligned_224 \
      --out=runs/select_112_224.json

Each ``--runs`` entry is ``LABEL=DIR``, DIR a ``scripts/cross_validate.py`` workdir of an LFW
config trained with ``data.calibration_folds`` >= 1 (the default). For each test fold the
candidate whose ``--scorer`` threshold is most accurate on that fold's calibration pairs
(people none of them trained on) is chosen; a tie goes to the earlier entry, so list the
baseline first. Prints one row per fold (each candidate's calibration and test accuracy, the
choice) and the mean +- std test accuracy of every candidate and of the selection, which never
looked at a test fold (``facenet_jax/lfw_runs.py``); ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from infra import cli

_RUNS = flags.DEFINE_list("runs", None, "LABEL=DIR cross-validation workdirs, baseline first.",
                          required=True)
_SCORER = flags.DEFINE_string("scorer", "distance", "Which scores' threshold to choose by.")
_OUT = cli.json_flag("out", None, "A JSON file for the table (optional).")

KIND = "select_lfw_model"   # in the --out file: a rerun may replace its own table, nothing else


def main(argv):
  del argv
  from facenet_jax import lfw_runs
  from infra import outdirs
  from infra.files import write_json_atomic
  try:
    roots = lfw_runs.parse_runs(_RUNS.value)
    lfw_runs.check_out_of_runs(_OUT.value, roots)
    outdirs.check_own_file(_OUT.value, "--out", KIND)   # nothing else is replaced
    choices = lfw_runs.select_per_fold(
        {label: lfw_runs.run_dirs(root) for label, root in roots.items()}, _SCORER.value)
  except ValueError as e:
    raise SystemExit(str(e)) from e
  labels = list(roots)
  print(f"LFW View 2, scorer {_SCORER.value}: each candidate's accuracy on the test fold's calibration "
        f"pairs (cal) and on its test pairs (test)")
  print("| test fold | calibration | " + " | ".join(f"{l} cal | {l} test" for l in labels)
        + " | chosen | test |")
  print("|---" * (3 + 2 * len(labels)) + "|---|")
  for c in choices:
    cells = " | ".join(f"{c.calibration_accuracy[l]:.4f} | {c.test[l]['accuracy']:.4f}" for l in labels)
    print(f"| {c.fold} | {','.join(map(str, c.calibration))} | {cells} | {c.chosen} | "
          f"{c.test[c.chosen]['accuracy']:.4f} |")
  summary = lfw_runs.selection_summary(choices)
  metrics = ("accuracy", "val_at_far", "roc_auc", "eer")
  print("\nmean +- std (population std, ddof 0) over the test folds (VAL@FAR=1e-3 at the "
        "calibration pairs' threshold)")
  print("| model | " + " | ".join(metrics) + " | folds chosen |\n" + "|---" * (len(metrics) + 2) + "|")
  for k, s in summary.items():
    cells = " | ".join(f"{s[m + '/mean']:.4f} +- {s[m + '/std']:.4f}" for m in metrics)
    print(f"| {k} | {cells} | {s.get('chosen', '')} |")
  if _OUT.value:
    write_json_atomic(_OUT.value, {"kind": KIND, "runs": roots, "scorer": _SCORER.value, "summary": summary,
                                   "folds": [dataclasses.asdict(c) for c in choices]})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
