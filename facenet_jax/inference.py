"""A trained run, restored from its workdir, as an embedding function.

``train_and_evaluate`` writes ``workdir/config.json`` before its first step and Orbax
checkpoints under ``workdir/checkpoints``; ``load(workdir)`` rebuilds the model from the
config, restores the latest checkpoint and returns ``Trained(config, step, embed)`` where
``embed(images uint8 (N, *spatial, C)) -> (N, D)`` float32 L2-normalized embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from infra import checkpoints, mesh as mesh_lib
from infra.files import write_json_atomic

CONFIG_FILE = "config.json"


class WorkdirError(FileNotFoundError):
  """A workdir without a usable config or checkpoint (names the path)."""


@dataclasses.dataclass(frozen=True)
class Trained:
  config: ml_collections.ConfigDict
  step: int
  embed: Callable[[np.ndarray], np.ndarray]
  input_shape: tuple[int, ...]   # (*spatial, C) of the images embed() takes


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  write_json_atomic(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, with fields added to ``configs/facenet.py`` since it was written
  taking their defaults (so old runs stay loadable)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f"{path} not found: is {workdir!r} a workdir written by "
                       "scripts/train_facenet.py?")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path}: not a readable JSON config ({e})") from e
  from configs import facenet as facenet_configs
  config = facenet_configs.get_config(saved.get("variant"))
  config.unlock()

  def merge(dst: ml_collections.ConfigDict, src: dict, prefix: str):
    for k, v in src.items():
      if k not in dst:
        raise WorkdirError(f"{path}: field {prefix}{k} is not in configs/facenet.py")
      if isinstance(dst[k], ml_collections.ConfigDict):
        merge(dst[k], v, f"{prefix}{k}.")
      else:
        dst[k] = tuple(v) if isinstance(dst[k], tuple) else v
  merge(config, saved, "config.")
  return config


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(*spatial, C) of the images the data sources produce for ``config``."""
  return (config.data.image_size,) * config.model.spatial_dims + (config.data.channels,)


def restore(workdir: str, config: ml_collections.ConfigDict,
            model_shape: tuple[int, ...]) -> tuple[int, object, dict]:
  """``(step, graphdef, state)`` of the latest checkpoint of ``workdir``; ``state`` as
  ``train.create_train_state`` builds it (``params``, ``model_state``, ...), so
  ``nnx.merge(graphdef, state["params"], state["model_state"])`` is the trained model."""
  from facenet_jax import train
  graphdef, _, state = train.create_train_state(config, example_shape=model_shape)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise WorkdirError(f"{workdir}/checkpoints holds no finished checkpoint (no such folder)")
  # read-only: a finished run on storage this process cannot write to is still usable
  ckpt = checkpoints.Checkpointer(directory, every=1, read_only=True)
  restored = ckpt.restore(state)
  ckpt.close()
  if restored is None:
    raise WorkdirError(f"{workdir}/checkpoints holds no finished checkpoint")
  step, state, _ = restored
  return int(step), graphdef, state


def load(workdir: str, config: ml_collections.ConfigDict | None = None, *,
         batch_size: int | None = None) -> Trained:
  """Restores the latest checkpoint of ``workdir``; ``embed`` takes images as the data
  sources load them (with ``data.features``, the backbone runs first, cached)."""
  from facenet_jax import train, vgg_features
  workdir = os.path.abspath(workdir)
  config = config or load_config(workdir)
  shape = input_shape(config)
  features = vgg_features.transform_for(config)
  model_shape = shape
  if features is not None:
    model_shape = features(np.zeros((1,) + shape, np.uint8), "shape probe").shape[1:]
  step, graphdef, state = restore(workdir, config, model_shape)
  mesh = mesh_lib.make_data_mesh()
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  state = jax.device_put(state, repl)
  fn = jax.jit(train.make_embed_fn(graphdef, config.evaluation.flip_tta),
               in_shardings=(repl, repl, batch_sh),
               out_shardings=repl)
  bs = int(np.lcm(batch_size or config.eval_batch_size, mesh.devices.size))

  def embed(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.shape[1:] != shape:
      raise ValueError(f"images of shape {images.shape[1:]} given to a model trained on "
                       f"{shape} (config.data.image_size / channels)")
    if features is not None:
      images = features(images, "images")
    return train.embed_all(fn, state, images, bs, mesh)

  return Trained(config=config, step=int(step), embed=embed, input_shape=shape)
