"""Face-embedding networks in Flax NNX, generic over 1, 2 or 3 spatial dimensions.

Every network maps ``x: (B, *spatial, C)`` -- ``(B, L, C)`` signals, ``(B, H, W, C)``
images or ``(B, D, H, W, C)`` volumes -- to a float32 ``(B, embedding_dim)`` embedding
that is L2-normalised along the last axis, as in FaceNet (Schroff et al., 2015,
"FaceNet: A Unified Embedding for Face Recognition and Clustering").

Networks (``model_cfg.name``):

* ``small_cnn``: a lean VGG-style CNN for 32x32-class inputs (tests and demo).
* ``resnet``: ResNet-10/18/34 (BasicBlock) or ResNet-50 (Bottleneck), He et al. 2016,
  "Deep Residual Learning for Image Recognition".
* ``inception_resnet_v1``: Inception-ResNet-v1 (Szegedy et al. 2017, "Inception-v4,
  Inception-ResNet and the Impact of Residual Connections on Learning"), laid out like
  facenet-pytorch's ``InceptionResnetV1`` (designed for 160x160x3 inputs).

Every conv+BN(+ReLU) unit is one helper, :class:`ConvBNAct`, whose kernel sizes and strides are
expanded to ``spatial_dims`` entries, so the same code serves every rank. Call a model as
``model(x, train)``: ``train=True`` normalises with batch statistics and updates the BatchNorm
running averages (``nnx.BatchStat``), ``train=False`` uses the running averages. There is no
dropout, so the forward pass needs no RNG.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from infra import convolution, mesh as mesh_lib, vgg as vgg_lib

MODEL_NAMES = ("small_cnn", "resnet", "inception_resnet_v1", "feature_head", "vgg16", "vgg19")
RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
SPATIAL_DIMS = (1, 2, 3)   # signals, images, volumes
# model.dtype -> the compute dtype (params stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_BN_MOMENTUM = 0.9  # flax convention; equals torch's momentum=0.1


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


_HE_INIT, _LECUN_INIT = _fan_in_normal(2.0), _fan_in_normal(1.0)


def _tuple(v: int | Sequence[int], rank: int) -> tuple[int, ...]:
  """Expands an int to a ``rank``-tuple; passes sequences through."""
  return (v,) * rank if isinstance(v, int) else tuple(v)


def _global_avg_pool(x: jax.Array) -> jax.Array:
  """(B, *spatial, C) -> (B, C): mean over all spatial axes."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def _max_pool(x: jax.Array, window: int, stride: int, padding: str = "VALID") -> jax.Array:
  """Rank-generic max-pool over the spatial axes of (B, *spatial, C).

  Non-overlapping VALID windows use reshape + max, whose gradient is far cheaper on CPU than
  the select-and-scatter that ``reduce_window``'s gradient lowers to.
  """
  rank = x.ndim - 2
  if window == stride and padding == "VALID":
    out = [n // window for n in x.shape[1:-1]]
    x = x[(slice(None), *(slice(0, o * window) for o in out))]
    shape = [x.shape[0]] + [d for o in out for d in (o, window)] + [x.shape[-1]]
    return jnp.max(x.reshape(shape), axis=tuple(range(2, 2 * rank + 1, 2)))
  return linen.max_pool(x, _tuple(window, rank), _tuple(stride, rank), padding=padding)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / sqrt(sum(x^2) + eps) along the last axis (zero vectors stay finite)."""
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def _conv(cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, *,
          padding: str = "SAME", use_bias: bool, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
  """nnx.Conv with He init and the platform's convolution (``infra.convolution``: plain
  ``lax`` on accelerators, the CPU kernels in programs compiled for CPU)."""
  return nnx.Conv(cin, cout, kernel, stride, padding=padding, use_bias=use_bias, dtype=dtype,
                  kernel_init=_HE_INIT, conv_general_dilated=convolution.conv_general_dilated,
                  rngs=rngs)


def _run(layers: Sequence[Any], x: jax.Array, train: bool) -> jax.Array:
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
    self.conv = _conv(cin, cout, _tuple(kernel, rank), _tuple(stride, rank),
                      padding=padding, use_bias=False, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(cout, momentum=_BN_MOMENTUM, epsilon=eps, dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(x) if self.act else x


class EmbeddingHead(nnx.Module):
  """Global average pool -> linear -> (optional BatchNorm1d) -> L2 normalise.

  ``(B, *spatial, cin) -> float32 (B, dim)`` with unit rows. ``last_bn`` reproduces
  facenet-pytorch's ``last_linear`` (no bias) + ``last_bn`` (eps 1e-3) head.
  """

  def __init__(self, cin: int, dim: int, *, last_bn: bool, dtype: Any, rngs: nnx.Rngs):
    self.linear = nnx.Linear(cin, dim, use_bias=not last_bn, dtype=dtype,
                             kernel_init=_LECUN_INIT, rngs=rngs)
    self.bn = (BatchNorm(dim, momentum=_BN_MOMENTUM, epsilon=1e-3, dtype=jnp.float32,
                             rngs=rngs) if last_bn else None)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.linear(_global_avg_pool(x)).astype(jnp.float32)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return l2_normalize(x)


class SmallCNN(nnx.Module):
  """Lean VGG-style embedding CNN, ``(B, *spatial, in_channels) -> (B, embedding_dim)``.

  Per stage ``w`` in ``widths``: [conv3 -> BN -> ReLU] x 2 -> 2x max-pool (stride 2); then
  global average pool, linear, L2 normalise. Each stage halves every spatial size.
  """

  def __init__(self, in_channels: int, widths: Sequence[int], embedding_dim: int, *,
               rank: int, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    layers, c = [], in_channels
    for w in widths:
      layers += [ConvBNAct(c, w, 3, rank=rank, dtype=dtype, rngs=rngs),
                 ConvBNAct(w, w, 3, rank=rank, dtype=dtype, rngs=rngs)]
      c = w
    self.layers = nnx.List(layers)
    self.head = EmbeddingHead(c, embedding_dim, last_bn=False, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  POOL = 2   # each stage ends with a POOL-wide, stride-POOL VALID max-pool

  def _stages(self, x: jax.Array, train: bool):
    """Yields ``(name, activation)`` in forward order: ``conv{s}_{c}`` (post-ReLU) and
    ``pool{s}``, stages s and convs c counted from 1 (the names ``infra.vgg`` uses)."""
    x = x.astype(self.dtype)
    for i in range(0, len(self.layers), 2):
      for c in (0, 1):
        x = self.layers[i + c](x, train)
        yield f"conv{i // 2 + 1}_{c + 1}", x
      x = _max_pool(x, self.POOL, self.POOL)
      yield f"pool{i // 2 + 1}", x

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for _, x in self._stages(x, train):
      pass
    return self.head(x, train)

  def layer_names(self) -> list[str]:
    return [n for n, *_ in self.layer_geometry()]

  def features(self, x: jax.Array, layers: Sequence[str], train: bool = False
               ) -> dict[str, jax.Array]:
    """``{name: (B, *spatial', C)}`` for the named layers (see :meth:`layer_names`);
    the forward pass stops after the deepest one."""
    want, names = set(layers), self.layer_names()
    if want - set(names):
      raise ValueError(f"unknown small_cnn layer(s) {sorted(want - set(names))}; "
                       f"expected names among {names}")
    out = {}
    for name, x in self._stages(x, train):
      if name in want:
        out[name] = x
      if len(out) == len(want):
        break
    return out

  def layer_geometry(self) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(name, kernel, stride, low padding)`` per layer in forward order (per spatial
    axis), read from the convs (``SAME`` at stride 1 pads (k - 1) // 2) and the pools."""
    out = []
    for i, layer in enumerate(self.layers):
      conv = layer.conv
      k = tuple(conv.kernel_size)
      s = _tuple(conv.strides if conv.strides is not None else 1, len(k))
      if conv.padding != "SAME" or any(v != 1 for v in s):
        raise ValueError(f"small_cnn conv {i}: geometry expects SAME stride-1 convs, "
                         f"got padding={conv.padding!r} stride={s}")
      out.append((f"conv{i // 2 + 1}_{i % 2 + 1}", k, s, tuple((v - 1) // 2 for v in k)))
      if i % 2:
        rank = len(k)
        out.append((f"pool{i // 2 + 1}", (self.POOL,) * rank, (self.POOL,) * rank,
                    (0,) * rank))
    return out


class FeatureHead(nnx.Module):
  """Embedding head over precomputed backbone features (transfer learning).

  ``(B, *spatial, cin) float -> (B, embedding_dim)``: flatten (the spatial layout of a face
  matters, so no global pooling) -> [linear -> ReLU] per ``hidden`` width -> linear ->
  L2 normalise. ``in_features`` = prod(spatial) * cin of the cached features.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], embedding_dim: int, *,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    dims = (in_features,) + tuple(hidden)
    self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, kernel_init=_HE_INIT, rngs=rngs)
                            for a, b in zip(dims[:-1], dims[1:])])
    self.out = nnx.Linear(dims[-1], embedding_dim, dtype=dtype, kernel_init=_LECUN_INIT,
                          rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return l2_normalize(self.out(x).astype(jnp.float32))


HEAD_INITS = ("random", "pca_whiten")


class VGGEmbedding(nnx.Module):
  """ImageNet VGG backbone (``infra.vgg``, the codebase's one VGG) + ``FeatureHead``,
  trained end to end (fine-tuning). For a frozen backbone, train ``feature_head`` on
  cached features instead (``data.features``): the same network, without recomputing
  the backbone every step.

  ``(B, H, W, 1 or 3)`` in [-1, 1] (``preprocess.to_float``) -> Caffe preprocessing ->
  activation of ``layer`` -> head -> ``(B, embedding_dim)``.
  """

  def __init__(self, depth: int, layer: str, weights: str, hidden: Sequence[int],
               embedding_dim: int, image_size: int, *, dtype: Any, rngs: nnx.Rngs):
    self.backbone = vgg_lib.load_vgg(weights, depth, "max", seed=0)
    self.layer = layer
    side = image_size
    for name in vgg_lib.layer_names(depth)[:vgg_lib.layer_names(depth).index(layer) + 1]:
      side = side // 2 if name.startswith("pool") else side
    cout = self.backbone.features(jnp.zeros((1, image_size, image_size, 3)), (layer,))[layer].shape[-1]
    self.head = FeatureHead(side * side * cout, hidden, embedding_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    rgb = (x.astype(jnp.float32) + 1.0) * 127.5
    if rgb.shape[-1] == 1:
      rgb = jnp.repeat(rgb, 3, axis=-1)
    feats = self.backbone.features(vgg_lib.preprocess_caffe(rgb), (self.layer,))[self.layer]
    return self.head(feats, train)


class ResBlock(nnx.Module):
  """ResNet residual block (He et al. 2016), any spatial rank.

  BasicBlock: conv3(s) -> conv3, ``cout = width``; Bottleneck (``bottleneck=True``):
  conv1 -> conv3(s) -> conv1, ``cout = 4 * width``. Projection shortcut (1x1 conv + BN, stride
  ``s``) when the shape changes. ``(B, *S, cin) -> (B, *ceil(S / s), cout)``.
  """

  def __init__(self, cin: int, width: int, *, stride: int, bottleneck: bool, rank: int,
               dtype: Any, rngs: nnx.Rngs):
    cout = 4 * width if bottleneck else width
    specs = ([(width, 1, 1), (width, 3, stride), (cout, 1, 1)] if bottleneck
             else [(width, 3, stride), (cout, 3, 1)])
    layers, c = [], cin
    for i, (co, k, s) in enumerate(specs):
      layers.append(ConvBNAct(c, co, k, rank=rank, stride=s, act=i < len(specs) - 1,
                              dtype=dtype, rngs=rngs))
      c = co
    self.layers = nnx.List(layers)
    self.shortcut = (ConvBNAct(cin, cout, 1, rank=rank, stride=stride, act=False,
                               dtype=dtype, rngs=rngs)
                     if stride != 1 or cin != cout else None)
    self.out_features = cout

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    residual = x if self.shortcut is None else self.shortcut(x, train)
    return nnx.relu(_run(self.layers, x, train) + residual)


class ResNet(nnx.Module):
  """ResNet-{10,18,34,50} embedding network, ``(B, *spatial, C) -> (B, embedding_dim)``.

  Stem conv7 s2 + BN + ReLU + max-pool3 s2, four stages of :class:`ResBlock` with stage
  widths ``widths`` (first block of stages 2..4 has stride 2), global average pool, linear,
  L2 normalise. Overall spatial reduction is 32x (SAME padding, so tiny inputs still work).
  """

  def __init__(self, in_channels: int, widths: Sequence[int], depth: int, embedding_dim: int,
               *, rank: int, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    blocks = RESNET_BLOCKS[depth]
    self.stem = ConvBNAct(in_channels, widths[0], 7, rank=rank, stride=2, dtype=dtype,
                          rngs=rngs)
    layers, c = [], widths[0]
    for stage, (w, n) in enumerate(zip(widths, blocks)):
      for j in range(n):
        layers.append(ResBlock(c, w, stride=2 if stage > 0 and j == 0 else 1,
                               bottleneck=depth >= 50, rank=rank, dtype=dtype,
                               rngs=rngs))
        c = layers[-1].out_features
    self.blocks = nnx.List(layers)
    self.head = EmbeddingHead(c, embedding_dim, last_bn=False, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _max_pool(self.stem(x.astype(self.dtype), train), 3, 2, "SAME")
    return self.head(_run(self.blocks, x, train), train)


# A tower spec is a list of (cout, kernel[, stride[, padding]]) tuples.
TowerSpec = Sequence[tuple]


class InceptionBranches(nnx.Module):
  """Parallel towers of :class:`ConvBNAct` concatenated on channels.

  With ``pool=True`` a 3 / stride-2 VALID max-pool tower is appended (the reduction blocks
  Mixed_6a / Mixed_7a). ``out_features`` = sum of tower output widths (+ ``cin`` if pooled).
  """

  def __init__(self, cin: int, towers: Sequence[TowerSpec], *, pool: bool, rank: int,
               dtype: Any, rngs: nnx.Rngs):
    def tower(specs):
      layers, c = [], cin
      for cout, kernel, *rest in specs:
        stride, padding = (list(rest) + [1, "SAME"][len(rest):])[:2]
        layers.append(ConvBNAct(c, cout, kernel, rank=rank, stride=stride,
                                padding=padding, eps=1e-3, dtype=dtype, rngs=rngs))
        c = cout
      return nnx.List(layers)

    self.towers = nnx.List([tower(t) for t in towers])
    self.pool = pool
    self.out_features = sum(t[-1][0] for t in towers) + (cin if pool else 0)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outs = [_run(t, x, train) for t in self.towers]
    if self.pool:
      outs.append(_max_pool(x, 3, 2))
    return jnp.concatenate(outs, axis=-1)


class InceptionResidual(nnx.Module):
  """Inception-ResNet block (Block35 / Block17 / Block8): ``relu(x + scale * up(branches(x)))``.

  ``up`` is a 1x1 conv with bias back to ``cin`` channels; ``act=False`` drops the final
  ReLU (the last Block8). Shape preserving: ``(B, *S, cin) -> (B, *S, cin)``.
  """

  def __init__(self, cin: int, towers: Sequence[TowerSpec], *, scale: float, act: bool = True,
               rank: int, dtype: Any, rngs: nnx.Rngs):
    self.branches = InceptionBranches(cin, towers, pool=False, rank=rank, dtype=dtype,
                                      rngs=rngs)
    self.up = _conv(self.branches.out_features, cin, (1,) * rank, use_bias=True,
                    dtype=dtype, rngs=rngs)
    self.scale, self.act = scale, act

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x + self.scale * self.up(self.branches(x, train))
    return nnx.relu(x) if self.act else x


def _factorized(n: int, rank: int) -> list[tuple[int, ...]]:
  """Kernels of a factorised n^rank conv: one conv per axis, last spatial axis first.

  rank 2 -> [(1, n), (n, 1)] (the original 1x7 then 7x1); rank 1 -> [(n,)];
  rank 3 -> [(1, 1, n), (1, n, 1), (n, 1, 1)].
  """
  return [tuple(n if a == axis else 1 for a in range(rank)) for axis in reversed(range(rank))]


class InceptionResnetV1(nnx.Module):
  """Inception-ResNet-v1 (Szegedy et al. 2017) as in facenet-pytorch's ``InceptionResnetV1``.

  ``(B, *spatial, C) -> (B, embedding_dim)``. Designed for 160x160x3 (final feature map
  3x3x1792); the smallest input per spatial axis is 75. Stem (1a..4b) -> 5 x Block35 (0.17)
  -> Mixed_6a -> 10 x Block17 (0.10) -> Mixed_7a -> 5 x Block8 (0.20) -> Block8 (1.0, no
  ReLU) -> global average pool -> linear (no bias) -> BatchNorm1d -> L2 normalise. For
  ``rank != 2`` the 3x3 kernels become 3^rank and the 1xn/nx1 pairs one conv per axis. In 2-D
  with ``embedding_dim=512`` it has the same 23,482,624 parameters as facenet-pytorch without
  its classifier ``logits``.
  """

  def __init__(self, in_channels: int, embedding_dim: int = 512, *, rank: int = 2,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(rank=rank, dtype=dtype, rngs=rngs)
    V = "VALID"

    def conv(cin, cout, k, s=1, p=V):
      return ConvBNAct(cin, cout, k, stride=s, padding=p, eps=1e-3, **kw)

    self.stem_a = nnx.List([conv(in_channels, 32, 3, 2), conv(32, 32, 3),
                            conv(32, 64, 3, 1, "SAME")])  # then max-pool 3 s2
    self.stem_b = nnx.List([conv(64, 80, 1), conv(80, 192, 3), conv(192, 256, 3, 2)])
    block35 = [[(32, 1)], [(32, 1), (32, 3)], [(32, 1), (32, 3), (32, 3)]]
    block17 = [[(128, 1)], [(128, 1)] + [(128, k) for k in _factorized(7, rank)]]
    block8 = [[(192, 1)], [(192, 1)] + [(192, k) for k in _factorized(3, rank)]]
    mixed_6a = [[(384, 3, 2, V)], [(192, 1), (192, 3), (256, 3, 2, V)]]
    mixed_7a = [[(256, 1), (384, 3, 2, V)], [(256, 1), (256, 3, 2, V)],
                [(256, 1), (256, 3), (256, 3, 2, V)]]
    self.blocks = nnx.List(
        [InceptionResidual(256, block35, scale=0.17, **kw) for _ in range(5)]
        + [InceptionBranches(256, mixed_6a, pool=True, **kw)]
        + [InceptionResidual(896, block17, scale=0.10, **kw) for _ in range(10)]
        + [InceptionBranches(896, mixed_7a, pool=True, **kw)]
        + [InceptionResidual(1792, block8, scale=0.20, **kw) for _ in range(5)]
        + [InceptionResidual(1792, block8, scale=1.0, act=False, **kw)])
    self.head = EmbeddingHead(1792, embedding_dim, last_bn=True, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _max_pool(_run(self.stem_a, x.astype(self.dtype), train), 3, 2)
    x = _run(self.blocks, _run(self.stem_b, x, train), train)
    return self.head(x, train)


def create_model(model_cfg: ml_collections.ConfigDict, *, in_channels: int,
                 rngs: nnx.Rngs, example_shape: Sequence[int] | None = None) -> nnx.Module:
  """Builds the embedding network named by ``model_cfg.name``.

  Reads ``name``, ``embedding_dim``, ``spatial_dims`` (1|2|3), ``widths`` (small_cnn stages /
  resnet stage widths), ``depth`` (resnet: 10|18|34|50) and ``dtype`` ('float32'|'bfloat16'
  compute dtype; params stay float32). The returned module maps ``(x: (B, *spatial,
  in_channels), train: bool)`` to a float32, L2-normalised ``(B, embedding_dim)``.
  Raises ValueError naming the offending field for unsupported values.
  """
  name = model_cfg.get("name", "small_cnn")
  rank = model_cfg.get("spatial_dims", 2)
  dim = int(model_cfg.get("embedding_dim", 128))
  dtype_name = model_cfg.get("dtype", "float32")
  if name not in MODEL_NAMES:
    raise ValueError(f"model.name={name!r} is unknown; valid names: {', '.join(MODEL_NAMES)}")
  if rank not in SPATIAL_DIMS:
    raise ValueError(f"model.spatial_dims={rank!r} is unsupported; use one of {SPATIAL_DIMS}")
  if dtype_name not in DTYPES:
    raise ValueError(f"model.dtype={dtype_name!r} is unsupported; use one of {list(DTYPES)}")
  kw = dict(rank=rank, dtype=DTYPES[dtype_name], rngs=rngs)
  if name == "feature_head":   # over cached backbone features of shape example_shape
    in_features = math.prod(example_shape) if example_shape else in_channels
    return FeatureHead(in_features, tuple(model_cfg.get("widths", ())), dim,
                       dtype=kw["dtype"], rngs=rngs)
  if name in ("vgg16", "vgg19"):
    return VGGEmbedding(int(name[3:]), model_cfg.vgg_layer, model_cfg.vgg_weights,
                        tuple(model_cfg.get("widths", ())), dim,
                        int(example_shape[0]) if example_shape else 224,
                        dtype=kw["dtype"], rngs=rngs)
  if name == "small_cnn":
    return SmallCNN(in_channels, tuple(model_cfg.get("widths", (32, 64, 128))), dim, **kw)
  if name == "resnet":
    depth = model_cfg.get("depth", 18)
    widths = tuple(model_cfg.get("widths", (64, 128, 256, 512)))
    if depth not in RESNET_BLOCKS:
      raise ValueError(f"model.depth={depth!r} is unsupported for resnet; "
                       f"use one of {sorted(RESNET_BLOCKS)}")
    if len(widths) != 4:
      raise ValueError(f"model.widths={widths!r}: resnet needs 4 stage widths")
    return ResNet(in_channels, widths, depth, dim, **kw)
  return InceptionResnetV1(in_channels, dim, **kw)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (``nnx.Param`` entries; BatchNorm running stats excluded).

  Works on concrete models and on abstract ones from ``nnx.eval_shape``.
  """
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
