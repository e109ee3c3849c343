"""Receptive fields vs brute-force input gradients, streaming top-k vs a NumPy pass over
the whole dataset, model geometry (VGG, small_cnn) and scripts/visualize_units.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from facenet_jax import models
from infra import convolution, units, vgg

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# (kind, kernel, stride, low pad, high pad): convs with all-positive weights and average
# pools, so every input pixel a unit depends on has a strictly positive gradient
NET_1D = [("conv", 3, 1, 1, 1), ("pool", 2, 2, 0, 0), ("conv", 5, 2, 2, 1), ("conv", 3, 1, 0, 0),
          ("pool", 3, 2, 1, 1), ("conv", 1, 1, 0, 0), ("conv", 4, 3, 2, 2)]


def _forward(x, net, upto):
  """x (B, *S, 1) through the first ``upto`` layers of ``net`` (ones kernels, avg pools)."""
  rank = x.ndim - 2
  for kind, k, s, lo, hi in net[:upto]:
    if kind == "conv":
      w = jnp.ones((k,) * rank + (1, 1), x.dtype)
      dn = convolution.channels_last_dn(x.ndim)
      x = jax.lax.conv_general_dilated(x, w, (s,) * rank, [(lo, hi)] * rank, dimension_numbers=dn)
    else:
      x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1,) + (k,) * rank + (1,),
                                (1,) + (s,) * rank + (1,), [(0, 0)] + [(lo, hi)] * rank + [(0, 0)])
  return x


def _supports(x, net, upto):
  """Per output unit (flattened), the bounding box [start, stop) of the input pixels with a
  nonzero gradient: the brute-force receptive field, from the whole Jacobian at once."""
  jac = jax.jit(jax.jacrev(lambda x: _forward(x, net, upto)[0, ..., 0].ravel()))(x)
  out = []
  for row in np.asarray(jac)[..., 0]:
    nz = np.argwhere(row[0] != 0)
    out.append((nz.min(0).tolist(), (nz.max(0) + 1).tolist()))
  return out


def test_receptive_field_matches_brute_force_gradient_1d_every_unit():
  x = jnp.ones((1, 61, 1), jnp.float32)
  rfs = units.receptive_fields([(k, s, lo) for _, k, s, lo, _ in NET_1D])
  assert [int(r.size[0]) for r in rfs] == [3, 4, 12, 20, 28, 28, 52]
  for upto in range(1, len(NET_1D) + 1):
    for i, got in enumerate(_supports(x, NET_1D, upto)):
      start, stop = rfs[upto - 1].box([i])
      assert got == (np.maximum(start, 0).tolist(), np.minimum(stop, 61).tolist()), (upto, i)


def test_receptive_field_matches_brute_force_gradient_2d():
  net = [("conv", 3, 1, 1, 1), ("pool", 2, 2, 0, 0), ("conv", 3, 2, 0, 0), ("conv", 3, 1, 1, 1)]
  x = jnp.ones((1, 23, 23, 1), jnp.float32)
  rf = units.receptive_fields([(k, s, lo) for _, k, s, lo, _ in net], rank=2)[-1]
  assert rf.size.tolist() == [16, 16] and rf.jump.tolist() == [4, 4]
  n_out = _forward(x, net, len(net)).shape[1:3]
  for flat, got in enumerate(_supports(x, net, len(net))):
    start, stop = rf.box(np.unravel_index(flat, n_out))
    assert got == (np.maximum(start, 0).tolist(), np.minimum(stop, 23).tolist()), flat


def test_vgg_receptive_fields_are_the_known_values():
  names = [n for n, *_ in vgg.layer_geometry(19)]
  rfs = dict(zip(names, units.receptive_fields([g[1:] for g in vgg.layer_geometry(19)], 2)))
  assert {n: int(rfs[n].size[0]) for n in ("conv1_1", "conv1_2", "conv2_2", "conv3_4", "conv4_4",
                                           "conv5_4", "pool5")} == dict(
      conv1_1=3, conv1_2=5, conv2_2=14, conv3_4=48, conv4_4=116, conv5_4=252, pool5=268)
  assert int(rfs["conv5_4"].jump[0]) == 16 and int(rfs["conv5_4"].offset[0]) == -118
  vgg16 = units.receptive_fields([g[1:] for g in vgg.layer_geometry(16)], 2)
  assert int(vgg16[[n for n, *_ in vgg.layer_geometry(16)].index("conv5_3")].size[0]) == 196


def test_small_cnn_geometry_features_and_gradient_support():
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", embedding_dim=8, spatial_dims=2,
                                       widths=(4, 8), dtype="float32"))
  model = models.create_model(cfg, in_channels=1, rngs=nnx.Rngs(0))
  geo = model.layer_geometry()
  assert geo[:3] == [("conv1_1", (3, 3), (1, 1), (1, 1)), ("conv1_2", (3, 3), (1, 1), (1, 1)),
                     ("pool1", (2, 2), (2, 2), (0, 0))]
  rfs = dict(zip([g[0] for g in geo], units.receptive_fields([g[1:] for g in geo], 2)))
  assert [int(rfs[n].size[0]) for n in ("conv1_2", "pool1", "conv2_2", "pool2")] == [5, 6, 14, 16]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 20, 20, 1), np.float32))
  feats = model.features(x, ("conv2_2", "pool2"))
  np.testing.assert_allclose(model.head(feats["pool2"], False), model(x, train=False), atol=1e-6)
  with pytest.raises(ValueError, match="unknown small_cnn layer"):
    model.features(x, ("conv9_1",))
  # every input pixel a unit depends on lies in its computed receptive field
  for name in ("conv1_2", "conv2_2", "pool2"):
    a = feats[name][0] if name in feats else model.features(x, (name,))[name][0]
    pos = np.unravel_index(int(jnp.argmax(a[..., 0])), a.shape[:2])
    unit = lambda x: model.features(x, (name,))[name][(0, *pos, 0)]
    g = jax.jit(jax.grad(unit))(x)
    nz = np.argwhere(np.asarray(g[0, ..., 0]) != 0)
    start, stop = rfs[name].box(pos)
    assert nz.size and np.all(nz.min(0) >= np.maximum(start, 0))
    assert np.all(nz.max(0) < np.minimum(stop, 20))


def test_streaming_topk_equals_numpy_over_the_whole_dataset():
  rng = np.random.default_rng(0)
  acts = rng.standard_normal((37, 5, 6, 7)).astype(np.float32)   # N images, 5x6 positions, C
  k, batch = 4, 8
  buf = units.init_topk(7, k, 2)
  for i in range(0, 37, batch):
    chunk = acts[i:i + batch]
    valid = np.arange(batch) < chunk.shape[0]
    chunk = np.concatenate([chunk, np.full((batch - chunk.shape[0],) + chunk.shape[1:], 1e9,
                                           np.float32)])          # padding rows must not count
    buf = units.update_topk(buf, chunk, np.arange(i, i + batch), valid)
  flat = acts.reshape(37, -1, 7)
  best, where = flat.max(1), flat.argmax(1)                        # (N, C)
  for c in range(7):
    order = np.argsort(-best[:, c], kind="stable")[:k]
    np.testing.assert_array_equal(np.asarray(buf["image"][c]), order)
    np.testing.assert_allclose(np.asarray(buf["value"][c]), best[order, c])
    np.testing.assert_array_equal(np.asarray(buf["position"][c]),
                                  np.stack(np.unravel_index(where[order, c], (5, 6)), -1))
  small = units.update_topk(units.init_topk(2, 5, 1), acts[:3, :, 0, :2], np.arange(3),
                            np.ones(3, bool))
  assert np.asarray(small["image"])[:, 3:].tolist() == [[-1, -1], [-1, -1]]


def test_crop_box_fills_outside_the_image():
  img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  p = units.crop_box(img, (-1, 2), (2, 6), fill=99)
  assert p.shape == (3, 4, 1)
  assert p[..., 0].tolist() == [[99] * 4, [2, 3, 99, 99], [6, 7, 99, 99]]


def test_visualize_units_script_writes_pngs_and_index(tmp_path):
  data = tmp_path / "data" / "a"
  data.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(data / f"{i}.png")
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "visualize_units.py"),
                      "--model=vgg19", "--weights=random", f"--data={tmp_path / 'data'}",
                      f"--out={out}", "--layers=conv2_1,conv1_2", "--image_size=16", "--tiles=2",
                      "--k=3", "--units=2", "--batch_size=8"],
                     capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu",
                               # the tests' persistent compilation cache (conftest.py)
                               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5"))
  assert r.returncode == 0, r.stderr[-3000:]
  index = json.load(open(out / "units.json"))
  assert index["inputs"] == 20 and list(index["layers"]) == ["conv1_2", "conv2_1"]
  layer = index["layers"]["conv2_1"]
  assert layer["receptive_field"] == [10, 10] and layer["channels"] == 128
  top = layer["units"][layer["shown_units"][0]]["top"]
  assert len(top) == 3 and top[0]["activation"] >= top[1]["activation"] >= top[2]["activation"]
  # a slot where the unit is 0 over the whole input is marked (argmax put it at (0, 0)) and not drawn
  every = [t for lay in index["layers"].values() for u in lay["units"] for t in u["top"]]
  assert all(t["fired"] == (t["activation"] > 0) for t in every)
  start, stop = np.array(top[0]["box"])
  assert (stop - start).tolist() == [10, 10]
  assert np.all(start == np.array(top[0]["position"]) * 2 - 4)
  for name in ("conv1_2", "conv2_1"):
    assert os.path.getsize(out / f"units_{name}.png") > 1000
  assert re.search(r"conv2_1\s+10x10\s+2\s+128", r.stdout), r.stdout
  # a rerun into the same folder (other data or layers) mixed two results' PNGs: refused
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "visualize_units.py"),
                      "--model=vgg19", "--weights=random", f"--data={tmp_path / 'data'}",
                      f"--out={out}", "--layers=conv1_2"], capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
      f"error: --out={out} holds the result of an earlier run (units.json)"), r.stderr
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _visualize(*args, timeout=120):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "visualize_units.py"), *args],
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_visualize_units_refuses_sizes_and_aligned_runs_before_the_forward_pass(tmp_path):
  """An --image_size below what the layers need was a traceback after every image was decoded,
  one of 40,000 px a 4.8 GB allocation per image, and a face run trained on aligned crops was
  ranked on central crops, exit 0 (an audit)."""
  data = tmp_path / "data"
  data.mkdir()
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "a.png")
  common = ["--model=vgg19", "--weights=random", f"--data={data}"]
  r = _visualize(*common, f"--out={tmp_path / 'o1'}", "--layers=conv5_4,conv5_4", "--image_size=8")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      "error: --image_size=8: the layers ['conv5_4'] need at least 16 px per side (one halving "
      "per pooling)"), r.stderr[-2000:]
  r = _visualize(*common, f"--out={tmp_path / 'o2'}", "--image_size=40000")
  assert r.returncode == 2 and "--image_size=40000 x --tiles=1 = 40000 px per side; at most 4096" in r.stderr
  from configs.facenet import get_config
  from infra.overrides import with_overrides
  run = tmp_path / "run"
  run.mkdir()
  c = with_overrides(get_config("tiny"), {"data.align": "mtcnn"})
  (run / "config.json").write_text(json.dumps(c.to_dict()))
  r = _visualize(f"--model={run}", f"--data={data}", f"--out={tmp_path / 'o3'}")
  assert r.returncode == 2 and "config.data.align='mtcnn': the network was trained on aligned" in r.stderr, \
      r.stderr[-2000:]
  assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
