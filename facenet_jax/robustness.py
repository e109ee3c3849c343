"""Test-time robustness: verification of a trained run on degraded held-out images.

FaceNet (Schroff et al. 2015, Tables 4 and 5) reports validation rate against JPEG quality
and against image resolution of the *test* images for one trained network. Here a trained
workdir (``inference.load``) embeds its own held-out images (the identities and pairs its
evaluation used) after one degradation:

  resolution r   each image area-downscaled to r x r and bilinearly upscaled back to the
                 training size (the network input stays the same; detail is lost)
  JPEG quality q each image encoded as JPEG at quality q (PIL, 4:2:0 chroma for RGB) and
                 decoded

and reports the same metrics as training's evaluation (10-fold accuracy, VAL@FAR=1e-3, ...).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facenet_jax import inference, verification, workdir as workdir_lib
from facenet_jax.data import sources
from infra.errors import UserError


class RobustnessError(UserError, ValueError):
  """Degradation settings that do not fit the run (named, before the model loads)."""


def _pil(img_HxWxC: np.ndarray) -> Image.Image:
  return Image.fromarray(img_HxWxC[:, :, 0] if img_HxWxC.shape[-1] == 1 else img_HxWxC)


def _back(im: Image.Image, channels: int) -> np.ndarray:
  a = np.asarray(im, np.uint8)
  return a[:, :, None] if a.ndim == 2 else a[:, :, :channels]


def degrade(images_NxHxWxC: np.ndarray, *, resolution: int = 0, jpeg_quality: int = 0) -> np.ndarray:
  """Degraded copies of uint8 (N, H, W, C) images (C = 1 or 3), same shape and dtype.

  ``resolution`` > 0: down to r x r (PIL's bilinear filter widens when shrinking: an area
  average) and back up to H x W. ``jpeg_quality`` in 1..100: a JPEG round trip at that
  quality. 0 leaves that degradation out; resolution first when both are given.
  """
  x = np.asarray(images_NxHxWxC)
  if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"degrade takes uint8 (N, H, W, 1 or 3) images, got {x.dtype} {x.shape}")
  if not 0 <= jpeg_quality <= 100:
    raise ValueError(f"jpeg_quality={jpeg_quality}: expected 1..100 (0: no JPEG)")
  if resolution < 0:
    raise ValueError(f"resolution={resolution}: expected > 0 (0: unchanged)")
  _, H, W, C = x.shape
  out = np.empty_like(x)
  for n in range(x.shape[0]):
    im = _pil(x[n])
    if resolution:
      im = im.resize((resolution, resolution), Image.Resampling.BILINEAR)
      im = im.resize((W, H), Image.Resampling.BILINEAR)
    if jpeg_quality:
      buf = io.BytesIO()
      im.save(buf, format="JPEG", quality=int(jpeg_quality))
      buf.seek(0)
      im = Image.open(buf)
      im.load()
    out[n] = _back(im, C)
  return out


def evaluate(workdir: str, *, resolutions=(), jpeg_qualities=()) -> list[dict]:
  """One row per setting: ``{kind, value, <verification metrics>}``; the first row is
  the undegraded images (kind ``original``)."""
  config = workdir_lib.load_config(workdir)   # before the model and data
  if int(config.model.spatial_dims) != 2:   # a traceback after the model and data had loaded
    raise RobustnessError(f"{workdir} is a {config.model.spatial_dims}-D run "
                          f"(data.source={config.data.source!r}): the degradations (resolution, "
                          f"JPEG quality) are of 2-D images")
  size = int(config.data.image_size)
  larger = [r for r in resolutions if int(r) >= size]
  if larger:   # up and back down is not a degradation: a row that looked like robustness
    raise RobustnessError(f"--resolutions {larger}: expected sizes below the run's image size "
                          f"{size} px ({workdir})")
  trained = inference.load(workdir)
  config = trained.config
  _, held_out = sources.load(config)
  i, j, issame = verification.make_pairs(held_out.labels, config.data.eval_pairs, seed=config.seed + 1)
  settings = [("original", 0, {})] + [("resolution", r, {"resolution": int(r)}) for r in resolutions] \
      + [("jpeg_quality", q, {"jpeg_quality": int(q)}) for q in jpeg_qualities]
  rows = []
  for kind, value, kw in settings:
    images = degrade(held_out.images, **kw) if kw else held_out.images
    emb = trained.embed(images)
    d = np.sum((emb[i] - emb[j]) ** 2, axis=1)
    rows.append({"kind": kind, "value": value,
                 **verification.summarize(d, issame, config.data.eval_folds)})
  return rows
