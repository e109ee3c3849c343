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
path or downloaded once into a cache directory and checked against its md5. The expected
input is Keras/Caffe-preprocessed: RGB in 0..255, flipped to BGR, ImageNet mean subtracted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra import convolution
from infra.errors import UserError

# channels of each conv, block by block
_CONFIGS = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

# ImageNet mean in BGR order (Caffe / keras.applications.imagenet_utils, mode="caffe")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)

WEIGHTS_URLS = {
    19: ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
         "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    16: ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
}

_NAME_RE = re.compile(r"^(?:conv(\d)_(\d)|pool(\d))$")


class WeightsError(UserError, ValueError):
  """A weights file that does not fit the model: names the file and the layer."""


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


_LINK_KINDS = {"ExternalLink": "an external link", "SoftLink": "a soft link"}


def _plain_child(group, name: str, path: str, where: str):
  """``group[name]`` when every link on the way is a hard link inside this file.

  ``name`` may be a relative path (``a/b:0``). External links (another file's object) and
  soft links (a name that can be re-pointed) are refused before they are followed, so a
  weights file never makes the loader open or read anything outside itself. None when the
  name does not exist."""
  import h5py
  obj = group
  for part in (p for p in name.split("/") if p):
    link = obj.get(part, getlink=True)
    if link is None:
      return None
    if not isinstance(link, h5py.HardLink):
      kind = _LINK_KINDS.get(type(link).__name__, type(link).__name__)
      raise WeightsError(f"{path}: {where}: {name!r} is {kind}, expected a plain dataset or "
                         f"group stored in this file (links are not followed)")
    obj = obj[part]
  return obj


def _weights_root(f, path: str):
  """The group that holds the layer groups (Keras full-model files nest them in model_weights)."""
  import h5py
  nested = _plain_child(f, "model_weights", path, "model_weights")
  if isinstance(nested, h5py.Group) and "layer_names" in nested.attrs:
    return nested
  return f


def _plain_dataset(g, name: str, layer: str, path: str):
  """The dataset ``name`` of layer group ``g``, refused unless its bytes are in this file.

  External raw storage (``dataset.external``: the values live in another file, e.g. a
  system file) and virtual datasets (values mapped from other files) are refused, and so
  is a dtype that is not floating point, all from the metadata, before anything is read."""
  import h5py
  ds = _plain_child(g, name, path, f"layer {layer}")
  if ds is None:
    raise WeightsError(f"{path}: layer {layer}: its weights cannot be read (KeyError: "
                       f"{name!r} does not exist); the file is truncated or corrupt")
  if not isinstance(ds, h5py.Dataset):
    raise WeightsError(f"{path}: layer {layer}: {name!r} is a {type(ds).__name__}, "
                       f"expected a dataset")
  if ds.external is not None or getattr(ds, "is_virtual", False):
    kind = "external raw storage" if ds.external is not None else "a virtual dataset"
    raise WeightsError(f"{path}: layer {layer}: dataset {name!r} is {kind} (its values live in "
                       f"other files); expected a plain dataset stored in this file")
  if ds.dtype.kind != "f" or ds.dtype.itemsize > 8:   # ints, strings, compounds: not weights
    raise WeightsError(f"{path}: layer {layer}: dataset {name!r} has dtype {ds.dtype}, "
                       f"expected floating point weights")
  return ds


