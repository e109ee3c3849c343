"""Procedural face-like identities: the embedded default dataset (no downloads).

An identity is a structured template: a few blobs shared by every identity (a face-like
layout: oval, eyes, mouth) whose positions, shapes and colours the identity perturbs,
plus blobs of its own. An image is the identity's template rendered under a random
pose (rotation, scale, translation), lighting (gain, offset, a directional gradient),
pixel noise and an occluding rectangle. Identities differ in small structural details
while images of one identity differ a lot in pixels, so raw-pixel comparison is a weak
verifier and a network has to learn the invariances.

Everything is deterministic from the seed; train and held-out identities are drawn from
disjoint seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.raw import DataError

# the shared layout: (x, y, sx, sy, amplitude) in [-1, 1] image coordinates
_SHARED = np.array([
    [0.0, 0.05, 0.55, 0.70, 0.9],    # face oval
    [-0.28, -0.2, 0.12, 0.07, -0.9],  # left eye
    [0.28, -0.2, 0.12, 0.07, -0.9],   # right eye
    [0.0, 0.1, 0.06, 0.16, 0.4],      # nose
    [0.0, 0.42, 0.22, 0.06, -0.8],    # mouth
], np.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate. ``images_per_identity`` is a (min, max) range, inclusive."""
  num_identities: int = 300
  images_per_identity: tuple[int, int] = (4, 16)
  image_size: int = 32
  channels: int = 3
  own_blobs: int = 6
  max_rotation_deg: float = 25.0
  scale_range: tuple[float, float] = (0.8, 1.2)
  max_translation: float = 0.2   # fraction of the half-width
  noise_std: float = 0.12
  occlusion_prob: float = 0.5
  identity_variation: float = 1.0  # how far identities depart from the shared layout


def _identity_params(spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
  n, m = spec.num_identities, _SHARED.shape[0]
  v = spec.identity_variation
  shared = np.broadcast_to(_SHARED, (n, m, 5)).copy()
  shared[..., 0:2] += rng.normal(0, 0.06 * v, (n, m, 2))
  shared[..., 2:4] *= np.exp(rng.normal(0, 0.25 * v, (n, m, 2)))
  shared[..., 4] *= np.exp(rng.normal(0, 0.3 * v, (n, m)))
  k = spec.own_blobs
  own = np.concatenate([
      rng.uniform(-0.55, 0.55, (n, k, 2)),
      rng.uniform(0.05, 0.16, (n, k, 2)),
      rng.uniform(-0.9, 0.9, (n, k, 1)),
  ], axis=-1)
  blobs = np.concatenate([shared, own], axis=1).astype(np.float32)     # (n, M, 5)
  angle = rng.uniform(0, np.pi, (n, blobs.shape[1])).astype(np.float32)  # blob orientation
  color = rng.uniform(0.3, 1.0, (n, blobs.shape[1], spec.channels)).astype(np.float32)
  skin = rng.uniform(0.3, 0.7, (n, spec.channels)).astype(np.float32)
  return {"blobs": blobs, "angle": angle, "color": color, "skin": skin}


def _render(params: dict[str, np.ndarray], ident: np.ndarray, spec: SyntheticSpec,
            rng: np.random.Generator) -> np.ndarray:
  """Renders one image per entry of ``ident``; returns (N, H, W, C) uint8."""
  n, s = ident.shape[0], spec.image_size
  blobs = params["blobs"][ident]                                  # (N, M, 5)
  rot = np.deg2rad(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg, n))
  scale = rng.uniform(*spec.scale_range, n)
  shift = rng.uniform(-spec.max_translation, spec.max_translation, (n, 2))
  cos, sin = np.cos(rot), np.sin(rot)
  x, y = blobs[..., 0], blobs[..., 1]
  cx = scale[:, None] * (cos[:, None] * x - sin[:, None] * y) + shift[:, :1]
  cy = scale[:, None] * (sin[:, None] * x + cos[:, None] * y) + shift[:, 1:]
  sx = blobs[..., 2] * scale[:, None]
  sy = blobs[..., 3] * scale[:, None]
  theta = params["angle"][ident] + rot[:, None]
  grid = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1
  gx = grid[None, None, None, :]
  gy = grid[None, None, :, None]
  dx = gx - cx[..., None, None]
  dy = gy - cy[..., None, None]
  ct, st = np.cos(theta)[..., None, None], np.sin(theta)[..., None, None]
  u = (ct * dx + st * dy) / sx[..., None, None]
  w = (-st * dx + ct * dy) / sy[..., None, None]
  g = np.exp(-0.5 * (u * u + w * w)).astype(np.float32)          # (N, M, S, S)
  amp = blobs[..., 4][..., None] * params["color"][ident]         # (N, M, C)
  img = np.einsum("nmhw,nmc->nhwc", g, amp) + params["skin"][ident][:, None, None, :] - 0.5
  # lighting: gain, offset and a linear gradient in a random direction
  gain = rng.uniform(0.6, 1.4, (n, 1, 1, 1))
  offset = rng.uniform(-0.25, 0.25, (n, 1, 1, 1))
  phi = rng.uniform(0, 2 * np.pi, n)
  strength = rng.uniform(0, 0.5, n)
  ramp = (np.cos(phi)[:, None, None] * gx[0, 0] + np.sin(phi)[:, None, None] * gy[0, 0])
  img = img * gain + offset + (strength[:, None, None] * ramp)[..., None]
  img = img + rng.normal(0, spec.noise_std, img.shape)
  # occlusion: a flat rectangle of random grey over part of the face
  occ = rng.random(n) < spec.occlusion_prob
  for i in np.nonzero(occ)[0]:
    h, wd = rng.integers(s // 6, s // 2 + 1, 2)
    y0, x0 = rng.integers(0, s - h + 1), rng.integers(0, s - wd + 1)
    img[i, y0:y0 + h, x0:x0 + wd, :] = rng.uniform(-0.5, 0.5)
  return np.clip((img + 0.5) * 255.0, 0, 255).round().astype(np.uint8)


def make_synthetic_identities(spec: SyntheticSpec, seed: int, *, chunk: int = 512) -> IdentityDataset:
  """A deterministic dataset of ``spec.num_identities`` procedural identities."""
  if spec.num_identities < 2:
    raise DataError(f"synthetic num_identities (config.data.train_identities / eval_identities) "
                    f"must be >= 2, got {spec.num_identities}")
  lo, hi = spec.images_per_identity
  if not 1 <= lo <= hi:
    raise DataError(f"synthetic images_per_identity (config.data.images_per_identity / "
                    f"eval_images_per_identity) must be 1 <= min <= max, got {(lo, hi)}")
  rng = np.random.default_rng(seed)
  params = _identity_params(spec, rng)
  counts = rng.integers(lo, hi + 1, spec.num_identities)
  labels = np.repeat(np.arange(spec.num_identities, dtype=np.int32), counts)
  images = np.concatenate([
      _render(params, labels[i:i + chunk], spec, rng) for i in range(0, labels.shape[0], chunk)])
  return IdentityDataset(images=images, labels=labels, name=f"synthetic(seed={seed})")
