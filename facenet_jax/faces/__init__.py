"""Faces in the wild: MTCNN detection (``detect.MTCNN``) in JAX; alignment is ``facenet_jax.align``;
``detect_and_align`` (``pipeline``) is the one call from photos to aligned face crops."""

from facenet_jax.faces.pipeline import Face, detect_and_align  # noqa: F401
