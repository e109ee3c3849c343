"""Programs compiled for an accelerator hold no CPU kernel, even when traced on this CPU.

Each program (train step, K-margin step, embed function, style L-BFGS step) is exported with
``jax.export`` for cuda and tpu and its convolution / dot_general counts compared with the
same program traced as an accelerator sees it: the CPU kernels of ``infra.convolution``
swapped for plain ``lax`` convolutions. The CPU export must differ from that plain trace
(the kernels are there on CPU), or the comparison would prove nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from configs.facenet import get_config
from configs.style import get_config as style_config
from facenet_jax import steps
from infra import convolution, vgg as vgg_lib
from infra.overrides import with_overrides
from style_jax import cost, optimize

ACCELERATORS = ("cuda", "tpu")


def _plain_counts(monkeypatch, fn, args, platform):
  """Op counts of ``fn`` traced with plain lax convolutions everywhere (an accelerator's view)."""
  with monkeypatch.context() as m:
    m.setattr(convolution, "cpu_conv_general_dilated", lax.conv_general_dilated)
    m.setattr(convolution, "cpu_conv3x3", convolution.lax_conv3x3)
    return convolution.exported_op_counts(fn, args, platform)


def _check(monkeypatch, fn, args):
  cpu = convolution.exported_op_counts(fn, args, "cpu")
  assert cpu != _plain_counts(monkeypatch, fn, args, "cpu"), "no CPU kernel in the CPU program"
  for platform in ACCELERATORS:
    got = convolution.exported_op_counts(fn, args, platform)
    assert got == _plain_counts(monkeypatch, fn, args, platform), platform
  return cpu


def _train_parts(margins=()):
  config = with_overrides(get_config("tiny"), {"margins": margins})
  graphdef, tx, state = steps.create_train_state(config, in_channels=3)
  batch = {"images": np.zeros((16, 16, 16, 3), np.uint8),
           "labels": np.repeat(np.arange(4, dtype=np.int32), 4), "mask": np.ones(16, bool)}
  return config, graphdef, tx, state, batch


def test_train_step_for_accelerators_is_plain(monkeypatch):
  config, graphdef, tx, state, batch = _train_parts()
  step = steps.make_train_step(graphdef, tx, config)
  cpu = _check(monkeypatch, lambda s, b: step(s, b, config.margin), (state, batch))
  # four 3x3 convs: on CPU each kernel gradient is one matmul per tap (4 x 9)
  assert cpu["dot_general"] >= 36


def test_k_margin_step_for_accelerators_is_plain(monkeypatch):
  config, graphdef, tx, state, batch = _train_parts()
  member = steps.make_member_step(steps.make_train_step(graphdef, tx, config),
                                  jnp.asarray([0.1, 0.2, 0.5], jnp.float32))
  _check(monkeypatch, member, (steps.stack([state] * 3), batch))


def test_embed_fn_for_accelerators_is_plain(monkeypatch):
  _, graphdef, _, state, batch = _train_parts()
  embed = steps.make_embed_fn(graphdef, flip_tta=True)
  fn = lambda p, m, x: embed(p, m, x)
  args = (state["params"], state["model_state"], batch["images"])
  for platform in ACCELERATORS:   # forward only: the CPU program differs only in its gradients
    assert (convolution.exported_op_counts(fn, args, platform)
            == _plain_counts(monkeypatch, fn, args, platform))


def test_style_lbfgs_step_for_accelerators_is_plain(monkeypatch):
  config = with_overrides(style_config("tiny"), {"optimizer": "lbfgs"})
  objective = cost.objective_from_config(config)
  graphdef, vgg_state = nnx.split(vgg_lib.VGG(19, "avg", rngs=nnx.Rngs(0)))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 32, 3)) * 50, jnp.float32)
  targets = cost.compute_targets(cost.make_features_fn(graphdef), vgg_state, objective,
                                 x, [x[::-1]], [1.0])
  tx = optimize.make_optimizer(config)
  step = optimize.make_lbfgs_step(cost.make_loss_terms(graphdef, objective), tx)
  _check(monkeypatch, step, (vgg_state, targets, optimize.init_state(tx, x, 0)))


def test_exported_program_serializes():
  """``Exported.serialize()`` needs flatbuffers (a requirement): a cuda embed program of flat
  arrays round-trips."""
  _, graphdef, _, state, batch = _train_parts()
  leaves, treedef = jax.tree.flatten((state["params"], state["model_state"]))
  embed = steps.make_embed_fn(graphdef)
  fn = jax.jit(lambda leaves, x: embed(*jax.tree.unflatten(treedef, leaves), x))
  exp = jax.export.export(fn, platforms=["cuda"])(leaves, batch["images"])
  back = jax.export.deserialize(exp.serialize())
  assert back.platforms == ("cuda",)
  assert back.out_avals[0].shape == (16, 16)
