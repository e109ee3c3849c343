"""infra/vgg.py: Keras equivalence, the HDF5 loader's errors, Caffe preprocessing, download cache."""

import hashlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import SHARED
from infra import vgg, vgg_weights

SHARED_WEIGHTS = os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5")


def _random_params(depth, seed=0, scale=1.0):
  """Keras-layout random weights: {"blockB_convC": (kernel HWIO, bias)}, He-scaled."""
  rng = np.random.default_rng(seed)
  model = vgg.VGG(depth, rngs=None)
  out = {}
  for name in model.conv_layers():
    kshape = getattr(model, name).kernel.shape
    k = rng.standard_normal(kshape).astype(np.float32) * np.sqrt(2.0 / (9 * kshape[2])) * scale
    b = rng.standard_normal(kshape[3]).astype(np.float32) * 0.1
    out[name] = (k, b)
  return out


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("w") / "vgg19_random_notop.h5")
  vgg_weights.save_keras_weights(_random_params(19), path)
  return path


def test_layer_names_and_min_sizes():
  names = vgg.layer_names(19)
  assert names[:3] == ("conv1_1", "conv1_2", "pool1") and names[-1] == "pool5"
  assert len([n for n in names if n.startswith("conv")]) == 16
  assert len([n for n in vgg.layer_names(16) if n.startswith("conv")]) == 13
  assert vgg.keras_name("conv4_2") == "block4_conv2" and vgg.keras_name("pool3") == "block3_pool"
  assert vgg.min_input_size(["conv1_1"]) == 1
  assert vgg.min_input_size(["conv4_2"]) == 8
  assert vgg.min_input_size(["conv1_1", "conv5_1"]) == 16
  assert vgg.min_input_size(["pool5"]) == 32
  with pytest.raises(ValueError, match="conv9"):
    vgg.min_input_size(["conv9"])


