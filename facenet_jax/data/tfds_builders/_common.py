"""Pieces every builder shares: the identity-image features and where the raw files are."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds


class LocalInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a builder that exists only here: tfds looks up every unprepared
  dataset's info in its GCS bucket (``initialize_from_bucket``), and on the way makes a
  ``tempfile.mkdtemp("tfds")`` folder it never removes, one per builder made (about 1,500
  empty ``/tmp/tmp*tfds`` folders on a machine that ran the tests for a while). These
  datasets are not in that bucket, so there is nothing to look up."""

  def initialize_from_bucket(self) -> None:
    return None


def identity_features(image_shape: tuple, encoding_format: str | None) -> tfds.features.FeaturesDict:
  """image (uint8 H x W x C), label (int32 identity index in the builder's sorted identity
  list), identity (its name) and file_name (the path relative to the dataset root)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=image_shape, encoding_format=encoding_format),
      "label": tfds.features.Scalar(dtype=np.int32),
      "identity": tfds.features.Text(),
      "file_name": tfds.features.Text(),
  })


def manual_root(dl_manager) -> str | None:
  """The manual_dir when it exists and is non-empty, else None (the builder downloads).

  tfds defaults manual_dir to ``<data_dir>/downloads/manual``; the loaders check that a
  manual_dir the user named exists before preparing, so a typo is not a silent download.
  """
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError:
    return None
