"""Ready-made sweeps for ``scripts/sweep.py --sweep=NAME``, apart from the config variants.

  python scripts/sweep.py --config=configs/facenet.py:orl --sweep=margin --workdir=ROOT

A sweep is a list of points, each a dict of dotted overrides applied to the chosen variant
(plus any --config.x=y given).
"""

from typing import Callable

from infra.overrides import product, zipped

MARGINS = (0.05, 0.1, 0.2, 0.5, 1.0)

# name -> its points (built when asked for, so a typo costs nothing):
#   margin          alpha in MARGINS, one run per value
#   margin_vmapped  the same alphas as one point: K models in one vmapped program
#                   (config.margins), written as one run directory per alpha
#   embedding_dim   64, 128, 256, 512
#   miner           semi_hard, batch_hard, batch_all, random
#   batch_shape     P identities x K images = 16x2, 8x4, 4x8 (32 images per batch each)
#   seed            seeds 0, 1, 2
#   margin_seeds    margin_vmapped repeated for seeds 0, 1, 2 (compare_runs.py --average=seed)
SWEEPS: dict[str, Callable[[], list[dict]]] = {
    "margin": lambda: product({"margin": MARGINS}),
    "margin_vmapped": lambda: [{"margins": MARGINS}],
    "embedding_dim": lambda: product({"model.embedding_dim": (64, 128, 256, 512)}),
    "miner": lambda: product({"miner": ("semi_hard", "batch_hard", "batch_all", "random")}),
    "batch_shape": lambda: zipped({"identities_per_batch": (16, 8, 4),
                                   "images_per_identity": (2, 4, 8)}),
    "seed": lambda: product({"seed": (0, 1, 2)}),
    "margin_seeds": lambda: product({"margins": [MARGINS], "seed": (0, 1, 2)}),
}


def sweep(name: str = "margin") -> list[dict]:
  """The points of the sweep ``name`` (a key of ``SWEEPS``); ValueError for another name."""
  if name not in SWEEPS:
    raise ValueError(f"unknown sweep {name!r}; expected one of {sorted(SWEEPS)}")
  return SWEEPS[name]()
