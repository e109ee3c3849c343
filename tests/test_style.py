"""style_jax: costs against NumPy, images, configs, bad inputs, optimization, resume equivalence."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.style import get_config
from conftest import SHARED, load_script
from infra import checkpoints
from style_jax import cost, images, losses, optimize

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------- costs vs NumPy


def _np_gram(a):
  f = a.reshape(-1, a.shape[-1]).astype(np.float64)
  return f.T @ f


def test_content_costs_match_numpy():
  a_C, a_G = RNG.normal(size=(2, 5, 7, 6)).astype(np.float32)
  d = a_C.astype(np.float64) - a_G
  np.testing.assert_allclose(losses.content_cost(a_C, a_G), 0.5 * np.sum(d ** 2), rtol=1e-5)
  np.testing.assert_allclose(losses.content_cost_normalized(a_C, a_G),
                             np.sum(d ** 2) / (4 * 5 * 7 * 6), rtol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7, 6), (11, 6), (3, 4, 5, 6)])
def test_gram_and_layer_style_cost_match_numpy(shape):
  """Dimension-agnostic: (H, W, C) images, (L, C) sequences, (D, H, W, C) volumes."""
  a_S, a_G = RNG.normal(size=(2,) + shape).astype(np.float32)
  g = losses.gram_matrix(a_G)
  assert g.shape == (6, 6)
  np.testing.assert_allclose(g, _np_gram(a_G), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g, np.asarray(g).T)
  m, nc = int(np.prod(shape[:-1])), shape[-1]
  ref = np.sum((_np_gram(a_S) - _np_gram(a_G)) ** 2) / (2.0 * m * nc) ** 2
  np.testing.assert_allclose(losses.layer_style_cost(a_S, a_G), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.style_cost_from_gram(losses.normalized_gram(a_S), a_G), ref,
                             rtol=1e-5)


def test_style_cost_of_differently_sized_style_uses_per_image_means():
  a_S = RNG.normal(size=(8, 10, 4)).astype(np.float32)
  a_G = RNG.normal(size=(4, 5, 4)).astype(np.float32)
  d = _np_gram(a_S) / 80 - _np_gram(a_G) / 20
  np.testing.assert_allclose(losses.layer_style_cost(a_S, a_G), np.sum(d ** 2) / (4 * 16),
                             rtol=1e-5)
  tiled = np.tile(a_G, (2, 2, 1))   # the same statistics at 4x the size: zero cost
  assert float(losses.layer_style_cost(tiled, a_G)) < 1e-10


def test_weighted_style_sum_matches_numpy():
  layers = {"conv1_1": (6, 8, 3), "conv2_1": (3, 4, 5), "conv3_1": (2, 2, 7)}
  lam = {"conv1_1": 0.5, "conv2_1": 0.2, "conv3_1": 0.3}
  acts_S = {k: RNG.normal(size=s).astype(np.float32) for k, s in layers.items()}
  acts_G = {k: RNG.normal(size=s).astype(np.float32) for k, s in layers.items()}
  grams = {k: losses.normalized_gram(v) for k, v in acts_S.items()}
  ref = sum(lam[k] * np.sum((_np_gram(acts_S[k]) - _np_gram(acts_G[k])) ** 2)
            / (2.0 * np.prod(s)) ** 2 for k, s in layers.items())
  np.testing.assert_allclose(losses.style_cost(grams, acts_G, lam), ref, rtol=1e-5)


def test_total_variation_matches_numpy():
  x = RNG.normal(size=(6, 9, 3)).astype(np.float32)
  ref = np.sum(np.diff(x, axis=0) ** 2) + np.sum(np.diff(x, axis=1) ** 2)
  np.testing.assert_allclose(losses.total_variation(x), ref, rtol=1e-5)
  assert float(losses.total_variation(jnp.ones((5, 5, 3)))) == 0.0
  v = RNG.normal(size=(3, 4, 5, 2)).astype(np.float32)   # volumes: 3 spatial axes
  np.testing.assert_allclose(losses.total_variation(v),
                             sum(np.sum(np.diff(v, axis=a) ** 2) for a in range(3)), rtol=1e-5)


# ------------------------------------------------------------------------- images


def _write(path, array, mode=None, **save_kw):
  Image.fromarray(array, mode).save(path, **save_kw)
  return str(path)


def _content(h=40, w=40):
  yy, xx = np.mgrid[:h, :w]
  img = np.stack([xx * 255 // w, yy * 255 // h, ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 3) ** 2)
                  * 200 + 20], -1)
  return img.astype(np.uint8)


def _style(h=48, w=48):
  yy, xx = np.mgrid[:h, :w]
  return np.stack([(np.sin(xx / 2.0) > 0) * 230, (np.sin((xx + yy) / 3.0) > 0) * 180,
                   np.full_like(xx, 60)], -1).astype(np.uint8)


def test_load_image_exif_grayscale_and_errors(tmp_path):
  rgb = _content(20, 30)
  exif = Image.Exif()
  exif[0x0112] = 6   # orientation: rotate 90 degrees clockwise to display
  p = _write(tmp_path / "rotated.jpg", rgb, exif=exif.tobytes())
  assert images.load_image(p).shape == (30, 20, 3)
  gray = images.load_image(_write(tmp_path / "gray.png", rgb[..., 0]), "config.style")
  assert gray.shape == (20, 30, 3) and gray.dtype == np.uint8
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  g16 = images.load_image(_write(tmp_path / "g16.png", rgb[..., 0].astype(np.uint16) * 257))
  np.testing.assert_array_equal(g16[..., 1], rgb[..., 0])
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], -1)
  assert images.load_image(_write(tmp_path / "a.png", rgba)).shape == (20, 30, 3)
  with pytest.raises(FileNotFoundError, match="config.content.*missing.jpg"):
    images.load_image(str(tmp_path / "missing.jpg"), "config.content")
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(images.ImageError, match="config.style.*notes.txt"):
    images.load_image(str(tmp_path / "notes.txt"), "config.style")


def test_resize_save_and_preserve_colors(tmp_path):
  img = _content(30, 60)
  assert images.size_for_longest(img.shape, 20) == (10, 20)
  small = images.resize_longest(img, 20)
  assert small.shape == (10, 20, 3) and small.dtype == np.float32
  p = images.save_png(str(tmp_path / "o.png"), small)
  np.testing.assert_array_equal(np.asarray(Image.open(p)), images.to_uint8(small))

  out = RNG.uniform(0, 255, (10, 20, 3))
  content = RNG.uniform(60, 200, (10, 20, 3))
  yiq = images.rgb_to_yiq(content)
  np.testing.assert_allclose(images.yiq_to_rgb(yiq), content, atol=1e-9)
  kept = images.preserve_colors(out, content)
  mask = (kept > 0.5).all(-1) & (kept < 254.5).all(-1)   # away from the clip
  got = images.rgb_to_yiq(kept)
  np.testing.assert_allclose(got[..., 0][mask], images.rgb_to_yiq(out)[..., 0][mask], atol=1e-3)
  np.testing.assert_allclose(got[..., 1:][mask], yiq[..., 1:][mask], atol=1e-3)


# ------------------------------------------------------------------------ configs


def test_presets():
  g = get_config()
  assert g.variant == "gatys2015" and g.content_layers == "conv4_2"
  assert g.style_layers == "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1"
  assert g.content_weight / g.style_weight == pytest.approx(1e-3)
  assert g.optimizer == "lbfgs" and g.pooling == "avg"
  assert get_config("gatys2015_1e-4").style_weight == pytest.approx(1e4)
  c = get_config("course")
  assert (c.content_loss, c.content_weight, c.style_weight, c.optimizer, c.learning_rate,
          c.init) == ("normalized", 10.0, 40.0, "adam", 2.0, "content_noise")
  o = cost.objective_from_config(c)
  assert dict(o.style_layers) == {f"conv{b}_1": 0.2 for b in range(1, 6)}
  assert os.path.isabs(g.weights) and g.weights.endswith("vgg19_notop_imagenet_8bit_f16.h5")
  with pytest.raises(ValueError, match="unknown style config preset"):
    get_config("nope")
  for variant in ("gatys2015", "course", "tiny"):
    cost.check_config(get_config(variant))


def _tiny(tmp_path, **overrides):
  c = get_config("tiny")
  c.unlock()
  c.content = _write(tmp_path / "content.png", _content())
  c.style = _write(tmp_path / "style.png", _style())
  for k, v in overrides.items():
    c[k] = v
  c.lock()
  return c


@pytest.mark.parametrize("field,value,match", [
    ("style_layers", "conv1_1,conv9_1", "conv9_1"),
    ("style_layer_weights", "0.5,0.5", "3 values|2 values"),
    ("style_blend_weights", "1,2", "2 values"),
    ("optimizer", "sgd", "optimizer"),
    ("init", "zeros", "init"),
    ("num_steps", 0, "num_steps"),
])
def test_config_errors_name_the_field(tmp_path, field, value, match):
  c = _tiny(tmp_path)
  c[field] = value
  with pytest.raises(cost.StyleConfigError, match=match):
    optimize.stylize(c, str(tmp_path / "run"))


# --------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_clear_errors(tmp_path):
  c = _tiny(tmp_path)
  c.content = str(tmp_path / "nope.jpg")
  with pytest.raises(FileNotFoundError, match="config.content.*nope.jpg"):
    optimize.stylize(c, str(tmp_path / "r1"))
  c = _tiny(tmp_path)
  (tmp_path / "fake.jpg").write_bytes(b"\x00\x01 definitely not a jpeg")
  c.style = f"{c.style},{tmp_path / 'fake.jpg'}"
  with pytest.raises(images.ImageError, match="config.style.*fake.jpg"):
    optimize.stylize(c, str(tmp_path / "r2"))
  # an output smaller than conv5_1's 16 px (4 poolings), naming the file and the minimum
  gatys = "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1"
  c = _tiny(tmp_path, image_size=12, style_layers=gatys)
  with pytest.raises(images.ImageError, match=r"content.png.*12x12.*16 px.*conv5_1"):
    optimize.stylize(c, str(tmp_path / "r3"))
  c = _tiny(tmp_path, image_size=0, style_layers=gatys)
  c.content = _write(tmp_path / "small.png", _content(10, 14))
  with pytest.raises(images.ImageError, match="small.png.*16 px"):
    optimize.stylize(c, str(tmp_path / "r4"))
  # a wide content image: its short side falls below the minimum
  c = _tiny(tmp_path, image_size=32, style_layers=gatys)
  c.content = _write(tmp_path / "wide.png", _content(10, 40))
  with pytest.raises(images.ImageError, match="wide.png.*32x8"):
    optimize.stylize(c, str(tmp_path / "r5"))
  c = _tiny(tmp_path, style_scale=0.25, style_layers=gatys)   # 8 px style image at conv5_1
  with pytest.raises(images.ImageError, match="style.png.*style_scale"):
    optimize.stylize(c, str(tmp_path / "r6"))
  assert not any(os.path.exists(tmp_path / f"r{i}" / "results.json") for i in range(1, 7))


# ------------------------------------------------------------------- optimization


def test_script_lowers_the_loss_with_a_grayscale_style_blend(tmp_path):
  """scripts/stylize.py on the tiny preset: loss terms fall; PNGs and results.json written."""
  content = _write(tmp_path / "c.png", _content())
  gray = _write(tmp_path / "gray.png", _style()[..., 0])
  color = _write(tmp_path / "s.jpg", _style(40, 56))
  work = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "stylize.py"), "--config=configs/style.py:tiny",
       f"--workdir={work}", f"--config.content={content}", f"--config.style={gray},{color}",
       "--config.style_blend_weights=3,1", "--config.num_steps=6", "--config.save_every=3",
       "--config.preserve_colors=True"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "it/s" in proc.stdout and "eta" in proc.stdout
  r = json.loads((work / "results.json").read_text())
  assert set(r["initial"]) == set(r["final"]) == {"content", "style", "tv", "total"}
  assert r["final"]["total"] < 0.9 * r["initial"]["total"]
  assert r["final"]["style"] < r["initial"]["style"]
  assert r["step"] == 6 and r["sizes"] == [[32, 32]]
  out = np.asarray(Image.open(work / "final.png"))
  assert out.shape == (32, 32, 3)
  assert (work / "iter_000003.png").exists()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(work))


def _final_image(workdir):
  return np.asarray(Image.open(os.path.join(workdir, "final.png")))


def test_lbfgs_multiscale_resume_is_bit_identical(tmp_path):
  """A run killed after its step-2 checkpoint and restarted ends exactly as an uninterrupted one.

  L-BFGS over two scales (16 then 32 px, 3 steps each): the resume crosses the scale change.
  The second run reuses the first's compiled step (optimize.compiled_functions).
  """
  config = _tiny(tmp_path, optimizer="lbfgs", num_scales=2, num_steps=3, checkpoint_every=2,
                 keep_checkpoints=10, init="noise", content_loss="sum", content_weight=1.0,
                 style_weight=1e3, tv_weight=1e-3, content_layers="conv2_1",
                 style_layers="conv1_1,conv2_1")
  full = optimize.stylize(config, str(tmp_path / "full"))
  ckpts = sorted(int(s) for s in os.listdir(tmp_path / "full" / "checkpoints") if s.isdigit())
  assert ckpts == [2, 3, 4, 6]   # every 2, and at the end of each scale
  assert full["final"]["total"] < full["initial"]["total"]
  assert full["sizes"] == [[16, 16], [32, 32]]

  # "killed" after step 2: only that checkpoint exists
  part = tmp_path / "part"
  os.makedirs(part / "checkpoints")
  shutil.copytree(tmp_path / "full" / "checkpoints" / "2", part / "checkpoints" / "2")
  resumed = optimize.stylize(config, str(part))
  np.testing.assert_array_equal(_final_image(part), _final_image(tmp_path / "full"))
  assert resumed["initial"] == full["initial"]
  assert resumed["final"] == full["final"]
  # the whole optimization state at the end (image, L-BFGS memory, line-search state)
  tx = optimize.make_optimizer(config)
  target = optimize.init_state(tx, jnp.zeros((32, 32, 3)), 6)
  states = []
  for d in ("full", "part"):
    ck = checkpoints.Checkpointer(os.path.join(tmp_path, d, "checkpoints"), every=1)
    step, state, meta = ck.restore(target)
    ck.close()
    assert step == 6 and meta["scale"] == 1
    states.append(jax.device_get(state))
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b)


def test_a_run_killed_after_logging_past_its_checkpoint_logs_each_step_once(tmp_path):
  """kill -9 at step 5 of 6 with a checkpoint at 2: the resumed run logged steps 3-5 again
  beside the killed run's rows (metrics.jsonl and TensorBoard). TV is measured at weight 0
  too (it was reported as 0)."""
  from infra import metric_writer
  config = _tiny(tmp_path, optimizer="lbfgs", num_steps=6, checkpoint_every=2, keep_checkpoints=10,
                 log_every=1, tv_weight=0.0)
  full = optimize.stylize(config, str(tmp_path / "full"))
  assert full["final"]["tv"] > 0
  part = tmp_path / "part"   # the killed run: its logs up to step 5, its checkpoint at 2
  shutil.copytree(tmp_path / "full", part)
  for name in ("results.json", "final.png"):
    os.remove(part / name)
  for step in ("4", "6"):
    shutil.rmtree(part / "checkpoints" / step)
  rows = metric_writer.read_metrics(str(part))
  with open(part / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 5)
  optimize.stylize(config, str(part))
  steps = [r["step"] for r in metric_writer.read_metrics(str(part))]
  assert steps == sorted(set(steps)) == [r["step"] for r in metric_writer.read_metrics(str(tmp_path / "full"))]


def test_stop_in_the_last_step_of_a_scale_stops_the_run(tmp_path, monkeypatch, capsys):
  """SIGTERM during scale 0's last step: that step's checkpoint is the last one and the run
  raises Preempted before scale 1 (each scale is its own infra.loop.run_loop, under one stop
  flag); resumed, it ends as an uninterrupted run. Progress lines count over both scales."""
  config = _tiny(tmp_path, optimizer="lbfgs", num_scales=2, num_steps=3, checkpoint_every=100,
                 save_every=0)
  full = optimize.stylize(config, str(tmp_path / "full"))
  assert "step 3/6" in capsys.readouterr().out
  real = optimize.compiled_functions
  calls = {"n": 0}

  def stopping(*args):
    features, terms, step_fn, tx = real(*args)

    def step(*a):
      calls["n"] += 1
      if calls["n"] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*a)
    return features, terms, step, tx
  monkeypatch.setattr(optimize, "compiled_functions", stopping)
  with pytest.raises(optimize.Preempted, match="after checkpointing step 3") as e:
    optimize.stylize(config, str(tmp_path / "part"))
  assert e.value.signum == signal.SIGTERM and calls["n"] == 3
  assert os.listdir(tmp_path / "part" / "checkpoints") == ["3"]
  monkeypatch.undo()
  resumed = optimize.stylize(config, str(tmp_path / "part"))
  assert resumed["final"] == full["final"] and resumed["initial"] == full["initial"]
  np.testing.assert_array_equal(_final_image(tmp_path / "part"), _final_image(tmp_path / "full"))


@pytest.mark.parametrize("bad", ["image", "loss"])
def test_nonfinite_loss_stops_before_its_checkpoint(tmp_path, monkeypatch, bad):
  """A NaN image (loss terms at the new image) or a NaN loss returned by the step (at the old
  one) at step 3 raises NonFiniteLossError at that step's log; step 2's checkpoint is the last."""
  config = _tiny(tmp_path, num_steps=4, checkpoint_every=2, save_every=0)
  real = optimize.compiled_functions

  def poisoned(*args):
    features, terms, step_fn, tx = real(*args)

    def step(*a):
      state, value = step_fn(*a)
      if int(state["step"]) == 3:
        if bad == "image":
          state = dict(state, image=state["image"] * jnp.nan)
        else:
          value = value * jnp.nan
      return state, value
    return features, terms, step, tx
  monkeypatch.setattr(optimize, "compiled_functions", poisoned)
  with pytest.raises(optimize.NonFiniteLossError,
                     match=r"NaN/Inf by step 3 .*no checkpoint after step 2 was written"):
    optimize.stylize(config, str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]


def test_shared_images_load():
  path = os.path.join(SHARED, "data", "style_images", "style", "starry_night_vangogh.jpg")
  if not os.path.exists(path):
    pytest.skip(f"{path} absent (../shared is not part of a fresh clone)")
  img = images.load_image(path, "config.style")
  assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 16


def test_style_blend_targets_are_weighted_gram_means():
  from flax import nnx
  from infra import vgg
  graphdef, state = nnx.split(vgg.VGG(19, "avg", rngs=nnx.Rngs(0)))
  obj = cost.Objective(content_layers=("conv1_2",), style_layers=(("conv1_1", 0.5), ("conv2_1", 0.5)),
                       content_loss="sum", alpha=1.0, beta=1.0, tv_weight=0.0)
  features_fn = cost.make_features_fn(graphdef)
  cx = vgg.preprocess_caffe(_content(12, 12))
  s1 = vgg.preprocess_caffe(_style(16, 16))
  s2 = vgg.preprocess_caffe(_style(8, 12)[::-1])
  one = cost.compute_targets(features_fn, state, obj, cx, [s1], [1.0])
  first = cost.compute_targets(features_fn, state, obj, cx, [s1, s2], [2.0, 0.0])
  second = cost.compute_targets(features_fn, state, obj, cx, [s2], [1.0])
  mix = cost.compute_targets(features_fn, state, obj, cx, [s1, s2], [3.0, 1.0])
  for n in ("conv1_1", "conv2_1"):
    np.testing.assert_allclose(first["style"][n], one["style"][n], rtol=1e-6)
    np.testing.assert_allclose(mix["style"][n], 0.75 * one["style"][n] + 0.25 * second["style"][n],
                               rtol=1e-5)
  assert one["content"]["conv1_2"].shape == (12, 12, 64)


@pytest.mark.parametrize("content_loss,alpha", [("sum", 1e-2), ("normalized", 300.0)])
def test_loss_terms_equal_numpy_costs_of_the_vgg_features(content_loss, alpha):
  """make_loss_terms reports content, style, tv and total = alpha content + beta style +
  tv_weight tv, each equal to a float64 NumPy cost of the random VGG's own features.

  alpha, beta and tv_weight differ and are chosen so that each weighted term is a third or so
  of the total: swapping two weights, dropping a term, a wrong lambda_l or a content cost
  summed over one layer only all move the total by far more than the tolerance.
  """
  from flax import nnx
  from infra import vgg
  beta, tv_weight = 8.0, 0.03
  content_layers, lam = ("conv1_2", "conv2_2"), {"conv1_1": 0.7, "conv2_1": 0.3}
  graphdef, state = nnx.split(vgg.VGG(19, "avg", rngs=nnx.Rngs(0)))
  obj = cost.Objective(content_layers=content_layers, style_layers=tuple(lam.items()),
                       content_loss=content_loss, alpha=alpha, beta=beta, tv_weight=tv_weight)
  rng = np.random.default_rng(3)
  cx, sx, gx = (np.asarray(vgg.preprocess_caffe(rng.uniform(0, 255, (16, 16, 3))))
                for _ in range(3))
  features_fn = cost.make_features_fn(graphdef)
  layers = content_layers + tuple(lam)
  f = {name: {n: np.asarray(a, np.float64) for n, a in features_fn(state, x, layers).items()}
       for name, x in (("C", cx), ("S", sx), ("G", gx))}

  # Gatys eq. 1 (or the course's 1/(4 nH nW nC)), eq. 3-5, and the squared TV, in float64
  def content_np(a_C, a_G):
    sq = np.sum((a_C - a_G) ** 2)
    return 0.5 * sq if content_loss == "sum" else sq / (4.0 * a_G.size)

  def style_np(a_S, a_G):   # same size: 1/(2 M N)^2 sum (G(S) - G(G))^2
    m, nc = a_G.size // a_G.shape[-1], a_G.shape[-1]
    return np.sum((_np_gram(a_S) - _np_gram(a_G)) ** 2) / (2.0 * m * nc) ** 2

  x = gx.astype(np.float64)
  want = {"content": sum(content_np(f["C"][n], f["G"][n]) for n in content_layers),
          "style": sum(w * style_np(f["S"][n], f["G"][n]) for n, w in lam.items()),
          "tv": np.sum(np.diff(x, axis=0) ** 2) + np.sum(np.diff(x, axis=1) ** 2)}
  weighted = {"content": alpha * want["content"], "style": beta * want["style"],
              "tv": tv_weight * want["tv"]}
  want["total"] = sum(weighted.values())
  assert all(0.2 < v / want["total"] < 0.5 for v in weighted.values()), weighted

  # targets built here from the features (not by compute_targets), which must agree
  targets = {"content": {n: f["C"][n].astype(np.float32) for n in content_layers},
             "style": {n: (_np_gram(f["S"][n]) / (f["S"][n].size // f["S"][n].shape[-1]))
                       .astype(np.float32) for n in lam}}   # G(S) / M_S
  built = cost.compute_targets(features_fn, state, obj, cx, [sx], [1.0])
  for n in lam:
    np.testing.assert_allclose(built["style"][n], targets["style"][n], rtol=1e-5, atol=1e-3)
  terms = jax.jit(cost.make_loss_terms(graphdef, obj))(state, targets, gx)
  assert set(terms) == set(cost.TERMS)
  for k in cost.TERMS:
    np.testing.assert_allclose(float(terms[k]), want[k], rtol=2e-5, err_msg=k)


def test_the_final_loss_is_that_of_the_saved_png(tmp_path):
  """results.json's "final" was the loss of the optimizer's last iterate, before clipping to
  0..255 and rounding to the PNG's 8 bits (1-9% below the shown image's, more at high learning
  rates). Reference: the loss of final.png's pixels, read back from the file."""
  from infra import vgg as vgg_lib
  c = get_config("tiny")
  c.unlock()
  c.content = _write(tmp_path / "c.png", _content())
  c.style = _write(tmp_path / "s.png", _style())
  c.update(num_steps=3, optimizer="adam", learning_rate=40.0)   # big steps: pixels leave 0..255
  c.lock()
  work = str(tmp_path / "run")
  r = optimize.stylize(c, work)
  objective = cost.objective_from_config(c)
  inputs, net = optimize.load_inputs(c, objective), optimize.load_network(c, objective)
  _, targets = optimize.scale_targets(c, objective, inputs, net, len(inputs.sizes) - 1)
  png = np.asarray(Image.open(os.path.join(work, c.output)).convert("RGB"), np.float32)
  want = jax.device_get(net.terms_fn(net.vgg_state, targets, vgg_lib.preprocess_caffe(png)))
  for k in ("content", "style", "total"):
    assert r["final"][k] == pytest.approx(float(want[k]), rel=1e-5)
  assert r["final_unclipped"]["total"] != r["final"]["total"]   # rounding alone moves it


