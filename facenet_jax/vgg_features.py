"""Frozen ImageNet-VGG features for transfer learning, computed once and cached on disk.

With a frozen backbone every training step would recompute the same VGG forward pass;
instead the features of every image are computed once (``features``) and the embedding
head (``models.FeatureHead``) trains on them. The cache key covers the image bytes, the
layer, the input size and the weights file, so a changed dataset or weights file is never
served stale features.

The network is ``infra.vgg`` (the one VGG of the codebase, also used by style transfer).
Input: uint8 RGB (or grey, repeated to 3 channels) images, Caffe-preprocessed: an
(N, H, W, C) array, or a prepared dataset's ``records.RecordImages``, which is read chunk by
chunk through the training input path (``batches.TrainBatches``, decoded in its worker
processes) and never held whole. The features themselves are what the head trains on, so
they are held in memory: a request whose features would exceed :func:`memory_limit` (half
this machine's RAM) fails before anything is computed, naming ``config.data.features``.

Pooled descriptors (``pool="mean"``, ``power=0.5``) are SPoC (Babenko & Lempitsky, "Aggregating
Deep Convolutional Features for Image Retrieval", ICCV 2015): the activation map, raised
elementwise to ``power`` (0.5: the square root that damps a few dominant channels), averaged
(or maxed) over positions and L2-normalized: one C-vector per image (a 1x1 map), with the PCA-whitening
head (``whitening.fit_pca_whitening``) fitted on it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infra import files, vgg as vgg_lib
from infra.progress import Progress


def _row_keys(images: np.ndarray) -> np.ndarray:
  """A content hash per image (S20 strings): the cache is keyed by pixels, not by position."""
  flat = np.ascontiguousarray(images).reshape(images.shape[0], -1)
  return np.asarray([hashlib.sha1(r.tobytes()).hexdigest()[:20] for r in flat], "S20")


def _weights_tag(weights: str) -> str:
  """The weights' part of a cache name: their content's hash, so the same weights copied to
  another path or re-staged with a new mtime (a job's node-local copy) reuse their features."""
  return vgg_lib.weights_keyword(weights) or files.file_sha256(weights)[:12]


def _cache_name(weights: str, layer: str, depth: int, pool: str, power: float, flip: bool,
                image_shape: tuple[int, ...], grid: int = 1) -> str:
  """``vgg<depth>_<layer>[_<pool>p<power>][_grid<g>][_flip]_<H>x<W>x<C>_<weights>.npz``: one
  cache file per backbone, pooling and input size."""
  what = layer + (f"_{pool}p{power:g}" if pool else (f"_p{power:g}" if power != 1.0 else ""))
  what += f"_grid{grid}" if grid != 1 else ""
  what += "_flip" if flip else ""
  size = "x".join(str(int(n)) for n in image_shape)
  return f"vgg{depth}_{what}_{size}_{_weights_tag(weights)}.npz"


POOLS = ("", "mean", "max")


def layers_of(layer: str) -> tuple[str, ...]:
  """The VGG layers of a ``data.features`` layer: one ("conv4_4"), or several joined by "+"
  ("conv4_4+conv5_4": each pooled on the same grid, side by side in the channels)."""
  return tuple(layer.split("+"))


def _check_layers(depth: int, layer: str, pool: str) -> tuple[str, ...]:
  """:func:`layers_of` ``layer``, each a VGG``depth`` layer, several only when pooled
  (ValueError naming ``data.features`` otherwise)."""
  names = vgg_lib.layer_names(depth)
  parts = layers_of(layer)
  for part in parts:
    if part not in names:
      raise ValueError(f"data.features layer {part!r} is not a VGG{depth} layer; valid: {names}")
  if len(set(parts)) != len(parts):
    raise ValueError(f"data.features layers {layer!r}: a layer is named twice")
  if len(parts) > 1 and not pool:
    raise ValueError(f"data.features layers {layer!r}: several layers need "
                     "data.features_pool='mean' or 'max' (their maps differ in size)")
  return parts


def grid_bands(n: int, grid: int) -> list[tuple[int, int]]:
  """``grid`` contiguous, non-empty ``[start, stop)`` bands covering ``0..n``, as equal as
  integers allow (edges ``round(i n / grid)``)."""
  if not 1 <= grid <= n:
    raise ValueError(f"data.features_grid={grid}: expected 1..{n} (the feature map has {n} "
                     "positions on its shorter side)")
  edges = [int(np.floor(i * n / grid + 0.5)) for i in range(grid + 1)]
  return list(zip(edges[:-1], edges[1:]))


def pool_descriptor(act_BxHxWxC: jax.Array, pool: str, power: float,
                    mirror_act_BxHxWxC: jax.Array | None = None, grid: int = 1) -> jax.Array:
  """``act ** power`` (post-ReLU, so >= 0), then ``pool`` over the positions of each cell of a
  ``grid x grid`` partition of the map (:func:`grid_bands`) and L2-normalized as one vector:
  ``(B, grid, grid, C)`` (grid 1: SPoC's ``(B, 1, 1, C)``, a one-position map, so the head and
  the data checks see the layout of any feature map); with ``pool=""`` the (powered) map
  itself, ``(B, H, W, C)``. With ``mirror_act`` (the activations of the mirrored images,
  flipped back so that its cells cover the same part of the face) the two pooled maps are
  summed before the normalization: a descriptor the same for an image and its mirror.

  A grid keeps the coarse layout of an aligned face (eyes in the top cells, mouth in the
  bottom ones), which the mean over all positions throws away. The mirror's map is flipped
  back before pooling, so its cells line up with the original's for any band widths.
  """
  def powered(a):
    return a if power == 1.0 else jnp.maximum(a, 0.0) ** power
  if not pool:
    return powered(act_BxHxWxC)
  reduce = jnp.mean if pool == "mean" else jnp.max
  rows = grid_bands(act_BxHxWxC.shape[1], grid)
  cols = grid_bands(act_BxHxWxC.shape[2], grid)

  def pooled(a):   # (B, H, W, C) -> (B, grid, grid, C)
    return jnp.stack([jnp.stack([reduce(a[:, r0:r1, c0:c1], axis=(1, 2)) for c0, c1 in cols],
                                axis=1) for r0, r1 in rows], axis=1)
  x = pooled(powered(act_BxHxWxC))
  if mirror_act_BxHxWxC is not None:
    x = x + pooled(powered(mirror_act_BxHxWxC[:, :, ::-1]))
  norm = jnp.sqrt(jnp.sum(x * x, axis=(1, 2, 3), keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def memory_limit() -> int:
  """Bytes of features :func:`features` may return: half of this machine's RAM."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def feature_shape(depth: int, layer: str, pool: str, input_shape: tuple[int, ...],
                  grid: int = 1) -> tuple[int, ...]:
  """``(h, w, C)`` of one image's features of VGG``depth`` ``layer`` for ``(H, W, C_in)``
  images: the layer geometry alone (nothing computed); ``(grid, grid, C)`` when pooled
  (ValueError naming ``data.features_grid`` when the map is smaller than the grid), with
  ``C`` summed over the layers of a "+"-joined ``layer``."""
  names = vgg_lib.layer_names(depth)
  shapes = []
  for part in _check_layers(depth, layer, pool):
    h, w = input_shape[:2]
    for _, k, stride, pad in vgg_lib.layer_geometry(depth)[:names.index(part) + 1]:
      h, w = ((n + 2 * pad - k) // stride + 1 for n in (h, w))
    # the channels of the last conv at or before ``part`` (a pool keeps its block's)
    channels = [ch for conv, ch in vgg_lib.conv_channels(depth)
                if names.index(conv) <= names.index(part)][-1]
    if pool:
      grid_bands(min(h, w), grid)   # the check
    shapes.append((h, w, channels))
  if pool:
    return (grid, grid, sum(c for _, _, c in shapes))
  return shapes[0]


def check_memory(n: int, shape: tuple[int, ...], depth: int, layer: str, pool: str, name: str,
                 limit: int) -> None:
  """ValueError (one line, naming ``config.data.features``) when ``n`` feature maps of
  ``shape`` float32 exceed ``limit`` bytes."""
  need = n * int(np.prod(shape)) * 4
  if need > limit:
    raise ValueError(
        f"config.data.features='vgg{depth}:{layer}' (data.features_pool={pool!r}): the features "
        f"of {n:,} {name} are {shape} float32 each, {need / 2**30:.1f} GiB held in memory, over "
        f"the limit of {limit / 2**30:.1f} GiB (half this machine's RAM); pool them "
        f"(data.features_pool='mean': {shape[-1] * 4:,} bytes each), pick an earlier layer or use "
        f"fewer images")


def features(images_NxHxWxC, *, weights: str, layer: str = "pool5", depth: int = 19,
             pool: str = "", power: float = 1.0, flip: bool = False, grid: int = 1,
             batch_size: int = 32, cache_dir: str | None = None, name: str = "images",
             workers: int = -1, limit: int | None = None) -> np.ndarray:
  """VGG activations of ``layer`` for every image: float32 ``(N, h, w, C_layer)``, or with
  ``pool`` ("mean" | "max") the pooled, L2-normalized descriptor ``(N, 1, 1, C_layer)``
  (``pool_descriptor``; ``power`` is applied first; ``flip``: of the image and its mirror),
  ``(N, grid, grid, C_layer)`` pooled per cell of a ``grid x grid`` partition. A pooled
  ``layer`` may join several with "+" ("conv4_4+conv5_4"): each layer's descriptor on the same
  grid, concatenated over channels and divided by sqrt(number of layers) (equal weight, norm 1).

  ``images_NxHxWxC``: uint8 0..255, C = 3 (RGB) or 1 (grey: repeated), as an array or as a
  source read by row (``records.RecordImages``: read in chunks by ``workers`` input worker
  processes, ``batches.input_workers``; the same features as its decoded array gives).
  ``weights``: a Keras notop HDF5 path, "download" or "random" (tests). With ``cache_dir``,
  features are stored per image content in
  ``<cache_dir>/vgg<depth>_<layer>[_<pool>p<power>][_flip]_<size>_<weights>.npz``
  (written atomically): a subset, a superset or a reordering of cached images costs only
  the new ones. Features over ``limit`` bytes (default :func:`memory_limit`) are refused
  before anything is read.
  """
  if pool not in POOLS:
    raise ValueError(f"data.features_pool={pool!r}: expected one of {POOLS} ('' keeps the map)")
  if flip and not pool:
    raise ValueError("data.features_flip=True needs data.features_pool='mean' or 'max' (a "
                     "mirrored activation map is not aligned with the original)")
  if not power > 0:
    raise ValueError(f"data.features_power={power!r}: expected a number > 0 (0.5: square root)")
  lazy = hasattr(images_NxHxWxC, "read")   # decoded on demand: never made one array
  x = images_NxHxWxC if lazy else np.asarray(images_NxHxWxC)
  shape = tuple(x.shape)
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"{name}: VGG features need (N, H, W, 1 or 3) images, got shape {shape}")
  parts = _check_layers(depth, layer, pool)
  need = vgg_lib.min_input_size(parts)
  if min(shape[1:3]) < need:
    raise ValueError(f"{name}: {shape[1]}x{shape[2]} px images are smaller than the {need} px "
                     f"per side that VGG layer {layer} needs; raise data.image_size")
  if grid != 1 and not pool:
    raise ValueError(f"data.features_grid={grid} needs data.features_pool='mean' or 'max'")
  check_memory(shape[0], feature_shape(depth, layer, pool, shape[1:], grid), depth, layer, pool,
               name, memory_limit() if limit is None else limit)
  path = None
  store = ({}, [])   # ({content key: row}, [feature arrays whose rows, in order, those are])
  if cache_dir:
    path = os.path.join(os.path.expanduser(cache_dir),
                        _cache_name(weights, layer, depth, pool, power, flip, shape[1:], grid))
    store = _read_cache(path)
  compute = lambda imgs: _compute(imgs, weights, layer, depth, pool, power, flip, grid,
                                  batch_size, name)
  chunks = _chunks(x, batch_size * 32, workers) if lazy else [x]
  keys, added = [], 0
  try:
    for chunk in chunks:
      k = _row_keys(chunk)
      added += _add_missing(store, chunk, k, compute)
      keys.append(k)
  finally:
    _program.cache_clear()   # the weights are not kept past the call
  keys = np.concatenate(keys) if keys else np.zeros(0, "S20")
  known, parts = store
  # one part (all cached, or nothing cached) is used as it is: a copy of a large cache would
  # double the peak memory; several are joined and dropped as they are copied
  feats = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else None)
  parts.clear()
  if added and path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, keys=np.asarray(list(known), "S20"), features=feats)
    os.replace(tmp, path)
  return feats[np.asarray([known[k] for k in keys.tolist()], np.int64)]


def _read_cache(path: str) -> tuple[dict, list]:
  """``({key: row}, [features])`` of the cache file ``path`` (empty when absent or unreadable:
  a cache, not data, so a corrupt copy is recomputed and replaced)."""
  if not os.path.exists(path):
    return {}, []
  try:
    with np.load(path, allow_pickle=False) as z:
      keys, feats = z["keys"], z["features"]
  except Exception as e:
    print(f"{path}: unreadable feature cache ({type(e).__name__}: {e}); recomputing it",
          flush=True)
    return {}, []
  return dict(zip(keys.tolist(), range(keys.size))), [feats]


def _add_missing(store: tuple[dict, list], images_NxHxWxC: np.ndarray, keys_N: np.ndarray,
                 compute: Callable[[np.ndarray], np.ndarray]) -> int:
  """Computes the features of the images whose key ``store`` lacks (a repeated one once) and
  adds them; returns how many."""
  known, parts = store
  missing = {}
  for r, k in enumerate(keys_N.tolist()):
    if k not in known and k not in missing:
      missing[k] = r
  if not missing:
    return 0
  rows = np.fromiter(missing.values(), np.int64)
  start = sum(p.shape[0] for p in parts)
  parts.append(compute(images_NxHxWxC[rows]))
  known.update((k, start + i) for i, k in enumerate(missing))
  return rows.size


def _chunks(images, size: int, workers: int):
  """The images of a row-read source (``records.RecordImages``) as (<= size, H, W, C) arrays
  in order, decoded by the training input path (``batches.TrainBatches``) ``workers`` ahead."""
  from facenet_jax.data import batches   # lazy: in-memory callers never need it
  n = len(images)
  rows = batches.RowChunks(np.arange(n, dtype=np.int64), np.zeros(n, np.int32), size)
  loader = batches.TrainBatches(images, rows, len(rows),
                                workers=batches.input_workers(workers, images))
  try:
    for k in range(len(rows)):
      yield loader.read(k)["images"][:min(size, n - k * size)]
  finally:
    loader.close()


@functools.lru_cache(maxsize=1)
def _program(weights: str, layer: str, depth: int, pool: str, power: float, flip: bool,
             grid: int) -> tuple[Callable, object]:
  """``(run, state)``: the jitted ``run(state, (B, H, W, C) uint8) -> features`` and the VGG
  weights, loaded once for the chunks of one :func:`features` call (which clears it after)."""
  model = vgg_lib.load_vgg(weights, depth, "max")
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, batch):
    rgb = batch.astype(jnp.float32)
    if rgb.shape[-1] == 1:
      rgb = jnp.repeat(rgb, 3, axis=-1)
    net = nnx.merge(graphdef, state)
    parts = layers_of(layer)
    acts = net.features(vgg_lib.preprocess_caffe(rgb), parts)
    mirror = net.features(vgg_lib.preprocess_caffe(rgb[:, :, ::-1]), parts) if flip else None
    descs = [pool_descriptor(acts[p], pool, power, None if mirror is None else mirror[p], grid)
             for p in parts]
    if len(descs) == 1:
      return descs[0]
    # each layer's descriptor has norm 1: joined with equal weight, the whole has norm 1
    return jnp.concatenate(descs, axis=-1) / np.sqrt(len(descs))
  return run, state


def _compute(x: np.ndarray, weights: str, layer: str, depth: int, pool: str, power: float,
             flip: bool, grid: int, batch_size: int, name: str) -> np.ndarray:
  run, state = _program(weights, layer, depth, pool, power, flip, grid)
  out = []
  progress = Progress(x.shape[0], 0, unit="img")
  for i in range(0, x.shape[0], batch_size):
    chunk = x[i:i + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:   # one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(run(state, chunk))[:batch_size - pad])
    done = i + batch_size - pad
    if i == 0:
      progress.mark_compiled(done)
    if (i // batch_size) % 20 == 0 or done == x.shape[0]:
      print(f"VGG{depth} {layer} features of {name}: {progress.line(done)}", flush=True)
  return np.concatenate(out).astype(np.float32)


def _spec(config) -> tuple[int, str] | None:
  """``(depth, layer)`` of ``config.data.features`` ("vgg19:pool5"), or None for raw images."""
  spec = str(config.data.features)
  if not spec:
    return None
  net, _, layer = spec.partition(":")
  if net not in ("vgg16", "vgg19") or not layer:
    raise ValueError(f"config.data.features={spec!r}: expected '' or 'vgg19:<layer>' / 'vgg16:<layer>' "
                     "(pooled: layers may be joined by '+', 'vgg19:conv4_4+conv5_4')")
  return int(net[3:]), layer


def cache_dir_for(config) -> str:
  """Where ``config``'s feature caches go: ``data.features_cache``, or ``<data.tfds_dir>/features``
  when it is "" (``~`` expanded, not otherwise resolved)."""
  return os.path.expanduser(str(config.data.features_cache)) or os.path.join(
      os.path.expanduser(str(config.data.tfds_dir)), "features")


def cache_file_for(config, input_shape: tuple[int, ...], cache_dir: str | None = None) -> str:
  """The cache file ``features`` reads and writes for ``config`` and images of ``input_shape``
  ``(H, W, C)`` in ``cache_dir`` (default :func:`cache_dir_for`); ``config`` must have
  ``data.features`` set."""
  depth, layer = _spec(config)
  return os.path.join(cache_dir if cache_dir is not None else cache_dir_for(config), _cache_name(
      str(config.model.vgg_weights), layer, depth, str(config.data.features_pool),
      float(config.data.features_power), bool(config.data.features_flip), input_shape,
      int(config.data.features_grid)))


def output_shape(config, input_shape: tuple[int, ...]) -> tuple[int, ...]:
  """``(h, w, C)`` of one example's features for ``config`` and images of ``input_shape``
  ``(H, W, C_in)``, from the layer geometry alone (no weights read, nothing computed):
  what a model restored for ``config`` takes. ``input_shape`` itself without features."""
  spec = _spec(config)
  if spec is None:
    return tuple(input_shape)
  depth, layer = spec
  h, w = input_shape[:2]
  need = vgg_lib.min_input_size(_check_layers(depth, layer, str(config.data.features_pool)))
  if min(h, w) < need:
    raise ValueError(f"{h}x{w} px images are smaller than the {need} px per side that VGG "
                     f"layer {layer} needs; raise data.image_size")
  return feature_shape(depth, layer, str(config.data.features_pool), tuple(input_shape),
                       int(config.data.features_grid))


def transform_for(config, cache_dir: str | None = None) -> Callable[[np.ndarray, str], np.ndarray] | None:
  """``config.data.features`` ("" or "vgg19:pool5", "vgg16:conv5_3", ...), pooled by
  ``data.features_pool`` / ``data.features_power`` / ``data.features_flip`` /
  ``data.features_grid``, as an ``(images, name) -> features`` function, or None for raw images. Features are cached in
  ``cache_dir`` (default :func:`cache_dir_for`; a caller reading a run passes the folder
  ``workdir.check_paths`` accepted)."""
  spec = _spec(config)
  if spec is None:
    return None
  depth, layer = spec
  cache = cache_dir if cache_dir is not None else cache_dir_for(config)

  def transform(images: np.ndarray, name: str = "images") -> np.ndarray:
    return features(images, weights=config.model.vgg_weights, layer=layer, depth=depth,
                    pool=str(config.data.features_pool), power=float(config.data.features_power),
                    flip=bool(config.data.features_flip),
                    grid=int(config.data.features_grid), cache_dir=cache, name=name,
                    workers=int(config.data.get("workers", -1)))
  return transform
