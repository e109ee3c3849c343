"""Dataset sources by name: ``config.data.source`` -> (train, held-out) IdentityDatasets.

Train and held-out identities are always disjoint: verification is measured on people
the network never saw.
"""

from __future__ import annotations

import ml_collections

from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.synthetic import SyntheticSpec, make_synthetic_identities


def _synthetic(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  d = config.data
  common = dict(image_size=d.image_size, channels=d.channels)
  train = make_synthetic_identities(
      SyntheticSpec(num_identities=d.train_identities,
                    images_per_identity=tuple(d.images_per_identity), **common),
      seed=config.seed * 2 + 1)
  held_out = make_synthetic_identities(
      SyntheticSpec(num_identities=d.eval_identities,
                    images_per_identity=tuple(d.eval_images_per_identity), **common),
      seed=config.seed * 2 + 2)
  return train, held_out


SOURCES = {"synthetic": _synthetic}


def load(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  source = config.data.source
  if source not in SOURCES:
    raise ValueError(f"config.data.source = {source!r}: expected one of {sorted(SOURCES)}")
  return SOURCES[source](config)