def test_caffe_preprocessing_inverse_is_exact():
  rgb = np.broadcast_to(np.arange(256, dtype=np.float32)[:, None, None], (256, 2, 3)).copy()
  rgb[:, 1] = rgb[::-1, 0]   # each channel sees every 8-bit value
  x = np.asarray(vgg.preprocess_caffe(rgb))
  # BGR order, mean subtracted
  np.testing.assert_array_equal(x[..., 0], rgb[..., 2] - np.float32(103.939))
  np.testing.assert_array_equal(x[..., 2], rgb[..., 0] - np.float32(123.68))
  np.testing.assert_array_equal(np.asarray(vgg.deprocess_caffe(x)), rgb)   # exact on 8-bit values
  r = np.random.default_rng(0).uniform(0, 255, (1000, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(vgg.deprocess_caffe(vgg.preprocess_caffe(r))), r,
                             rtol=0, atol=3e-5)   # float32: within an ulp of 255
  lo, hi = vgg.caffe_bounds()
  np.testing.assert_array_equal(np.asarray(vgg.deprocess_caffe(lo)), [0, 0, 0])
  np.testing.assert_allclose(np.asarray(vgg.deprocess_caffe(hi)), [255, 255, 255], atol=1e-5)


def test_vgg19_matches_keras(vgg19_file, monkeypatch):
  """Our forward pass equals keras.applications.VGG19 loaded from the same HDF5 file."""
  os.environ["KERAS_BACKEND"] = "jax"
  keras = pytest.importorskip("keras", reason="keras>=3 (requirements.txt) not installed")
  if keras.backend.backend() != "jax":
    pytest.skip(f"keras already imported with the {keras.backend.backend()} backend")
  # Keras draws its 20M initial weights with one compiled jax op per kernel shape (~15 s on
  # 2 cores); load_weights overwrites them all, so build with zeros instead
  monkeypatch.setattr(keras.initializers.GlorotUniform, "__call__",
                      lambda self, shape, dtype=None: np.zeros(shape, np.float32))
  h, w = 36, 32
  km = keras.applications.VGG19(weights=None, include_top=False, input_shape=(h, w, 3))
  km.load_weights(vgg19_file)
  names = [n for n in vgg.layer_names(19) if n.endswith("_1") or n.startswith("pool")]
  names += ["conv4_2", "conv5_4"]
  sub = keras.Model(km.input, [km.get_layer(vgg.keras_name(n)).output for n in names])
  rgb = np.random.default_rng(1).uniform(0, 255, (2, h, w, 3)).astype(np.float32)
  k_in = keras.applications.vgg19.preprocess_input(rgb.copy())
  x = vgg.preprocess_caffe(rgb)
  np.testing.assert_allclose(np.asarray(x), k_in, atol=1e-4)
  k_out = dict(zip(names, [np.asarray(o) for o in sub(k_in)]))

  graphdef, state = nnx.split(vgg.load_vgg(vgg19_file, depth=19, pooling="max"))
  ours = jax.jit(lambda s, x: nnx.merge(graphdef, s).features(x, names))(state, x)
  assert set(ours) == set(names)
  for n in names:
    ref = k_out[n]
    assert ours[n].shape == ref.shape, n
    np.testing.assert_allclose(np.asarray(ours[n]), ref, rtol=2e-4,
                               atol=2e-4 * float(np.abs(ref).max()), err_msg=n)


def _np_conv_relu(x, k, b):
  """3x3 'same' conv + ReLU on (H, W, C) in float64."""
  hh, ww, _ = x.shape
  p = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  y = sum(np.einsum("hwc,cd->hwd", p[i:i + hh, j:j + ww], k[i, j])
          for i in range(3) for j in range(3)) + b
  return np.maximum(y, 0)


def test_first_blocks_match_numpy_with_avg_pooling():
  """A NumPy reference of conv1_1 .. conv2_1 with Gatys' average pooling (floored odd sizes)."""
  params = _random_params(16, seed=3)
  model = vgg.VGG(16, pooling="avg", rngs=None)
  for name, (k, b) in params.items():
    getattr(model, name).kernel[...] = jnp.asarray(k)
    getattr(model, name).bias[...] = jnp.asarray(b)
  x = np.random.default_rng(2).normal(0, 50, (11, 9, 3))
  ours = model.features(jnp.asarray(x, jnp.float32), ("conv1_2", "pool1", "conv2_1"))
  a = _np_conv_relu(_np_conv_relu(x, *params["block1_conv1"]), *params["block1_conv2"])
  pool = a[:10, :8].reshape(5, 2, 4, 2, -1).mean(axis=(1, 3))
  c21 = _np_conv_relu(pool, *params["block2_conv1"])
  for got, ref in ((ours["conv1_2"], a), (ours["pool1"], pool), (ours["conv2_1"], c21)):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())


