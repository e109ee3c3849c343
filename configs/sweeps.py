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
#   batch_size      FaceNet's question at small scale (synthetic identities with 40 images
#                   each): global batches of 32, 128, 512 and 1,800 (P x K = 8x4, 16x8, 32x16,
#                   45x40; chunked gradients at 512 and 1,800) for 100 steps each, and the same
#                   batches at equal images seen (51,200: 1,600 / 400 / 100 / 28 steps)
#   batch_size_orl  the same on ORL (30 training people, 10 images each): 32, 128 and 300
#                   (the whole training set) at 100 steps and at 25,600 images seen
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


def batch_points(shapes: tuple, steps: tuple, **fixed) -> list[dict]:
  """One point per (P, K, chunk) shape and step count: ``identities_per_batch`` P,
  ``images_per_identity`` K, ``batch_chunk``, ``num_steps`` (evaluation and checkpoint at the
  end, log 10 times, warmup a tenth of the run), plus ``fixed`` overrides."""
  points = []
  for (p, k, chunk), n in zip(shapes, steps):
    points.append(dict(fixed, identities_per_batch=p, images_per_identity=k, batch_chunk=chunk,
                       num_steps=n, eval_every=n, checkpoint_every=n, log_every=max(1, n // 10),
                       **{"optim.warmup_steps": n // 10}))
  return points


_SYNTHETIC_SHAPES = ((8, 4, 0), (16, 8, 0), (32, 16, 128), (45, 40, 120))
_ORL_SHAPES = ((8, 4, 0), (16, 8, 0), (30, 10, 60))
SWEEPS["batch_size"] = lambda: (
    batch_points(_SYNTHETIC_SHAPES, (100,) * 4, **{"data.images_per_identity": (40, 40)})
    + batch_points(_SYNTHETIC_SHAPES[:2] + _SYNTHETIC_SHAPES[3:], (1600, 400, 28),
                   **{"data.images_per_identity": (40, 40)}))
SWEEPS["batch_size_orl"] = lambda: (batch_points(_ORL_SHAPES, (100,) * 3)
                                    + batch_points(_ORL_SHAPES, (800, 200, 85)))


def sweep(name: str = "margin") -> list[dict]:
  """The points of the sweep ``name`` (a key of ``SWEEPS``); ValueError for another name."""
  if name not in SWEEPS:
    raise ValueError(f"unknown sweep {name!r}; expected one of {sorted(SWEEPS)}")
  return SWEEPS[name]()
