"""Test setup: 8 simulated CPU devices, set before JAX initializes its backends."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
