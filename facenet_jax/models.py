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

Every conv+BN(+ReLU) unit is one helper, :class:`facenet_jax.layers.ConvBNAct`, whose kernel
sizes and strides are expanded to ``spatial_dims`` entries, so the same code serves every
rank. Call a model as ``model(x, train)``: ``train=True`` normalises with batch statistics
and updates the BatchNorm running averages (``nnx.BatchStat``), ``train=False`` uses the
running averages. There is no dropout, so the forward pass needs no RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from facenet_jax.layers import (HE_INIT, LECUN_INIT, ConvBNAct, EmbeddingHead, expand, he_conv,
                                l2_normalize, max_pool, run_layers)
from infra import vgg as vgg_lib

MODEL_NAMES = ("small_cnn", "resnet", "inception_resnet_v1", "feature_head", "vgg16", "vgg19")
RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
SPATIAL_DIMS = (1, 2, 3)   # signals, images, volumes
# model.dtype -> the compute dtype (params stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
      x = max_pool(x, self.POOL, self.POOL)
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
      s = expand(conv.strides if conv.strides is not None else 1, len(k))
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
    self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, kernel_init=HE_INIT, rngs=rngs)
                            for a, b in zip(dims[:-1], dims[1:])])
    self.out = nnx.Linear(dims[-1], embedding_dim, dtype=dtype, kernel_init=LECUN_INIT,
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
    self.backbone = vgg_lib.load_vgg(weights, depth, "max", dtype=dtype, seed=0)
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
    return nnx.relu(run_layers(self.layers, x, train) + residual)


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
    x = max_pool(self.stem(x.astype(self.dtype), train), 3, 2, "SAME")
    return self.head(run_layers(self.blocks, x, train), train)


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
    outs = [run_layers(t, x, train) for t in self.towers]
    if self.pool:
      outs.append(max_pool(x, 3, 2))
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
    self.up = he_conv(self.branches.out_features, cin, (1,) * rank, use_bias=True,
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
    x = max_pool(run_layers(self.stem_a, x.astype(self.dtype), train), 3, 2)
    x = run_layers(self.blocks, run_layers(self.stem_b, x, train), train)
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
