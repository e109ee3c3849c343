"""Verification of a trained run on held-out images at lower resolution and JPEG quality.

  python scripts/robustness.py --workdir=runs/orl --resolutions=8,16,32 --jpeg_qualities=10,20,50,90

Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` (accuracy and
VAL@FAR=1e-3 against each degradation) to ``--out`` (default the workdir); see
facenet_jax/robustness.py for the degradations.
"""

import json
import os

from absl import flags
from infra import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (config.json + checkpoints).", required=True)
_RES = cli.int_list_flag("resolutions", [], "Test-time sizes r (r x r, upscaled back), below the "
                         "run's image size (default: those of 8, 12, 16, 24, 32, 48, 64, 96, 128, "
                         "160 below it).", 1, allow_empty=True)
_JPEG = cli.int_list_flag("jpeg_qualities", ["5", "10", "20", "30", "50", "70", "90"],
                          "JPEG qualities.", 1, 100)
_OUT = cli.folder_flag("out", "", "Output directory ('': the workdir).")
_TITLE = flags.DEFINE_string("title", "", "Figure title prefix.")


def plot(path: str, rows: list[dict], title: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  base = rows[0]
  fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
  for ax, kind, xlabel in zip(axes, ("resolution", "jpeg_quality"), ("test image side (px)", "JPEG quality")):
    rs = [r for r in rows if r["kind"] == kind]
    if not rs:
      ax.axis("off")
      continue
    x = [r["value"] for r in rs]
    ax.plot(x, [r["verification_accuracy"] for r in rs], marker="o", label="accuracy (10-fold)")
    ax.plot(x, [r["val_at_far_1e-3"] for r in rs], marker="s", label="VAL@FAR=1e-3")
    ax.axhline(base["verification_accuracy"], color="C0", ls=":", lw=1)
    ax.axhline(base["val_at_far_1e-3"], color="C1", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(f"{title}held-out verification on degraded test images (dotted: original)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


OUTPUTS = ("robustness.md", "robustness.json", "robustness.png")


def latest_step(workdir: str) -> int | None:
  """The run's last checkpoint step (what ``inference.load`` restores), read from the folder."""
  from facenet_jax import sweep
  steps = sweep.checkpoint_steps(workdir)
  return steps[-1] if steps else None


def check_out(out: str, record: dict) -> None:
  """Raises SystemExit when ``out`` holds a file of OUTPUTS that a run of these settings on
  this workdir at this checkpoint step (``record``) did not write: a user's robustness.md,
  another comparison's table and figure, or the results of an earlier checkpoint, was
  replaced, exit 0. The same command again rewrites its own."""
  there = [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]
  if not there:
    return
  try:
    with open(os.path.join(out, "robustness.json")) as f:
      was = json.load(f)
    same = all(was.get(k) == v for k, v in record.items())
  except (OSError, ValueError, AttributeError):
    same = False
  if not same:
    raise SystemExit(f"--out={out} holds {', '.join(there)} of another workdir, other "
                     "--resolutions / --jpeg_qualities or another checkpoint step "
                     "(robustness.json); give another --out, or move them")


def main(argv):
  del argv
  from facenet_jax import robustness
  from infra.files import write_json_atomic, write_text_atomic
  out = _OUT.value or _WORKDIR.value
  resolutions = robustness.resolutions_for(_WORKDIR.value, [int(r) for r in _RES.value])
  record = {"workdir": os.path.abspath(_WORKDIR.value), "resolutions": resolutions,
            "jpeg_qualities": sorted({int(q) for q in _JPEG.value}), "step": latest_step(_WORKDIR.value)}
  check_out(out, record)   # before the model loads
  result = robustness.evaluate(_WORKDIR.value, resolutions=resolutions,
                               jpeg_qualities=record["jpeg_qualities"])
  rows = result["rows"]
  os.makedirs(out, exist_ok=True)
  lines = [f"{_WORKDIR.value}, step {result['step']}, {result['pairs']} held-out pairs", "",
           "| degradation | value | verification acc. | VAL@FAR=1e-3 | AUC |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['kind']} | {r['value'] or '-'} | {r['verification_accuracy']:.4f} +- "
                 f"{r['verification_accuracy_std']:.4f} | {r['val_at_far_1e-3']:.4f} | {r['roc_auc']:.4f} |")
  table = "\n".join(lines) + "\n"
  # the earlier outputs (this command's own, check_out said) go first and robustness.json, which
  # check_out reads, comes last: an interrupted run leaves fewer files, never two runs' mixed
  for name in OUTPUTS:
    if os.path.exists(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  png = plot(os.path.join(out, "robustness.png"), rows,
             f"{_TITLE.value + ': ' if _TITLE.value else ''}step {result['step']}: ")
  write_text_atomic(os.path.join(out, "robustness.md"), table)
  write_json_atomic(os.path.join(out, "robustness.json"),
                    {**record, "step": result["step"], "fingerprint": result["fingerprint"],
                     "pairs": result["pairs"], "rows": rows, "figure": png})
  print(table)
  print(f"figure: {png}")


if __name__ == "__main__":
  cli.run(main)
