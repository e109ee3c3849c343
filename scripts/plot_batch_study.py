"""Held-out verification against global batch size: the ``batch_size`` sweeps of configs/sweeps.py.

  python scripts/plot_batch_study.py runs/batch_size runs/batch_size_orl --out=docs/batch_size.png

Each ROOT is a sweep root whose points vary ``identities_per_batch`` x ``images_per_identity``
(the global batch) and ``num_steps``. Runs are grouped into "equal steps" (the step count most
points share) and "equal images seen" (the rest, joined by the equal-steps run whose images
seen are closest to theirs: one run serves both). Plots accuracy, VAL@FAR=1e-3 and the last logged
fraction of active triplets against the batch (log scale), one row per ROOT; prints a
markdown table.
"""

from __future__ import annotations

import collections
import os

from absl import app
import numpy as np

from facenet_jax import sweep
from infra import cli, files

_OUT = cli.png_flag("out", "docs/batch_size.png", "Output PNG.")


def runs_of(root: str) -> list[dict]:
  """One row per finished run: batch, steps, images seen, metrics, last train metrics."""
  rows = []
  for run in sweep.collect_runs(root):
    path = os.path.join(run.workdir, sweep.RESULTS)
    if run.status != "done" or not os.path.exists(path):
      continue
    r = files.read_json(path)
    ov = run.overrides
    missing = [k for k in ("identities_per_batch", "images_per_identity", "num_steps") if k not in ov]
    if missing:   # a sweep over something else (seed, margin, ...): a KeyError traceback before
      raise app.UsageError(f"{root}: run {run.workdir} does not set {', '.join(missing)}; "
                           f"expected a batch_size sweep root (configs/sweeps.py)")
    batch = ov["identities_per_batch"] * ov["images_per_identity"]
    rows.append({"batch": batch, "shape": f"{ov['identities_per_batch']}x{ov['images_per_identity']}",
                 "chunk": ov.get("batch_chunk", 0), "steps": ov["num_steps"],
                 "images": batch * ov["num_steps"], "acc": r["metrics"]["verification_accuracy"],
                 "acc_std": r["metrics"]["verification_accuracy_std"],
                 "val": r["metrics"]["val_at_far_1e-3"],
                 "active": r["train_metrics"].get("frac_active", float("nan")),
                 "rank1": r.get("evals", {}).get("one_shot", {}).get("rank1")})
  return sorted(rows, key=lambda x: (x["steps"], x["batch"]))


def groups(rows: list[dict]) -> dict[str, list[dict]]:
  """``equal steps`` (the most common step count) and ``equal images`` (every run with another
  step count, plus the equal-steps run whose images seen are closest to theirs), each sorted
  by batch."""
  common = collections.Counter(r["steps"] for r in rows).most_common(1)[0][0]
  same = [r for r in rows if r["steps"] == common]
  other = [r for r in rows if r["steps"] != common]
  target = float(np.median([r["images"] for r in other]))
  anchor = min(same, key=lambda r: abs(r["images"] - target))
  if anchor["batch"] not in {r["batch"] for r in other}:
    other = other + [anchor]
  return {f"equal steps ({common})": same,
          f"equal images (~{target:,.0f})": sorted(other, key=lambda r: r["batch"])}


def table(name: str, rows: list[dict]) -> str:
  lines = [f"\n{name}\n", "| batch (P x K) | chunk | steps | images seen | accuracy | VAL@FAR=1e-3 | "
           "active triplets (last log) | one-shot rank-1 |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    rank1 = "-" if r["rank1"] is None else f"{r['rank1']:.3f}"
    lines.append(f"| {r['batch']} ({r['shape']}) | {r['chunk'] or '-'} | {r['steps']} | "
                 f"{r['images']:,} | {r['acc']:.4f} +- {r['acc_std']:.4f} | {r['val']:.3f} | "
                 f"{r['active']:.3f} | {rank1} |")
  return "\n".join(lines)


def plot(roots: list[str], out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(roots), 3, figsize=(12, 3.3 * len(roots)), squeeze=False)
  for row, root in zip(axes, roots):
    rows = runs_of(root)
    print(table(os.path.basename(os.path.normpath(root)), rows))
    for label, g in groups(rows).items():
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
