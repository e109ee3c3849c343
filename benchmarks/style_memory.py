"""XLA temp memory of the Gatys loss gradient, with and without remat and Winograd convs.

  .venv/bin/python benchmarks/style_memory.py --size 512

Compiles (does not run) ``grad`` of a Gatys-style loss (content conv4_2, style Grams of
conv1_1 .. conv5_1) over a random VGG19 and prints ``compile().memory_analysis()``'s temp
bytes for the four combinations: how much rematerialization and the CPU Winograd path
change the peak. See benchmarks/RESULTS.md, "Why rematerialization does not lower...".
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from infra import vgg as vgg_lib
from plain_convs import plain_convs
import provenance   # this folder
from style_jax import losses

LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1")


def temp_mib(size: int, winograd: bool, remat: bool) -> float:
  graphdef, state = nnx.split(vgg_lib.VGG(19, "avg", remat=remat, rngs=nnx.Rngs(0)))

  # The weights are an argument, as in the real style step (style_jax.optimize,
  # style_vs_torch.py): closed over, XLA folds them in as constants and precomputes the
  # kernel transforms, a different program with a different peak (696 vs 870 MiB at 512 px).
  def loss(st, x):
    f = nnx.merge(graphdef, st).features(x, LAYERS)
    style = sum(jnp.sum(losses.gram_matrix(f[n]) ** 2) for n in LAYERS if n != "conv4_2")
    return style + jnp.sum(f["conv4_2"] ** 2)

  with plain_convs(not winograd):
    compiled = jax.jit(jax.grad(loss, argnums=1)).lower(state, jnp.zeros((size, size, 3))).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=provenance.positive_int, default=512)
  args = p.parse_args()
  print(f"# {args.size}x{args.size}, jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"commit {provenance.commit()}, {provenance.machine()}; VGG weights passed as an argument")
  print("| convolutions | remat=False | remat=True |\n|---|---|---|")
  for winograd in (True, False):
    row = [f"{temp_mib(args.size, winograd, r):.0f} MiB" for r in (False, True)]
    name = "Winograd / per-tap (CPU default)" if winograd else "plain lax.conv"
    print(f"| {name} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
  main()
