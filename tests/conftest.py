"""Test setup: 8 simulated CPU devices, set before JAX initializes its backends."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

# Many tests build the same jitted programs (a resumed run recompiles what the first run
# compiled); a persistent compilation cache turns those recompiles into cache hits.
import tempfile

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("TEST_JAX_CACHE_DIR", os.path.join(tempfile.gettempdir(), "facenet_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_script(name: str):
  """scripts/<name>.py as a module. The scripts define absl flags at import (two of them
  both define --workdir); the flags a script added are removed again, so loading one never
  collides with another or with a second load (nothing here goes through their absl main)."""
  import importlib.util

  from absl import flags
  before = set(flags.FLAGS)
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
  spec = importlib.util.spec_from_file_location(name, os.path.join(root, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for n in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, n)
  return module
