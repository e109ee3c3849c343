"""Procedural single-lead EKG strips: identify a person from a heartbeat (1-D identities).

A person is a heartbeat morphology: the P, Q, R, S and T waves, each a Gaussian bump
``a exp(-(t - t_beat - o)^2 / (2 w^2))`` with its own amplitude ``a`` (mV), width ``w``
(s) and offset ``o`` from the R peak (s; the PR and QT intervals), plus a resting heart
rate. This is the sum-of-Gaussians beat model of McSharry et al. (2003), "A dynamical
model for generating synthetic electrocardiogram signals", written in closed form.

A recording (one example, ``(length, 1)`` float32) is the person's beat train under
  * session heart rate: the resting rate times exp(N(0, ``session_hr_std``));
    the T offset follows the RR interval as sqrt(RR) (Bazett's QT correction),
  * heart-rate variability: every RR interval times (1 + N(0, ``hrv_std``)),
  * beat-to-beat morphology jitter: amplitudes times exp(N(0, ``beat_jitter``)),
  * electrode gain exp(N(0, ``gain_std``)),
  * baseline wander: two sinusoids of 0.05..0.5 Hz (breathing, movement),
  * white measurement noise N(0, ``noise_std``) and a random start phase,
so raw samples of one person differ a lot (nothing lines up in time) while the beat
shape stays. Deterministic from the seed; train and held-out people use disjoint seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.raw import DataError

WAVES = ("P", "Q", "R", "S", "T")
# per wave: (amplitude mV), (width s), (offset from the R peak s) ranges people are drawn from
_AMP = np.array([[0.08, 0.25], [-0.20, -0.03], [0.6, 1.6], [-0.45, -0.08], [0.12, 0.45]])
_WIDTH = np.array([[0.018, 0.035], [0.007, 0.014], [0.008, 0.016], [0.008, 0.016], [0.035, 0.07]])
_OFFSET = np.array([[-0.22, -0.13], [-0.045, -0.022], [0.0, 0.0], [0.022, 0.045], [0.20, 0.32]])


@dataclasses.dataclass(frozen=True)
class EKGSpec:
  """What to generate. ``images_per_identity``: (min, max) recordings per person, inclusive;
  ``length`` samples at ``sampling_hz`` (256 at 100 Hz: a 2.56 s strip, 2-4 beats, 5 in ~1.5%)."""
  num_identities: int = 200
  images_per_identity: tuple[int, int] = (4, 10)
  length: int = 256
  sampling_hz: float = 100.0
  heart_rate_bpm: tuple[float, float] = (55.0, 95.0)
  session_hr_std: float = 0.08
  hrv_std: float = 0.04
  beat_jitter: float = 0.06
  gain_std: float = 0.15
  wander_mv: float = 0.25
  noise_std: float = 0.04


def _people(spec: EKGSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Per person: amp, width, offset (n, 5) for P, Q, R, S, T and the resting RR (n,) in s."""
  n = spec.num_identities
  u = lambda r: rng.uniform(r[:, 0], r[:, 1], (n, len(WAVES)))
  hr = rng.uniform(*spec.heart_rate_bpm, n)
  return {"amp": u(_AMP), "width": u(_WIDTH), "offset": u(_OFFSET), "rr": 60.0 / hr}


def _record(p: dict[str, np.ndarray], who: int, spec: EKGSpec, rng: np.random.Generator) -> np.ndarray:
  """One strip of person ``who``: (length,) float32 in mV."""
  fs, n = spec.sampling_hz, spec.length
  t = np.arange(n) / fs
  rr = p["rr"][who] * np.exp(rng.normal(0, spec.session_hr_std))
  # beats from one RR before the strip (tails of its T wave) to one after it
  count = int(np.ceil(n / fs / (rr * (1 - 4 * spec.hrv_std)))) + 3
  intervals = rr * np.maximum(1 + rng.normal(0, spec.hrv_std, count), 0.5)
  beats = np.cumsum(intervals) - rr * (1 + rng.random())             # (count,) R times
  amp = p["amp"][who] * np.exp(rng.normal(0, spec.beat_jitter, (count, len(WAVES))))
  offset = p["offset"][who].copy()
  offset[-1] *= np.sqrt(rr / p["rr"][who])                          # Bazett: QT ~ sqrt(RR)
  centre = beats[:, None] + offset[None, :]                          # (count, 5)
  d = (t[:, None, None] - centre[None]) / p["width"][who][None, None]
  x = np.einsum("lbw,bw->l", np.exp(-0.5 * d * d), amp)
  x *= np.exp(rng.normal(0, spec.gain_std))
  f = rng.uniform(0.05, 0.5, 2)
  x += spec.wander_mv * np.sum(rng.uniform(0, 1, 2)[:, None]
                               * np.sin(2 * np.pi * f[:, None] * t[None] + rng.uniform(0, 2 * np.pi, 2)[:, None]), 0)
  x += rng.normal(0, spec.noise_std, n)
  return x.astype(np.float32)


def make_ekg_identities(spec: EKGSpec, seed: int) -> IdentityDataset:
  """``spec.num_identities`` people, each with a seeded number of strips: images (N, length, 1)
  float32 (mV), labels (N,) int32."""
  if spec.num_identities < 2:
    raise DataError(f"ekg num_identities (config.data.train_identities / eval_identities) "
                    f"must be >= 2, got {spec.num_identities}")
  lo, hi = spec.images_per_identity
  if not 1 <= lo <= hi:
    raise DataError(f"ekg images_per_identity (config.data.images_per_identity / "
                    f"eval_images_per_identity) must be 1 <= min <= max, got {(lo, hi)}")
  if spec.length < 2 or spec.sampling_hz <= 0:
    raise ValueError(f"ekg length must be >= 2 samples and sampling_hz > 0, got "
                     f"{spec.length}, {spec.sampling_hz}")
  rng = np.random.default_rng(seed)
  people = _people(spec, rng)
  counts = rng.integers(lo, hi + 1, spec.num_identities)
  labels = np.repeat(np.arange(spec.num_identities, dtype=np.int32), counts)
  x = np.stack([_record(people, int(who), spec, rng) for who in labels])
  return IdentityDataset(images=x[..., None], labels=labels, name=f"ekg(seed={seed})")
