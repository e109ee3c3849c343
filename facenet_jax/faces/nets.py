"""MTCNN's three networks (Zhang et al. 2016, "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks") in Flax NNX, and their weights loader.

Layer for layer the Keras networks of the MIT-licensed ``mtcnn`` 1.0.0 package
(``mtcnn/network/{pnet,rnet,onet}.py``), whose weights ``scripts/convert_mtcnn_weights.py``
turns into one ``.npz`` of 50 float32 arrays named ``pnet/conv1/kernel``,
``pnet/prelu1/alpha``, ..., ``onet/fc6-3/bias`` (conv kernels HWIO, dense kernels (in, out)):

  P-Net  (N, H, W, 3) -> conv3x3 10, PReLU, maxpool 2/2 "same", conv3x3 16, PReLU,
         conv3x3 32, PReLU, then two 1x1 convs: box offsets (N, h, w, 4) and
         softmax scores (N, h, w, 2); h = ceil((H - 2) / 2) - 4: one 12x12 window per
         output position, stride 2.
  R-Net  (N, 24, 24, 3) -> conv3x3 28, PReLU, maxpool 3/2 "same", conv3x3 48, PReLU,
         maxpool 3/2 "valid", conv2x2 64, PReLU, transpose H and W, flatten (576),
         dense 128, PReLU, dense 4 (box offsets) and dense 2 + softmax (scores).
  O-Net  (N, 48, 48, 3) -> conv3x3 32, PReLU, maxpool 3/2 "same", conv3x3 64, PReLU,
         maxpool 3/2 "valid", conv3x3 64, PReLU, maxpool 2/2 "same", conv2x2 128, PReLU,
         transpose H and W, flatten (1152), dense 256, PReLU, dense 4 (box offsets),
         dense 10 (landmarks x1..x5, y1..y5 as fractions of the box) and dense 2 + softmax.

PReLU: ``max(x, 0) + alpha * min(x, 0)`` with one alpha per channel. "Same" max pooling
pads at the end with -inf (TensorFlow's convention: ``lax`` "SAME"). The H/W transpose
before flattening is Keras' ``Permute((2, 1, 3))``: the weights were converted from Caffe,
whose flatten order is (C, W, H)-major, and the dense kernels expect that order.

Inputs are RGB pixels scaled as ``(x - 127.5) / 128`` (:func:`normalize`).
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra.errors import UserError

_HIGHEST = jax.lax.Precision.HIGHEST   # tiny nets: keep float32 accuracy on TF32 hardware


class MTCNNWeightsError(UserError, ValueError):
  """An MTCNN weights file that cannot be read or does not fit: names the file and the array."""


def normalize(rgb: jax.Array | np.ndarray) -> jax.Array:
  """RGB pixels in 0..255 -> ``(x - 127.5) / 128``, the input scaling of the trained nets."""
  return (jnp.asarray(rgb, jnp.float32) - 127.5) / 128.0


# ----------------------------------------------------------------------------- layers


class Conv(nnx.Module):
  """A "valid" stride-1 convolution with an HWIO kernel and a bias (zeros, to be loaded)."""

  def __init__(self, k: int, cin: int, cout: int):
    self.kernel = nnx.Param(jnp.zeros((k, k, cin, cout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, self.kernel[...], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=_HIGHEST)
    return y + self.bias[...]


class Dense(nnx.Module):
  """``x @ kernel + bias`` with a (in, out) kernel."""

  def __init__(self, cin: int, cout: int):
    self.kernel = nnx.Param(jnp.zeros((cin, cout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x, self.kernel[...], precision=_HIGHEST) + self.bias[...]


class PReLU(nnx.Module):
  """``max(x, 0) + alpha * min(x, 0)``; alpha (1, 1, C) after convs, (C,) after dense."""

  def __init__(self, shape: tuple[int, ...]):
    self.alpha = nnx.Param(jnp.zeros(shape, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0) + self.alpha[...] * jnp.minimum(x, 0)


def max_pool(x: jax.Array, k: int, padding: str) -> jax.Array:
  """k x k stride-2 max pooling of (N, H, W, C); "SAME" pads the end with -inf (ceil(H/2))."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 2, 2, 1), padding)


