"""Tests for facenet_jax.models: shapes/normalisation for every net and rank, BatchNorm modes,
config validation, conv geometry, the CPU conv-gradient path and parameter counts."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax import lax

from facenet_jax import layers, models
from infra import convolution


def _cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(name="small_cnn", embedding_dim=16, spatial_dims=2,
                                         widths=(8, 16), depth=10, dtype="float32"))
    cfg.update(overrides)
    return cfg


def _randn(*shape, seed=0):
    # numpy inputs: eager jax.random draws of multi-dim shapes take seconds to compile on CPU
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


# (name, spatial shape, extra config); batch 2, 3 input channels.
CASES = {
    "small_cnn-1d": ("small_cnn", (64,), {}),
    "small_cnn-2d": ("small_cnn", (32, 32), {}),
    "small_cnn-3d": ("small_cnn", (8, 8, 8), {}),
    "resnet10-1d": ("resnet", (64,), dict(widths=(4, 8, 8, 16))),
    "resnet10-2d": ("resnet", (32, 32), dict(widths=(4, 8, 8, 16))),
    "resnet10-3d": ("resnet", (8, 8, 8), dict(widths=(4, 8, 8, 16))),
    "irv1-1d": ("inception_resnet_v1", (80,), {}),
    "irv1-2d": ("inception_resnet_v1", (75, 75), {}),  # 75 = smallest valid input size
}


def _train_then_eval(model, x):
    """model(x, train=True) then model(x, train=False), as one jitted program built at XLA
    optimisation level 0 (compiles ~2x faster than eager op-by-op or an optimised jit)."""
    graphdef, state = nnx.split(model)

    def run(state, x):
        m = nnx.merge(graphdef, state, copy=True)
        y_train = m(x, train=True)
        stats_after_train = nnx.state(m, nnx.BatchStat)
        y_eval = m(x, train=False)
        return y_train, y_eval, stats_after_train, nnx.state(m, nnx.BatchStat)

    opts = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return jax.jit(run, compiler_options=opts)(state, x)


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_shape_norm_and_batchnorm_modes(case):
    name, spatial, extra = CASES[case]
    cfg = _cfg(name=name, spatial_dims=len(spatial), **extra)
    model = models.create_model(cfg, in_channels=3, rngs=nnx.Rngs(0))
    x = _randn(2, *spatial, 3) * 2.0 + 0.5

    y_train, y_eval, after_train, after_eval = _train_then_eval(model, x)
    for y in (y_train, y_eval):
        assert y.shape == (2, cfg.embedding_dim)
        assert y.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(y)))
        np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 1.0, atol=1e-5)
    assert float(jnp.max(jnp.abs(y_train - y_eval))) > 1e-3, "train/eval BatchNorm identical"
    before = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    after, final = jax.tree.leaves(after_train), jax.tree.leaves(after_eval)
    assert len(before) == len(after) > 0
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "running stats not updated"
    assert all(np.array_equal(a, b) for a, b in zip(after, final)), "train=False moved stats"


def test_train_call_updates_module_batch_stats_eagerly():
    model = models.create_model(_cfg(widths=(8,)), in_channels=3, rngs=nnx.Rngs(0))
    before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    model(_randn(2, 16, 16, 3), train=True)
    after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = models.create_model(_cfg(dtype="bfloat16", widths=(8,)), in_channels=3,
                                rngs=nnx.Rngs(0))
    y = model(jnp.ones((2, 16, 16, 3)), train=True)
    assert y.dtype == jnp.float32 and y.shape == (2, 16)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}


def test_jitted_grad_step_through_split_merge():
    """The pure split/merge training pattern works (note merge(..., copy=True) under jax.grad)."""
    model = models.create_model(_cfg(widths=(8,)), in_channels=3, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = _randn(4, 16, 16, 3)

    @jax.jit
    def step(params, rest):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            emb = m(x, train=True)
            return jnp.sum(emb[0] * emb[1]), nnx.state(m, nnx.BatchStat)
        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss, stats), grads = step(params, rest)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
    assert jax.tree.structure(stats) == jax.tree.structure(nnx.state(model, nnx.BatchStat))


@pytest.mark.parametrize("field,overrides", [
    ("name", dict(name="vgg")),
    ("spatial_dims", dict(spatial_dims=4)),
    ("depth", dict(name="resnet", depth=20)),
    ("dtype", dict(dtype="float16")),
])
def test_invalid_config_raises(field, overrides):
    with pytest.raises(ValueError, match=field):
        models.create_model(_cfg(**overrides), in_channels=3, rngs=nnx.Rngs(0))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        models.create_model(_cfg(name="nope"), in_channels=3, rngs=nnx.Rngs(0))
    assert all(n in str(err.value) for n in models.MODEL_NAMES)


def test_conv3d_valid_geometry():
    def apply(x):  # shape-only evaluation: no init or conv compile needed
        conv = nnx.Conv(16, 32, kernel_size=(3, 3, 3), strides=1, padding="VALID",
                        rngs=nnx.Rngs(0))
        return conv(x)

    out = jax.eval_shape(apply, jax.ShapeDtypeStruct((1, 32, 32, 32, 16), jnp.float32))
    assert out.shape == (1, 30, 30, 30, 32)


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 11, 3), (3,), (1,), "SAME"),
    ((2, 9, 8, 4), (3, 3), (2, 2), "VALID"),
    ((1, 6, 7, 5, 3), (1, 3, 3), (2, 1, 2), "SAME"),
])
def test_cpu_conv_matches_lax_values_and_gradients(shape, kernel, strides, padding):
    x, w = _randn(*shape), _randn(*kernel, shape[-1], 5, seed=1)
    dn = convolution.channels_last_dn(len(shape))

    def value_and_grads(conv):
        def loss(x, w):
            return jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)))
        return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

    ref, got = jax.jit(lambda: (value_and_grads(lax.conv_general_dilated),
                                value_and_grads(convolution.cpu_conv_general_dilated)))()
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,window,stride", [
    ((2, 9, 3), 2, 2), ((2, 8, 7, 3), 2, 2), ((1, 5, 6, 4, 2), 2, 2), ((2, 9, 9, 3), 3, 2)])
def test_max_pool_matches_linen(shape, window, stride):
    x = _randn(*shape)
    rank = len(shape) - 2
    ref = linen.max_pool(x, (window,) * rank, (stride,) * rank, padding="VALID")
    np.testing.assert_array_equal(layers.max_pool(x, window, stride), ref)


def _facenet_pytorch_param_count(embedding_dim: int = 512) -> int:
    """Trainable params of facenet-pytorch InceptionResnetV1 without `logits`, tallied
    independently from its module list (BasicConv2d = conv no bias + BN weight/bias)."""
    def basic(cin, cout, kh, kw=None):
        return cin * cout * kh * (kh if kw is None else kw) + 2 * cout

    def conv_bias(cin, cout):
        return cin * cout + cout

    stem = (basic(3, 32, 3) + basic(32, 32, 3) + basic(32, 64, 3) + basic(64, 80, 1)
            + basic(80, 192, 3) + basic(192, 256, 3))
    block35 = (basic(256, 32, 1) + basic(256, 32, 1) + basic(32, 32, 3) + basic(256, 32, 1)
               + 2 * basic(32, 32, 3) + conv_bias(96, 256))
    mixed_6a = basic(256, 384, 3) + basic(256, 192, 1) + basic(192, 192, 3) + basic(192, 256, 3)
    block17 = (2 * basic(896, 128, 1) + basic(128, 128, 1, 7) + basic(128, 128, 7, 1)
               + conv_bias(256, 896))
    mixed_7a = (3 * basic(896, 256, 1) + basic(256, 384, 3) + basic(256, 256, 3)
                + 2 * basic(256, 256, 3))
    block8 = (2 * basic(1792, 192, 1) + basic(192, 192, 1, 3) + basic(192, 192, 3, 1)
              + conv_bias(384, 1792))
    head = 1792 * embedding_dim + 2 * embedding_dim  # last_linear (no bias) + last_bn affine
    return stem + 5 * block35 + mixed_6a + 10 * block17 + mixed_7a + 6 * block8 + head


def _abstract_params(**overrides) -> int:
    cfg = _cfg(**overrides)
    abstract = nnx.eval_shape(lambda: models.create_model(cfg, in_channels=3, rngs=nnx.Rngs(0)))
    return models.count_params(abstract)


def test_inception_resnet_v1_param_count_matches_facenet_pytorch():
    ref = _facenet_pytorch_param_count(512)
    # With vggface2 logits (512*8631 + 8631) facenet-pytorch reports 27,910,327 parameters.
    assert ref + 512 * 8631 + 8631 == 27_910_327
    n = _abstract_params(name="inception_resnet_v1", embedding_dim=512)
    assert abs(n - ref) <= 0.01 * ref, (n, ref)
    assert n == ref == 23_482_624


@pytest.mark.parametrize("depth,torchvision_total,feat", [(18, 11_689_512, 512),
                                                          (50, 25_557_032, 2048)])
def test_resnet_param_count_matches_torchvision(depth, torchvision_total, feat):
    """torchvision's ResNet minus its 1000-way fc, plus our linear embedding head."""
    n = _abstract_params(name="resnet", depth=depth, widths=(64, 128, 256, 512),
                         embedding_dim=128)
    body = torchvision_total - (feat * 1000 + 1000)
    assert n == body + feat * 128 + 128


def test_factorized_kernels():
    assert models._factorized(7, 2) == [(1, 7), (7, 1)]
    assert models._factorized(7, 1) == [(7,)]
    assert models._factorized(3, 3) == [(1, 1, 3), (1, 3, 1), (3, 1, 1)]


def test_bfloat16_reaches_the_vgg_backbone():
    """``model.dtype=bfloat16`` with ``vgg16``/``vgg19`` ran the backbone's convs in float32
    (only the head's matmul was bf16): a bf16 fine-tune got none of the memory or speed. The
    backbone now computes in bf16, with float32 parameters and a float32 unit embedding."""
    cfg = _cfg(name="vgg16", dtype="bfloat16", vgg_weights="random", vgg_layer="pool2",
               widths=(), embedding_dim=8)
    model = models.create_model(cfg, in_channels=3, rngs=nnx.Rngs(0), example_shape=(16, 16, 3))
    assert model.backbone.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    y = model(_randn(2, 16, 16, 3), train=True)
    assert y.dtype == jnp.float32 and np.allclose(np.linalg.norm(np.asarray(y), axis=1), 1, atol=1e-3)
