"""Compare the runs of a sweep: one table (markdown + JSON) and PNGs against the swept field.

  python scripts/compare_runs.py runs/orl_margin                 # the field that varies
  python scripts/compare_runs.py runs/sweeps/miner --field=miner --out=docs/miner

ROOT is a sweep root (``scripts/sweep.py``) or a ``config.margins`` run; both hold a
``sweep.json``. For every finished run it reads ``results.json`` and ``metrics.jsonl`` and,
with ``--histograms``, restores the run (``inference.load``) to recompute its held-out
matched / mismatched pair distances (the same pairs as its evaluation). Writes to ``--out``
(default ROOT):

  compare.md, compare.json     one row per run: the swept fields, verification accuracy
                               (10-fold, +- std), VAL@FAR=1e-3, AUC, EER, the last logged
                               fraction of active triplets and mean d(a,p), d(a,n)
  compare_metrics.png          accuracy and VAL@FAR=1e-3 against the field
  compare_training.png         fraction of active triplets, mean d(a,p) and d(a,n) per logged
                               step, one line per value
  compare_distances.png        histograms of matched and mismatched pair distances per value

An unfinished run is a row with its status (``failed: <error>`` as scripts/sweep.py recorded
it in sweep.json, or ``partial``) and its last checkpoint's step.

With ``--average=seed`` (a swept field whose values are repeats), runs that differ only in
that field are also averaged: a second table (mean +- standard deviation, ddof=0, over the
repeats every value finished, their count, and the paired difference of accuracy from the
first value at the same repeats) in compare.md / compare.json (``averaged``, with
``std_ddof: 0`` and the finished runs ``left_out`` for lack of a common repeat), and
compare_metrics.png plots those means with that std as error bars; a point averaged over fewer
repeats than another of other settings is hollow and labelled with its count.
"""

from __future__ import annotations

import math
import json
import os

from absl import app, flags
import numpy as np

from infra import cli

_FIELD = flags.DEFINE_string("field", "", "The swept field on the x axis ('': the first that varies).")
_OUT = flags.DEFINE_string("out", "", "Output directory ('': ROOT).")
_HIST = flags.DEFINE_bool("histograms", True, "Restore each run to plot its pair distances.")
_TITLE = flags.DEFINE_string("title", "", "Figure title prefix (e.g. 'ORL, 300 steps').")
_AVERAGE = flags.DEFINE_string("average", "", "A swept field whose values are repeats (e.g. seed): "
                               "also report mean +- std over it.")

PAIR_KEYS = ("verification_accuracy", "verification_accuracy_std", "val_at_far_1e-3", "roc_auc", "eer")
TRAIN_KEYS = ("frac_active", "mean_d_ap", "mean_d_an")


def _sort_key(v):
  return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def rows_for(root: str, field: str = "") -> tuple[str, list[str], list[dict]]:
  """``(field, other_fields, rows)``: one row per finished run, sorted by ``field``."""
  from facenet_jax import sweep
  from infra import files
  from infra.metric_writer import read_metrics
  runs = sweep.collect_runs(root)
  fields = sweep.swept_fields([r.overrides for r in runs])
  if not fields and runs:
    fields = list(runs[0].overrides)
  if field and field not in fields:
    raise SystemExit(f"--field={field}: the swept fields of {root} are {fields}")
  field = field or (fields[0] if fields else "")
  others = [f for f in fields if f != field]
  rows = []
  for r in runs:
    # step: a partial or failed run's last checkpoint (results.json's step once done)
    row = {"name": r.name, "workdir": r.workdir, "status": r.status, "step": r.step,
           "value": r.overrides.get(field), "others": {f: r.overrides.get(f) for f in others}}
    if r.error:
      row["error"] = r.error
    if r.status == "done":
      res = files.read_json(os.path.join(r.workdir, "results.json"))
      row.update(step=res["step"], wall_seconds=res.get("wall_seconds"),
                 **{k: res["metrics"].get(k) for k in PAIR_KEYS})
      log = [m for m in read_metrics(r.workdir) if "train/frac_active" in m]
      row["curve"] = {"step": [m["step"] for m in log],
                      **{k: [m[f"train/{k}"] for m in log] for k in TRAIN_KEYS}}
      row.update({f"final_{k}": (row["curve"][k][-1] if log else None) for k in TRAIN_KEYS})
    rows.append(row)
  rows.sort(key=lambda row: (tuple(_sort_key(v) for v in row["others"].values()), _sort_key(row["value"])))
  return field, others, rows


