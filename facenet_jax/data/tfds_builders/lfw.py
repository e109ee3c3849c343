"""Labeled Faces in the Wild: the images and the View 2 pairs (10 folds of disjoint people).

Raw layout (manual_dir): ``pairs.txt`` and ``images/NAME/NAME_NNNN.jpg`` (``lfw/`` as in
the official lfw.tgz is accepted too). Without a manual_dir, lfw.tgz and pairs.txt are
downloaded, checked against their pinned SHA-256, and lfw.tgz is extracted with the standard
library (``archives.extract_tar``: no TensorFlow, no member outside its folder) into
``<data_dir>/downloads/extracted/lfw-<sha256 prefix>``, once for both configs.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from facenet_jax.data import raw
from facenet_jax.data.tfds_builders import archives
from facenet_jax.data.tfds_builders._common import LocalInfo, identity_features, manual_root

_URLS = {"images": "http://vis-www.cs.umass.edu/lfw/lfw.tgz",
         "pairs": "http://vis-www.cs.umass.edu/lfw/pairs.txt"}
# checked before use: lfw.tgz as pinned by tensorflow_datasets (180,566,744 bytes); pairs.txt
# as the project's shared copy of the official file (6,000 pairs)
_SHA256 = {"images": "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
           "pairs": "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592"}


def images_dir(base: str) -> str:
  for sub in ("images", "lfw"):
    if os.path.isdir(os.path.join(base, sub)):
      return os.path.join(base, sub)
  raise raw.DataError(f"{base}: no images/ (or lfw/) folder of NAME/NAME_NNNN.jpg")


class Lfw(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Config "images": label = person index in sorted name order, identity = the name.
  Config "pairs": one record per pairs.txt line, in file order (``index``), with its fold."""

  name = "lfw"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="images", description="every image under images/"),
      tfds.core.BuilderConfig(name="pairs", description="View 2 pairs.txt: 10 folds x 600 pairs"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir holds pairs.txt and images/NAME/NAME_NNNN.jpg (or lfw/ from lfw.tgz).")

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == "images":
      features = identity_features((None, None, 3), None)
      keys = ("image", "label")
    else:
      features = tfds.features.FeaturesDict({
          "index": tfds.features.Scalar(dtype=np.int32),
          "fold": tfds.features.Scalar(dtype=np.int32),
          "issame": tfds.features.Scalar(dtype=np.bool_),
          "name_a": tfds.features.Text(), "file_a": tfds.features.Text(),
          "name_b": tfds.features.Text(), "file_b": tfds.features.Text(),
      })
      keys = None
    return LocalInfo(
        builder=self, description="Labeled Faces in the Wild (Huang et al. 2007).",
        features=features, supervised_keys=keys, homepage="http://vis-www.cs.umass.edu/lfw/")

  def _split_generators(self, dl_manager):
    base = manual_root(dl_manager)
    if base is not None:
      images, pairs = images_dir(base), os.path.join(base, "pairs.txt")
    else:
      got = {k: raw.check_download(os.fspath(v), _URLS[k], _SHA256[k])
             for k, v in dl_manager.download(_URLS).items()}
      # not dl_manager.extract: tfds's extractor imports TensorFlow
      dest = os.path.join(os.fspath(dl_manager.download_dir), "extracted",
                          f"lfw-{_SHA256['images'][:16]}")
      images, pairs = images_dir(archives.extract_tar(got["images"], dest)), got["pairs"]
    if self.builder_config.name == "images":
      return {"train": self._generate_examples(images)}
    return {"view2": self._generate_examples(images, pairs)}

  def _generate_examples(self, images: str, pairs: str | None = None):
    if self.builder_config.name == "images":
      return self._generate_images(images)
    return self._generate_pairs(pairs, images)

  def _generate_images(self, images: str):
    for label, (name, files) in enumerate(raw.list_identity_folder(images, (".jpg", ".jpeg"))):
      for f in files:
        path = os.path.join(images, name, f)
        data, _ = raw.image_bytes_for_tfds(raw.read_file(path), path, "RGB")
        rel = f"{name}/{f}"
        yield rel, {"image": data, "label": label, "identity": name, "file_name": rel}

  def _generate_pairs(self, pairs_path: str, images: str):
    text = raw.read_file(pairs_path).decode("utf-8", errors="replace")
    for index, p in enumerate(raw.parse_lfw_pairs(text, pairs_path)):
      files = (raw.lfw_image_path(p.name_a, p.num_a), raw.lfw_image_path(p.name_b, p.num_b))
      for rel in files:
        if not os.path.isfile(os.path.join(images, rel)):
          raise raw.DataError(f"{pairs_path}: line {p.line}: image {os.path.join(images, rel)} "
                              "does not exist")
      yield index, {"index": index, "fold": p.fold, "issame": p.issame,
                    "name_a": p.name_a, "file_a": files[0], "name_b": p.name_b, "file_b": files[1]}
