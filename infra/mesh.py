"""Device mesh and shardings for data-parallel training with global-batch semantics.

One 1-D mesh axis, ``data``, spans every device of every process. Parameters are
replicated; a batch is sharded along its leading axis. Code inside ``jax.jit`` sees the
*global* batch (a pairwise-distance matrix over all B images, as FaceNet mines its
1,800-image batches), and XLA inserts the collectives.

The mesh uses ``AxisType.Auto``: under the Explicit axes that ``jax.make_mesh`` defaults
to on current JAX, ``emb_BxD @ emb_BxD.T`` of a batch-sharded embedding raises a
sharding type error.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``data`` mesh over ``devices`` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,),
      axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, what: str = "global batch") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
        f"{what} of {global_batch} is not divisible by the {n} devices of the mesh; "
        f"choose a batch that is a multiple of {n}.")


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` whole on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Global host arrays (same on every process) -> global jax.Arrays sharded on axis 0.

  Each process holds the whole global batch here (the sampler is deterministic from
  (seed, step), so every process computes the same indices) and contributes the rows
  that belong to its addressable devices.
  """
  sharding = batch_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    check_divisible(x.shape[0], mesh)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, batch)


def process_slice(global_batch: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """Rows of a global batch that one process loads when data loading is split by process."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)
