"""AT&T / ORL "Database of Faces": ``att_faces/sN/K.pgm``, 40 people x 10 grey 92x112 PGMs."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from facenet_jax.data import raw
from facenet_jax.data.tfds_builders._common import LocalInfo, identity_features, manual_root

HEIGHT, WIDTH = 112, 92


class OrlFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ORL faces; label = identity index in natural order (s1 -> 0, ..., s40 -> 39)."""

  name = "orl_faces"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir is the att_faces folder: one folder per person (s1 ... s40) of K.pgm files.")

  def _info(self) -> tfds.core.DatasetInfo:
    return LocalInfo(
        builder=self,
        description="AT&T/ORL faces: 40 people x 10 images, 112x92 8-bit grey.",
        features=identity_features((HEIGHT, WIDTH, 1), "png"),
        supervised_keys=("image", "label"),
        citation="Samaria & Harter 1994, Olivetti Research Laboratory, Cambridge.")

  def _split_generators(self, dl_manager):
    root = manual_root(dl_manager)
    if root is None:   # no public archive left to download from
      raise raw.DataError("orl_faces has no download: give manual_dir = the att_faces folder "
                          "(config.data.data_dir)")
    return {"train": self._generate_examples(root)}

  def _generate_examples(self, root: str):
    for label, (ident, names) in enumerate(raw.list_identity_folder(root, (".pgm",))):
      for n in names:
        path = os.path.join(root, ident, n)
        im = raw.decode_image(raw.read_file(path), path, "L")
        if (im.height, im.width) != (HEIGHT, WIDTH):
          raise raw.DataError(f"{path}: ORL images are {WIDTH}x{HEIGHT}, this one is "
                              f"{im.width}x{im.height}")
        rel = f"{ident}/{n}"
        yield rel, {"image": raw.encode_png(im), "label": label, "identity": ident,
                    "file_name": rel}
