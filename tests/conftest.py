"""Test setup: 8 simulated CPU devices, set before JAX initializes its backends."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

# Many tests build the same jitted programs (a resumed run recompiles what the first run
# compiled); a persistent compilation cache turns those recompiles into cache hits.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("TEST_JAX_CACHE_DIR", os.path.join(tempfile.gettempdir(), "facenet_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