def _flatten_wh(x: jax.Array) -> jax.Array:
  """Keras Permute((2, 1, 3)) + Flatten: (N, H, W, C) -> (N, W * H * C) in (W, H, C) order."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------- networks


class PNet(nnx.Module):
  """Proposal net, fully convolutional: (N, H, W, 3) -> offsets (N, h, w, 4), face prob (N, h, w)."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 3, 10), PReLU((1, 1, 10))
    self.conv2, self.prelu2 = Conv(3, 10, 16), PReLU((1, 1, 16))
    self.conv3, self.prelu3 = Conv(3, 16, 32), PReLU((1, 1, 32))
    self.conv4_1, self.conv4_2 = Conv(1, 32, 4), Conv(1, 32, 2)

  def __call__(self, x: jax.Array, valid_Nx2: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``valid_Nx2``: for inputs padded at the bottom/right, each input's real (h, w) - 2, the
    extent of its conv1 output; beyond it conv1 reads -inf, so the "same" pool ends each input
    exactly where an unpadded input would (with -inf), and padding reaches no real window."""
    x = self.prelu1(self.conv1(x))
    if valid_Nx2 is not None:
      rows = jnp.arange(x.shape[1])[None, :, None] < valid_Nx2[:, 0, None, None]
      cols = jnp.arange(x.shape[2])[None, None, :] < valid_Nx2[:, 1, None, None]
      x = jnp.where((rows & cols)[..., None], x, -jnp.inf)
    x = max_pool(x, 2, "SAME")
    x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
    return self.conv4_1(x), jax.nn.softmax(self.conv4_2(x), axis=-1)[..., 1]


class RNet(nnx.Module):
  """Refinement net: (N, 24, 24, 3) -> offsets (N, 4), face prob (N,)."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 3, 28), PReLU((1, 1, 28))
    self.conv2, self.prelu2 = Conv(3, 28, 48), PReLU((1, 1, 48))
    self.conv3, self.prelu3 = Conv(2, 48, 64), PReLU((1, 1, 64))
    self.fc4, self.prelu4 = Dense(576, 128), PReLU((128,))
    self.fc5_1, self.fc5_2 = Dense(128, 4), Dense(128, 2)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = max_pool(self.prelu1(self.conv1(x)), 3, "SAME")
    x = max_pool(self.prelu2(self.conv2(x)), 3, "VALID")
    x = self.prelu4(self.fc4(_flatten_wh(self.prelu3(self.conv3(x)))))
    return self.fc5_1(x), jax.nn.softmax(self.fc5_2(x), axis=-1)[:, 1]


class ONet(nnx.Module):
  """Output net: (N, 48, 48, 3) -> offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5
  fractions of the box, face prob (N,)."""

  def __init__(self):
    self.conv1, self.prelu1 = Conv(3, 3, 32), PReLU((1, 1, 32))
    self.conv2, self.prelu2 = Conv(3, 32, 64), PReLU((1, 1, 64))
    self.conv3, self.prelu3 = Conv(3, 64, 64), PReLU((1, 1, 64))
    self.conv4, self.prelu4 = Conv(2, 64, 128), PReLU((1, 1, 128))
    self.fc5, self.prelu5 = Dense(1152, 256), PReLU((256,))
    self.fc6_1, self.fc6_2, self.fc6_3 = Dense(256, 4), Dense(256, 10), Dense(256, 2)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = max_pool(self.prelu1(self.conv1(x)), 3, "SAME")
    x = max_pool(self.prelu2(self.conv2(x)), 3, "VALID")
    x = max_pool(self.prelu3(self.conv3(x)), 2, "SAME")
    x = self.prelu5(self.fc5(_flatten_wh(self.prelu4(self.conv4(x)))))
    return self.fc6_1(x), self.fc6_2(x), jax.nn.softmax(self.fc6_3(x), axis=-1)[:, 1]


NETWORKS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _params(net: nnx.Module) -> dict[str, nnx.Param]:
  """``{"conv4-1/kernel": param, ...}``: the file's names (Keras writes conv4_1 as conv4-1)."""
  out = {}
  for path, p in nnx.iter_graph(net):
    if isinstance(p, nnx.Param):
      out["/".join(str(k) for k in path).replace("_", "-")] = p
  return out


def expected_arrays() -> dict[str, tuple[int, ...]]:
  """``{"pnet/conv1/kernel": (3, 3, 3, 10), ...}``: every array a weights file must hold."""
  return {f"{name}/{k}": tuple(p.shape) for name, cls in NETWORKS.items()
          for k, p in _params(cls()).items()}


# ----------------------------------------------------------------------------- weights


def _read_header(npz, key: str, path: str):
  """(shape, dtype) of ``key`` from its .npy header only, before its data is read, so a
  file declaring a huge array allocates nothing."""
  with npz.zip.open(key + ".npy") as f:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
  return shape, dtype


def load_weights(path: str | os.PathLike) -> dict[str, nnx.Module]:
  """``{"pnet": PNet, "rnet": RNet, "onet": ONet}`` with the arrays of an MTCNN ``.npz``.

  Read with ``np.load(path, allow_pickle=False)``: nothing in the file is unpickled. Every
  array's shape and dtype are checked from its header before its data is read.

  Raises:
    FileNotFoundError: no such file.
    MTCNNWeightsError: not a zip/npz, truncated or corrupt, an array missing (named), of the
      wrong shape (named, with the expected shape) or not floating point.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(2, "no such MTCNN weights file (expected the .npz that "
                            "scripts/convert_mtcnn_weights.py writes)", path)
  want = expected_arrays()
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not hasattr(npz, "zip"):
        raise MTCNNWeightsError(f"{path}: a single .npy array, expected an .npz of the "
                                f"{len(want)} MTCNN arrays")
      have = set(npz.files)
      missing = [k for k in want if k not in have]
      if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MTCNNWeightsError(f"{path}: array {missing[0]!r}{more} is missing; expected the "
                                f"{len(want)} arrays pnet/conv1/kernel ... onet/fc6-3/bias")
      arrays = {}
      for key, shape in want.items():
        got_shape, dtype = _read_header(npz, key, path)
        if tuple(got_shape) != shape:
          raise MTCNNWeightsError(f"{path}: array {key!r} has shape {tuple(got_shape)}, "
                                  f"expected {shape}")
        if dtype.kind != "f":
          raise MTCNNWeightsError(f"{path}: array {key!r} has dtype {dtype}, expected float")
        arrays[key] = np.asarray(npz[key], np.float32)
  except MTCNNWeightsError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
    raise MTCNNWeightsError(f"{path}: cannot be read as an MTCNN .npz ({type(e).__name__}: "
                            f"{e}); the file is truncated or corrupt") from e
  nets = {}
  for name, cls in NETWORKS.items():
    net = cls()
    for k, p in _params(net).items():
      p.set_value(jnp.asarray(arrays[f"{name}/{k}"]))
    nets[name] = net
  return nets


# ----------------------------------------------------------------------------- jitted calls


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
  return nnx.merge(graphdef, state)(normalize(x))


class Jitted:
  """A network as a jitted pure function of RGB 0..255 pixels: ``Jitted(net)(rgb_NxHxWx3)``.

  The graph is split once (``nnx.split``) so a call does not walk the NNX object graph;
  it compiles once per input shape (the detector buckets shapes to keep those few)."""

  def __init__(self, net: nnx.Module):
    self.graphdef, self.state = nnx.split(net)

  def __call__(self, rgb: np.ndarray | jax.Array):
    return _apply(self.graphdef, self.state, rgb)