# ------------------------------------------------------------------- Gatys grids


def test_reproduce_gatys_writes_grids_and_lowers_every_panel(tmp_path):
  """scripts/reproduce_gatys.py at 32 px, random VGG, shallow layers, 3 L-BFGS iterations: one
  batched run per figure; the three PNG grids and results.json are written; every panel's loss
  went down."""
  gatys = load_script("reproduce_gatys")
  content = _write(tmp_path / "c.png", _content(24, 32))
  style = _write(tmp_path / "s.png", _style(32, 32))
  out = tmp_path / "grids"
  r = gatys.main(["--image_size=32", "--num_steps=3", "--weights=random", f"--out={out}",
                  f"--content={content}", f"--style={style}", "--style_layers=conv1_1,conv2_1",
                  "--content_layers=conv1_2,conv2_2", "--fig3_content_layer=conv2_2",
                  "--log_every=1"])
  sizes = {"fig2_style": 2, "fig2_content": 2, "fig3": 2 * 4}
  for name, n in sizes.items():
    fig = r["figures"][name]
    assert len(fig["initial"]) == len(fig["final"]) == len(fig["panels"]) == n
    assert all(np.isfinite(fig["final"])) and all(f < i for f, i in zip(fig["final"], fig["initial"]))
    assert len(fig["final_unclipped"]) == n   # the iterate's, beside the saved panels' loss
    im = Image.open(out / f"{name}.png")
    assert im.size[0] > 100 and im.size[1] > 50
  assert json.loads((out / "results.json").read_text())["figures"]["fig3"]["panels"][0] == \
      "conv1_1 | alpha/beta = 1e-05"


