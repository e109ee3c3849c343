"""Device mesh and shardings for data-parallel training with global-batch semantics.

One 1-D mesh axis, ``data``, spans every device of every process. Parameters are
replicated; a batch is sharded along its leading axis. Code inside ``jax.jit`` sees the
*global* batch (a pairwise-distance matrix over all B images, as FaceNet mines its
1,800-image batches), and XLA inserts the collectives (the train step's own sums across
devices are ordered: below).

The mesh uses ``AxisType.Auto``: under the Explicit axes that ``jax.make_mesh`` defaults
to on current JAX, ``emb_BxD @ emb_BxD.T`` of a batch-sharded embedding raises a
sharding type error.

Sums across devices in a fixed order (:func:`ordered_sum`, :func:`ordered_tree_sum`, used
inside ``jax.shard_map``): an all-reduce sums the devices' partial results in whatever order
its collective library picks (gloo's ring across processes, device order within one), so the
same 4 devices split 2 x 2 over processes or 1 x 4 in one would differ in the last bits.
Gathering the partials (exact: no arithmetic) and adding them in device order makes the
bits a function of the device count alone.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from infra.errors import UserError

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


class BatchSplitError(UserError, ValueError):
  """A batch that the devices or processes cannot split into equal shares (a setting to
  change: the message names it)."""


def check_divisible(global_batch: int, mesh: Mesh, what: str = "global batch") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise BatchSplitError(
        f"{what} of {global_batch} is not divisible by the {n} devices of the mesh; "
        f"choose a batch that is a multiple of {n}.")


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` whole on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def process_slice(global_batch: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """Rows of a global batch that one process loads: the ``process_index``-th of
  ``process_count`` equal contiguous blocks (the rows its devices hold on :func:`make_data_mesh`,
  which orders devices by process; :func:`assemble_batch` checks this)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch % process_count:
    raise BatchSplitError(f"global batch {global_batch} is not divisible by {process_count} "
                          f"processes")
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


def _rows_held(global_batch: int, mesh: Mesh) -> tuple[int, int]:
  """The (first, stop) rows of a batch-sharded array this process's devices hold."""
  index = batch_sharded(mesh).addressable_devices_indices_map((global_batch,))
  spans = sorted((ix[0].indices(global_batch)[:2]) for ix in index.values())
  return spans[0][0], spans[-1][1]


def assemble_batch(rows: Any, mesh: Mesh, global_batch: int) -> Any:
  """This process's rows of the global batch (``process_slice(global_batch)``) -> global
  jax.Arrays of ``global_batch`` rows sharded on axis 0, through
  ``jax.make_array_from_process_local_data``. Each process reads only its own rows; code
  inside ``jax.jit`` still sees (and mines) the whole global batch."""
  check_divisible(global_batch, mesh)
  want = process_slice(global_batch)
  held = _rows_held(global_batch, mesh)
  if held != (want.start, want.stop):
    raise ValueError(
        f"process {jax.process_index()}'s devices hold rows {held[0]}..{held[1] - 1} of the "
        f"global batch but it loads rows {want.start}..{want.stop - 1}: build the mesh with "
        f"make_data_mesh (devices ordered by process)")
  sharding = batch_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    if x.shape[0] != want.stop - want.start:
      raise ValueError(f"process {jax.process_index()} gave {x.shape[0]} rows; its share of the "
                       f"global batch of {global_batch} is {want.stop - want.start}")
    return jax.make_array_from_process_local_data(sharding, x, (global_batch, *x.shape[1:]))

  return jax.tree.map(put, rows)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """A whole global batch held by every process (host arrays) -> global jax.Arrays sharded
  on axis 0: each process contributes its rows (:func:`assemble_batch`). For batches every
  process has anyway (evaluation images); training batches are built per process."""
  n = np.shape(jax.tree.leaves(batch)[0])[0]
  check_divisible(n, mesh)   # before slicing: the error names the devices, not the processes
  rows = process_slice(n)
  return assemble_batch(jax.tree.map(lambda x: np.asarray(x)[rows], batch), mesh, n)


# ------------------------------------------------------- sums across devices, in device order

def fold_rows(x: jax.Array) -> jax.Array:
  """``x[0] + x[1] + ... + x[n-1]``, added left to right (not a tree, not a reduce whose
  order a backend picks)."""
  acc = x[0]
  for i in range(1, x.shape[0]):
    acc = acc + x[i]
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def ordered_sum(x: jax.Array, axis_name: str) -> jax.Array:
  """Inside ``jax.shard_map``: the sum of ``x`` over the devices of ``axis_name`` (the same
  value on each), added in device order after an exact all-gather. Its gradient is the
  same ordered sum of every device's cotangent (each device used the sum). For small
  arrays (BatchNorm statistics); :func:`ordered_tree_sum` moves less for large ones."""
  return fold_rows(lax.all_gather(x, axis_name))


def _ordered_sum_fwd(x, axis_name):
  return ordered_sum(x, axis_name), None


def _ordered_sum_bwd(axis_name, _, ct):
  return (fold_rows(lax.all_gather(ct, axis_name)),)


ordered_sum.defvjp(_ordered_sum_fwd, _ordered_sum_bwd)


def ordered_tree_sum(tree: Any, axis_name: str) -> Any:
  """Inside ``jax.shard_map``: every leaf of ``tree`` summed over the devices of
  ``axis_name`` in device order, with an all-reduce's traffic: the leaves flattened into one
  vector of n blocks, block d of every device sent to device d (all_to_all), added there in
  device order, and the sums gathered back (all_gather). Not differentiable (the gradients
  of a step are its input)."""
  n = lax.axis_size(axis_name)
  flat, unravel = ravel_pytree(tree)
  size = flat.shape[0]
  flat = jnp.pad(flat, (0, (-size) % n)).reshape(n, -1)
  mine = fold_rows(lax.all_to_all(flat, axis_name, 0, 0))   # row e: device e's block d
  return unravel(lax.all_gather(mine, axis_name, tiled=True)[:size])
