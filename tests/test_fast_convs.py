"""The CPU kernels of infra/convolution.py equal lax's, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infra import convolution


def _lax(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("fn_name", ["winograd_conv3x3", "tap_grad_conv3x3", "cpu_conv3x3"])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])   # odd sizes exercise the tile padding
def test_fast_conv3x3_matches_lax(fn_name, hw):
  fn = getattr(convolution, fn_name)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *hw, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
  np.testing.assert_allclose(jax.jit(fn)(x, k), _lax(x, k), rtol=1e-4, atol=1e-4)
  dy = jnp.asarray(rng.normal(size=(2, *hw, 6)), jnp.float32)
  got = jax.vjp(fn, x, k)[1](dy)
  want = jax.vjp(_lax, x, k)[1](dy)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
