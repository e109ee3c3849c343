"""reproduce_gatys.py and texture_1d.py: bad settings refused before anything is written,
outputs written atomically, and output folders holding another result left alone.

Kept cheap: the --combine tests build their "finished" fig3 runs from files (settings.json,
results.json, fig3_panels.npz) instead of optimizing, and the texture runs are tiny."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from style_jax import gatys_combine, gatys_figures as gf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _image(path, h, w, seed):
  rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(path)
  return str(path)


def _args(tmp_path, out, *extra):
  content = _image(tmp_path / "c.png", 16, 16, 0)
  style = _image(tmp_path / "s.png", 16, 16, 1)
  return ["--image_size=16", "--num_steps=1", "--weights=random", f"--out={out}",
          f"--content={content}", f"--style={style}", "--style_layers=conv1_1",
          "--content_layers=conv1_2", "--fig3_content_layer=conv1_2", *extra]


def _snapshot(folder):
  return {p: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.exists() else None


def _one_line_error(capsys, call):
  with pytest.raises(SystemExit) as e:
    call()
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


# ------------------------------------------------------------ 1: layer names


@pytest.mark.parametrize("flag,value", [("--content_layers", "conv1_3"),
                                        ("--style_layers", "conv1_1,conv9_1"),
                                        ("--fig3_content_layer", "conv4_5"),
                                        ("--style_layers", "conv1_1,conv1_1")])
def test_gatys_unknown_layer_is_refused_before_anything_is_written(tmp_path, capsys, flag, value):
  """An unknown VGG19 layer was a ValueError traceback after the VGG had loaded, with
  settings.json already written (so the corrected rerun was refused as "other settings"); a
  deep one (conv9_1) first read as too small an --image_size. Now one line naming the flag and
  the valid names, and no --out."""
  gatys = load_script("reproduce_gatys")
  out = tmp_path / "g"
  err = _one_line_error(capsys, lambda: gatys.main(_args(tmp_path, out, "--figures=fig2_content",
                                                         f"{flag}={value}")))
  assert err.startswith(f"error: {flag}: ") and "px" not in err
  if "conv1_1,conv1_1" in value:
    assert "['conv1_1'] listed more than once" in err
  else:
    assert "unknown layer(s)" in err and "'conv5_4'" in err and "'pool5'" in err
  assert not out.exists()
  with pytest.raises(gf.GatysSettingsError, match=r"--style_layers: unknown layer\(s\) \['conv9_1'\]"):
    gf.Settings(content="c", style="s", weights="random", style_layers=("conv9_1",))


def test_gatys_settings_left_by_a_run_that_failed_on_a_layer_name_are_explained(tmp_path, capsys):
  """Folders left by the old failure hold a settings.json naming the bad layer, which refuses
  the corrected rerun: the refusal says why (nothing is deleted)."""
  gatys = load_script("reproduce_gatys")
  out = tmp_path / "g"
  out.mkdir()
  settings, _ = gatys.parse(_args(tmp_path, out, "--figures=fig2_content"))
  left = {**settings.to_json(), "content_layers": ["conv1_3"]}
  (out / gf.SETTINGS_FILE).write_text(json.dumps(left))
  err = _one_line_error(capsys, lambda: gatys.main(_args(tmp_path, out, "--figures=fig2_content")))
  assert "content_layers: ['conv1_3'] there, ['conv1_2'] now" in err
  assert "it names layer(s) ['conv1_3'] that VGG19 lacks" in err
  assert json.loads((out / gf.SETTINGS_FILE).read_text()) == left


# ------------------------------------------------------------ 2: --dpi, --panel_inches


@pytest.mark.parametrize("flag,match", [("--dpi=0", "--dpi: expected a positive integer, got 0"),
                                        ("--panel_inches=-1", "--panel_inches: expected a positive"),
                                        ("--panel_inches=nan", "--panel_inches: .* got nan"),
                                        ("--panel_inches=inf", "--panel_inches: .* got inf"),
                                        ("--dpi=100000", "matplotlib draws less than 65536 px")])
def test_gatys_bad_figure_size_is_refused_at_flag_parsing(tmp_path, capsys, flag, match):
  """--dpi 0, --panel_inches -1 / nan ran the whole optimization, then matplotlib raised a
  traceback at the first savefig; --combine replaced a --dpi 0 by the first run's silently."""
  gatys = load_script("reproduce_gatys")
  with pytest.raises(gf.GatysSettingsError, match=match):
    gatys.parse(_args(tmp_path, tmp_path / "g", flag))
  if flag != "--dpi=100000":   # the grid's size is known only once the runs are read
    with pytest.raises(gf.GatysSettingsError, match=match):
      gatys.parse([f"--combine={tmp_path / 'a'}", f"--out={tmp_path / 'c'}", flag])
  err = _one_line_error(capsys, lambda: gatys.main(_args(tmp_path, tmp_path / "g", flag)))
  assert flag.split("=")[0] in err or "--panel_inches" in err
  assert not (tmp_path / "g").exists()


