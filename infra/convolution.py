"""Convolutions for every platform: plain ``lax`` convolutions, with CPU speed kernels chosen
only when the program is compiled for a CPU.

The models (``facenet_jax.models``) and the VGG (``infra.vgg``) take their convolution from
the two selectors here, :func:`conv_general_dilated` (a drop-in for ``nnx.Conv``) and
:func:`conv3x3` (the VGG's 3x3 "same" convolution). Each is a ``jax.lax.platform_dependent``
switch: the program lowered for ``cuda``, ``rocm`` or ``tpu`` holds the plain
``lax.conv_general_dilated`` and nothing of the kernels below, even when it is traced or
exported (``jax.export``) on a CPU host; lowered for ``cpu`` it holds the CPU kernel. The
choice is made per compiled platform, never by ``jax.default_backend()`` or a module switch.
The exceptions are the host-side choices that no compiled program can make for itself, for
the MTCNN detector: its batch (:func:`detector_batch`, the shapes handed to the programs), its
threads (:func:`detector_workers`) and its compiler options (:func:`detector_compiler_options`).

The CPU kernels (XLA:CPU's own convolution gradients are slow; benchmarks/RESULTS.md):

* :func:`cpu_conv_general_dilated`: XLA's forward and input gradient, the kernel gradient as
  one matmul per kernel tap (3-7x faster than XLA:CPU's weight-gradient convolution on e.g.
  32x32 maps with >= 32 channels; ~1.5x faster small_cnn train steps). Under ``vmap`` over K
  models (``config.margins``) it stays K convolutions (:func:`per_member`) instead of one
  K-group convolution, which XLA:CPU runs about 2x slower.
* :func:`cpu_conv3x3`: Winograd F(2x2, 3x3) forward and input gradient for float32 maps with
  >= 128 input channels and >= 512 output positions (2.25x fewer multiplies), per-tap matmul
  input gradients on smaller maps (XLA's transposes the kernel on every call); ~1.4x faster
  VGG19 style-transfer steps at 256-512 px.

All CPU kernels have a custom VJP, so forward-mode AD (``jax.jvp`` / ``jacfwd``) through a
model compiled for CPU is not supported; reverse mode (``grad``, ``vjp``) is.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


# ------------------------------------------------------------------------------ plain

def channels_last_dn(ndim: int) -> lax.ConvDimensionNumbers:
  """nnx.Conv's layout: x (B, *S, C), kernel (*K, Cin, Cout)."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers((0, ndim - 1) + spatial, (ndim - 1, ndim - 2)
                                  + tuple(range(ndim - 2)), (0, ndim - 1) + spatial)


def lax_conv(x: jax.Array, w: jax.Array, strides, pads) -> jax.Array:
  """Channels-last ``lax.conv_general_dilated``: (B, *S, Cin) x (*K, Cin, Cout) -> (B, *S', Cout)."""
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=channels_last_dn(x.ndim))


