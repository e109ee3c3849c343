"""What each platform's program holds: convolution / dot_general counts of the train step,
the K-margin step, the embed function and the style L-BFGS step, exported from this host with
``jax.export`` for cpu, cuda and tpu (``infra.convolution.exported_op_counts``).

  .venv/bin/python benchmarks/platform_programs.py

On cpu the programs hold the CPU kernels (per-tap kernel-gradient matmuls, Winograd); for
cuda and tpu the plain convolutions only, the same counts as a trace with the CPU kernels
swapped out ("plain", benchmarks/plain_convs.py). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.facenet import get_config
from configs.style import get_config as style_config
from facenet_jax import steps
from infra import convolution, vgg as vgg_lib
from infra.overrides import with_overrides
from plain_convs import plain_convs
import provenance
from style_jax import cost, optimize

PLATFORMS = ("cpu", "cuda", "tpu")


def facenet_programs(variant: str, k: int) -> dict:
  config = get_config(variant)
  graphdef, tx, state = steps.create_train_state(config, in_channels=config.data.channels)
  b, s = config.identities_per_batch * config.images_per_identity, config.data.image_size
  batch = {"images": np.zeros((b, s, s, config.data.channels), np.uint8),
           "labels": np.repeat(np.arange(config.identities_per_batch, dtype=np.int32),
                               config.images_per_identity), "mask": np.ones(b, bool)}
  step = steps.make_train_step(graphdef, tx, config)
  member = steps.make_member_step(step, jnp.linspace(0.1, 1.0, k))
  embed = steps.make_embed_fn(graphdef)
  return {
      f"{variant} train step": (lambda s_, b_: step(s_, b_, config.margin), (state, batch)),
      f"{variant} K={k} margin step": (member, (steps.stack([state] * k), batch)),
      f"{variant} embed": (embed, (state["params"], state["model_state"], batch["images"])),
  }


def style_program(size: int) -> dict:
  config = with_overrides(style_config("gatys2015"), {"weights": "random", "image_size": size})
  objective = cost.objective_from_config(config)
  graphdef, vgg_state = nnx.split(vgg_lib.VGG(19, "avg", rngs=nnx.Rngs(0)))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(size, size, 3)) * 50, jnp.float32)
  targets = cost.compute_targets(cost.make_features_fn(graphdef), vgg_state, objective,
                                 x, [x[::-1]], [1.0])
  tx = optimize.make_optimizer(config)
  step = optimize.make_lbfgs_step(cost.make_loss_terms(graphdef, objective), tx)
  return {f"style L-BFGS step {size}px": (step, (vgg_state, targets, optimize.init_state(tx, x, 0)))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", type=provenance.facenet_variant, default="inception")
  p.add_argument("--k", type=provenance.positive_int, default=5)
  p.add_argument("--style_size", type=provenance.positive_int, default=256)
  args = p.parse_args()
  print(f"# jax {jax.__version__}, commit {provenance.commit()}, exported on {jax.devices()[0].platform}")
  print("| program | " + " | ".join(PLATFORMS) + " | plain (cuda trace) |\n|---|---|---|---|---|")
  programs = {**facenet_programs(args.variant, args.k), **style_program(args.style_size)}
  fmt = lambda c: f"{c['convolution']} conv + {c['dot_general']} dot"
  for name, (fn, fargs) in programs.items():
    t = time.perf_counter()
    cells = [fmt(convolution.exported_op_counts(fn, fargs, pl)) for pl in PLATFORMS]
    with plain_convs():
      cells.append(fmt(convolution.exported_op_counts(fn, fargs, "cuda")))
    print(f"| {name} | " + " | ".join(cells) + f" |  <!-- {time.perf_counter() - t:.0f} s -->",
          flush=True)


if __name__ == "__main__":
  main()