# ------------------------------------------------------------ 3, 4: --combine


def _fake_fig3_run(tmp_path, name, ratios, seed):
  """A finished fig3 run as reproduce() leaves it, made from files: settings.json,
  results.json (fig3 at num_steps) and fig3_panels.npz."""
  args = _args(tmp_path, tmp_path / name, "--figures=fig3",
               f"--ratios={','.join(f'{r:g}' for r in ratios)}")
  settings, out = load_script("reproduce_gatys").parse(args)
  os.makedirs(out)
  n = len(ratios)
  rng = np.random.default_rng(seed)
  with open(os.path.join(out, gf.SETTINGS_FILE), "w") as f:
    json.dump(settings.to_json(), f)
  fig3 = {"initial": [10.0 + seed] * n, "final": rng.uniform(1, 2, n).tolist(), "iterations": 1,
          "seconds": 1.0 + seed, "s_per_iteration": 0.5, "panels": [f"conv1_1 | {r}" for r in ratios]}
  with open(os.path.join(out, gf.RESULTS_FILE), "w") as f:
    json.dump({"settings": settings.to_json(), "figures": {"fig3": fig3}}, f)
  np.savez_compressed(os.path.join(out, "fig3_panels.npz"),
                      panels=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
  return str(out)


def test_gatys_combine_refuses_a_folder_combined_from_other_runs(tmp_path, capsys):
  """--combine g1,g2 into gc, then g1 alone into gc: exit 0, gc's fig3.png, fig3_panels.npz
  and results.json (its ratios) replaced. Now refused, gc unchanged; the same combine again
  (another --dpi too) rewrites the same panels and losses."""
  gatys = load_script("reproduce_gatys")
  g1 = _fake_fig3_run(tmp_path, "g1", [1e-2], 1)
  g2 = _fake_fig3_run(tmp_path, "g2", [1e-3], 2)
  gc = tmp_path / "gc"
  first = gatys.main([f"--combine={g1},{g2}", f"--out={gc}"])
  assert first["settings"]["ratios"] == [1e-3, 1e-2]
  before = _snapshot(gc)
  err = _one_line_error(capsys, lambda: gatys.main([f"--combine={g1}", f"--out={gc}"]))
  assert f"--out {gc} holds another combined figure" in err and "use another --out" in err
  assert _snapshot(gc) == before
  g3 = _fake_fig3_run(tmp_path, "g3", [1e-4], 3)   # other runs, same columns count
  _one_line_error(capsys, lambda: gatys.main([f"--combine={g1},{g3}", f"--out={gc}"]))
  assert _snapshot(gc) == before
  # the same combine again, listed in another order and drawn at another size: same content
  again = gatys.main([f"--combine={g2},{g1}", f"--out={gc}", "--dpi=60"])
  assert again["figures"]["fig3"] == first["figures"]["fig3"]
  np.testing.assert_array_equal(np.load(gc / "fig3_panels.npz")["panels"],
                                np.load(io.BytesIO(before[gc / "fig3_panels.npz"]))["panels"])
  assert again["settings"]["dpi"] == 60


@pytest.mark.parametrize("damage", ["torn", "empty", "other_key", "fewer_panels"])
def test_gatys_combine_names_a_panels_file_that_does_not_read(tmp_path, capsys, damage):
  """A fig3_panels.npz cut short (it was written in place: a kill tore it) was read by an
  unguarded np.load: a BadZipFile / EOFError / KeyError traceback; one with too few panels an
  IndexError. Now one line naming the file."""
  gatys = load_script("reproduce_gatys")
  g1 = _fake_fig3_run(tmp_path, "g1", [1e-2, 1e-3], 1)
  npz = os.path.join(g1, "fig3_panels.npz")
  data = open(npz, "rb").read()
  if damage == "torn":
    open(npz, "wb").write(data[:len(data) // 2])
  elif damage == "empty":
    open(npz, "wb").write(b"")
  elif damage == "other_key":
    np.savez_compressed(npz, images=np.zeros((2, 16, 16, 3), np.uint8))
  else:
    np.savez_compressed(npz, panels=np.zeros((1, 16, 16, 3), np.uint8))
  err = _one_line_error(capsys, lambda: gatys.main([f"--combine={g1}", f"--out={tmp_path / 'gc'}"]))
  assert f"--combine: {npz} " in err and f"run {g1} again" in err
  assert not (tmp_path / "gc").exists()


def test_gatys_panels_and_grids_are_written_atomically(tmp_path, monkeypatch):
  """fig3_panels.npz and fig3.png were written in place: a write killed half way (here: an
  exception after the first bytes) left a torn file where the previous one was. Now the
  previous files stay whole and no temporary file is left."""
  import matplotlib.figure
  gatys = load_script("reproduce_gatys")
  g1 = _fake_fig3_run(tmp_path, "g1", [1e-2], 1)
  gc = tmp_path / "gc"
  gatys.main([f"--combine={g1}", f"--out={gc}"])
  before = _snapshot(gc)

  class Killed(Exception):
    pass

  def torn(target, *a, **k):
    if hasattr(target, "write"):
      target.write(b"torn")
    else:
      with open(target, "wb") as f:
        f.write(b"torn")
    raise Killed()

  savez = np.savez_compressed
  monkeypatch.setattr(np, "savez_compressed", torn)
  with pytest.raises(Killed):
    gatys_combine.combine_fig3([g1], str(gc))
  assert _snapshot(gc) == before
  monkeypatch.setattr(np, "savez_compressed", savez)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, fname, **k: torn(fname))
  with pytest.raises(Killed):
    gatys_combine.combine_fig3([g1], str(gc))
  after = _snapshot(gc)   # no torn file, no temporary left beside them
  assert sorted(after) == sorted(before)
  npz = gc / "fig3_panels.npz"   # rewritten whole before the grid (a zip: its time stamps differ)
  np.testing.assert_array_equal(np.load(npz)["panels"], np.load(io.BytesIO(before[npz]))["panels"])
  assert {p: b for p, b in after.items() if p != npz} == {p: b for p, b in before.items() if p != npz}


# ------------------------------------------------------------ 5, 6: texture_1d


def _texture(out, *flags):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "texture_1d.py"), f"--out={out}",
       "--length=128", "--widths=4,8", "--layers=conv1_1,conv2_1", *flags],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5"))


