"""A trained run, restored from its workdir, as an embedding function.

``train_and_evaluate`` writes ``workdir/config.json`` before its first step and Orbax
checkpoints under ``workdir/checkpoints`` (facenet_jax/workdir.py); ``load(workdir)`` rebuilds the model from the
config, restores the latest checkpoint and returns ``Trained(config, step, embed)`` where
``embed(images uint8 (N, *spatial, C)) -> (N, D)`` float32 L2-normalized embeddings, and
the model's ``fingerprint`` (what a recognition gallery records, so embeddings of two models
are never compared).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from facenet_jax import steps, vgg_features, workdir as workdir_lib
from infra import checkpoints, files, mesh as mesh_lib, vgg as vgg_lib

# config fields that decide what an image's embedding is, besides the weights: the model
# (all of config.model but the VGG weights' path, whose file may move: model_fingerprint adds
# the frozen backbone's content, frozen_backbone), how images are fitted
# and the frozen-backbone features (but not where they are cached), and flip TTA
_EMBEDDING_DATA_FIELDS = ("image_size", "center_crop", "channels", "features", "features_pool",
                          "features_power", "features_flip")
# fields added to those later, with the value every earlier run had: left out of the
# fingerprint at that value, so runs and galleries saved before them keep their fingerprints
_LATER_EMBEDDING_DATA_FIELDS = {"features_grid": 1}


@dataclasses.dataclass(frozen=True)
class Trained:
  config: ml_collections.ConfigDict
  step: int
  embed: Callable[[np.ndarray], np.ndarray]
  input_shape: tuple[int, ...]   # (*spatial, C) of the images embed() takes
  fingerprint: str = ""          # model_fingerprint(config, weights): sha256 hex
  source: str = ""               # "<workdir> step <step>", for messages


def embedding_config(config: ml_collections.ConfigDict) -> dict:
  """The part of a run's config that, with the weights, fixes its embeddings (a dict)."""
  model = {k: v for k, v in config.model.to_dict().items() if k != "vgg_weights"}
  data = {k: config.data[k] for k in _EMBEDDING_DATA_FIELDS if k in config.data}
  data.update({k: config.data[k] for k, old in _LATER_EMBEDDING_DATA_FIELDS.items()
               if config.data.get(k, old) != old})
  return {"model": model, "data": data, "flip_tta": bool(config.evaluation.flip_tta)}


def frozen_backbone(config: ml_collections.ConfigDict) -> str | None:
  """What the frozen backbone of a ``data.features`` run is: the SHA-256 of its weights file's
  bytes (``infra.files.file_sha256``: a moved or re-staged copy is the same backbone, another
  file at the same path is not), or the weights keyword. None without ``data.features``: the
  model then has no frozen backbone (a vgg16/vgg19 model's backbone is in its restored
  params), so ``model.vgg_weights`` does not decide its embeddings."""
  if not config.data.get("features"):
    return None
  weights = str(config.model.vgg_weights)
  keyword = vgg_lib.weights_keyword(weights)
  return keyword or "sha256:" + files.file_sha256(os.path.expanduser(weights))


def model_fingerprint(config: ml_collections.ConfigDict, weights) -> str:
  """SHA-256 (hex) of ``embedding_config(config)`` (with ``frozen_backbone`` added for a
  ``data.features`` run) as sorted JSON, then of every weight array
  (``checkpoints.state_digest``: path, dtype, shape, bytes) of ``weights`` (the restored
  ``params`` and ``model_state``). Equal fingerprints: the same embedding function. Runs
  without ``data.features`` keep the fingerprint they had before the backbone was added
  (their galleries still match); galleries of ``data.features`` runs enrolled before it
  are refused once, as by another model (enrol again)."""
  ident = embedding_config(config)
  backbone = frozen_backbone(config)
  if backbone is not None:   # the frozen weights make the features the head embeds
    ident = dict(ident, frozen_backbone=backbone)
  h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=list).encode())
  digest = checkpoints.state_digest(weights)
  if digest is None:   # load() holds the restored arrays whole; a sharded state is a bug here
    raise ValueError("model_fingerprint needs weights held whole by this process")
  h.update(digest.encode())
  return h.hexdigest()


def load(workdir: str, config: ml_collections.ConfigDict | None = None, *,
         batch_size: int | None = None) -> Trained:
  """Restores the latest checkpoint of ``workdir``; ``embed`` takes images as the data
  sources load them (with ``data.features``, the backbone runs first, cached).

  Reading a run writes nothing outside its workdir and its caches, in this order: the
  config is read (``config`` or ``<workdir>/config.json``); the paths it names are checked
  (``workdir.check_paths``: the VGG weights must be a regular file, the feature cache must
  lie under the workdir or the default tfds dir, or already hold this run's cache file);
  the checkpoint is restored read-only; only then does the backbone run (a one-image probe
  that checks its output shape against the restored model) and write its feature cache.
  """
  workdir = os.path.abspath(workdir)
  config = config or workdir_lib.load_config(workdir)
  cache_dir = workdir_lib.check_paths(workdir, config)
  shape = workdir_lib.input_shape(config)
  model_shape = vgg_features.output_shape(config, shape)
  step, graphdef, state = workdir_lib.restore(workdir, config, model_shape)
  features = vgg_features.transform_for(config, cache_dir)
  if features is not None:
    probe = features(np.zeros((1,) + shape, np.uint8), "shape probe").shape[1:]
    if probe != model_shape:   # a disagreement between output_shape and the backbone: a bug
      raise ValueError(f"{workdir}: the backbone gives features of shape {probe}, the restored "
                       f"model takes {model_shape}")
  fingerprint = model_fingerprint(config, {"params": state["params"],
                                           "model_state": state["model_state"]})
  mesh = mesh_lib.make_data_mesh()
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  fn = steps.jit_embed_fn(graphdef, config.evaluation.flip_tta, mesh)
  bs = int(np.lcm(batch_size or config.eval_batch_size, mesh.devices.size))

  def embed(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.shape[1:] != shape:
      raise ValueError(f"images of shape {images.shape[1:]} given to a model trained on "
                       f"{shape} (config.data.image_size / channels)")
    if features is not None:
      images = features(images, "images")
    return steps.embed_all(fn, state, images, bs, mesh)

  return Trained(config=config, step=int(step), embed=embed, input_shape=shape,
                 fingerprint=fingerprint, source=f"{workdir} step {int(step)}")
