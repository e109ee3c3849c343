"""Multi-host start-up: ``jax.distributed.initialize`` when the environment asks for it."""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> None:
  """Initializes multi-process JAX when a coordinator is configured.

  Cluster environments that JAX auto-detects (SLURM, TPU pods, Open MPI) set
  ``JAX_COORDINATOR_ADDRESS`` or their own variables; on a single machine nothing
  happens. Must run before any JAX computation.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()
