"""Gatys, Ecker & Bethge (2015, arXiv 1508.06576): Figures 2 and 3 as PNG grids.

  .venv/bin/python scripts/reproduce_gatys.py --out runs/gatys                  # 96 px
  .venv/bin/python scripts/reproduce_gatys.py --image_size 256 --num_steps 300 --out runs/gatys256
  .venv/bin/python scripts/reproduce_gatys.py --combine runs/a,runs/b --out runs/fig3_all  # columns of
                                                                   # fig3 run apart (--ratios), one grid

Writes ``fig2_style.png``, ``fig2_content.png`` and ``fig3.png`` (and ``results.json`` with the
initial and final loss of every panel) into ``--out``; see ``style_jax/gatys_figures.py`` for
what each figure shows. Resumable: a killed run (SIGTERM / SIGINT checkpoint the current
iteration and exit 143 / 130) continues from ``--out`` when started again with the same
settings; a larger ``--num_steps`` continues finished figures.
"""

from __future__ import annotations

import os

from infra import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))


def parse(argv=None):
  from style_jax import gatys_figures as gf
  d = gf.Settings
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.path.join(REPO, "runs", "gatys"))
  p.add_argument("--content", default=os.path.join(SHARED, "data", "style_images", "content", "tubingen.jpg"))
  p.add_argument("--style", default=os.path.join(SHARED, "data", "style_images", "style", "starry_night_vangogh.jpg"))
  p.add_argument("--weights", default=os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5"),
                 help="Keras VGG19 notop HDF5, 'download', or 'random' (tests)")
  p.add_argument("--image_size", type=int, default=d.image_size, help="longest side (px)")
  p.add_argument("--num_steps", type=int, default=d.num_steps, help="L-BFGS iterations per figure")
  p.add_argument("--figures", default=",".join(gf.FIGURES))
  p.add_argument("--content_layers", default=",".join(gf.CONTENT_RECON_LAYERS),
                 help="layers of the content reconstructions (fig2_content), one panel each; "
                      "VGG19 names: conv1_1 .. conv5_4, pool1 .. pool5")
  p.add_argument("--style_layers", default=",".join(gf.STYLE_LAYERS),
                 help="style layers; the panels of fig2_style and the rows of fig3 use the first "
                      "1, 2, ... of them with equal weights")
  p.add_argument("--fig3_content_layer", default=gf.CONTENT_LAYER, help="content layer of fig3")
  p.add_argument("--ratios", default=",".join(f"{r:g}" for r in gf.RATIOS),
                 help="fig3's columns: alpha/beta values (e.g. 1e-2 alone for the paper's last column)")
  p.add_argument("--lbfgs_memory", type=int, default=d.lbfgs_memory)
  p.add_argument("--linesearch_steps", type=int, default=d.linesearch_steps,
                 help="most evaluations per line search")
  p.add_argument("--noise_scale", type=float, default=d.noise_scale,
                 help="uniform(-s, s) around the mean colour")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--log_every", type=int, default=d.log_every)
  p.add_argument("--checkpoint_every", type=int, default=d.checkpoint_every)
  p.add_argument("--panel_inches", type=float, default=d.panel_inches,
                 help="size of one panel in the PNG grids (inches, > 0)")
  p.add_argument("--dpi", type=int, default=d.dpi, help="resolution of the PNG grids (>= 1)")
  p.add_argument("--combine", default="",
                 help="comma-separated finished fig3 runs (each some --ratios): write their "
                      "columns side by side into --out; nothing is optimized. An --out that "
                      "holds a figure combined from other runs or settings is refused; the "
                      "same combine again rewrites the same panels and losses and redraws "
                      "fig3.png (--panel_inches / --dpi may differ)")
  a = vars(p.parse_args(argv))
  out, combine = a.pop("out"), a.pop("combine")
  if combine:
    # here, not at the end: matplotlib refused them with a traceback after the work
    gf.check_figure_size(a["panel_inches"], a["dpi"])
    return [r for r in combine.split(",") if r], out, a["panel_inches"], a["dpi"]
  for k in ("figures", "content_layers", "style_layers"):
    a[k] = tuple(s for s in a[k].split(",") if s)
  try:
    a["ratios"] = tuple(float(r) for r in a["ratios"].split(",") if r)
  except ValueError:
    raise gf.GatysSettingsError(f"--ratios={a['ratios']}: expected comma-separated numbers")
  return gf.Settings(**a), out


@cli.guarded   # user errors: one line on stderr, exit 2; SIGTERM / SIGINT: 143 / 130
def main(argv=None):
  from style_jax import gatys_figures as gf
  parsed = parse(argv)
  log = lambda s: print(s, flush=True)
  if len(parsed) == 4:   # --combine: the finished runs, --out and the grid's size
    runs, out, inches, dpi = parsed
    from style_jax import gatys_combine
    return gatys_combine.combine_fig3(runs, out, log=log, panel_inches=inches, dpi=dpi)
  settings, out = parsed
  return gf.reproduce(settings, out, log=log)


if __name__ == "__main__":
  main()