def pair_distances(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """The run's held-out pair distances and ``issame``, as its evaluation computed them."""
  from facenet_jax import inference, verification
  from facenet_jax.data import sources
  trained = inference.load(workdir)
  _, held_out = sources.load(trained.config)
  i, j, issame = verification.make_pairs(held_out.labels, trained.config.data.eval_pairs,
                                         seed=trained.config.seed + 1)
  emb = trained.embed(held_out.images)
  return np.sum((emb[i] - emb[j]) ** 2, axis=1), issame


def _fmt(v, spec=".4f") -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def markdown(field: str, others: list[str], rows: list[dict]) -> str:
  head = [field, *others, "status", "step", "verification acc.", "VAL@FAR=1e-3", "AUC", "EER",
          "active triplets (last log)", "d(a,p)", "d(a,n)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    acc = (f"{r['verification_accuracy']:.4f} +- {r['verification_accuracy_std']:.4f}"
           if r.get("verification_accuracy") is not None else "-")
    # an unfinished run says how far it got and, if it failed, why ('partial' with step '-'
    # before: a NaN loss read as a run still to be resumed)
    status = f"failed: {r.get('error') or '?'}" if r["status"] == "failed" else r["status"]
    step = _fmt(r.get("step"), "d")
    if r["status"] != "done" and r.get("step") is not None:
      step += " (last checkpoint)"
    cells = [_fmt(r["value"], "g"), *(_fmt(r["others"][o], "g") for o in others),
             status.replace("|", "/"), step, acc, _fmt(r.get("val_at_far_1e-3")), _fmt(r.get("roc_auc")),
             _fmt(r.get("eer")), _fmt(r.get("final_frac_active"), ".3f"),
             _fmt(r.get("final_mean_d_ap"), ".3f"), _fmt(r.get("final_mean_d_an"), ".3f")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


AVERAGED_KEYS = ("verification_accuracy", "val_at_far_1e-3", "roc_auc", "eer", "final_frac_active",
                 "final_mean_d_ap", "final_mean_d_an")


def average_rows(field: str, others: list[str], rows: list[dict], over: str) -> tuple[list[dict], list[str]]:
  """``(averaged rows, names of finished runs left out)``. Finished runs that differ only in
  ``over`` merged: ``{value, others, n, <over>: [...], <key>_mean, <key>_std}`` (std over the
  repeats, ddof=0) for each key of AVERAGED_KEYS, over the repeats that *every* value of the
  same other fields finished (a value averaged over other seeds than the rest is not compared
  with them: an audit saw margin 0.2 'best' over seeds {0, 1} against 0.5 over {0, 1, 2}, and
  last over {0, 1} alike). The first value is the reference: each row's
  ``verification_accuracy_diff_mean`` / ``_std`` is the per-repeat (paired) difference from it,
  since the values share each repeat's seed, data and evaluation pairs."""
  if over not in others:
    raise SystemExit(f"--average={over}: not a swept field besides {field!r} (those are {others})")
  contexts: dict[str, dict[str, dict[str, dict]]] = {}
  for r in rows:
    if r["status"] == "done":
      rest = {k: v for k, v in r["others"].items() if k != over}
      contexts.setdefault(repr(rest), {}).setdefault(repr(r["value"]), {})[repr(r["others"][over])] = r
  out, left_out = [], []
  for by_value in contexts.values():
    common = set.intersection(*(set(runs) for runs in by_value.values()))
    for runs in by_value.values():
      left_out += [r["name"] for k, r in runs.items() if k not in common]
      g = sorted((runs[k] for k in common), key=lambda r: _sort_key(r["others"][over]))
      if not g:
        continue
      row = {"value": g[0]["value"], "others": {k: v for k, v in g[0]["others"].items() if k != over},
             "n": len(g), over: [r["others"][over] for r in g]}
      for k in AVERAGED_KEYS:
        vals = [r[k] for r in g if r.get(k) is not None]
        row[f"{k}_mean"] = float(np.mean(vals)) if vals else None
        row[f"{k}_std"] = float(np.std(vals)) if vals else None
      out.append(row)
  out.sort(key=lambda r: (tuple(_sort_key(v) for v in r["others"].values()), _sort_key(r["value"])))
  _paired_differences(out, rows, over)
  return out, sorted(left_out)


def _paired_differences(avg: list[dict], rows: list[dict], over: str) -> None:
  """Adds to each averaged row the mean and std (ddof=0) over its repeats of its accuracy minus
  the accuracy of the first row of the same other fields (the reference) at the same repeat."""
  fields = lambda d: repr(sorted((k, repr(v)) for k, v in d.items()))   # not in insertion order
  acc = {(repr(r["value"]), fields(r["others"])): r.get("verification_accuracy")
         for r in rows if r["status"] == "done"}
  ref: dict[str, dict] = {}
  for row in avg:
    base = ref.setdefault(fields(row["others"]), row)
    diffs = []
    for rep in row[over]:
      key = lambda r: (repr(r["value"]), fields({**r["others"], over: rep}))
      a, b = acc.get(key(row)), acc.get(key(base))
      if a is not None and b is not None:
        diffs.append(a - b)
    row["reference"] = base["value"]
    row["verification_accuracy_diff_mean"] = float(np.mean(diffs)) if diffs else None
    row["verification_accuracy_diff_std"] = float(np.std(diffs)) if diffs else None


def averaged_markdown(field: str, over: str, avg: list[dict], left_out: list[str] = ()) -> str:
  rest = list(avg[0]["others"]) if avg else []
  head = [field, *rest, f"{over}s", "verification acc.", f"acc. - reference {field} (paired)",
          "VAL@FAR=1e-3", "AUC", "EER", "active triplets (last log)", "d(a,p)", "d(a,n)"]
  # std with ddof=0 (the spread of these runs, not the estimate of the population's: ddof=1
  # is sqrt(n / (n - 1)) times larger, 1.22x at 3 seeds), and the count per row
  lines = [f"mean +- std over {over} (std with ddof=0; {over}s: how many finished runs each row "
           f"averages, the {over}s every {field} finished; paired: the mean +- std over those "
           f"{over}s of the accuracy minus the reference's at the same {over})", ""]
  if left_out:
    lines += [f"left out, finished at a {over} that another {field} has not finished: "
              f"{', '.join(left_out)}", ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in avg:
    cell = lambda k, spec=".4f": (f"{r[k + '_mean']:{spec}} +- {r[k + '_std']:{spec}}"
                                  if r[k + "_mean"] is not None else "-")
    paired = ("reference" if r["value"] == r["reference"] else
              f"{r['verification_accuracy_diff_mean']:+.4f} +- {r['verification_accuracy_diff_std']:.4f}"
              if r["verification_accuracy_diff_mean"] is not None else "-")
    lines.append("| " + " | ".join([
        _fmt(r["value"], "g"), *(_fmt(r["others"][o], "g") for o in rest), str(r["n"]),
        cell("verification_accuracy"), paired, cell("val_at_far_1e-3", ".3f"), cell("roc_auc"),
        cell("eer", ".3f"), cell("final_frac_active", ".3f"), cell("final_mean_d_ap", ".3f"),
        cell("final_mean_d_an", ".3f")]) + " |")
  return "\n".join(lines) + "\n"


def _label(field: str, r: dict) -> str:
  parts = [f"{field}={_fmt(r['value'], 'g')}"] + [f"{k}={_fmt(v, 'g')}" for k, v in r["others"].items()]
  return ", ".join(parts)


def averaged_suffix(over: str, avg: list[dict]) -> tuple[str, int]:
  """``(title suffix, largest count)`` of the averaged points. The range of counts when they
  differ ('n = 2-3 seeds'): the first point's count stood for all of them before, '3 seeds'
  over a point whose third seed had not finished."""
  counts = sorted({r["n"] for r in avg}) or [0]
  lo, hi = counts[0], counts[-1]
  if lo == hi:
    return f" (mean +- std (ddof=0) over {hi} {over}s)", hi
  return (f" (mean +- std (ddof=0) over n = {lo}-{hi} {over}s; hollow markers: "
          f"n < {hi}, labelled)", hi)


def plot_metrics(path: str, field: str, rows: list[dict], title: str,
                 averaged: tuple[str, list[dict]] | None = None) -> str:
  """Accuracy (+- its 10-fold std) and VAL against ``field``, one line per other-field group;
  with ``averaged = (over, rows)``: their means, error bars the std over the repeats."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if averaged:
    over, done = averaged
    acc = lambda r: r["verification_accuracy_mean"]
    acc_err = lambda r: r["verification_accuracy_std"]
    val, val_err = lambda r: r["val_at_far_1e-3_mean"], lambda r: r["val_at_far_1e-3_std"]
    suffix, n_max = averaged_suffix(over, done)
  else:
    done = [r for r in rows if r["status"] == "done"]
    acc, acc_err = lambda r: r["verification_accuracy"], lambda r: r["verification_accuracy_std"]
    val, val_err, suffix = lambda r: r["val_at_far_1e-3"], None, ""
  groups: dict[str, list[dict]] = {}
  for r in done:
    groups.setdefault(", ".join(f"{k}={_fmt(v, 'g')}" for k, v in r["others"].items()), []).append(r)
  numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) for r in done)
  cats = list(dict.fromkeys(_fmt(r["value"], "g") for r in done))
  fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
  for name, g in groups.items():
    x = [r["value"] for r in g] if numeric else [cats.index(_fmt(r["value"], "g")) for r in g]
    for ax, y, err in ((axes[0], acc, acc_err), (axes[1], val, val_err)):
      line = ax.errorbar(x, [y(r) for r in g], yerr=[err(r) for r in g] if err else None,
                         marker="o", capsize=3, label=name or None)
      if averaged:   # a mean over fewer repeats than the others: hollow, with its count
        for xi, r in zip(x, g):
          if r["n"] < n_max:
            ax.plot([xi], [y(r)], "o", mfc="white", mec=line[0].get_color(), zorder=3)
            ax.annotate(f"n={r['n']}", (xi, y(r)), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
  for ax, ylabel in zip(axes, ("verification accuracy (10-fold)", "VAL @ FAR = 1e-3")):
    ax.set_xlabel(field)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if numeric and done and min(r["value"] for r in done) > 0 and \
        max(r["value"] for r in done) / min(r["value"] for r in done) >= 8:
      ax.set_xscale("log")
      vals = sorted({r["value"] for r in done})
      ax.set_xticks(vals)
      ax.set_xticklabels([_fmt(v, "g") for v in vals])
    if not numeric:
      ax.set_xticks(range(len(cats)))
      ax.set_xticklabels(cats, rotation=20)
  if len(groups) > 1:
    axes[0].legend(fontsize=7)
  fig.suptitle(f"{title}held-out verification against {field}{suffix}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_training(path: str, field: str, rows: list[dict], title: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2))
  done = [r for r in rows if r["status"] == "done" and r["curve"]["step"]]
  colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(done), 1)))
  for r, c in zip(done, colors):
    cv = r["curve"]
    axes[0].plot(cv["step"], cv["frac_active"], color=c, label=_label(field, r))
    axes[1].plot(cv["step"], cv["mean_d_ap"], color=c)
    axes[2].plot(cv["step"], cv["mean_d_an"], color=c)
  for ax, t in zip(axes, ("fraction of active triplets", "mean d(a, p)", "mean d(a, n)")):
    ax.set_xlabel("step")
    ax.set_title(t, fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=6)
  fig.suptitle(f"{title}training statistics of the mined triplets (per log interval)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_distances(path: str, field: str, rows: list[dict], dists: dict[str, tuple], title: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  done = [r for r in rows if r["name"] in dists]
  n = len(done)
  cols = min(n, 5)
  nrows = max(1, math.ceil(n / cols))
  fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.2 * nrows), squeeze=False)
  bins = np.linspace(0.0, 4.0, 41)   # squared distances of unit vectors lie in [0, 4]
  for ax, r in zip(axes.flat, done):
    d, same = dists[r["name"]]
    ax.hist(d[same], bins=bins, alpha=0.6, density=True, label="matched")
    ax.hist(d[~same], bins=bins, alpha=0.6, density=True, label="mismatched")
    ax.set_title(_label(field, r), fontsize=8)
    ax.set_yticks([])
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.supxlabel("squared L2 distance of held-out pairs", fontsize=9)
  fig.suptitle(f"{title}matched vs mismatched pair distances", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


OUTPUTS = ("compare.md", "compare.json", "compare_metrics.png", "compare_training.png",
           "compare_distances.png")


def check_out(out: str, root: str) -> None:
  """Raises SystemExit when ``out`` holds a file of OUTPUTS that this comparison of ``root``
  did not write (no compare.json, or one of another root): a user's compare.md was replaced,
  exit 0. Comparing the same root again (a sweep that went on) rewrites its own outputs."""
  there = [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]
  if not there:
    return
  try:
    with open(os.path.join(out, "compare.json")) as f:
      was = json.load(f).get("root")
  except (OSError, ValueError, AttributeError):
    was = None
  if was != os.path.abspath(root):
    raise SystemExit(f"--out={out} holds {', '.join(there)}, not written by compare_runs for "
                     f"{os.path.abspath(root)} (compare.json: {'none' if was is None else was}); "
                     "give another --out, or move them")


def compare(root: str, *, field: str = "", out: str = "", histograms: bool = True,
            title: str = "", average: str = "") -> dict:
  """Writes the table and figures of the sweep at ``root``; returns the JSON summary."""
  from infra.files import write_json_atomic, write_text_atomic
  out = out or root
  check_out(out, root)
  os.makedirs(out, exist_ok=True)
  field, others, rows = rows_for(root, field)
  avg, left_out = average_rows(field, others, rows, average) if average else (None, [])
  title = f"{title}: " if title else ""
  figures = {}
  done = any(r["status"] == "done" for r in rows)
  # every run restored before anything is written: a run that fails to restore left new
  # figures beside the tables of the comparison before
  dists = ({r["name"]: pair_distances(r["workdir"]) for r in rows if r["status"] == "done"}
           if done and histograms else None)
  if done:
    figures["metrics"] = plot_metrics(os.path.join(out, "compare_metrics.png"), field, rows, title,
                                      (average, avg) if avg else None)
    figures["training"] = plot_training(os.path.join(out, "compare_training.png"), field, rows, title)
    if dists is not None:
      figures["distances"] = plot_distances(os.path.join(out, "compare_distances.png"), field,
                                            rows, dists, title)
  for name, png in (("metrics", "compare_metrics.png"), ("training", "compare_training.png"),
                    ("distances", "compare_distances.png")):
    if name not in figures and os.path.exists(os.path.join(out, png)):   # an earlier comparison's
      os.remove(os.path.join(out, png))
  table = markdown(field, others, rows)
  if avg is not None:
    table += "\n" + averaged_markdown(field, average, avg, left_out)
  write_text_atomic(os.path.join(out, "compare.md"), table)
  summary = {"root": os.path.abspath(root), "field": field, "other_fields": others,
             "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
             "figures": figures}
  if avg is not None:   # std_ddof: the std's divisor is n - std_ddof
    summary["averaged"] = {"over": average, "std_ddof": 0, "rows": avg, "left_out": left_out}
  write_json_atomic(os.path.join(out, "compare.json"), summary)
  return summary


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: compare_runs.py ROOT [--field=F] [--out=DIR]")
  s = compare(argv[1], field=_FIELD.value, out=_OUT.value, histograms=_HIST.value, title=_TITLE.value,
              average=_AVERAGE.value)
  print(open(os.path.join(_OUT.value or argv[1], "compare.md")).read())
  for name, p in s["figures"].items():
    print(f"{name}: {p}")


if __name__ == "__main__":
  cli.run(main)
