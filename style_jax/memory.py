"""How much memory a style-transfer run needs, estimated from its sizes before anything is
allocated, and how much there is.

Peak bytes of the largest scale, an H x W output through the VGG up to its deepest used
layer (``estimate_bytes``)::

  4 * (ACTIVATION_FACTOR * sum_l h_l w_l c_l      # every feature map up to the deepest
                                                  # layer, kept for the backward pass
       + (2 m + IMAGE_COPIES) * 3 H W)            # L-BFGS: m (s, y) pairs; the image, its
                                                  # gradient, line-search points, Adam moments
  + VGG weights + RUNTIME_BYTES

``ACTIVATION_FACTOR`` = 3 bounds XLA's temp memory of the loss gradient measured by
benchmarks/style_memory.py (compiled ``memory_analysis()``, VGG19, conv1_1..conv5_1): 6.1 MiB at
48 px and 24.5 MiB at 96 px against 2.8 and 11.3 MiB of feature maps, a factor of 2.2
(tests/test_style.py::test_memory_estimate_bounds_xla_temp_memory checks it at 64 px).
"""

from __future__ import annotations

import os

from infra import vgg as vgg_lib
from infra.errors import UserError
from style_jax import images

ACTIVATION_FACTOR = 3.0
IMAGE_COPIES = 8
RUNTIME_BYTES = 512 * 2**20   # the JAX runtime, compiled programs, Python
MEMORY_ENV = "STYLE_MEMORY_BYTES"   # overrides the available-memory figure


def feature_elements(hw: tuple[int, int], layers: tuple[str, ...], depth: int) -> int:
  """``sum_l h_l w_l c_l`` over the VGG features from conv1_1 up to the deepest of
  ``layers`` at an input of ``hw`` (each 2x2 pooling floors the size by 2)."""
  h, w = hw
  deepest = max(vgg_lib.layer_names(depth).index(n) for n in layers)
  total, channels = 0, dict(vgg_lib.conv_channels(depth))   # a pooling keeps its block's
  for name in vgg_lib.layer_names(depth)[:deepest + 1]:
    if name.startswith("pool"):
      h, w = h // 2, w // 2
      total += h * w * channels[f"conv{name[4]}_1"]
    else:
      total += h * w * channels[name]
  return total


def estimate_bytes(hw: tuple[int, int], layers: tuple[str, ...], depth: int,
                   lbfgs_memory: int) -> int:
  """Peak bytes of optimizing an ``hw`` image against ``layers`` (module doc)."""
  pixels = 3 * hw[0] * hw[1]
  outs = [c for _, c in vgg_lib.conv_channels(depth)]
  weights = 4 * sum(9 * cin * cout + cout for cin, cout in zip([3] + outs[:-1], outs))
  return int(4 * (ACTIVATION_FACTOR * feature_elements(hw, layers, depth)
                  + (2 * lbfgs_memory + IMAGE_COPIES) * pixels) + weights + RUNTIME_BYTES)


def available_bytes() -> tuple[int, str]:
  """``(bytes, where from)``: ``$STYLE_MEMORY_BYTES``, else the accelerator's limit
  (``memory_stats``), else MemAvailable of /proc/meminfo, else free pages (``os.sysconf``)."""
  if os.environ.get(MEMORY_ENV):
    return int(float(os.environ[MEMORY_ENV])), f"${MEMORY_ENV}"
  import jax
  device = jax.devices()[0]
  if device.platform != "cpu":
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit:
      return int(limit), f"{device.platform} memory"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free memory pages"


def largest_fitting(shape_hw: tuple[int, int], fits) -> int:
  """The largest longest side (px) whose size ``fits(hw)``, by bisection (0 if none)."""
  lo, hi = 0, max(shape_hw) * 2 + 2
  while fits(images.size_for_longest(shape_hw, hi)):
    lo, hi = hi, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(images.size_for_longest(shape_hw, mid)) else (lo, mid)
  return lo


class TooLargeError(UserError, MemoryError):
  """A run whose estimated memory exceeds what is available (names the field and the
  largest size that fits)."""


def check_fits(image_size: int, content_hw: tuple[int, int], out_hw: tuple[int, int],
               layers: tuple[str, ...], depth: int, lbfgs_memory: int) -> int:
  """Raises TooLargeError unless optimizing an ``out_hw`` output (the largest scale) fits in
  :func:`available_bytes`; the message gives the estimate and the largest
  ``config.image_size`` that fits. Returns the estimate in bytes."""
  need = estimate_bytes(out_hw, layers, depth, lbfgs_memory)
  have, where = available_bytes()
  if need <= have:
    return need
  fits = lambda hw: estimate_bytes(hw, layers, depth, lbfgs_memory) <= have
  best = largest_fitting(content_hw, fits)
  deepest = max(layers, key=vgg_lib.layer_names(depth).index)
  raise TooLargeError(
      f"config.image_size={image_size}: a {out_hw[1]}x{out_hw[0]} px image through VGG{depth} "
      f"up to {deepest} needs about {_gb(need)} of memory, but {_gb(have)} is available "
      f"({where}; ${MEMORY_ENV} overrides it); the largest image_size that fits is {best}")


def _gb(n: float) -> str:
  return f"{n / 1e9:.3g} GB"