def _gatys_args(tmp_path, out, steps, *extra):
  content = _write(tmp_path / "c.png", _content(24, 32))
  style = _write(tmp_path / "s.png", _style(32, 32))
  return ["--image_size=32", f"--num_steps={steps}", "--weights=random", f"--out={out}",
          f"--content={content}", f"--style={style}", "--style_layers=conv1_1,conv2_1",
          "--content_layers=conv1_2", "--fig3_content_layer=conv2_2", "--figures=fig3",
          "--ratios=1e-3,1e-2", "--checkpoint_every=2", "--log_every=1", *extra]


def test_reproduce_gatys_resumes_bit_identically_and_refuses_other_settings(tmp_path, capsys):
  """A figure run stopped at iteration 2 and continued to 4 (from its checkpoint) ends with the
  same panels and losses, bit for bit, as one run of 4; a rerun into the same --out with
  another seed is refused with one line naming the field, and nothing there changes."""
  gatys = load_script("reproduce_gatys")
  straight = gatys.main(_gatys_args(tmp_path, tmp_path / "a", 4))
  gatys.main(_gatys_args(tmp_path, tmp_path / "b", 2))
  resumed = gatys.main(_gatys_args(tmp_path, tmp_path / "b", 4))
  assert "resumed from" in capsys.readouterr().out
  a, b = straight["figures"]["fig3"], resumed["figures"]["fig3"]
  assert a["final"] == b["final"] and a["initial"] == b["initial"] and b["iterations"] == 4
  assert b["panels"] == ["conv1_1 | alpha/beta = 0.001", "conv1_1 | alpha/beta = 0.01",
                         "conv1_1 .. conv2_1 | alpha/beta = 0.001",
                         "conv1_1 .. conv2_1 | alpha/beta = 0.01"]
  assert a["evaluations"] == b["evaluations"]
  assert b["s_per_iteration"] > 0   # timed over both sessions, each one's compiling step left out
  np.testing.assert_array_equal(np.load(tmp_path / "a" / "fig3_panels.npz")["panels"],
                                np.load(tmp_path / "b" / "fig3_panels.npz")["panels"])
  before = {p: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()}
  with pytest.raises(SystemExit) as e:
    gatys.main(_gatys_args(tmp_path, tmp_path / "b", 4, "--seed=1"))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "seed: 0 there, 1 now" in err and "\n" not in err
  assert {p: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.is_file()} == before
  with pytest.raises(SystemExit):   # the checkpoint holds 4: fewer iterations cannot be shown
    gatys.main(_gatys_args(tmp_path, tmp_path / "b", 3))
  assert "holds iteration 4" in capsys.readouterr().err


