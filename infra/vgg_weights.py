"""The Keras 2 VGG "notop" HDF5 weights file: read safely, fetched once, written for tests.

The canonical files ``vgg{16,19}_weights_tf_dim_ordering_tf_kernels_notop.h5`` hold one
group per layer ``blockB_convC`` with an HWIO kernel and a bias (datasets named by the
group's ``weight_names`` attribute), optionally nested under ``model_weights`` (Keras 2
full-model files). :func:`read_conv_weights` reads them without leaving the file: only
plain datasets stored in it, reached through hard links, are read, and every dtype and
shape is checked from the metadata before any value is. :func:`fetch_keras_weights`
downloads the canonical file once (md5-checked); :func:`save_keras_weights` writes the
same layout. The model that holds these arrays is :mod:`infra.vgg`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.request

import numpy as np

from infra import files
from infra.errors import MissingFileError, UserError

WEIGHTS_URLS = {
    19: ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
         "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    16: ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
         "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
}


class WeightsError(UserError, ValueError):
  """A weights file that does not fit the model: names the file and the layer."""




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


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]   # layer -> (kernel, bias) shapes


def read_conv_weights(path: str | os.PathLike, shapes: Shapes,
                      model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{layer: (kernel, bias)}`` as float32 for every layer of ``shapes`` (Keras names,
  ``{"block1_conv1": (kernel_shape, bias_shape), ...}``), read from a Keras HDF5 file.

  Any float dtype (e.g. float16) is cast to float32. (Keras 3 ``.weights.h5`` files name
  layers by class, ``conv2d_N``, and are not read.) ``model`` names the network in errors.

  Raises:
    FileNotFoundError: no such file, or not a regular file (a folder, a device, a pipe).
    WeightsError: not HDF5, a layer missing, a kernel/bias of the wrong shape or dtype or
      holding NaN/Inf, a link or storage outside the file, or conv layers ``shapes`` does
      not name (a VGG19 file read for a VGG16), each naming the layer.
  """
  import h5py
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingFileError(f"VGG weights file {path} does not exist")
  if not os.path.isfile(path):   # a FIFO would block h5py, /dev/zero would never end
    raise MissingFileError(f"VGG weights file {path} is not a regular file")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"{path} is not a readable HDF5 weights file ({e})") from e
  out = {}
  with f:
    root = _weights_root(f, path)
    extra = [n for n in _file_conv_layers(root) if n not in shapes]
    if extra:
      raise WeightsError(f"{path}: has conv layer(s) {extra} that {model} does not "
                         f"have; is it the file of another depth?")
    for name, (kernel_shape, bias_shape) in shapes.items():
      kernel, bias = _layer_arrays(root, name, path, kernel_shape, bias_shape)
      for what, arr in (("kernel", kernel), ("bias", bias)):
        if not np.all(np.isfinite(arr)):
          raise WeightsError(f"{path}: layer {name} {what} contains NaN or Inf")
      out[name] = (kernel.astype(np.float32), bias.astype(np.float32))
  return out


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
  if depth not in WEIGHTS_URLS:
    raise ValueError(f"VGG depth must be 16 or 19, got {depth!r}")
  url, md5 = WEIGHTS_URLS[depth]
  fname = url.rsplit("/", 1)[1]
  cache_dir = cache_dir or default_cache_dir()
  keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
  for candidate in (os.path.join(cache_dir, fname), os.path.join(keras_home, "models", fname)):
    if os.path.exists(candidate) and _md5(candidate) == md5:
      return candidate
  os.makedirs(cache_dir, exist_ok=True)
  dest = os.path.join(cache_dir, fname)
  fd, tmp = files.temp_beside(dest, suffix=".h5")
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