def lax_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 stride-1 "SAME" convolution, NHWC x HWIO -> NHWC, by ``lax``."""
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


# --------------------------------------------------------------------- the selectors

def conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
  """``lax.conv_general_dilated`` for ``nnx.Conv(conv_general_dilated=...)``: the CPU kernel
  :func:`cpu_conv_general_dilated` in programs compiled for CPU, ``lax``'s elsewhere."""
  plain = functools.partial(lax.conv_general_dilated, window_strides=window_strides,
                            padding=padding, **kwargs)
  cpu = functools.partial(cpu_conv_general_dilated, window_strides=window_strides,
                          padding=padding, **kwargs)
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=plain)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The VGG's 3x3 stride-1 "SAME" convolution (NHWC x HWIO): :func:`cpu_conv3x3` in programs
  compiled for CPU, :func:`lax_conv3x3` elsewhere."""
  return lax.platform_dependent(x, kernel, cpu=cpu_conv3x3, default=lax_conv3x3)


# ---------------------------------------------------- CPU: kernel gradient by taps

def per_member(f: Callable) -> Callable:
  """``f`` whose ``vmap`` runs ``f`` once per member and stacks the results.

  Arguments that are not batched (the shared input images of a first layer) are shared by all
  members. Without this, ``vmap`` of a convolution whose kernel is batched (K models) becomes
  one K-group convolution, which XLA:CPU runs about 2x slower than K separate ones.
  """
  g = jax.custom_batching.custom_vmap(f)

  @g.def_vmap
  def rule(axis_size, in_batched, *args):
    outs = [f(*(a[k] if b else a for a, b in zip(args, in_batched))) for k in range(axis_size)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    return stacked, jax.tree.map(lambda _: True, stacked)

  return g


def tap_kernel_grad(x, w, g, strides, pads) -> jax.Array:
  """d(sum(g * conv(x, w)))/dw: for each kernel offset, one matmul of the shifted (strided)
  input slice with ``g`` over all batch x spatial positions (float32 accumulation)."""
  xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  g2 = g.reshape(-1, g.shape[-1])

  def shifted(off):  # the input pixels that meet kernel tap `off`, one row per output pixel
    limit = [o + (n - 1) * s + 1 for o, n, s in zip(off, g.shape[1:-1], strides)]
    return lax.slice(xp, (0, *off, 0), (xp.shape[0], *limit, xp.shape[-1]),
                     (1, *strides, 1)).reshape(-1, x.shape[-1])

  dw = [lax.dot_general(shifted(off), g2, (((0,), (0,)), ((), ())),
                        preferred_element_type=jnp.float32)
        for off in itertools.product(*(range(k) for k in w.shape[:-2]))]
  return jnp.stack(dw).reshape(w.shape).astype(w.dtype)


def _tap_conv_bwd_one(strides, pads, x, w, g):
  dx = jax.vjp(lambda x_: lax_conv(x_, w, strides, pads), x)[1](g)[0]
  return dx, tap_kernel_grad(x, w, g, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_grad_conv(x, w, strides, pads):
  """Channels-last convolution whose kernel gradient is :func:`tap_kernel_grad` (input
  gradient: XLA's transposed convolution); forward and backward run once per member under
  ``vmap`` (:func:`per_member`)."""
  return lax_conv(x, w, strides, pads)


def _tap_conv_fwd(x, w, strides, pads):
  return per_member(lambda x_, w_: lax_conv(x_, w_, strides, pads))(x, w), (x, w)


def _tap_conv_bwd(strides, pads, res, g):
  return per_member(functools.partial(_tap_conv_bwd_one, strides, pads))(*res, g)


tap_grad_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def is_plain_conv(lhs, *, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, precision=None, **kwargs) -> bool:
  """An undilated, ungrouped channels-last conv (what nnx.Conv emits by default)."""
  return (all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
          and feature_group_count == 1 and precision is None
          and all(v is None for v in kwargs.values())
          and dimension_numbers in (None, channels_last_dn(lhs.ndim)))


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
  """Drop-in ``lax.conv_general_dilated`` with :func:`tap_grad_conv`'s faster kernel gradient on
  XLA:CPU; same forward values and input gradient. Anything but a plain channels-last conv
  goes to ``lax``."""
  if not is_plain_conv(lhs, **kwargs):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
  return tap_grad_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))


# ------------------------------------------------------------ CPU: VGG 3x3 convolutions

# The thin first layers gain nothing from Winograd; on fewer positions its transforms cost
# what it saves.
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_POSITIONS = 512

# F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
# Y = A^T [(G g G^T) * (B^T d B)] A per 4x4 input tile d (stride 2) -> 2x2 output tile.
_WG_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WG_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WG_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _wg_lin(mat, xs):
  """[sum_j mat[i][j] xs[j] for each row i], skipping zero coefficients (all are 0, +-1, +-1/2)."""
  out = []
  for row in mat:
    acc = None
    for c, v in zip(row, xs):
      if c:
        t = v if c == 1 else -v if c == -1 else v * c
        acc = t if acc is None else acc + t
    out.append(acc)
  return out


def _wg_kernel(k: jax.Array) -> jax.Array:
  """(3, 3, Cin, Cout) -> G k G^T as (16, Cin, Cout)."""
  rows = jnp.stack(_wg_lin(_WG_G, [k[i] for i in range(3)]))        # (4, 3, Cin, Cout)
  cols = _wg_lin(_WG_G, [rows[:, j] for j in range(3)])              # 4 x (4, Cin, Cout)
  return jnp.stack(cols, 1).reshape(16, *k.shape[2:])


def _wg_input(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """(N, H, W, C) -> B^T d B of every 4x4 tile (stride 2, "SAME" zero padding): (16, T, C)."""
  n, h, w, c = x.shape
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  xr = xp.reshape(n, th + 1, 2, tw + 1, 2, c)   # tile row i = block i // 2, offset i % 2
  rows = jnp.stack(_wg_lin(_WG_BT, [xr[:, i // 2:i // 2 + th, i % 2] for i in range(4)]))
  cols = _wg_lin(_WG_BT, [rows[:, :, :, j // 2:j // 2 + tw, j % 2] for j in range(4)])
  return jnp.stack(cols, 1).reshape(16, n * th * tw, c), (n, h, w, th, tw)


def _wg_output(m: jax.Array, dims: tuple[int, ...]) -> jax.Array:
  """(16, T, Cout) -> A^T m A assembled into (N, H, W, Cout)."""
  n, h, w, th, tw = dims
  m = m.reshape(4, 4, n, th, tw, m.shape[-1])
  t = _wg_lin(_WG_AT, [m[i] for i in range(4)])
  y = jnp.stack([jnp.stack(_wg_lin(_WG_AT, [r[j] for j in range(4)]), -2) for r in t], 2)
  return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w]


@jax.custom_vjp
def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 stride-1 "SAME" convolution (NHWC x HWIO -> NHWC) by Winograd F(2x2, 3x3).

  Same values as ``lax.conv_general_dilated`` up to float32 rounding (~2e-6 relative), any
  H, W. The input gradient is the same algorithm applied to the output gradient with the
  flipped kernel (a "full" correlation is a "same" one for 3x3 stride 1); the kernel
  gradient uses lax's.
  """
  v, dims = _wg_input(x)
  m = lax.dot_general(v, _wg_kernel(kernel), (((2,), (1,)), ((0,), (0,))))
  return _wg_output(m, dims)


def _winograd_fwd(x, kernel):
  return winograd_conv3x3(x, kernel), (x, kernel)


def _winograd_bwd(res, dy):
  x, kernel = res
  v, dims = _wg_input(dy)
  u = _wg_kernel(kernel[::-1, ::-1])   # contracted over Cout: no transposed copy
  dx = _wg_output(lax.dot_general(v, u, (((2,), (2,)), ((0,), (0,)))), dims)
  dk = jax.vjp(lambda k: lax_conv3x3(x, k), kernel)[1](dy)[0]   # dropped by XLA if unused
  return dx, dk


winograd_conv3x3.defvjp(_winograd_fwd, _winograd_bwd)


@jax.custom_vjp
def tap_grad_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """:func:`lax_conv3x3` whose input gradient is sum_ij shift_ij(dy) kernel[2-i, 2-j]^T (nine
  matmuls that read the kernel as it is, where XLA's transposes it: ~20 ms for a 512x512
  kernel on every call, which dominates on small inputs)."""
  return lax_conv3x3(x, kernel)


def _tap3_fwd(x, kernel):
  return lax_conv3x3(x, kernel), (x, kernel)


def _tap3_bwd(res, dy):
  x, kernel = res
  _, h, w, _ = dy.shape
  dp = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dx = None
  for i in range(3):
    for j in range(3):   # contracts dy's channels with the kernel's last (Cout) axis
      t = lax.dot_general(dp[:, i:i + h, j:j + w], kernel[2 - i, 2 - j], (((3,), (1,)), ((), ())))
      dx = t if dx is None else dx + t
  dk = jax.vjp(lambda k: lax_conv3x3(x, k), kernel)[1](dy)[0]   # dropped by XLA if unused
  return dx, dk


tap_grad_conv3x3.defvjp(_tap3_fwd, _tap3_bwd)


def cpu_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The VGG's 3x3 convolution on XLA:CPU: Winograd on large float32 maps with many input
  channels, per-tap input gradients on small ones, ``lax`` on thin or non-float32 layers."""
  if x.dtype == jnp.float32 and kernel.shape[2] >= WINOGRAD_MIN_CHANNELS:
    if np.prod(x.shape[:-1]) >= WINOGRAD_MIN_POSITIONS:
      return winograd_conv3x3(x, kernel)
    return tap_grad_conv3x3(x, kernel)
  return lax_conv3x3(x, kernel)


# ------------------------------------------------------------------------ host-side

CPU_DETECTOR_BATCH = 1           # photos per MTCNN network call on a CPU
ACCELERATOR_DETECTOR_BATCH = 32  # ... on a GPU / TPU
CPU_DETECTOR_WORKERS = 2         # host threads sharing a batch of photos on a CPU (at most)


def detector_batch() -> int:
  """Photos per MTCNN network call (P-Net; R-Net / O-Net take 16x as many crops) when
  ``faces.detect.Settings.max_batch`` is None: 1 when JAX's default backend is a CPU, 32 else.

  A host-side batching choice, not a kernel: the batch sets the shapes of the arrays Python
  hands to the jitted networks, so it has to be known before anything is traced and cannot be
  a ``platform_dependent`` switch inside a program like the selectors above. On XLA:CPU one
  photo per call runs faster (calls of 32 cost about 20% more CPU per photo on the 2-core
  benchmark machine: benchmarks/RESULTS.md, 8b); an accelerator is kept busy by batching 32
  (not measured yet).
  """
  return CPU_DETECTOR_BATCH if _host_is_cpu() else ACCELERATOR_DETECTOR_BATCH


def detector_workers() -> int:
  """Host threads that share one ``MTCNN.detect`` batch (each takes a contiguous part of the
  photos) when ``faces.detect.Settings.workers`` is None: on a CPU, min(CPU_DETECTOR_WORKERS,
  cores), else 1 (an accelerator takes the batch in one call, ``detector_batch``).

  Host-side as ``detector_batch``. Why: one photo's cascade is a chain of small XLA:CPU calls
  and NumPy NMS that keeps about 1.3 of 2 cores busy; two photos' chains side by side (XLA
  runs without the GIL) keep about 1.75 busy, 1.4x the photos per second on the 2-core
  benchmark machine (benchmarks/RESULTS.md, 8b). More than 2 is not measured.
  """
  if not _host_is_cpu():
    return 1
  return max(1, min(CPU_DETECTOR_WORKERS, os.cpu_count() or 1))


# XLA:CPU's option that picks which ops go to the YNNPACK library: the single dots only, so
# that convolutions stay with XLA's own emitter (detector_compiler_options says why).
CPU_DETECTOR_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def detector_compiler_options() -> dict[str, str]:
  """XLA compiler options for the MTCNN networks' programs (``jax.jit(compiler_options=)``):
  :data:`CPU_DETECTOR_COMPILER_OPTIONS` when JAX's default backend is a CPU, else none.

  Host-side as ``detector_batch``: compiler options are given to ``jax.jit``, not chosen
  inside a program. Why: jaxlib 0.10's XLA:CPU hands each convolution to YNNPACK by
  default, and on the detector's small layers (3-64 channels, 24x24 and 48x48 crops, the
  pyramid's levels) YNNPACK's convolutions are slower than XLA's own: R-Net and O-Net calls
  take 25-45% less time and the P-Net pyramid 15% less with dots alone left to YNNPACK, with
  outputs equal to 3e-7 (benchmarks/RESULTS.md, 8b). The models' training steps gain 5-7%
  only and the VGG's 3x3 convolutions nothing, so they keep XLA's defaults.
  """
  if not _host_is_cpu() or not _compiler_options_accepted(
      tuple(sorted(CPU_DETECTOR_COMPILER_OPTIONS.items()))):
    return {}
  return dict(CPU_DETECTOR_COMPILER_OPTIONS)


@functools.cache
def _compiler_options_accepted(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib compiles a program with these options (checked once per process on a
  trivial program). The YNNPACK option is experimental: a jaxlib that renamed or dropped it
  would fail every detector compile, so it then gets XLA's defaults (slower, same faces) and
  a warning that says so."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    return True
  except jax.errors.JaxRuntimeError as e:
    warnings.warn(f"this jaxlib refuses the MTCNN detector's XLA options {dict(options)} "
                  f"({str(e).splitlines()[0]}); the detector compiles with XLA's defaults "
                  "(the same faces, slower on a CPU)", RuntimeWarning, stacklevel=3)
    return False


def _host_is_cpu() -> bool:
  """Whether JAX's default backend is a CPU: the one backend read of the host-side choices."""
  return jax.default_backend() == "cpu"


# ------------------------------------------------------------------------------- checks

def exported_op_counts(fn: Callable, args: tuple, platform: str,
                       ops: tuple[str, ...] = ("convolution", "dot_general")) -> dict[str, int]:
  """``{op: count}`` of the StableHLO ops in ``fn(*args)`` exported with ``jax.export`` for
  ``platform`` ("cpu", "cuda", "rocm", "tpu"): what a program compiled there would run. Works
  from any host: lowering for another platform needs no such device."""
  # a new function object each time: jit's trace cache is keyed by the function
  text = jax.export.export(jax.jit(lambda *a: fn(*a)), platforms=[platform])(*args).mlir_module()
  return {op: text.count(f"stablehlo.{op} ") + text.count(f"stablehlo.{op}(") for op in ops}
