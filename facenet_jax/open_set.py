"""Open-set identification metrics and the impostor-calibrated thresholds recognition uses.

Open-set evaluation (Phillips et al., "FRVT 2002"; Grother & Ngan, NIST IR 8271):

  known probes   -- probes of enrolled people ("mated" searches)
  unknown probes -- probes of people not in the gallery ("non-mated" searches)
  rank-k accuracy (closed set) -- fraction of known probes whose true person is among the k
                    nearest people
  DIR(t)  detection and identification rate -- fraction of known probes whose nearest person
          is the true one AND whose distance to it is <= t
  FNIR(t) = 1 - DIR(t) -- known probes rejected or identified as someone else
  FAR(t)  false accept rate, a.k.a. FPIR -- fraction of unknown probes whose nearest person
          is within t, i.e. who are accepted as *someone*
  unknown rejection rate = 1 - FAR(t)

Distances are those of :mod:`facenet_jax.recognition` (squared L2, nearest enrolled row of
each person); accept when ``distance <= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from facenet_jax import recognition
from infra.errors import UserError


class OpenSetError(UserError, ValueError):
  """An open-set split the data cannot give (a one-line error; evaluate --set is how it comes)."""


def _true_columns(identities_K: np.ndarray, probe_ids_Q: np.ndarray) -> np.ndarray:
  """Column of each probe's true identity in ``identities_K``; error if not enrolled."""
  col = {v: k for k, v in enumerate(np.asarray(identities_K).tolist())}
  missing = sorted({p for p in np.asarray(probe_ids_Q).tolist() if p not in col}, key=str)
  if missing:
    raise ValueError(f"known probes must be of enrolled people; not enrolled: {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}")
  return np.array([col[p] for p in np.asarray(probe_ids_Q).tolist()], np.int64)


def true_rank(dist_QxK: np.ndarray, identities_K: np.ndarray, probe_ids_Q: np.ndarray) -> np.ndarray:
  """Rank (1 = nearest) of each probe's true identity among the K enrolled people.

  Ties count against the probe: rank = the number of people at distance <= the true one's,
  so a probe exactly equidistant to its own and another person is not rank 1.
  """
  cols = _true_columns(identities_K, probe_ids_Q)
  d_true = dist_QxK[np.arange(dist_QxK.shape[0]), cols]
  return (dist_QxK <= d_true[:, None]).sum(axis=1)


def rank_k_accuracy(dist_QxK: np.ndarray, identities_K: np.ndarray, probe_ids_Q: np.ndarray,
                    k: int = 1) -> float:
  """Closed-set identification: fraction of probes with ``true_rank <= k``."""
  return float(np.mean(true_rank(dist_QxK, identities_K, probe_ids_Q) <= k))


def calibrate_threshold(impostor_distances: np.ndarray, far: float) -> float:
  """The distance threshold accepting at most a ``far`` fraction of impostors.

  With n impostor (unknown-person) distances sorted ``d_(1) <= ... <= d_(n)`` and
  ``m = floor(far * n)`` allowed accepts, the threshold lies below ``d_(m+1)``: it is the
  midpoint between ``d_(m+1)`` and the largest impostor distance strictly below it (the
  convention of ``verification.best_threshold``), the float just below ``d_(1)`` if there is
  none (accept everything closer than the nearest impostor, not nothing), and
  ``d_(n)`` when ``m >= n``. Impostors tied at ``d_(m+1)`` are all rejected, so the realized
  FAR is <= ``far`` and may be lower when ties straddle the cut.
  """
  d = np.sort(np.asarray(impostor_distances, np.float64).ravel())
  if d.size == 0:
    raise ValueError("calibrate_threshold needs at least one impostor distance")
  if not np.all(np.isfinite(d)):
    raise ValueError("impostor distances contain NaN or Inf")
  if not 0.0 <= far <= 1.0:
    raise ValueError(f"far must be in [0, 1], got {far}")
  m = int(np.floor(far * d.size + 1e-9))  # 1e-9: far * n = 2.9999999 should allow 3
  if m >= d.size:
    return float(d[-1])
  cut = d[m]
  below = d[d < cut]
  return threshold_between(below[-1], cut) if below.size else float(np.nextafter(cut, -np.inf))


