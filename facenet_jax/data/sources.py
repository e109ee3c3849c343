"""Dataset sources by name: ``config.data.source`` -> (train, held-out) IdentityDatasets.

Train and held-out identities are always disjoint: verification is measured on people
the network never saw.

  synthetic  procedural identities (no files)
  ekg        procedural EKG strips, one person per heartbeat morphology (1-D, no files)
  volume     procedural 3-D blob volumes under random pose (3-D, no files)
  orl        AT&T/ORL faces, people split by ``data.split_seed``
  lfw        LFW: the nine View 2 folds other than ``data.test_fold`` / the test fold
  omniglot   Omniglot background small1 + small2 characters, a seeded few held out
  folder     ``data.data_dir/<identity>/<image>``, identities split by ``data.split_seed``
  recordio   insightface ``data.data_dir/train.rec`` + ``train.idx`` (MS1M, WebFace), split so

folder and recordio are prepared once into array_record shards and read lazily
(``streamed.py``): their images are never all in memory.

The real sources live in ``real.py`` and import tfds only when called. Their evaluation
protocols: ``real.lfw_pairs`` / ``real.lfw_view2`` and ``real.omniglot_runs``.
"""

from __future__ import annotations

import ml_collections

from facenet_jax.data import aligned, real, streamed
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.ekg import EKGSpec, make_ekg_identities
from facenet_jax.data.volumes import VolumeSpec, make_volume_identities
from facenet_jax.data.synthetic import SyntheticSpec, make_synthetic_identities
from infra.errors import UserError


# people a generated source makes when data.train_identities / eval_identities are 0
GENERATED_TRAIN, GENERATED_HELD_OUT = 400, 100


def _generated(d: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.data`` with the generated sources' 0s (the default) made their sizes."""
  return ml_collections.ConfigDict({**d.to_dict(),
                                    "train_identities": d.train_identities or GENERATED_TRAIN,
                                    "eval_identities": d.eval_identities or GENERATED_HELD_OUT})


def _synthetic(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  d = _generated(config.data)
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


def _ekg(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  """``data.image_size`` samples per strip (at EKGSpec.sampling_hz), one channel."""
  d = _generated(config.data)
  make = lambda n, per, seed: make_ekg_identities(
      EKGSpec(num_identities=n, images_per_identity=tuple(per), length=d.image_size), seed)
  return (make(d.train_identities, d.images_per_identity, config.seed * 2 + 1),
          make(d.eval_identities, d.eval_images_per_identity, config.seed * 2 + 2))


def _volume(config: ml_collections.ConfigDict) -> tuple[IdentityDataset, IdentityDataset]:
  """``data.image_size`` voxels per side, ``data.channels`` channels."""
  d = _generated(config.data)
  make = lambda n, per, seed: make_volume_identities(
      VolumeSpec(num_identities=n, images_per_identity=tuple(per), size=d.image_size,
                 channels=d.channels), seed)
  return (make(d.train_identities, d.images_per_identity, config.seed * 2 + 1),
          make(d.eval_identities, d.eval_images_per_identity, config.seed * 2 + 2))


SOURCES = {"synthetic": _synthetic, "ekg": _ekg, "volume": _volume, "orl": real.load_orl,
           "lfw": real.load_lfw, "omniglot": real.load_omniglot, "folder": streamed.load,
           "recordio": streamed.load}


# sources made by a generator from config.seed (no files: data.data_dir must stay "")
GENERATED = ("synthetic", "ekg", "volume")

# the data fields that choose which people train and which are held out, per source (a
# generated source makes other people from config.seed); a run over another source's field
# trains the same split again
SPLIT_FIELDS = {"lfw": ("data.test_fold", "data.calibration_folds"),
                **{s: ("data.split_seed",) for s in ("orl", "omniglot", "folder", "recordio")},
                **{s: ("seed",) for s in GENERATED}}


def check_split_field(source: str, field: str) -> None:
  """``SplitFieldError`` when ``field`` chooses the split of some source but not of ``source``
  (cross-validating ORL over data.test_fold, the default field, trained one split ten times
  and reported a std of 0)."""
  others = {f for fs in SPLIT_FIELDS.values() for f in fs if f.startswith("data.")}
  if field in others and field not in SPLIT_FIELDS.get(source, ()):
    raise SplitFieldError(f"--field={field}: data.source={source!r} does not use it, so every "
                          f"value would train and test the same split; its split is chosen by "
                          f"{' / '.join(SPLIT_FIELDS[source])}")


class SplitFieldError(UserError, ValueError):
  """A field varied over runs that does not change the data split of the source."""


# sources whose preparation can detect and align faces (data.align="mtcnn")
ALIGNABLE = ("lfw", "folder", "recordio")
PREPARED = ("folder", "recordio")   # streamed.load: prepared once, read from shards


def load(config: ml_collections.ConfigDict, identities_per_batch: int | None = None
         ) -> tuple[IdentityDataset, IdentityDataset]:
  """(train, held-out) of ``config.data``. ``identities_per_batch``: the P of a P x K sampler
  that will draw from the training side (training passes it): a prepared source (folder,
  recordio) checks it on its plan, before its images are prepared; the sampler checks it
  again on the loaded labels."""
  source = config.data.source
  if source not in SOURCES:
    raise ValueError(f"config.data.source = {source!r}: expected one of {sorted(SOURCES)}")
  aligned.check_config(config)   # data.align / no_face / ...: one-line errors before any data work
  if aligned.alignment_of(config) is not None and source not in ALIGNABLE:
    raise aligned.AlignConfigError(
        f"config.data.align = {config.data.align!r}: data.source={source!r} cannot be aligned "
        f"(alignment is for photos of faces: data.source one of {ALIGNABLE})")
  if source in PREPARED:
    return streamed.load(config, identities_per_batch)
  return SOURCES[source](config)
