"""A trained run, restored from its workdir, as an embedding function.

``train_and_evaluate`` writes ``workdir/config.json`` before its first step and Orbax
checkpoints under ``workdir/checkpoints`` (facenet_jax/workdir.py); ``load(workdir)`` rebuilds the model from the
config, restores the latest checkpoint and returns ``Trained(config, step, embed)`` where
``embed(images uint8 (N, *spatial, C)) -> (N, D)`` float32 L2-normalized embeddings.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from facenet_jax import steps, vgg_features, workdir as workdir_lib
from infra import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Trained:
  config: ml_collections.ConfigDict
  step: int
  embed: Callable[[np.ndarray], np.ndarray]
  input_shape: tuple[int, ...]   # (*spatial, C) of the images embed() takes


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

  return Trained(config=config, step=int(step), embed=embed, input_shape=shape)
