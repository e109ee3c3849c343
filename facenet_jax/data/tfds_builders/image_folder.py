"""A user's identity folder ``root/<identity>/<image>`` (any format PIL reads) as RGB."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from facenet_jax.data import raw
from facenet_jax.data.tfds_builders._common import identity_features, manual_root


def config_for(root: str) -> tfds.core.BuilderConfig:
  """The builder config of ``root``'s current contents: adding, removing or editing a file
  gives a new config name, so a stale prepared copy is never read."""
  return tfds.core.BuilderConfig(name=f"folder_{raw.folder_fingerprint(root)}",
                                 description=f"identity folder {os.path.abspath(root)}")


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """label = identity folder index in natural order; images of any size, converted to RGB."""

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir is the root folder: root/<identity>/<image>."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Identity folder root/<identity>/<image>, RGB.",
        features=identity_features((None, None, 3), None), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    root = manual_root(dl_manager)
    if root is None:
      raise raw.DataError("image_folder needs manual_dir = the root folder "
                          "(config.data.data_dir); it is missing or empty")
    return {"train": self._generate_examples(root)}

  def _generate_examples(self, root: str):
    for label, (ident, names) in enumerate(raw.list_identity_folder(root)):
      for n in names:
        path = os.path.join(root, ident, n)
        data, _ = raw.image_bytes_for_tfds(raw.read_file(path), path, "RGB")
        rel = f"{ident}/{n}"
        yield rel, {"image": data, "label": label, "identity": ident, "file_name": rel}
