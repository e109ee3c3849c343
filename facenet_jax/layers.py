"""The building blocks of the face-embedding networks (:mod:`facenet_jax.models`), for any
spatial rank: kernel inits, pooling, L2 normalisation, the conv that uses the platform's
convolution, a cross-device BatchNorm, conv+BN(+ReLU) units and the embedding head.

Shapes are ``(B, *spatial, C)``: ``(B, L, C)`` signals, ``(B, H, W, C)`` images,
``(B, D, H, W, C)`` volumes. Kernel sizes and strides given as ints are expanded to one
entry per spatial axis (:func:`expand`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from infra import convolution, mesh as mesh_lib
from infra.errors import UserError

BN_MOMENTUM = 0.9  # flax convention; equals torch's momentum=0.1


@functools.partial(jax.jit, static_argnums=1)
def _normal_bucket(key: jax.Array, n: int) -> jax.Array:
  return jax.random.normal(key, (n,), jnp.float32)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _shape_bucket(z: jax.Array, shape: tuple[int, ...], std: float, dtype: Any) -> jax.Array:
  return (z[:math.prod(shape)] * std).reshape(shape).astype(dtype)


def _fan_in_normal(scale: float):
  """N(0, scale / fan_in) kernel init (scale 2: He/Kaiming normal; 1: LeCun normal), with
  fan_in = prod(shape[:-1]) for conv (*K, Cin, Cout) and dense (Cin, Cout) kernels.

  Samples are drawn flat from a few power-of-4 size buckets and then reshaped: XLA:CPU takes
  seconds to compile a random draw for each distinct multi-dimensional shape, which made eager
  model construction take ~20 s (small_cnn) to minutes (ResNet-50); this needs ~5 compiles.
  """
  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    n = math.prod(shape)
    bucket = 4 ** max(6, math.ceil(math.log(max(n, 1), 4)))
    std = math.sqrt(scale / max(1, math.prod(shape[:-1])))
    return _shape_bucket(_normal_bucket(key, bucket), tuple(shape), std, jnp.dtype(dtype))
  return init


HE_INIT, LECUN_INIT = _fan_in_normal(2.0), _fan_in_normal(1.0)


def expand(v: int | Sequence[int], rank: int) -> tuple[int, ...]:
  """Expands an int to a ``rank``-tuple; passes sequences through."""
  return (v,) * rank if isinstance(v, int) else tuple(v)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """(B, *spatial, C) -> (B, C): mean over all spatial axes."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def max_pool(x: jax.Array, window: int, stride: int, padding: str = "VALID") -> jax.Array:
  """Rank-generic max-pool over the spatial axes of (B, *spatial, C).

  Non-overlapping VALID windows put each window's elements on one trailing axis and take the
  element at its argmax; the gradient goes to that one index (the first maximum of a tie).
  This costs 1.04x ``jnp.max`` over the window on the default CPU train step, against 1.20x for
  ``reduce_window``, whose gradient lowers to select-and-scatter. ``jnp.max``'s gradient is
  not used: it compares the input with the maximum again, by exact float equality. Inside
  the compiled multi-device step, XLA recomputed one side with other rounding, and windows lost
  their gradient: 8 devices at 3 rows each gave gradients 40% off the 1-device step, with the
  same loss.
  """
  rank = x.ndim - 2
  if window == stride and padding == "VALID":
    out = [n // window for n in x.shape[1:-1]]
    x = x[(slice(None), *(slice(0, o * window) for o in out))]
    # (B, o1, w1, o2, w2, ..., C) -> (B, o1, o2, ..., C, w1 * w2 * ...)
    split = x.reshape([x.shape[0]] + [d for o in out for d in (o, window)] + [x.shape[-1]])
    order = [0, *range(1, 2 * rank, 2), 2 * rank + 1, *range(2, 2 * rank + 1, 2)]
    windows = split.transpose(order).reshape(x.shape[0], *out, x.shape[-1], window ** rank)
    first_max = jnp.argmax(windows, axis=-1)[..., None]
    return jnp.take_along_axis(windows, first_max, axis=-1)[..., 0]
  return linen.max_pool(x, expand(window, rank), expand(stride, rank), padding=padding)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / sqrt(sum(x^2) + eps) along the last axis (zero vectors stay finite)."""
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def he_conv(cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, *,
          padding: str = "SAME", use_bias: bool, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
  """nnx.Conv with He init and the platform's convolution (``infra.convolution``: plain
  ``lax`` on accelerators, the CPU kernels in programs compiled for CPU)."""
  return nnx.Conv(cin, cout, kernel, stride, padding=padding, use_bias=use_bias, dtype=dtype,
                  kernel_init=HE_INIT, conv_general_dilated=convolution.conv_general_dilated,
                  rngs=rngs)


def run_layers(layers: Sequence[Any], x: jax.Array, train: bool) -> jax.Array:
  for layer in layers:
    x = layer(x, train)
  return x


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` whose batch statistics can span devices in a fixed order.

  With ``device_axis`` set (:func:`set_device_axis`, inside ``jax.shard_map`` over that mesh
  axis, each device holding its rows of the batch) a train-mode call takes the mean and
  variance of the *global* batch: per-device sums of x and x^2, added over the devices in
  device order (``mesh.ordered_sum``; so are their gradients), divided by the global count.
  Otherwise (the default) it is ``nnx.BatchNorm`` exactly. Same variables either way.

  The models call it without a mask: rows a batch flags ``mask=False`` (P x K padding,
  corrupt records as zeros) count in the statistics, though no triplet uses them (README
  "Batches"). A ``mask`` here would take the per-device ``nnx.BatchNorm`` path below, not the
  global one, so masking them needs the global sums weighted by the mask first.
  """
  device_axis: str | None = None

  def __call__(self, x, use_running_average=None, *, mask=None):
    if self.device_axis is None or use_running_average is not False or mask is not None:
      return super().__call__(x, use_running_average, mask=mask)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    features = tuple(a % x.ndim for a in axis)
    reduce = tuple(i for i in range(x.ndim) if i not in features)
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
    x32 = jnp.asarray(x, jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    count = math.prod(x.shape[i] for i in reduce) * jax.lax.axis_size(self.device_axis)
    sums = mesh_lib.ordered_sum(jnp.stack([x32.sum(reduce), (x32 * x32).sum(reduce)]),
                                self.device_axis)
    mean, mean2 = sums[0] / count, sums[1] / count
    var = jnp.maximum(0.0, mean2 - mean * mean)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    shape = [x.shape[i] if i in features else 1 for i in range(x.ndim)]
    mul = jax.lax.rsqrt(var + self.epsilon).reshape(shape)
    if scale is not None:
      mul = mul * scale.reshape(shape)
    y = (x - mean.reshape(shape)) * mul
    if bias is not None:
      y = y + bias.reshape(shape)
    dtype = self.dtype or jnp.result_type(*[a for a in (x, scale, bias) if a is not None])
    return jnp.asarray(y, dtype)


def set_device_axis(model: nnx.Module, axis: str | None) -> None:
  """Makes every :class:`BatchNorm` of ``model`` take its batch statistics over the devices
  of mesh axis ``axis`` (None: over the rows it is given, the default)."""
  for _, m in model.iter_modules():
    if isinstance(m, BatchNorm):
      m.device_axis = axis


class ConvBNAct(nnx.Module):
  """conv (no bias) -> BatchNorm -> optional ReLU, for any spatial rank.

  Shapes: ``(B, *spatial, cin) -> (B, *spatial', cout)``; ``kernel``/``stride`` are ints
  (expanded to ``rank`` entries) or ``rank``-tuples. This is facenet-pytorch's ``BasicConv2d``
  (with ``eps=1e-3``) and the conv+BN unit of ResNet.
  """

  def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], *, rank: int,
               stride: int | Sequence[int] = 1, padding: str = "SAME", act: bool = True,
               eps: float = 1e-5, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.conv = he_conv(cin, cout, expand(kernel, rank), expand(stride, rank),
                      padding=padding, use_bias=False, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(cout, momentum=BN_MOMENTUM, epsilon=eps, dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(x) if self.act else x


class InputTooSmallError(UserError, ValueError):
  """An example so small that the network's pools shrink it to nothing before its head."""


class EmbeddingHead(nnx.Module):
  """Global average pool -> linear -> (optional BatchNorm1d) -> L2 normalise.

  ``(B, *spatial, cin) -> float32 (B, dim)`` with unit rows. ``last_bn`` reproduces
  facenet-pytorch's ``last_linear`` (no bias) + ``last_bn`` (eps 1e-3) head.
  """

  def __init__(self, cin: int, dim: int, *, last_bn: bool, dtype: Any, rngs: nnx.Rngs):
    self.linear = nnx.Linear(cin, dim, use_bias=not last_bn, dtype=dtype,
                             kernel_init=LECUN_INIT, rngs=rngs)
    self.bn = (BatchNorm(dim, momentum=BN_MOMENTUM, epsilon=1e-3, dtype=jnp.float32,
                             rngs=rngs) if last_bn else None)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if 0 in x.shape[1:-1]:   # the mean over no positions is NaN: the first step's loss would be
      raise InputTooSmallError(
          f"the examples are too small for this network: its strides and pools leave a "
          f"{'x'.join(map(str, x.shape[1:-1]))} map for the head; raise data.image_size (or the "
          "signal / volume size) or use fewer downsampling stages (model.widths of small_cnn)")
    x = self.linear(global_avg_pool(x)).astype(jnp.float32)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return l2_normalize(x)
