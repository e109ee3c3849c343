"""Pooled LFW View 2 ROC curves of several cross-validations on one PNG, for paired comparisons.

  python scripts/plot_lfw_roc.py --runs=aligned=runs/lfw_aligned,central_128px=runs/lfw_unaligned \
      --out=docs/roc_lfw_scratch_aligned_vs_central.png

Each ``--runs`` entry is ``LABEL=DIR``, DIR a ``scripts/cross_validate.py`` workdir of an LFW
config: its run directories hold the ``lfw_scores_fold<k>.npz`` that the ``lfw_view2`` evaluator
writes, from which each run's own test fold is taken and pooled over folds. The runs are
compared on the same test folds: if their folds differ, name the common ones with ``--folds``.
Prints a table (folds, pooled ROC AUC, EER, TAR at FAR = 1e-2 and 1e-3) and writes the ROCs
of ``--scorer`` (``distance``, or a pair head: ``head_chi2``, ``head_abs_diff``, ...) to ``--out``.
"""

from __future__ import annotations

from absl import flags
import numpy as np

from infra import cli

_RUNS = flags.DEFINE_list("runs", None, "LABEL=DIR cross-validation workdirs.", required=True)
_OUT = cli.png_flag("out", None, "The PNG to write.", required=True)
_SCORER = flags.DEFINE_string("scorer", "distance", "Which scores' ROC to plot.")
_FOLDS = flags.DEFINE_list("folds", None,
                           "Test folds to compare on (default: all, the same in every run).")


def read_runs(runs: list[str], scorer: str, folds: list[int] | None
              ) -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
  """``{label: (dist_N, issame_N, test folds)}``: each run's pooled test pairs of ``scorer``;
  one-line errors for a malformed entry, a missing directory, no scores, an unreadable or
  repeated score file, an unknown scorer, a requested fold a run lacks, and runs on different
  folds."""
  from facenet_jax import lfw_runs
  out = {}
  try:
    roots = lfw_runs.parse_runs(runs)
  except ValueError as e:
    raise SystemExit(str(e)) from e
  for label, root in roots.items():
    try:
      pooled, got = lfw_runs.pooled_scores(lfw_runs.run_dirs(root), folds)
    except ValueError as e:   # a fold in two run directories, a damaged or foreign .npz
      raise SystemExit(f"--runs: {label}={root}: {e}") from e
    if not got:
      raise SystemExit(f"--runs: {label}={root}: no lfw_scores_fold*.npz in its run directories"
                       + (f" for folds {folds}" if folds else "")
                       + " (expected a cross_validate.py workdir of an LFW config)")
    if scorer not in pooled:
      raise SystemExit(f"--scorer={scorer}: not among {label}'s scores {sorted(pooled)}")
    if folds is not None and got != sorted(folds):
      raise SystemExit(f"--folds={','.join(map(str, folds))}: {label}={root} has only folds {got}")
    out[label] = (*pooled[scorer], got)
  fold_sets = {label: v[2] for label, v in out.items()}
  if len({tuple(f) for f in fold_sets.values()}) > 1:
    raise SystemExit(f"the runs were tested on different folds {fold_sets}: pass --folds= with the "
                     f"common ones to compare them on the same pairs")
  return out


def main(argv):
  del argv
  from facenet_jax import evaluators, verification
  if _FOLDS.value and not all(f.isdigit() for f in _FOLDS.value):
    raise SystemExit(f"--folds: expected fold numbers 0-9, got {','.join(_FOLDS.value)}")
  folds = [int(f) for f in _FOLDS.value] if _FOLDS.value else None
  if folds and len(set(folds)) < len(folds):   # it said a run "has only" the folds it has
    twice = sorted({f for f in folds if folds.count(f) > 1})
    raise SystemExit(f"--folds={','.join(_FOLDS.value)}: fold(s) {twice} given twice")
  runs = read_runs(_RUNS.value, _SCORER.value, folds)
  # points of the pooled curve: the thresholds are read off the pairs themselves, unlike the
  # VAL@FAR of results.json (threshold from calibration pairs), so say which these are
  print("TAR@FAR: in-sample, at the pooled pairs' own thresholds (the ROC curve's points)")
  print("| run | test folds | pairs | ROC AUC | EER | TAR@FAR=1e-2 | TAR@FAR=1e-3 |\n"
        "|---|---|---|---|---|---|---|")
  curves = {}
  for label, (dist, same, got) in runs.items():
    far, tar, _ = verification.roc(dist, same)
    auc, eer = verification.roc_auc(dist, same), verification.eer(dist, same)
    tar_at = [verification.val_at_far(dist, same, f) for f in (1e-2, 1e-3)]   # in-sample
    print(f"| {label} | {','.join(map(str, got))} | {len(dist)} | {auc:.4f} | {eer:.4f} | "
          f"{tar_at[0]:.4f} | {tar_at[1]:.4f} |")
    curves[f"{label} (AUC {auc:.3f})"] = (far, tar)
  folds_read = next(iter(runs.values()))[2]
  evaluators.plot_roc(_OUT.value, curves, f"LFW View 2, {_SCORER.value}, {len(folds_read)} test "
                                          f"folds pooled")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
