"""tfds builders for the real datasets; import lazily (this package imports tfds).

  orl_faces     AT&T/ORL faces: 40 people x 10 grey 112x92 images (split "train")
  lfw           Labeled Faces in the Wild: config "images" (split "train": every image)
                and config "pairs" (split "view2": the 6,000 View 2 pairs with their fold)
  omniglot      config "background" (splits "small1", "small2") and config "runs" (split
                "runs": the 20 official 20-way 1-shot runs with the answer key)

Each reads the raw files from ``download_config.manual_dir`` when one is given; LFW and
Omniglot otherwise download their public archives (checked against pinned SHA-256s).
Preparing needs no TensorFlow: archives are read with the standard library (``archives``:
member paths, links and sizes checked; tfds's own extractor imports TensorFlow) and images
are handed to tfds as encoded bytes. Read with ``builder.as_data_source()``.
"""

from facenet_jax.data.tfds_builders.lfw import Lfw
from facenet_jax.data.tfds_builders.omniglot import Omniglot
from facenet_jax.data.tfds_builders.orl import OrlFaces

BUILDERS = {b.name: b for b in (OrlFaces, Lfw, Omniglot)}
