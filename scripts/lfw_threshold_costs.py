"""What the verification threshold costs on LFW View 2, fold by fold, for cross-validations.

  python scripts/lfw_threshold_costs.py --runs=seed0=runs/cv_aligned_112,seed1=runs/cv_aligned_112_seed1

Each ``--runs`` entry is ``LABEL=DIR``, DIR a ``scripts/cross_validate.py`` workdir of an LFW
config with calibration folds (``data.calibration_folds`` >= 1, the default). For every test
fold the same scores are read at three thresholds (``facenet_jax/lfw_runs.py``,
``threshold_costs``): the calibration pairs' best (``transfer``, the reported accuracy), one
cross-validated within the test fold (``within``: each pair scored at a threshold fitted on
the fold's other pairs, ``--splits`` folds, mean over ``--repeats`` random splits) and the
test pairs' own best (``in-sample``, optimistic). ``in-sample - within`` is the optimism of
a maximum read on the pairs it was taken on; ``within - transfer`` is what taking the
threshold from other people costs (printed as ``transfer - within``, named so: negative is a
cost). Prints one table per run and a mean row;
``--out`` writes them as JSON.
"""

from __future__ import annotations

import dataclasses

from absl import flags
import numpy as np

from infra import cli

_RUNS = flags.DEFINE_list("runs", None, "LABEL=DIR cross-validation workdirs.", required=True)
_SCORER = flags.DEFINE_string("scorer", "distance", "Which scores' threshold to study.")
_SPLITS = flags.DEFINE_integer("splits", 10, "Folds of the cross-validation within a test fold.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Random splits averaged for the within-fold accuracy.")
_OUT = cli.json_flag("out", None, "A JSON file for the tables (optional).")

_COLUMNS = ("calibration_in_sample", "transfer", "within_fold", "in_sample")

KIND = "lfw_threshold_costs"   # in the --out file: a rerun may replace its own table, nothing else


def main(argv):
  del argv
  from facenet_jax import lfw_runs
  from infra import outdirs
  from infra.files import write_json_atomic
  try:
    roots = lfw_runs.parse_runs(_RUNS.value)
    lfw_runs.check_out_of_runs(_OUT.value, roots)
    outdirs.check_own_file(_OUT.value, "--out", KIND)   # nothing else is replaced
    costs = {label: lfw_runs.threshold_costs(lfw_runs.run_dirs(root), _SCORER.value, _SPLITS.value,
                                             _REPEATS.value) for label, root in roots.items()}
  except ValueError as e:
    raise SystemExit(str(e)) from e
  print(f"LFW View 2, scorer {_SCORER.value}: test accuracy at the calibration pairs' threshold "
        f"(transfer), at one cross-validated within the test fold ({_SPLITS.value} splits, "
        f"{_REPEATS.value} repeats) and at the test pairs' own best (in-sample, optimistic)")
  means = {}
  for label, rows in costs.items():
    print(f"\n{label} ({roots[label]})\n| test fold | calibration | calibration in-sample | transfer "
          f"| within | in-sample |\n|---|---|---|---|---|---|")
    for c in rows:
      print(f"| {c.fold} | {','.join(map(str, c.calibration))} | {c.calibration_in_sample:.4f} | "
            f"{c.transfer:.4f} | {c.within_fold:.4f} | {c.in_sample:.4f} |")
    means[label] = {k: float(np.mean([getattr(c, k) for c in rows])) for k in _COLUMNS}
    m = means[label]
    print(f"| mean of {len(rows)} | | {m['calibration_in_sample']:.4f} | {m['transfer']:.4f} | "
          f"{m['within_fold']:.4f} | {m['in_sample']:.4f} |")
    # each difference named by what it subtracts: "+x" next to an optimism read as a cost
    print(f"optimism of the in-sample maximum (in-sample - within) "
          f"{m['in_sample'] - m['within_fold']:+.4f}; threshold from other people (transfer - "
          f"within; negative: it costs accuracy) {m['transfer'] - m['within_fold']:+.4f}")
  if _OUT.value:
    write_json_atomic(_OUT.value, {"kind": KIND, "runs": roots, "scorer": _SCORER.value, "splits": _SPLITS.value,
                                   "repeats": _REPEATS.value, "mean": means,
                                   "folds": {label: [dataclasses.asdict(c) for c in rows]
                                             for label, rows in costs.items()}})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
