"""Plain NumPy references for the losses and miners: loops over triplets, no tricks."""

import numpy as np


def sq_dist(emb):
  e = np.asarray(emb, np.float64)
  return ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)


def hinge(d_ap, d_an, m):
  return max(d_ap - d_an + m, 0.0)


def softplus(d_ap, d_an, m):
  return float(np.log1p(np.exp(d_ap - d_an)))


LOSS = {"triplet": hinge, "soft_margin": softplus}


def _pairs(labels, mask):
  B = len(labels)
  for a in range(B):
    for p in range(B):
      if a != p and mask[a] and mask[p] and labels[a] == labels[p]:
        yield a, p


def _negs(labels, mask, a):
  return [n for n in range(len(labels)) if mask[n] and labels[n] != labels[a]]


def _result(trips, losses_):
  n = len(trips)
  if n == 0:
    return 0.0, dict(num_valid=0, num_active=0, mean_d_ap=0.0, mean_d_an=0.0)
  return float(np.mean(losses_)), dict(
      num_valid=n, num_active=int(np.sum(np.asarray(losses_) > 0)),
      mean_d_ap=float(np.mean([t[0] for t in trips])), mean_d_an=float(np.mean([t[1] for t in trips])))


def semi_hard_triplets(emb, labels, mask, margin, fallback="easiest"):
  """The (a, p, n) index triplets FaceNet's semi-hard rule selects, in (a, p) order.

  n: the closest negative with d(a,p) < d(a,n) < d(a,p) + margin; when there is none,
  ``fallback`` picks the farthest ("easiest") or closest ("hardest") negative, or no
  triplet ("drop"). Anchors without a negative give none.
  """
  D = sq_dist(emb)
  out = []
  for a, p in _pairs(labels, mask):
    negs = _negs(labels, mask, a)
    if not negs:
      continue
    semi = [n for n in negs if D[a, p] < D[a, n] < D[a, p] + margin]
    if semi:
      n = min(semi, key=lambda n: D[a, n])
    elif fallback == "drop":
      continue
    elif fallback == "easiest":
      n = max(negs, key=lambda n: D[a, n])
    else:
      n = min(negs, key=lambda n: D[a, n])
    out.append((a, p, n))
  return out


def semi_hard(emb, labels, mask, margin, fallback="easiest", loss="triplet"):
  D = sq_dist(emb)
  trips = [(D[a, p], D[a, n]) for a, p, n in semi_hard_triplets(emb, labels, mask, margin, fallback)]
  return _result(trips, [LOSS[loss](d_ap, d_an, margin) for d_ap, d_an in trips])


def batch_hard(emb, labels, mask, margin, loss="triplet"):
  D = sq_dist(emb)
  trips, ls = [], []
  for a in range(len(labels)):
    if not mask[a]:
      continue
    pos = [D[a, p] for p in range(len(labels)) if p != a and mask[p] and labels[p] == labels[a]]
    negs = [D[a, n] for n in _negs(labels, mask, a)]
    if pos and negs:
      trips.append((max(pos), min(negs)))
      ls.append(LOSS[loss](max(pos), min(negs), margin))
  return _result(trips, ls)


def batch_all(emb, labels, mask, margin):
  D = sq_dist(emb)
  trips, ls = [], []
  for a, p in _pairs(labels, mask):
    for n in _negs(labels, mask, a):
      trips.append((D[a, p], D[a, n]))
      ls.append(hinge(D[a, p], D[a, n], margin))
  if not trips:
    return _result(trips, ls)
  ls = np.asarray(ls)
  active = int((ls > 0).sum())
  _, stats = _result(trips, ls)
  return float(ls.sum() / max(active, 1)), stats


def contrastive(emb, labels, mask, margin):
  D = sq_dist(emb)
  ls, dp, dn = [], [], []
  B = len(labels)
  for i in range(B):
    for j in range(i + 1, B):
      if not (mask[i] and mask[j]):
        continue
      if labels[i] == labels[j]:
        ls.append(D[i, j]); dp.append(D[i, j])
      else:
        ls.append(max(margin - np.sqrt(D[i, j]), 0.0) ** 2); dn.append(D[i, j])
  return float(np.mean(ls)) if ls else 0.0, dict(
      num_valid=len(ls), num_active=int(np.sum(np.asarray(ls) > 0)),
      mean_d_ap=float(np.mean(dp)) if dp else 0.0, mean_d_an=float(np.mean(dn)) if dn else 0.0)