def test_reproduce_gatys_combines_columns_run_apart_into_one_figure(tmp_path, capsys):
  """fig3's columns optimized in two runs (--ratios 1e-2, then 1e-3) and combined give the grid
  of one run over both columns: each panel depends only on its own weights (losses to float
  rounding of the other batch size); overlapping columns or other settings are refused."""
  gatys = load_script("reproduce_gatys")
  both = gatys.main(_gatys_args(tmp_path, tmp_path / "both", 3))["figures"]["fig3"]
  args = _gatys_args(tmp_path, tmp_path / "hi", 3)
  gatys.main([a for a in args if not a.startswith("--ratios")] + ["--ratios=1e-2"])
  gatys.main([a if not a.startswith("--out") else f"--out={tmp_path / 'lo'}"
              for a in args if not a.startswith("--ratios")] + ["--ratios=1e-3"])
  got = gatys.main([f"--combine={tmp_path / 'hi'},{tmp_path / 'lo'}", f"--out={tmp_path / 'all'}"])
  fig = got["figures"]["fig3"]
  assert fig["panels"] == both["panels"]   # columns in increasing alpha/beta, whatever the order
  np.testing.assert_allclose(fig["final"], both["final"], rtol=1e-3)
  assert fig["initial"] == pytest.approx(both["initial"], rel=1e-5)
  a = np.load(tmp_path / "all" / "fig3_panels.npz")["panels"].astype(int)
  b = np.load(tmp_path / "both" / "fig3_panels.npz")["panels"].astype(int)
  assert a.shape == b.shape and np.abs(a - b).max() <= 2
  assert Image.open(tmp_path / "all" / "fig3.png").size[0] > 100
  with pytest.raises(SystemExit):
    gatys.main([f"--combine={tmp_path / 'hi'},{tmp_path / 'both'}", f"--out={tmp_path / 'x'}"])
  assert "appear in more than one run" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    gatys.main([f"--combine={tmp_path / 'hi'},{tmp_path / 'nothing'}", f"--out={tmp_path / 'x'}"])
  assert "settings.json is missing" in capsys.readouterr().err