def test_texture_1d_prints_and_saves_the_loss_after_the_step_it_names(tmp_path):
  """"step 50/50: gram loss X" printed the loss before the 50th step (projected_step returns
  the value at the point it starts from): X was not the final loss, and history lagged one
  step behind. Now the last printed loss and history entry are gram_loss_final."""
  import re
  r = _texture(tmp_path / "t", "--steps=50")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / "t" / "results.json").read_text())
  printed = float(re.search(r"^step 50/50: gram loss (\S+)$", r.stdout, re.M).group(1))
  assert printed == float(f"{res['gram_loss_final']:.4g}")
  assert res["history"][-1] == res["gram_loss_final"]
  assert res["history"][0] == res["gram_loss_start"] and res["history_steps"] == [0, 50]
  r = _texture(tmp_path / "t", "--steps=50", "--log_every=25")   # the same settings: recomputed
  assert r.returncode == 0, r.stderr[-3000:]
  again = json.loads((tmp_path / "t" / "results.json").read_text())
  assert again["history_steps"] == [0, 25, 50] and again["history"][-1] == res["gram_loss_final"]


def test_texture_1d_refuses_an_out_holding_a_result_of_other_settings(tmp_path):
  """A rerun into --out with other settings replaced results.json and texture_1d.png, exit 0.
  Now refused before any work (the files unchanged), naming what differs; one that does not
  record its settings (written before they were saved) is refused too."""
  out = tmp_path / "t"
  out.mkdir()
  saved = {"kind": "texture_1d", "length": 128, "ekg_seed": 0, "widths": [4, 8],
           "layers": ["conv1_1", "conv2_1"], "steps": 5, "seed": 0, "gram_loss_final": 1.0}
  (out / "results.json").write_text(json.dumps(saved))
  (out / "texture_1d.png").write_bytes(b"the old figure")
  before = _snapshot(out)
  r = _texture(out, "--steps=2")
  assert r.returncode == 2, r.stderr[-3000:]
  err = r.stderr.strip().splitlines()[-1]
  assert err.startswith(f"error: --out {out} holds a texture_1d result of other settings "
                        f"(steps: 5 there, 2 now)") and "use another --out" in err
  assert _snapshot(out) == before
  del saved["seed"]
  (out / "results.json").write_text(json.dumps(saved))
  before = _snapshot(out)
  r = _texture(out, "--steps=5")
  assert r.returncode == 2 and "it records no seed" in r.stderr, r.stderr[-3000:]
  assert _snapshot(out) == before