def threshold_between(lo: float, hi: float) -> float:
  """A threshold t with lo <= t < hi for an accept rule ``d <= t``: the midpoint, or ``lo``
  when the midpoint of two adjacent floats rounds up onto ``hi`` (it would accept ``hi``)."""
  t = 0.5 * (float(lo) + float(hi))
  return t if t < hi else float(lo)


# false-accept rates per comparison at which a run saves an impostor-calibrated threshold
# (verification.summarize: ``metrics.threshold_at_far_<far>`` in results.json)
THRESHOLD_FARS = (1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_FAR = 1e-3   # recognize.py's default operating point


def far_key(far: float) -> str:
  """``threshold_at_far_1e-3``: the metrics key of the threshold saved for ``far``."""
  return f"threshold_at_far_{far:.0e}".replace("e-0", "e-")


def saved_threshold(metrics: dict, far: float, where: str = "the run") -> float:
  """The threshold a run saved for a false-accept rate ``far`` per comparison (one probe
  against one enrolled person): accepts at most that fraction of the run's held-out
  impostor pairs (``metrics[far_key(far)]``). A FAR the run saved none for is a
  ``GalleryError`` naming the ones it has."""
  have = [f for f in THRESHOLD_FARS if far_key(f) in metrics]
  if not have:
    raise recognition.GalleryError(
        f"{where} saved no impostor-calibrated thresholds (threshold_at_far_*; runs "
        f"trained before they were saved, or without held-out people): pass "
        f"--threshold, or train again")
  match = [f for f in have if abs(f - far) <= 1e-9 * far]
  if not match:
    raise recognition.GalleryError(
        f"{where} saved thresholds for FAR {', '.join(f'{f:g}' for f in have)} "
        f"only, not {far:g}: pick one of these or pass --threshold")
  return float(metrics[far_key(match[0])])


def open_set_rates(known_dist_QxK: np.ndarray, identities_K: np.ndarray, known_probe_ids_Q: np.ndarray,
                   unknown_dist_UxK: np.ndarray, threshold: float) -> dict[str, float]:
  """Open-set rates at ``threshold`` from probe-to-person distances (see the module doc).

  Returns ``dir``, ``fnir``, ``known_rejection_rate`` (known probes farther than the threshold),
  ``misidentification_rate`` (known probes accepted as someone else), ``far``
  (= FPIR) and ``unknown_rejection_rate``. A rate over an empty probe set is NaN.
  """
  known_dist_QxK = np.asarray(known_dist_QxK, np.float64)
  unknown_dist_UxK = np.asarray(unknown_dist_UxK, np.float64)
  nan = float("nan")
  out = {}
  if known_dist_QxK.shape[0]:
    rank1 = true_rank(known_dist_QxK, identities_K, known_probe_ids_Q) == 1
    accepted = known_dist_QxK.min(axis=1) <= threshold
    out["dir"] = float(np.mean(rank1 & accepted))
    out["known_rejection_rate"] = float(np.mean(~accepted))
    out["misidentification_rate"] = float(np.mean(accepted & ~rank1))
    out["fnir"] = 1.0 - out["dir"]
  else:
    out.update(dir=nan, known_rejection_rate=nan, misidentification_rate=nan, fnir=nan)
  if unknown_dist_UxK.shape[0]:
    out["far"] = float(np.mean(unknown_dist_UxK.min(axis=1) <= threshold))
    out["unknown_rejection_rate"] = 1.0 - out["far"]
  else:
    out.update(far=nan, unknown_rejection_rate=nan)
  return out


def open_set_report(gallery_emb: np.ndarray, gallery_ids: np.ndarray, known_probe_emb: np.ndarray,
                    known_probe_ids: np.ndarray, unknown_probe_emb: np.ndarray | None,
                    threshold: float, ranks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """Flat ``{name: float}``: closed-set ``rank{k}_accuracy`` of the known probes (for each k in
  ``ranks`` below the number of people), the ``open_set_rates`` at ``threshold``, the
  threshold and the set sizes. Distances are squared L2, min over each person's rows.

  Choose ``threshold`` without the unknown probes scored here (e.g. ``calibrate_threshold``
  on held-out impostors), or the FAR is optimistic.
  """
  gallery_ids = np.asarray(gallery_ids)
  if gallery_ids.size == 0:
    raise recognition.GalleryError(
        "the gallery is empty: enrol at least one person before evaluating")
  gallery_emb = recognition.check_embeddings(gallery_emb, None, "gallery")
  dim = gallery_emb.shape[1]
  probes = lambda e, what: (np.zeros((0, dim), np.float32) if e is None or np.size(e) == 0
                            else recognition.check_embeddings(e, dim, what))
  known = probes(known_probe_emb, "known probes")
  unknown = probes(unknown_probe_emb, "unknown probes")
  if np.asarray(known_probe_ids).shape != (known.shape[0],):
    raise ValueError(f"need one id per known probe: {np.shape(known_probe_ids)} ids for "
                     f"{known.shape[0]} probes")
  identities, dist_known = recognition.identity_distances(gallery_emb, gallery_ids, known)
  _, dist_unknown = recognition.identity_distances(gallery_emb, gallery_ids, unknown)
  out = {}
  if known.shape[0]:
    r = true_rank(dist_known, identities, known_probe_ids)
    for k in ranks:
      if k < identities.size:   # rank-k among k people is 1 for any embedding
        out[f"rank{k}_accuracy"] = float(np.mean(r <= k))
  out.update(open_set_rates(dist_known, identities, known_probe_ids, dist_unknown, threshold))
  out.update(threshold=float(threshold), num_identities=float(identities.size),
             num_gallery_embeddings=float(gallery_ids.size),
             num_known_probes=float(known.shape[0]), num_unknown_probes=float(unknown.shape[0]))
  return out


class OpenSetSplit(NamedTuple):
  """Row indices into a labelled set: ``gallery`` rows to enrol, ``known`` probes of enrolled
  people, ``unknown`` probes of people never enrolled, and ``calibration`` rows of further
  never-enrolled people, kept apart to choose the threshold on."""
  gallery: np.ndarray
  known: np.ndarray
  unknown: np.ndarray
  calibration: np.ndarray


def open_set_split(labels: np.ndarray, num_enrolled: int, shots: int = 1, seed: int = 0,
                   calibration_fraction: float = 0.5) -> OpenSetSplit:
  """Seeded open-set protocol from any labelled set.

  ``num_enrolled`` people with >= ``shots + 1`` images are enrolled with ``shots`` images
  each (one-shot: ``shots=1``); their other images are known probes. The remaining people are
  split by person: ``calibration_fraction`` of them for threshold calibration, the rest as
  unknown probes, so no person's images are both calibrated on and scored.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  eligible = np.nonzero(counts >= shots + 1)[0]
  if num_enrolled > eligible.size or num_enrolled < 1:
    raise OpenSetError(f"cannot enrol {num_enrolled} people with {shots} shot(s) and a probe each: "
                     f"{eligible.size} of {ids.size} people have >= {shots + 1} images")
  enrolled = rng.choice(eligible, num_enrolled, replace=False)
  rest = rng.permutation(np.setdiff1d(np.arange(ids.size), enrolled))
  num_cal = int(round(calibration_fraction * rest.size))
  cal_ids, unk_ids = rest[:num_cal], rest[num_cal:]
  gallery, known = [], []
  for k in enrolled:
    rows = rng.permutation(np.nonzero(inverse == k)[0])
    gallery.append(rows[:shots])
    known.append(rows[shots:])
  as_idx = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
  return OpenSetSplit(gallery=as_idx(gallery), known=as_idx(known),
                      unknown=np.nonzero(np.isin(inverse, unk_ids))[0],
                      calibration=np.nonzero(np.isin(inverse, cal_ids))[0])
