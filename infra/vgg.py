"""VGG16/19 feature extractor in Flax NNX, with the Keras "notop" HDF5 weights.

One implementation shared by style transfer (``style_jax``), the face transfer-learning
backbone and the unit visualizer: ``VGG(...).features(x, layers)`` returns a dict of the
named *post-ReLU* activations (``conv1_1`` ... ``conv5_4``, and ``pool1`` ... ``pool5``),
as Gatys et al. (2015) use them, and stops after the deepest layer asked for.

  model = load_vgg("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", depth=19, pooling="avg")
  x = preprocess_caffe(rgb_0_255)                  # (H, W, 3) or (N, H, W, 3)
  feats = model.features(x, ("conv4_2", "conv1_1"))  # {"conv4_2": (H/8, W/8, 512), ...}

Architecture (Simonyan & Zisserman 2015, configurations D and E): 5 blocks of 3x3 "same"
convolutions with ReLU (64, 128, 256, 512, 512 channels; 2, 2, 3|4, 3|4, 3|4 convs for
VGG16|VGG19), each block followed by a 2x2 stride-2 pooling ("valid": odd sizes are
floored, as in Keras). Gatys et al. replace max pooling by average pooling.

Weights: the canonical Keras file ``vgg{16,19}_weights_tf_dim_ordering_tf_kernels_notop.h5``
(one group per layer ``blockB_convC`` holding an HWIO kernel and a bias), read from a local
path or downloaded once into a cache directory and checked against its md5; the file format
is :mod:`infra.vgg_weights`. The expected
input is Keras/Caffe-preprocessed: RGB in 0..255, flipped to BGR, ImageNet mean subtracted.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra import convolution, vgg_weights

# channels of each conv, block by block
_CONFIGS = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

# ImageNet mean in BGR order (Caffe / keras.applications.imagenet_utils, mode="caffe")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)

_NAME_RE = re.compile(r"^(?:conv(\d)_(\d)|pool(\d))$")


def layer_names(depth: int = 19) -> tuple[str, ...]:
  """All feature names in forward order: conv1_1, conv1_2, pool1, conv2_1, ..., pool5."""
  names = []
  for b, block in enumerate(_check_depth(depth), start=1):
    names += [f"conv{b}_{c}" for c in range(1, len(block) + 1)] + [f"pool{b}"]
  return tuple(names)


def conv_channels(depth: int = 19) -> tuple[tuple[str, int], ...]:
  """``(conv name, output channels)`` of every conv in forward order: (conv1_1, 64), ..."""
  return tuple((f"conv{b}_{c}", ch) for b, block in enumerate(_check_depth(depth), start=1)
               for c, ch in enumerate(block, start=1))


def layer_geometry(depth: int = 19) -> list[tuple[str, int, int, int]]:
  """``(name, kernel, stride, low padding)`` of every feature in forward order (square, so
  one int per axis): 3x3 stride-1 "same" convs pad 1, 2x2 stride-2 "valid" pools pad 0."""
  return [(n, 2, 2, 0) if n.startswith("pool") else (n, 3, 1, 1) for n in layer_names(depth)]


def keras_name(name: str) -> str:
  """``conv3_2`` -> ``block3_conv2``; ``pool3`` -> ``block3_pool``."""
  m = _NAME_RE.match(name)
  if not m:
    raise ValueError(f"unknown VGG layer name {name!r}; expected e.g. conv4_2 or pool5")
  cb, c, pb = m.groups()
  return f"block{cb}_conv{c}" if cb else f"block{pb}_pool"


def min_input_size(layers: Iterable[str]) -> int:
  """Smallest height/width (px) for which every layer in ``layers`` has >= 1 position.

  A layer of block ``b`` comes after ``b - 1`` 2x2 "valid" poolings (``poolb`` after
  ``b``), each flooring the size by 2, so it needs ``2**(b-1)`` (``2**b``) pixels per side:
  16 for conv5_1, 8 for conv4_2, 32 for pool5.
  """
  need = 1
  for name in layers:
    m = _NAME_RE.match(name)
    if not m:
      raise ValueError(f"unknown VGG layer name {name!r}; expected e.g. conv4_2 or pool5")
    cb, _, pb = m.groups()
    need = max(need, 2 ** (int(cb) - 1) if cb else 2 ** int(pb))
  return need


def _check_depth(depth: int):
  if depth not in _CONFIGS:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}")
  return _CONFIGS[depth]


def preprocess_caffe(rgb: jax.Array | np.ndarray) -> jax.Array:
  """Keras/Caffe preprocessing: RGB in 0..255 (..., 3) -> BGR minus the ImageNet mean.

  ``x[..., c] = rgb[..., 2 - c] - mean_bgr[c]`` with mean_bgr = (103.939, 116.779, 123.68);
  no division by a standard deviation. Inverse: :func:`deprocess_caffe`.
  """
  rgb = jnp.asarray(rgb, jnp.float32)
  return rgb[..., ::-1] - CAFFE_MEAN_BGR


def deprocess_caffe(x: jax.Array | np.ndarray) -> jax.Array:
  """Inverse of :func:`preprocess_caffe`: add the mean back, BGR -> RGB (not clipped).

  Exact (bit for bit) on 8-bit pixel values; within float32 rounding (~2e-5) for others.
  """
  x = jnp.asarray(x, jnp.float32)
  return (x + CAFFE_MEAN_BGR)[..., ::-1]


def caffe_bounds() -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (BGR) bounds of preprocessed pixels: the image of RGB 0..255, shape (3,) each."""
  return -CAFFE_MEAN_BGR, 255.0 - CAFFE_MEAN_BGR


