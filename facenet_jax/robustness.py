"""Test-time robustness: verification of a trained run on degraded held-out images.

FaceNet (Schroff et al. 2015, Tables 4 and 5) reports validation rate against JPEG quality
and against image resolution of the *test* images for one trained network. Here a trained
workdir (``inference.load``) embeds its own held-out images (its held-out identities, and
the pairs its ``pairs`` evaluation draws: for an LFW run random pairs of the test fold's
people, not the official 600) after one degradation:

  resolution r   each image downscaled to r x r with PIL's bilinear filter (antialiased:
                 when shrinking it widens to a triangle over 2 x the scale factor, so it
                 blurs more than a box average of each r x r block) and bilinearly upscaled
                 back to the training size (the network input stays the same; detail is lost)
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

  ``resolution`` > 0: down to r x r (PIL's bilinear filter widens when shrinking: a triangle
  over 2 x the scale factor, not a box average) and back up to H x W. ``jpeg_quality`` in 1..100: a JPEG round trip at that
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


DEFAULT_RESOLUTIONS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 160)


def resolutions_for(workdir: str, resolutions=()) -> list[int]:
  """``resolutions`` sorted, or with none given those of DEFAULT_RESOLUTIONS below the run's
  image size (a fixed default up to 32 px refused the default 32 px run)."""
  config = workdir_lib.load_config(workdir)
  if resolutions:
    return sorted({int(r) for r in resolutions})
  return [r for r in DEFAULT_RESOLUTIONS if r < int(config.data.image_size)]


def evaluate(workdir: str, *, resolutions=(), jpeg_qualities=()) -> dict:
  """``{step, fingerprint, pairs, rows}``: the checkpoint measured, and one row per setting
  ``{kind, value, <verification metrics>}``, levels in increasing order; the first row is
  the undegraded images (kind ``original``)."""
  config = workdir_lib.load_config(workdir)   # before the model and data
  if int(config.model.spatial_dims) != 2:   # a traceback after the model and data had loaded
    raise RobustnessError(f"{workdir} is a {config.model.spatial_dims}-D run "
                          f"(data.source={config.data.source!r}): the degradations (resolution, "
                          f"JPEG quality) are of 2-D images")
  size = int(config.data.image_size)
  resolutions, jpeg_qualities = sorted({int(r) for r in resolutions}), sorted({int(q) for q in jpeg_qualities})
  larger = [r for r in resolutions if r >= size]
  if larger:   # up and back down is not a degradation: a row that looked like robustness
    raise RobustnessError(f"--resolutions {larger}: expected sizes below the run's image size "
                          f"{size} px ({workdir})")
  _, held_out = sources.load(config)   # before the model: a run that held out nobody fails here
  if held_out.num_identities < 2:
    raise RobustnessError(f"{workdir}: the run holds out {held_out.num_identities} identities "
                          f"(config.data.eval_identities = {config.data.eval_identities}); "
                          "verification pairs need >= 2 held-out people")
  trained = inference.load(workdir)
  i, j, issame = verification.make_pairs(held_out.labels, config.data.eval_pairs, seed=config.seed + 1)
  settings = [("original", 0, {})] + [("resolution", r, {"resolution": r}) for r in resolutions] \
      + [("jpeg_quality", q, {"jpeg_quality": q}) for q in jpeg_qualities]
  rows = []
  for kind, value, kw in settings:
    images = degrade(held_out.images, **kw) if kw else held_out.images
    emb = trained.embed(images)
    d = np.sum((emb[i] - emb[j]) ** 2, axis=1)
    rows.append({"kind": kind, "value": value,
                 **verification.summarize(d, issame, config.data.eval_folds)})
  return {"step": int(trained.step), "fingerprint": trained.fingerprint, "pairs": int(issame.size),
          "rows": rows}