def test_features_stop_early_remat_and_errors():
  model = vgg.VGG(19, pooling="avg", rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = jnp.asarray(np.random.default_rng(0).normal(0, 30, (16, 20, 3)), jnp.float32)

  @jax.jit
  def run(x):
    m = nnx.merge(graphdef, state)
    return (m.features(x, ("conv1_1", "conv2_1")), m.features(x, ("conv2_1", "conv3_1")),
            m.features(jnp.stack([x, x]), ("conv2_1",))["conv2_1"])
  shallow, deep, batched = run(x)
  assert set(shallow) == {"conv1_1", "conv2_1"}
  assert shallow["conv2_1"].shape == (8, 10, 128)
  assert deep["conv3_1"].shape == (4, 5, 256) and "conv1_1" not in deep
  np.testing.assert_allclose(np.asarray(deep["conv2_1"]), np.asarray(shallow["conv2_1"]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(shallow["conv2_1"]), rtol=1e-5)

  # rematerialization (jax.checkpoint per block): same values and gradients
  def loss(remat, x):
    m = nnx.merge(graphdef, state)
    m.remat = remat
    f = m.features(x, ("conv1_1", "conv3_1"))
    return jnp.sum(f["conv3_1"] ** 2) + jnp.sum(f["conv1_1"])
  g0, g1 = jax.jit(lambda x: (jax.grad(lambda x: loss(False, x))(x),
                              jax.grad(lambda x: loss(True, x))(x)))(x)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-4, atol=1e-6)

  with pytest.raises(ValueError, match="conv6_1"):
    model.features(x, ("conv6_1",))
  with pytest.raises(ValueError, match="16 px"):
    model.features(x[:8], ("conv5_1",))
  with pytest.raises(ValueError, match="pooling"):
    vgg.VGG(19, pooling="median")


def _write_without(path, params, drop=None, reshape=None):
  p = dict(params)
  if drop:
    del p[drop]
  if reshape:
    k, b = p[reshape]
    p[reshape] = (k[:, :, :, : k.shape[3] // 2], b)
  vgg_weights.save_keras_weights(p, path)
  return path


def test_loader_errors_name_the_layer(tmp_path):
  params = _random_params(16, scale=0.0)
  missing = _write_without(str(tmp_path / "missing.h5"), params, drop="block3_conv2")
  with pytest.raises(vgg_weights.WeightsError, match="block3_conv2.*missing"):
    vgg.load_vgg(missing, depth=16)
  bad = _write_without(str(tmp_path / "bad.h5"), params, reshape="block4_conv1")
  with pytest.raises(vgg_weights.WeightsError, match=r"block4_conv1 kernel has shape \(3, 3, 256, 256\)"):
    vgg.load_vgg(bad, depth=16)
  ok = _write_without(str(tmp_path / "vgg16.h5"), params)
  vgg.load_vgg(ok, depth=16)
  with pytest.raises(vgg_weights.WeightsError, match="block3_conv4.*missing"):   # VGG16 file, VGG19 model
    vgg.load_vgg(ok, depth=19)
  with pytest.raises(FileNotFoundError, match="nope.h5"):
    vgg.load_vgg(str(tmp_path / "nope.h5"))
  (tmp_path / "text.h5").write_text("not hdf5")
  with pytest.raises(vgg_weights.WeightsError, match="text.h5"):
    vgg.load_vgg(str(tmp_path / "text.h5"))


def test_vgg19_file_into_vgg16_is_an_error(vgg19_file):
  with pytest.raises(vgg_weights.WeightsError, match="block3_conv4"):
    vgg.load_vgg(vgg19_file, depth=16)


def test_fetch_uses_md5_checked_cache_and_rejects_bad_download(tmp_path, monkeypatch):
  payload = b"pretend weights"
  good_md5 = hashlib.md5(payload).hexdigest()
  url = "https://example.invalid/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
  monkeypatch.setitem(vgg_weights.WEIGHTS_URLS, 19, (url, good_md5))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_keras"))
  calls = []

  def fake_urlopen(u, timeout=None):
    calls.append(u)
    return io.BytesIO(fake_urlopen.body)
  monkeypatch.setattr(vgg_weights.urllib.request, "urlopen", fake_urlopen)

  fake_urlopen.body = b"corrupted"
  with pytest.raises(RuntimeError, match="md5"):
    vgg_weights.fetch_keras_weights(19, str(tmp_path / "cache"))
  assert os.listdir(tmp_path / "cache") == []   # no partial file left

  fake_urlopen.body = payload
  path = vgg_weights.fetch_keras_weights(19, str(tmp_path / "cache"))
  assert open(path, "rb").read() == payload and len(calls) == 2
  assert vgg_weights.fetch_keras_weights(19, str(tmp_path / "cache")) == path
  assert len(calls) == 2   # second call: served from the cache, no download


def test_shared_8bit_vgg19_loads():
  if not os.path.exists(SHARED_WEIGHTS):
    pytest.skip(f"{SHARED_WEIGHTS} absent (../shared is not part of a fresh clone)")
  model = vgg.load_vgg(SHARED_WEIGHTS, depth=19, pooling="avg")
  k = np.asarray(model.block5_conv4.kernel[...])
  assert k.shape == (3, 3, 512, 512) and k.dtype == np.float32 and np.abs(k).max() > 0