class _Conv3x3(nnx.Module):
  """A 3x3 "same" convolution with an HWIO kernel and a bias, as Keras stores them.

  ``rng``: a NumPy generator for He-normal kernels (std sqrt(2 / fan_in), so that random
  VGGs keep the activation scale through 16 layers); None: zeros, to be loaded.
  """

  def __init__(self, cin: int, cout: int, rng: np.random.Generator | None):
    shape = (3, 3, cin, cout)
    if rng is None:
      kernel = np.zeros(shape, np.float32)
    else:
      kernel = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / (9 * cin)))
    self.kernel = nnx.Param(jnp.asarray(kernel))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))


def _conv_relu(kernel: jax.Array, bias: jax.Array, x: jax.Array) -> jax.Array:
  """relu(conv(x, kernel) + bias); x (N, H, W, Cin), kernel (3, 3, Cin, Cout) -> (N, H, W, Cout)."""
  y = convolution.conv3x3(x, kernel.astype(x.dtype))
  return jax.nn.relu(y + bias.astype(x.dtype))


def _pool(x: jax.Array, kind: str) -> jax.Array:
  """2x2 stride-2 "valid" pooling of (N, H, W, C): (N, H//2, W//2, C)."""
  if kind == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return s * 0.25


class VGG(nnx.Module):
  """VGG16/19 convolutional part (no classifier).

  Args:
    depth: 16 or 19.
    pooling: "max" (the trained network) or "avg" (Gatys et al.: smoother gradients).
    remat: wrap each block in ``jax.checkpoint`` so the backward pass recomputes its
      activations instead of storing them (less memory for large images, ~1/3 more compute).
    dtype: compute dtype (parameters stay float32).
    rngs: seeds He-normal kernels (zero biases): a random-weight VGG. None: all zeros, for
      :func:`load_keras_weights` to fill (no random draws, so loading is fast). The draws
      use NumPy seeded from ``rngs.params()``: one generator for all 16 kernels instead of
      one compiled random op per kernel shape.

  Parameters are named as in Keras: ``model.block3_conv2.kernel`` (3, 3, 256, 256).
  """

  def __init__(self, depth: int = 19, pooling: str = "max", *, remat: bool = False,
               dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    if pooling not in ("max", "avg"):
      raise ValueError(f"VGG pooling must be 'max' or 'avg', got {pooling!r}")
    self.depth, self.pooling, self.remat, self.dtype = depth, pooling, remat, dtype
    rng = None
    if rngs is not None:
      rng = np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())).ravel())
    cin = 3
    for b, block in enumerate(_check_depth(depth), start=1):
      for c, cout in enumerate(block, start=1):
        setattr(self, f"block{b}_conv{c}", _Conv3x3(cin, cout, rng))
        cin = cout

  def conv_layers(self) -> list[str]:
    """Keras names of the conv layers in forward order."""
    return [f"block{b}_conv{c}" for b, block in enumerate(_CONFIGS[self.depth], start=1)
            for c in range(1, len(block) + 1)]

  def features(self, x: jax.Array, layers: Sequence[str] = ("conv4_2",)) -> dict[str, jax.Array]:
    """The named activations of a preprocessed image.

    Args:
      x: Caffe-preprocessed image(s), (H, W, 3) or (N, H, W, 3) (see :func:`preprocess_caffe`).
      layers: names among :func:`layer_names` (``convB_C`` post-ReLU, ``poolB``).
    Returns:
      ``{name: activation}``, (h, w, C) or (N, h, w, C) like ``x``. The forward pass stops
      after the deepest requested layer.
    """
    x = jnp.asarray(x)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
      raise ValueError(f"VGG expects (H, W, 3) or (N, H, W, 3) images, got shape {x.shape}")
    unbatched = x.ndim == 3
    h = (x[None] if unbatched else x).astype(self.dtype)
    want = set(layers)
    order = layer_names(self.depth)
    unknown = want - set(order)
    if unknown:
      raise ValueError(f"unknown layer(s) {sorted(unknown)} for VGG{self.depth}; "
                       f"expected names among {order}")
    if not want:
      return {}
    need = min_input_size(want)
    if min(h.shape[1:3]) < need:
      raise ValueError(f"input of {h.shape[1]}x{h.shape[2]} px is smaller than the {need} px "
                       f"per side that layer(s) {sorted(want)} need (one halving per pooling)")
    last = max(order.index(n) for n in want)
    out: dict[str, jax.Array] = {}
    for b, block in enumerate(_CONFIGS[self.depth], start=1):
      names = [f"conv{b}_{c}" for c in range(1, len(block) + 1)] + [f"pool{b}"]
      stop = min(len(names), last - order.index(names[0]) + 1)
      if stop <= 0:
        break
      params = [(getattr(self, f"block{b}_conv{c}").kernel[...],
                 getattr(self, f"block{b}_conv{c}").bias[...]) for c in range(1, len(block) + 1)]
      # the block returns only what is asked for and its last activation: under remat,
      # anything it returned would be stored for the backward pass, defeating the point
      keep = tuple(n for n in names[:stop - 1] if n in want) + (names[stop - 1],)
      fn = _make_block(tuple(names[:stop]), keep, self.pooling)
      if self.remat:
        fn = jax.checkpoint(fn)
      acts = dict(zip(keep, fn(params, h)))
      for n in keep:
        if n in want:
          out[n] = acts[n][0] if unbatched else acts[n]
      h = acts[names[stop - 1]]
    return out

  def __call__(self, x: jax.Array, layers: Sequence[str] = ("conv4_2",)) -> dict[str, jax.Array]:
    return self.features(x, layers)


