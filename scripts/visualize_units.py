"""What units of a ConvNet respond to: top-activating input patches (Zeiler & Fergus 2013).

  # ImageNet VGG19 on a folder of photos and paintings
  python scripts/visualize_units.py --model=vgg19 --weights=../shared/weights/vgg19_notop_imagenet_8bit_f16.h5 \
      --data=../shared/data/style_images --out=runs/units_vgg19 --image_size=192 --tiles=2
  # a trained face-embedding network (small_cnn workdir) on LFW
  python scripts/visualize_units.py --model=runs/lfw --data=../shared/data/lfw/images \
      --out=runs/units_lfw --max_images=3000

Streams every image of ``--data`` (recursively; with ``--tiles=T`` each image is
center-cropped to a square, resized to T x image_size and cut into T x T inputs) once
through the network, keeping for each chosen layer and channel the ``--k`` images whose
maximum activation is largest, and where it is (``infra.units.update_topk``, jitted, a
fixed buffer). Each unit's receptive field comes from the layer geometry the model
reports (``infra.vgg.layer_geometry``, ``SmallCNN.layer_geometry``), and the patch it
sees is cut from the input image there.

Writes ``<out>/units_<layer>.png`` (``--units`` seeded-random live units x top-k
patches, each resized to ``--patch_px``) and ``<out>/units.json``: per layer the
receptive field (size, jump, offset per axis), dead units, and for every unit its top-k
(image file, tile, position, activation, whether it fired (> 0), input box). A top-k slot
where the unit never fired is left empty in the PNG.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
import numpy as np

from infra import cli

_MODEL = flags.DEFINE_string("model", "vgg19", "vgg16 | vgg19 | a train_facenet.py WORKDIR (small_cnn).")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG: the Keras notop HDF5 weights file.")
_LAYERS = flags.DEFINE_list("layers", None, "Layer names (default: the last conv of every block).")
_DATA = flags.DEFINE_string("data", None, "Folder of images (searched recursively).", required=True)
_OUT = cli.folder_flag("out", None, "Output folder.", required=True)
_K = flags.DEFINE_integer("k", 9, "Top activations kept per unit.", lower_bound=1)
_UNITS = flags.DEFINE_integer("units", 8, "Units per layer drawn in the PNG (seeded random, live).",
                              lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "VGG input side (px); a workdir uses its config's.",
                                   lower_bound=1)
_TILES = flags.DEFINE_integer("tiles", 1, "Cut each (square) image into tiles x tiles inputs.",
                              lower_bound=1)
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Use a seeded subset of this many files (0: all).",
                                   lower_bound=0)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per forward pass.", lower_bound=1)
_PATCH_PX = flags.DEFINE_integer("patch_px", 48, "Side of each drawn patch (px).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the file subset and of the drawn units.")



MAX_SIDE = 4096   # px per side of the image the tiles are cut from


class Net:
  """A conv network as the visualizer needs it: ``features(uint8 (B, H, W, C)) -> {layer:
  (B, h, w, C_l)}`` (jitted), per-layer receptive fields, and ``load(path) -> uint8 image``
  as the network expects it (what the patches are cut from)."""

  def __init__(self, model_flag: str, weights: str | None, image_size: int, tiles: int):
    import jax
    from flax import nnx
    from infra import units
    self.tiles = tiles
    if model_flag in ("vgg16", "vgg19"):
      from infra import vgg
      if not weights:
        raise app.UsageError(f"--model={model_flag} needs --weights=PATH (a Keras notop HDF5 file)")
      depth = int(model_flag[3:])
      if image_size * tiles > MAX_SIDE:   # decoded per image before any check failed: 4.8 GB at 40,000
        raise app.UsageError(f"--image_size={image_size} x --tiles={tiles} = {image_size * tiles} px "
                             f"per side; at most {MAX_SIDE}")
      self.min_size = vgg.min_input_size
      self.model = vgg.load_vgg(weights, depth, "max")
      geometry = vgg.layer_geometry(depth)
      order = vgg.layer_names(depth)   # default: the last conv of every block
      self.default_layers = [order[i - 1] for i, n in enumerate(order) if n.startswith("pool")]
      self.size, self.crop, self.channels = image_size, 0, 3
      prep = lambda x: vgg.preprocess_caffe(x)
      self.describe = f"ImageNet VGG{depth} ({os.path.basename(weights)})"
      self.short = f"VGG{depth}"
    else:
      from facenet_jax import preprocess, workdir as workdir_lib
      config = workdir_lib.load_config(model_flag)
      if config.model.name != "small_cnn" or config.model.spatial_dims != 2:
        raise app.UsageError(f"{model_flag}: model.name={config.model.name!r}, spatial_dims="
                             f"{config.model.spatial_dims}; the visualizer reads the geometry of "
                             "2-D small_cnn models (other nets: extend layer_geometry)")
      if tiles != 1:
        raise app.UsageError("--tiles must be 1 for a face network (it sees whole faces)")
      if str(config.data.get("align", "none")) != "none":   # it would rank units on unaligned crops
        raise app.UsageError(f"{model_flag}: config.data.align={config.data.align!r}: the network "
                             "was trained on aligned face crops, and the visualizer feeds it the "
                             "central crop of each photo; give it a run trained with align='none'")
      self.min_size = None
      step, graphdef, state = workdir_lib.restore(model_flag, config, workdir_lib.input_shape(config))
      self.model = nnx.merge(graphdef, state["params"], state["model_state"])
      geometry = self.model.layer_geometry()
      self.default_layers = [n for n, *_ in geometry if n.endswith("_2")]
      d = config.data
      self.size, self.crop, self.channels = d.image_size, d.center_crop, d.channels
      prep = preprocess.to_float
      self.describe = f"small_cnn face network {model_flag} (step {step}, {d.source})"
      self.short = f"face small_cnn ({d.source})"
    names = [g[0] for g in geometry]
    rfs = units.receptive_fields([g[1:] for g in geometry], rank=2)
    self.rf = dict(zip(names, rfs))
    self.layer_order = names
    graphdef, state = nnx.split(self.model)

    def features(state, x, layers):
      return nnx.merge(graphdef, state).features(prep(x), layers)
    self._features = jax.jit(features, static_argnums=2)
    self._state = state

  def features(self, images: np.ndarray, layers: tuple[str, ...]) -> dict:
    return self._features(self._state, images, layers)

  def load(self, path: str) -> np.ndarray:
    """The square (size * tiles)^2 uint8 image the tiles are cut from, (S, S, channels)."""
    from facenet_jax.data import images, raw
    im = raw.decode_image(raw.read_file(path), path, "L" if self.channels == 1 else "RGB")
    return images.fit_image(im, images.Fit(self.size * self.tiles, self.crop, self.channels), path)

  def example(self, cache: dict, path: str, tile: tuple[int, int]) -> np.ndarray:
    if path not in cache:
      cache.clear()
      cache[path] = self.load(path)
    y, x = tile
    s = self.size
    return cache[path][y * s:(y + 1) * s, x * s:(x + 1) * s]


def list_images(root: str, max_images: int, seed: int) -> list[str]:
  if not os.path.isdir(root):
    raise app.UsageError(f"--data={root} is not a directory")
  from infra import imagefile
  files = imagefile.walk_images(root)   # hidden files and folders skipped
  if not files:
    raise app.UsageError(f"--data={root} holds no images ({', '.join(imagefile.IMAGE_SUFFIXES)})")
  if max_images and len(files) > max_images:
    keep = np.random.default_rng(seed).choice(len(files), max_images, replace=False)
    files = [files[i] for i in sorted(keep)]
  return files


def stream_topk(net: Net, files: list[str], layers: tuple[str, ...], k: int, batch: int) -> dict:
  """One pass over every (file, tile): ``{layer: {"value", "image", "position"}}`` (numpy)."""
  import jax
  from infra import units
  t = net.tiles
  examples = [(f, (y, x)) for f in range(len(files)) for y in range(t) for x in range(t)]
  bufs, cache = None, {}
  for i in range(0, len(examples), batch):
    chunk = examples[i:i + batch]
    x = np.stack([net.example(cache, files[f], tile) for f, tile in chunk])
    valid = np.arange(batch) < len(chunk)
    if len(chunk) < batch:   # fixed batch shape: one compiled program
      x = np.concatenate([x, np.repeat(x[-1:], batch - len(chunk), 0)])
    acts = net.features(x, layers)
    if bufs is None:
      bufs = {n: units.init_topk(acts[n].shape[-1], k, 2) for n in layers}
    ids = np.arange(i, i + batch, dtype=np.int32)
    bufs = {n: units.update_topk(bufs[n], acts[n], ids, valid) for n in layers}
  return jax.device_get(bufs), examples


def _resize(patch: np.ndarray, px: int) -> np.ndarray:
  from PIL import Image
  im = Image.fromarray(patch[..., 0] if patch.shape[-1] == 1 else patch)
  filt = Image.Resampling.NEAREST if patch.shape[0] < px else Image.Resampling.BILINEAR
  out = np.asarray(im.resize((px, px), filt))
  return np.repeat(out[..., None], 3, -1) if out.ndim == 2 else out


def draw_layer(path: str, title: str, rows: list[tuple[int, list[np.ndarray], list[float]]]) -> None:
  """PNG grid: one row per unit (labelled with its channel), one column per rank."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n, k = len(rows), max(len(r[1]) for r in rows)
  cell = 0.55   # inches: ~50 px per patch at 90 dpi
  fig, axes = plt.subplots(n, k, figsize=(cell * k + 0.4, cell * n + 0.35), squeeze=False)
  for r, (unit, patches, acts) in enumerate(rows):
    for c in range(k):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      for sp in ax.spines.values():
        sp.set_visible(False)
      if c < len(patches):
        ax.imshow(patches[c], interpolation="nearest")
    axes[r, 0].set_ylabel(f"{unit}", rotation=0, ha="right", va="center", fontsize=7)
  fig.suptitle(title, fontsize=7)
  fig.subplots_adjust(left=0.4 / (cell * k + 0.4), right=0.995, top=1 - 0.32 / (cell * n + 0.35),
                      bottom=0.005,
                      wspace=0.04, hspace=0.04)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  from infra import files as files_lib, units
  t0 = time.time()
  if os.path.exists(os.path.join(_OUT.value, "units.json")):   # a rerun mixed two results' PNGs
    raise app.UsageError(f"--out={_OUT.value} holds the result of an earlier run (units.json); "
                         "give a new folder, or remove that one first")
  net = Net(_MODEL.value, _WEIGHTS.value, _IMAGE_SIZE.value, _TILES.value)
  layers = tuple(_LAYERS.value or net.default_layers)
  bad = [n for n in layers if n not in net.rf]
  if bad:
    raise app.UsageError(f"--layers: unknown {bad}; the model has {net.layer_order}")
  layers = tuple(sorted(set(layers), key=net.layer_order.index))   # a layer named twice: once
  if net.min_size is not None and net.size < net.min_size(layers):
    raise app.UsageError(f"--image_size={net.size}: the layers {list(layers)} need at least "
                         f"{net.min_size(layers)} px per side (one halving per pooling)")
  files = list_images(_DATA.value, _MAX_IMAGES.value, _SEED.value)
  for f in files:   # every image decodes and fits before the forward passes (named if not)
    net.load(f)
  bufs, examples = stream_topk(net, files, layers, _K.value, _BATCH.value)
  os.makedirs(_OUT.value, exist_ok=True)
  rng = np.random.default_rng(_SEED.value)
  index = {"model": net.describe, "data": os.path.abspath(_DATA.value), "files": len(files),
           "inputs": len(examples), "input_size": net.size, "tiles": net.tiles, "k": _K.value,
           "layers": {}}
  print(f"{net.describe}: {len(examples)} inputs of {net.size}x{net.size} from {len(files)} "
        f"files in {_DATA.value}")
  print(f"{'layer':>8} {'RF (px)':>8} {'jump':>5} {'units':>6} {'dead':>5} {'mean top-1':>11}")
  cache: dict = {}
  for name in layers:
    rf, b = net.rf[name], bufs[name]
    live = np.flatnonzero(b["value"][:, 0] > 0)
    entries = []
    for c in range(b["value"].shape[0]):
      top = []
      for r in range(_K.value):
        img = int(b["image"][c, r])
        if img < 0:
          continue
        f, tile = examples[img]
        start, stop = rf.box(b["position"][c, r])
        # fired: False where the unit is 0 over the whole input (its position is argmax's (0, 0))
        top.append({"image": files[f], "tile": list(tile), "position": b["position"][c, r].tolist(),
                    "activation": float(b["value"][c, r]), "fired": bool(b["value"][c, r] > 0),
                    "box": [start.tolist(), stop.tolist()]})
      entries.append({"unit": c, "top": top})
    shown = sorted(rng.choice(live, min(_UNITS.value, live.size), replace=False).tolist())
    rows = []
    for c in shown:
      patches = []
      for t in entries[c]["top"]:
        if not t["fired"]:   # no patch to show: drawn as an empty cell, not as the top-left corner
          continue
        img = net.example(cache, t["image"], tuple(t["tile"]))
        patches.append(_resize(units.crop_box(img, *t["box"], fill=128), _PATCH_PX.value))
      rows.append((c, patches, [t["activation"] for t in entries[c]["top"] if t["fired"]]))
    size = "x".join(str(v) for v in rf.size)
    title = (f"{net.short} {name}: receptive field {size} px, stride {rf.jump[0]}\n"
             f"per unit (row): its top {_K.value} of {len(examples)} inputs (empty: the unit is 0 "
             "on every other input)")
    png = os.path.join(_OUT.value, f"units_{name}.png")
    if rows:
      draw_layer(png, title, rows)
    index["layers"][name] = {"receptive_field": rf.size.tolist(), "jump": rf.jump.tolist(),
                             "offset": rf.offset.tolist(), "channels": len(entries),
                             "dead_units": int(len(entries) - live.size), "shown_units": shown,
                             "png": png if rows else None, "units": entries}
    print(f"{name:>8} {size:>8} {rf.jump[0]:>5} {len(entries):>6} {len(entries) - live.size:>5} "
          f"{float(np.mean(b['value'][:, 0])):>11.4g}")
  files_lib.write_json_atomic(os.path.join(_OUT.value, "units.json"), index)
  drawn = [n for n, v in index["layers"].items() if v["png"]]   # a layer of dead units has none
  print(f"wrote {len(drawn)} PNGs and units.json to {_OUT.value} in {time.time() - t0:.0f} s"
        + (f"; no live unit in {', '.join(n for n in index['layers'] if n not in drawn)}, no PNG"
           if len(drawn) < len(index["layers"]) else ""))


if __name__ == "__main__":
  cli.run(main)
