"""Faces in the wild: MTCNN detection (``detect.MTCNN``) in JAX; alignment is ``facenet_jax.align``."""