def _layer_arrays(root, layer: str, path: str, kernel_shape: tuple[int, ...],
                  bias_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of ``layer``: the datasets its ``weight_names`` attribute lists, in order.

  Links, storage, dtypes and shapes are all checked from the file's metadata first; only
  datasets of exactly ``kernel_shape`` / ``bias_shape`` are then read, so a file declaring
  a huge dataset (a few MB on disk, GBs when read) allocates nothing."""
  import h5py
  g = _plain_child(root, layer, path, f"layer {layer}")
  if g is None:
    raise WeightsError(f"{path}: layer {layer} is missing from the weights file")
  if not isinstance(g, h5py.Group):
    raise WeightsError(f"{path}: layer {layer} is a {type(g).__name__}, expected a group")
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
  if not names:
    names = []
    # visititems reaches hard-linked members only; each is still checked below
    g.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
  try:
    datasets = [_plain_dataset(g, n, layer, path) for n in names]
    kernels = [d for d in datasets if d.ndim == 4]
    biases = [d for d in datasets if d.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
      raise WeightsError(f"{path}: layer {layer} should hold one 4-D kernel and one bias, "
                         f"found arrays of shapes {[d.shape for d in datasets]}")
    for what, d, want in (("kernel", kernels[0], kernel_shape), ("bias", biases[0], bias_shape)):
      if d.shape != tuple(want):
        raise WeightsError(f"{path}: layer {layer} {what} has shape {d.shape}, "
                           f"expected {tuple(want)}")
    return np.asarray(kernels[0][()]), np.asarray(biases[0][()])
  except WeightsError:
    raise
  except (OSError, KeyError, ValueError) as e:   # truncated or corrupt data, a dangling name
    raise WeightsError(f"{path}: layer {layer}: its weights cannot be read ({type(e).__name__}: "
                       f"{e}); the file is truncated or corrupt") from e


def _file_conv_layers(root) -> list[str]:
  names = root.attrs.get("layer_names")
  if names is None:
    names = list(root.keys())
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  return [n for n in names if re.match(r"^block\d_conv\d$", n)]


def load_keras_weights(model: VGG, path: str | os.PathLike) -> VGG:
  """Copies the conv kernels and biases of a Keras VGG HDF5 file into ``model`` (in place).

  Reads the Keras 2 "notop" layout (group ``blockB_convC`` with datasets named by its
  ``weight_names`` attribute, e.g. ``blockB_convC_W_1:0`` HWIO kernel and ``..._b_1:0`` bias),
  and the same nested under ``model_weights`` (Keras 2 full-model files). Any float dtype
  (e.g. float16) is cast to float32. (Keras 3 ``.weights.h5`` files name layers by class,
  ``conv2d_N``, and are not read.)

  The file stays inside itself: only plain datasets stored in it, reached through hard
  links, are read; external or soft links, external raw storage and virtual datasets are
  refused before they are followed, and every dataset's dtype and shape are checked from
  the metadata before its values are read.

  Raises:
    FileNotFoundError: no such file, or not a regular file (a folder, a device, a pipe).
    WeightsError: not HDF5, a layer missing, a kernel/bias of the wrong shape or dtype, a
      link or storage outside the file, or conv layers the model does not have (a VGG19
      file loaded into a VGG16), each naming the layer.
  """
  import h5py
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"VGG weights file {path} does not exist")
  if not os.path.isfile(path):   # a FIFO would block h5py, /dev/zero would never end
    raise FileNotFoundError(f"VGG weights file {path} is not a regular file")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"{path} is not a readable HDF5 weights file ({e})") from e
  with f:
    root = _weights_root(f, path)
    ours = model.conv_layers()
    extra = [n for n in _file_conv_layers(root) if n not in ours]
    if extra:
      raise WeightsError(f"{path}: has conv layer(s) {extra} that VGG{model.depth} does not "
                         f"have; is it the file of another depth?")
    for name in ours:
      conv = getattr(model, name)
      kernel, bias = _layer_arrays(root, name, path, tuple(conv.kernel.shape),
                                   tuple(conv.bias.shape))
      for what, arr, var in (("kernel", kernel, conv.kernel), ("bias", bias, conv.bias)):
        if not np.all(np.isfinite(arr)):
          raise WeightsError(f"{path}: layer {name} {what} contains NaN or Inf")
        var[...] = jnp.asarray(arr, jnp.float32)
  return model


def _md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def default_cache_dir() -> str:
  """``$VGG_WEIGHTS_CACHE`` or ``~/.cache/facenet_style_jax``."""
  return os.environ.get("VGG_WEIGHTS_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "facenet_style_jax")


def fetch_keras_weights(depth: int = 19, cache_dir: str | None = None) -> str:
  """Path of the canonical Keras notop file, downloaded once into ``cache_dir`` (md5-checked).

  A copy already in ``cache_dir`` or in Keras's own cache (``~/.keras/models``) with the
  right md5 is used as is. Raises RuntimeError (offline, bad hash) with what to do instead.
  """
  url, md5 = WEIGHTS_URLS[depth if depth in WEIGHTS_URLS else _check_depth(depth)]
  fname = url.rsplit("/", 1)[1]
  cache_dir = cache_dir or default_cache_dir()
  keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
  for candidate in (os.path.join(cache_dir, fname), os.path.join(keras_home, "models", fname)):
    if os.path.exists(candidate) and _md5(candidate) == md5:
      return candidate
  os.makedirs(cache_dir, exist_ok=True)
  dest = os.path.join(cache_dir, fname)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".h5")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
      shutil.copyfileobj(resp, out)
    got = _md5(tmp)
    if got != md5:
      raise RuntimeError(f"downloaded {url} has md5 {got}, expected {md5}")
    os.replace(tmp, dest)
  except Exception as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise RuntimeError(f"could not fetch the VGG{depth} weights from {url} into {cache_dir} "
                       f"({type(e).__name__}: {e}); download the file yourself and pass its "
                       f"path (e.g. --config.weights=PATH)") from e
  return dest


def load_vgg(path: str | os.PathLike | None = None, depth: int = 19, pooling: str = "max", *,
             cache_dir: str | None = None, remat: bool = False, dtype=jnp.float32,
             seed: int = 0) -> VGG:
  """A VGG with Keras ImageNet weights.

  Args:
    path: a Keras notop HDF5 file; None or "download" fetches the canonical file into
      ``cache_dir`` (see :func:`fetch_keras_weights`); "random" keeps a seeded He-normal
      initialization (tests, baselines).
    depth, pooling, remat, dtype: as for :class:`VGG`.
  """
  if path is not None and os.fspath(path) == "random":
    return VGG(depth, pooling, remat=remat, dtype=dtype, rngs=nnx.Rngs(seed))
  model = VGG(depth, pooling, remat=remat, dtype=dtype, rngs=None)
  if path is None or os.fspath(path) in ("", "download"):
    path = fetch_keras_weights(depth, cache_dir)
  return load_keras_weights(model, path)


def save_keras_weights(params: dict[str, tuple[np.ndarray, np.ndarray]], path: str,
                       dtype=np.float32) -> None:
  """Writes ``{"blockB_convC": (kernel_HWIO, bias)}`` in the Keras 2 notop layout.

  The layout of the canonical file (root attr ``layer_names`` incl. ``input_1`` and the
  pool layers, group attr ``weight_names``), so tests and tools can make small files that
  both Keras and :func:`load_keras_weights` read.
  """
  import h5py
  blocks = sorted({int(n[5]) for n in params})
  layer_order = ["input_1"]
  for b in blocks:
    convs = sorted((n for n in params if n.startswith(f"block{b}_conv")),
                   key=lambda n: int(n.rsplit("_conv", 1)[1]))
    layer_order += convs + [f"block{b}_pool"]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in layer_order])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.0.0"
    for n in layer_order:
      g = f.create_group(n)
      if n in params:
        wn = [f"{n}_W_1:0".encode(), f"{n}_b_1:0".encode()]
        g.attrs["weight_names"] = np.array(wn)
        g.create_dataset(wn[0].decode(), data=np.asarray(params[n][0], dtype))
        g.create_dataset(wn[1].decode(), data=np.asarray(params[n][1], dtype))
      else:
        g.attrs["weight_names"] = np.array([], dtype="S1")