def test_stylize_script_names_the_sizes_of_initial_and_final_loss_across_scales(tmp_path):
  """With num_scales=2 the initial terms are sums over the coarse image and the final ones over
  the full-size image: printed bare side by side they looked like one loss at two times."""
  import re
  c = _tiny(tmp_path)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, os.path.join(root, "scripts", "stylize.py"),
                      "--config=configs/style.py:tiny", f"--workdir={tmp_path / 'run'}",
                      f"--config.content={c.content}", f"--config.style={c.style}",
                      "--config.num_scales=2", "--config.num_steps=2"],
                     cwd=root, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-2000:]
  m = re.search(r"^initial \(at (\d+)x(\d+)\): content=.*\nfinal \(at (\d+)x(\d+)\): +content=",
                r.stdout, re.M)
  assert m, r.stdout
  w0, h0, w1, h1 = map(int, m.groups())
  sizes = json.load(open(tmp_path / "run" / "results.json"))["sizes"]
  assert [[h0, w0], [h1, w1]] == sizes and w0 < w1


@pytest.mark.parametrize("field,value,match", [
    ("style_layer_weights", "0,0,0,0,0", r"at least one weight must be > 0"),
    ("init_noise_scale", float("nan"), r"must be a number in \[0, 1e6\]"),
    ("init_noise_scale", -1e9, r"must be a number in \[0, 1e6\]"),
])
def test_style_settings_that_drop_a_term_or_crash_numpy_are_refused(field, value, match):
  """All-zero style layer weights gave style=0 without a word; a NaN or huge noise scale was
  a NumPy traceback."""
  from configs.style import get_config
  from style_jax import cost
  c = get_config()
  c.unlock()
  c[field] = value
  with pytest.raises(cost.StyleConfigError, match=match):
    cost.check_config(c)
