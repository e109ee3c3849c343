"""Held-out verification against global batch size: the ``batch_size`` sweeps of configs/sweeps.py.

  python scripts/plot_batch_study.py runs/batch_size runs/batch_size_orl --out=docs/batch_size.png

Each ROOT is a sweep root whose points vary ``identities_per_batch`` x ``images_per_identity``
(the global batch) and ``num_steps``. Runs are grouped into "equal steps" (the step count most
points share) and "equal images seen" (the rest, joined by the equal-steps run whose images
seen are closest to theirs: one run serves both, unless the sweep has an equal-images run of
that batch that has not finished). Plots accuracy, VAL@FAR=1e-3 and the last logged
fraction of active triplets against the batch (log scale), one row per ROOT; prints a
markdown table. Runs that are not done are left out of both and listed (batch, steps, status,
last checkpoint, error) under the table and under the figure's row.
"""

from __future__ import annotations

import collections
import os

from absl import app
import numpy as np

from facenet_jax import sweep
from infra import cli, files

_OUT = cli.png_flag("out", "docs/batch_size.png", "Output PNG.")


def scan(root: str) -> tuple[list[dict], list[dict]]:
  """``(finished, unfinished)``: one row per finished run (batch, steps, images seen, metrics,
  last train metrics), and one per run that is not done (its name, status, last checkpoint
  step and error), which the table and figure name instead of dropping silently."""
  rows, skipped = [], []
  for run in sweep.collect_runs(root):
    ov = run.overrides
    missing = [k for k in ("identities_per_batch", "images_per_identity", "num_steps") if k not in ov]
    if missing:   # a sweep over something else (seed, margin, ...): a KeyError traceback before
      raise app.UsageError(f"{root}: run {run.workdir} does not set {', '.join(missing)}; "
                           f"expected a batch_size sweep root (configs/sweeps.py)")
    batch = ov["identities_per_batch"] * ov["images_per_identity"]
    row = {"name": run.name, "batch": batch,
           "shape": f"{ov['identities_per_batch']}x{ov['images_per_identity']}",
           "chunk": ov.get("batch_chunk", 0), "steps": ov["num_steps"],
           "images": batch * ov["num_steps"]}
    path = os.path.join(run.workdir, sweep.RESULTS)
    if run.status != "done" or not os.path.exists(path):
      skipped.append(dict(row, status=run.status, step=run.step, error=run.error))
      continue
    r = files.read_json(path)
    rows.append(dict(row, acc=r["metrics"]["verification_accuracy"],
                     acc_std=r["metrics"]["verification_accuracy_std"],
                     val=r["metrics"]["val_at_far_1e-3"],
                     active=r["train_metrics"].get("frac_active", float("nan")),
                     rank1=r.get("evals", {}).get("one_shot", {}).get("rank1")))
  key = lambda x: (x["steps"], x["batch"])
  return sorted(rows, key=key), sorted(skipped, key=key)


def runs_of(root: str) -> list[dict]:
  """One row per finished run (see :func:`scan`)."""
  return scan(root)[0]


def groups(rows: list[dict], skipped: list[dict] = ()) -> dict[str, list[dict]]:
  """``equal steps`` (the most common step count of the sweep's runs, finished or not) and
  ``equal images`` (every run with another step count, plus the equal-steps run whose images
  seen are closest to theirs), each sorted by batch. That equal-steps run joins only where the
  sweep has no equal-images run of its batch, finished or not (``skipped``): when the 85-step
  300 run of the ORL sweep had not finished, the 100-step one (30,000 images) was drawn in its
  place on the curve labelled 'equal images (~25,600)'."""
  if not rows:
    return {}
  common = collections.Counter(r["steps"] for r in [*rows, *skipped]).most_common(1)[0][0]
  same = [r for r in rows if r["steps"] == common]
  other = [r for r in rows if r["steps"] != common]
  out = {f"equal steps ({common})": same} if same else {}
  if other:
    target = float(np.median([r["images"] for r in other]))
    have = {r["batch"] for r in other} | {r["batch"] for r in skipped if r["steps"] != common}
    anchor = min(same, key=lambda r: abs(r["images"] - target)) if same else None
    if anchor is not None and anchor["batch"] not in have:
      other = other + [anchor]
    out[f"equal images (~{target:,.0f})"] = sorted(other, key=lambda r: r["batch"])
  return out


def skipped_line(r: dict) -> str:
  """``300 (30x10), 85 steps: partial (last checkpoint 40)``: one run left out."""
  how = r["status"] + (f": {r['error']}" if r.get("error") else "")
  if r.get("step") is not None:
    how += f" (last checkpoint {r['step']})"
  return f"{r['batch']} ({r['shape']}), {r['steps']} steps: {how}"


def table(name: str, rows: list[dict], skipped: list[dict] = ()) -> str:
  lines = [f"\n{name}\n", "| batch (P x K) | chunk | steps | images seen | accuracy | VAL@FAR=1e-3 | "
           "active triplets (last log) | one-shot rank-1 |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    rank1 = "-" if r["rank1"] is None else f"{r['rank1']:.3f}"
    lines.append(f"| {r['batch']} ({r['shape']}) | {r['chunk'] or '-'} | {r['steps']} | "
                 f"{r['images']:,} | {r['acc']:.4f} +- {r['acc_std']:.4f} | {r['val']:.3f} | "
                 f"{r['active']:.3f} | {rank1} |")
  if skipped:   # the sweep's runs the table and figure leave out, and why
    lines.append(f"\nnot finished, left out of the table and the figure ({len(skipped)} of "
                 f"{len(rows) + len(skipped)} runs):")
    lines += [f"- {skipped_line(r)}  [{r['name']}]" for r in skipped]
  return "\n".join(lines)


def plot(roots: list[str], out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(roots), 3, figsize=(12, 3.3 * len(roots)), squeeze=False)
  for row, root in zip(axes, roots):
    rows, skipped = scan(root)
    print(table(os.path.basename(os.path.normpath(root)), rows, skipped))
    for label, g in groups(rows, skipped).items():
      b = [r["batch"] for r in g]
      row[0].errorbar(b, [r["acc"] for r in g], yerr=[r["acc_std"] for r in g], marker="o",
                      capsize=3, label=label)
      row[1].plot(b, [r["val"] for r in g], marker="o", label=label)
      row[2].plot(b, [r["active"] for r in g], marker="o", label=label)
    batches = sorted({r["batch"] for r in rows})
    for ax, what in zip(row, ("held-out accuracy (10-fold)", "VAL@FAR=1e-3", "active triplets")):
      ax.set_xscale("log")
      ax.set_xticks(batches, [str(b) for b in batches], minor=False)
      ax.set_xticks([], minor=True)
      ax.set_xlabel("global batch (images)")
      ax.set_title(f"{os.path.basename(os.path.normpath(root))}: {what}", fontsize=9)
      ax.grid(alpha=0.3)
    if skipped:   # under the row, so a curve with a point missing says which and why
      row[1].set_xlabel("\n".join(["global batch (images)", "not finished, left out:",
                                    *(skipped_line(r) for r in skipped)]), fontsize=8)
    row[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  fig.savefig(out, dpi=80)
  print(f"\nwrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more sweep roots")
  plot(argv[1:], _OUT.value)


if __name__ == "__main__":
  cli.run(main)
