"""Procedural 3-D identities: volumes of Gaussian blobs under random pose and noise.

An identity is a rigid arrangement of anisotropic 3-D Gaussian blobs (a shared layout
every identity perturbs, like an organ's parts, plus blobs of its own), each with a
centre, three axis lengths, an orientation and a signed intensity. A volume
(``(size, size, size, channels)`` uint8) renders the identity under
  * a random rotation (axis uniform on the sphere, angle up to ``max_rotation_deg``),
  * a random scale and translation,
  * an intensity gain and offset, and additive voxel noise N(0, ``noise_std``),
so voxels of one identity do not line up between volumes while its structure stays.

Voxel ``v`` (centre coordinates in [-1, 1]^3) of a volume with pose (R, s, t) is
``sum_m a_m exp(-1/2 |diag(1/(s sigma_m)) (R Q_m)^T (v - (s R c_m + t))|^2)``: blob ``m``
with centre c_m, axis lengths sigma_m, orientation Q_m and intensity a_m.
Deterministic from the seed; train and held-out identities use disjoint seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.raw import DataError

# the shared layout: (x, y, z, sx, sy, sz, amplitude) in [-1, 1]^3 coordinates
_SHARED = np.array([
    [0.0, 0.0, 0.0, 0.55, 0.45, 0.40, 0.7],     # body
    [-0.3, 0.15, 0.1, 0.14, 0.12, 0.12, -0.9],  # two cavities
    [0.3, 0.15, 0.1, 0.14, 0.12, 0.12, -0.9],
    [0.0, -0.35, 0.0, 0.30, 0.08, 0.10, 0.8],   # a ridge
], np.float32)


@dataclasses.dataclass(frozen=True)
class VolumeSpec:
  """What to generate. ``images_per_identity``: (min, max) volumes per identity, inclusive."""
  num_identities: int = 200
  images_per_identity: tuple[int, int] = (4, 10)
  size: int = 12
  channels: int = 1
  own_blobs: int = 4
  max_rotation_deg: float = 30.0
  scale_range: tuple[float, float] = (0.85, 1.15)
  max_translation: float = 0.15
  noise_std: float = 0.12


def rotation_matrices(axis_N3: np.ndarray, angle_N: np.ndarray) -> np.ndarray:
  """Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2 for unit axes (N, 3) -> (N, 3, 3)."""
  k = axis_N3 / np.linalg.norm(axis_N3, axis=1, keepdims=True)
  z = np.zeros(k.shape[0])
  K = np.stack([np.stack([z, -k[:, 2], k[:, 1]], -1), np.stack([k[:, 2], z, -k[:, 0]], -1),
                np.stack([-k[:, 1], k[:, 0], z], -1)], 1)
  s, c = np.sin(angle_N)[:, None, None], np.cos(angle_N)[:, None, None]
  return np.eye(3)[None] + s * K + (1 - c) * (K @ K)


def _random_rotations(n: int, max_deg: float, rng: np.random.Generator) -> np.ndarray:
  axis = rng.normal(size=(n, 3))
  return rotation_matrices(axis, np.deg2rad(rng.uniform(-max_deg, max_deg, n)))


def _identity_params(spec: VolumeSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
  n, m = spec.num_identities, _SHARED.shape[0]
  shared = np.broadcast_to(_SHARED, (n, m, 7)).copy()
  shared[..., 0:3] += rng.normal(0, 0.06, (n, m, 3))
  shared[..., 3:6] *= np.exp(rng.normal(0, 0.25, (n, m, 3)))
  shared[..., 6] *= np.exp(rng.normal(0, 0.3, (n, m)))
  k = spec.own_blobs
  own = np.concatenate([rng.uniform(-0.5, 0.5, (n, k, 3)), rng.uniform(0.1, 0.25, (n, k, 3)),
                        rng.uniform(-0.9, 0.9, (n, k, 1))], axis=-1)
  blobs = np.concatenate([shared, own], axis=1)                           # (n, M, 7)
  orient = _random_rotations(n * blobs.shape[1], 180.0, rng).reshape(n, -1, 3, 3)
  color = rng.uniform(0.4, 1.0, (n, blobs.shape[1], spec.channels))
  return {"blobs": blobs, "orient": orient, "color": color}


def _render(params: dict[str, np.ndarray], ident: np.ndarray, spec: VolumeSpec,
            rng: np.random.Generator) -> np.ndarray:
  """One volume per entry of ``ident``: (N, S, S, S, C) uint8."""
  n, s = ident.shape[0], spec.size
  blobs = params["blobs"][ident]                                        # (N, M, 7)
  R = _random_rotations(n, spec.max_rotation_deg, rng)                  # (N, 3, 3)
  scale = rng.uniform(*spec.scale_range, n)
  shift = rng.uniform(-spec.max_translation, spec.max_translation, (n, 3))
  centre = scale[:, None, None] * np.einsum("nij,nmj->nmi", R, blobs[..., :3]) + shift[:, None]
  axes = np.einsum("nij,nmjk->nmik", R, params["orient"][ident])        # columns: blob axes
  sigma = blobs[..., 3:6] * scale[:, None, None]                        # (N, M, 3)
  g1 = ((np.arange(s) + 0.5) / s * 2 - 1).astype(np.float32)
  grid = np.stack(np.meshgrid(g1, g1, g1, indexing="ij"), -1).reshape(-1, 3)   # (V, 3)
  f32 = lambda a: a.astype(np.float32)
  d = grid[None, None] - f32(centre)[:, :, None]                        # (N, M, V, 3)
  u = (d @ f32(axes)) / f32(sigma)[:, :, None]
  g = np.exp(-0.5 * np.sum(u * u, -1))                                  # (N, M, V)
  amp = blobs[..., 6:7] * params["color"][ident]                        # (N, M, C)
  vol = np.swapaxes(g, 1, 2) @ f32(amp)                                 # (N, V, C)
  vol = vol * rng.uniform(0.7, 1.3, (n, 1, 1)) + rng.uniform(-0.15, 0.15, (n, 1, 1))
  vol = vol + rng.normal(0, spec.noise_std, vol.shape)
  vol = np.clip((vol * 0.5 + 0.5) * 255.0, 0, 255).round().astype(np.uint8)
  return vol.reshape(n, s, s, s, spec.channels)


def make_volume_identities(spec: VolumeSpec, seed: int, *, chunk: int = 128) -> IdentityDataset:
  """A deterministic dataset of ``spec.num_identities`` procedural 3-D identities."""
  if spec.num_identities < 2:
    raise DataError(f"volume num_identities (config.data.train_identities / eval_identities) "
                    f"must be >= 2, got {spec.num_identities}")
  lo, hi = spec.images_per_identity
  if not 1 <= lo <= hi:
    raise DataError(f"volume images_per_identity (config.data.images_per_identity / "
                    f"eval_images_per_identity) must be 1 <= min <= max, got {(lo, hi)}")
  if spec.size < 2:
    raise ValueError(f"volume size must be >= 2 voxels per side, got {spec.size}")
  rng = np.random.default_rng(seed)
  params = _identity_params(spec, rng)
  counts = rng.integers(lo, hi + 1, spec.num_identities)
  labels = np.repeat(np.arange(spec.num_identities, dtype=np.int32), counts)
  vols = np.concatenate([_render(params, labels[i:i + chunk], spec, rng)
                         for i in range(0, labels.shape[0], chunk)])
  return IdentityDataset(images=vols, labels=labels, name=f"volume(seed={seed})")
