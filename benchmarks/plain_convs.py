"""Benchmark-only: trace with plain ``lax`` convolutions on CPU, to time the CPU kernels of
``infra.convolution`` against what they replace.

The library has no switch for this (it chooses per compiled platform); a benchmark swaps the
CPU kernel functions for ``lax``'s while it traces and compiles, then restores them.
"""

from __future__ import annotations

import contextlib

from jax import lax

from infra import convolution


@contextlib.contextmanager
def plain_convs(on: bool = True):
  """Inside (when ``on``), programs compiled for CPU use ``lax.conv_general_dilated``."""
  if not on:
    yield
    return
  saved = convolution.cpu_conv3x3, convolution.cpu_conv_general_dilated
  convolution.cpu_conv3x3 = convolution.lax_conv3x3
  convolution.cpu_conv_general_dilated = lax.conv_general_dilated
  try:
    yield
  finally:
    convolution.cpu_conv3x3, convolution.cpu_conv_general_dilated = saved
