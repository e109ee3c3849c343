"""Gatys et al. (2015) Figure 3 combined from runs that each optimized some of its columns
(``reproduce_gatys.py --combine``): their panels side by side, checked to belong together."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Callable

import numpy as np

from infra import files, outdirs
from style_jax.gatys_figures import (RESULTS_FILE, SETTINGS_FILE, GatysSettingsError, Settings,
                                     panels, reference_images, save_grid, save_panels)

# settings a combined figure may take from any of its runs, or from --panel_inches / --dpi:
# they change neither its panels nor its losses
COMBINE_FREE = ("figures", "ratios", "panel_inches", "dpi", "log_every", "checkpoint_every")


def finished_fig3(run: str) -> tuple[Settings, dict, np.ndarray]:
  """A finished fig3 run in directory ``run``: its settings, results and uint8 panels."""
  paths = [os.path.join(run, f) for f in (SETTINGS_FILE, RESULTS_FILE, "fig3_panels.npz")]
  for path in paths:
    if not os.path.isfile(path):
      raise GatysSettingsError(f"--combine: {path} is missing (run {run} has no finished fig3)")
  saved = files.read_json(paths[0])
  fields = {f.name for f in dataclasses.fields(Settings)}
  settings = Settings(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in saved.items() if k in fields})
  result = files.read_json(paths[1]).get("figures", {}).get("fig3")
  if result is None or result["iterations"] != settings.num_steps:
    raise GatysSettingsError(f"--combine: {paths[1]} has no fig3 finished at "
                             f"{settings.num_steps} iterations")
  n = len(settings.style_layers) * len(settings.ratios)
  try:
    with np.load(paths[2], allow_pickle=False) as z:
      pan = z["panels"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise GatysSettingsError(f"--combine: {paths[2]} does not read as fig3's panels ({e}); "
                             f"run {run} again with its settings to rewrite it") from None
  if pan.dtype != np.uint8 or pan.ndim != 4 or pan.shape[0] != n or pan.shape[-1] != 3 \
      or len(result.get("final", ())) != n or len(result.get("initial", ())) != n:
    raise GatysSettingsError(f"--combine: {paths[2]} holds {pan.dtype} panels of shape "
                             f"{pan.shape} and {paths[1]} {len(result.get('final', ()))} losses; "
                             f"expected {n} uint8 (H, W, 3) panels and losses "
                             f"({len(settings.style_layers)} style layer sets x "
                             f"{len(settings.ratios)} ratios): run {run} again")
  return settings, result, pan


def check_combined_out(out: str, settings: Settings, runs: list[str]) -> None:
  """Raises GatysSettingsError when ``out`` already holds a figure combined from other runs, or
  with settings that change its panels or losses: it would be replaced. The same combine again
  (same runs, same settings; other --panel_inches / --dpi) is let through: it rewrites the
  same panels and losses and redraws fig3.png."""
  path = os.path.join(out, RESULTS_FILE)
  if outdirs.kind_of(out) != "gatys_combined":
    return
  saved = files.read_json(path)
  fig3 = saved["figures"]["fig3"]
  was, now = sorted(fig3.get("runs") or {}), sorted(os.path.abspath(r) for r in runs)
  why = []
  if was != now:
    why.append(f"combined from {was}, now from {now}")
  if not isinstance(saved.get("settings"), dict):
    why.append("its settings are not recorded")
  else:
    new = settings.to_json()
    why += [f"{k}: {saved['settings'].get(k)!r} there, {v!r} now" for k, v in new.items()
            if k not in COMBINE_FREE and saved["settings"].get(k) != v]
    if saved["settings"].get("ratios") != new["ratios"]:
      why.append(f"ratios: {saved['settings'].get('ratios')!r} there, {new['ratios']!r} now")
  if why:
    raise GatysSettingsError(f"--combine: --out {out} holds another combined figure "
                             f"({'; '.join(why)}); its fig3.png, fig3_panels.npz and "
                             f"results.json would be replaced: use another --out")


def combine_fig3(runs: list[str], out: str, log: Callable[[str], None] = print, *,
                 panel_inches: float | None = None, dpi: int | None = None) -> dict:
  """Figure 3 from runs that each optimized some of its columns (``--ratios``): their panels
  side by side, columns in increasing alpha/beta, into ``out/fig3.png``, ``fig3_panels.npz``
  and ``results.json`` (per-panel losses and each run's wall time). The runs must agree on
  every setting but the columns; each panel's optimization depends only on its own weights
  (its own L-BFGS memory and step size, the same seeded noise start), so a column comes out
  the same whichever run it was part of, up to float rounding of a different batch size.
  ``panel_inches`` / ``dpi``: the grid's size (default: the first run's).

  An ``out`` that already holds a combined figure is refused unless it was combined from the
  same runs with the same settings (``check_combined_out``): then it is rewritten with the
  same panels and losses, and fig3.png is redrawn (at another size if asked). Every file is
  written atomically (a kill leaves the old or the new one)."""
  if not runs:
    raise GatysSettingsError("--combine: expected one or more run directories")
  if os.path.abspath(out) in {os.path.abspath(r) for r in runs}:
    raise GatysSettingsError(f"--combine: --out {out} is one of the runs combined; its own "
                             f"results would be replaced by the combined figure's")
  outdirs.claim(out, "gatys_combined", "--out")   # a finished run is not a place to combine into
  loaded = [finished_fig3(r) for r in runs]
  base = {k: v for k, v in loaded[0][0].to_json().items() if k not in ("ratios", "figures")}
  for run, (s, _, _) in zip(runs[1:], loaded[1:]):
    diff = [k for k, v in s.to_json().items() if k not in ("ratios", "figures", "panel_inches",
                                                           "dpi", "log_every") and base[k] != v]
    if diff:
      raise GatysSettingsError(f"--combine: {run} differs from {runs[0]} in {', '.join(diff)}")
  columns = sorted((ratio, i, c) for i, (s, _, _) in enumerate(loaded)
                   for c, ratio in enumerate(s.ratios))
  ratios = [r for r, _, _ in columns]
  if len(set(ratios)) != len(ratios):
    raise GatysSettingsError(f"--combine: alpha/beta {ratios} appear in more than one run")
  first = loaded[0][0]
  # one replace, so that the grid's size is checked (Settings) with the panel size it is drawn
  # at; "is None", not "or": a --dpi 0 was replaced by the first run's without a word
  settings = dataclasses.replace(
      first, ratios=tuple(ratios), figures=("fig3",),
      panel_inches=first.panel_inches if panel_inches is None else panel_inches,
      dpi=first.dpi if dpi is None else dpi)
  check_combined_out(os.path.abspath(out), settings, runs)
  nrows = len(settings.style_layers)
  grid, final, initial = [], [], []
  for row in range(nrows):
    for _, i, c in columns:
      s, res, pan = loaded[i]
      k = row * len(s.ratios) + c
      grid.append(pan[k])
      final.append(res["final"][k])
      initial.append(res["initial"][k])
  rgb = np.stack(grid).astype(np.float32)
  fig = panels(settings)["fig3"]
  content_rgb, style_rgb = reference_images(settings)
  os.makedirs(out, exist_ok=True)
  save_panels(os.path.join(out, "fig3_panels.npz"), rgb.astype(np.uint8))
  save_grid(os.path.join(out, "fig3.png"), fig, rgb, content_rgb, style_rgb, settings)
  result = {"initial": initial, "final": final, "iterations": settings.num_steps,
            "panels": [f"{r} | {c}" for r in fig["rows"] for c in fig["cols"]],
            "runs": {os.path.abspath(r): {"ratios": list(s.ratios), "seconds": res["seconds"],
                                          "s_per_iteration": res.get("s_per_iteration")}
                     for r, (s, res, _) in zip(runs, loaded)}}
  results = {"settings": settings.to_json(), "figures": {"fig3": result}}
  files.write_json_atomic(os.path.join(out, RESULTS_FILE), results)
  log(f"fig3: {len(ratios)} columns from {len(runs)} run(s) -> {os.path.join(out, 'fig3.png')}")
  return results