def _make_block(names: tuple[str, ...], keep: tuple[str, ...], pooling: str):
  """A pure block ``(params, x) -> [activation of each name in keep]`` running the layers
  ``names`` in order (for ``jax.checkpoint``)."""
  def block(params, x):
    acts, conv = {}, 0
    for n in names:
      if n.startswith("pool"):
        x = _pool(x, pooling)
      else:
        k, b = params[conv]
        conv += 1
        x = _conv_relu(k, b, x)
      acts[n] = x
    return [acts[n] for n in keep]
  return block


# ---------------------------------------------------------------------------- weights


def load_keras_weights(model: VGG, path: str | os.PathLike) -> VGG:
  """Copies the conv kernels and biases of a Keras VGG HDF5 file into ``model`` (in place).

  The file is read by :func:`infra.vgg_weights.read_conv_weights`, which checks every
  layer's shape, dtype and storage before reading it and raises ``FileNotFoundError`` or
  ``vgg_weights.WeightsError`` naming the file and layer.
  """
  shapes = {n: (tuple(getattr(model, n).kernel.shape), tuple(getattr(model, n).bias.shape))
            for n in model.conv_layers()}
  arrays = vgg_weights.read_conv_weights(path, shapes, f"VGG{model.depth}")
  for name, (kernel, bias) in arrays.items():
    conv = getattr(model, name)
    conv.kernel[...] = jnp.asarray(kernel)
    conv.bias[...] = jnp.asarray(bias)
  return model


def weights_keyword(path: str | os.PathLike | None) -> str | None:
  """"random" or "download" when ``path`` names one of :func:`load_vgg`'s fixed weight sets
  rather than a file (None and "" read as "download"); None for a file path. Everything that
  keys on the weights (caches, fingerprints, input records) reads them through this."""
  p = "" if path is None else os.fspath(path)
  return {"random": "random", "download": "download", "": "download"}.get(p)


def load_vgg(path: str | os.PathLike | None = None, depth: int = 19, pooling: str = "max", *,
             cache_dir: str | None = None, remat: bool = False, dtype=jnp.float32,
             seed: int = 0) -> VGG:
  """A VGG with Keras ImageNet weights.

  Args:
    path: a Keras notop HDF5 file; None or "download" fetches the canonical file into
      ``cache_dir`` (see :func:`infra.vgg_weights.fetch_keras_weights`); "random" keeps a
      seeded He-normal initialization (tests, baselines).
    depth, pooling, remat, dtype: as for :class:`VGG`.
  """
  if weights_keyword(path) == "random":
    return VGG(depth, pooling, remat=remat, dtype=dtype, rngs=nnx.Rngs(seed))
  model = VGG(depth, pooling, remat=remat, dtype=dtype, rngs=None)
  if weights_keyword(path) == "download":
    path = vgg_weights.fetch_keras_weights(depth, cache_dir)
  return load_keras_weights(model, path)
