"""Is the triplet-trained head what holds aligned LFW below 0.90? Fisher LDA against it, on
the tuning fold only.

``lfw_vgg_aligned`` embeds a 25,088-value descriptor (conv4_4 on a 7 x 7 grid) with a linear
head that starts as PCA whitening to 512 values and then takes 1,000 triplet steps. LDA is
the closed-form linear map that best separates the training people (largest between- to
within-person variance), fitted on the same whitened values of the same training people. If
it did clearly better than the triplet steps, the head's training would be the limit; if it
does as well, the descriptor is.

For test fold ``--test_fold`` (0, the tuning fold of every earlier choice) and its
calibration fold: the recipe's descriptors (``vgg_features``' cache: computed once by any
``lfw_vgg_aligned`` run), PCA-whitened to ``--dim`` on the training people
(``whitening.fit_pca_whitening``, as the recipe's head starts), then LDA to each of ``--lda_k``
dimensions; L2-normalized; threshold from the calibration fold's 600 pairs, accuracy and AUC
on the test fold's 600. ``--run`` adds the trained recipe's own figures for that fold (its
``results.json``).

  .venv/bin/python benchmarks/lfw_head.py --out=/work/runs/lfw_head \\
      --run=runs/cv_aligned_112/data.test_fold=0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # loaded by path (tests)

import numpy as np
import scipy.linalg

from configs import facenet as facenet_configs
from facenet_jax import vgg_features
from facenet_jax.data import real
from infra import overrides

import lfw_descriptor   # noqa: E402  (this folder: the fold bookkeeping and the whitened start)
import provenance   # noqa: E402


def within_class_scatter(z_NxD: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, int]:
  """``(S_w, dof)``: the pooled within-class covariance sum_c sum_{i in c} (z_i - m_c)(z_i -
  m_c)^T / dof over the classes with at least 2 rows, dof = their rows minus their count
  (a class of one row says nothing about within-class spread)."""
  z = np.asarray(z_NxD, np.float64)
  _, inv, counts = np.unique(labels_N, return_inverse=True, return_counts=True)
  keep = counts[inv] >= 2
  z, inv = z[keep], inv[keep]
  means = np.zeros((counts.size, z.shape[1]))
  np.add.at(means, inv, z)
  means /= np.maximum(counts, 1)[:, None]
  d = z - means[inv]
  dof = int(keep.sum() - np.count_nonzero(counts >= 2))
  if dof <= 0:
    raise ValueError("LDA: no class has two rows; the within-class covariance is undefined")
  return d.T @ d / dof, dof


def lda_directions(z_NxD: np.ndarray, labels_N: np.ndarray, k: int,
                   shrink: float = 0.0) -> np.ndarray:
  """``W`` (D, k): Fisher LDA directions of ``z``, most discriminative first.

  The generalized eigenvectors ``S_t w = lam S_w w`` of the total covariance ``S_t`` of all
  rows and the within-class covariance ``S_w`` (:func:`within_class_scatter`, shrunk as
  ``(1 - shrink) S_w + shrink tr(S_w) / D I``), for the ``k`` largest ``lam``, scaled so
  that ``W^T S_w W = I``: after ``z @ W`` each person's spread is white, and the directions
  along which people differ most come first. Reference: Fisher (1936); Belhumeur, Hespanha &
  Kriegman, "Eigenfaces vs. Fisherfaces", TPAMI 1997.
  """
  z = np.asarray(z_NxD, np.float64)
  dim = z.shape[1]
  if not 1 <= k <= dim:
    raise ValueError(f"LDA: k={k} directions of {dim}-d values: expected 1..{dim}")
  sw, _ = within_class_scatter(z, labels_N)
  sw = (1.0 - shrink) * sw + shrink * np.trace(sw) / dim * np.eye(dim)
  st = np.cov(z.T, bias=True)
  _, w = scipy.linalg.eigh(st, sw, subset_by_index=[dim - k, dim - 1])
  return w[:, ::-1]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="folder for results.json")
  ap.add_argument("--test_fold", type=int, choices=range(10), default=0)
  ap.add_argument("--dim", type=int, default=512, help="PCA-whitened values (the recipe's 512)")
  ap.add_argument("--lda_k", default="128,256,512")
  ap.add_argument("--shrink", type=float, default=0.0)
  ap.add_argument("--run", default="", help="a lfw_vgg_aligned run of --test_fold, to show beside")
  a = ap.parse_args()
  t0 = time.time()
  config = overrides.with_overrides(facenet_configs.get_config("lfw_vgg_aligned"),
                                    {"data.test_fold": a.test_fold})
  data, pairs = real.lfw_view2(config)
  calib = real.lfw_calibration_folds(config, 10)[0]
  folds = lfw_descriptor.fold_of_rows(data.labels, pairs)
  train = (folds >= 0) & (folds != a.test_fold) & (folds != calib)
  desc = vgg_features.transform_for(config)(data.images, "view2").reshape(len(data.images), -1)
  print(f"{len(data)} images, {desc.shape[1]} values each; {train.sum()} training rows "
        f"(folds other than test {a.test_fold} and calibration {calib})", flush=True)
  z = lfw_descriptor.whitened(desc, train, a.dim, float(config.model.whiten_eps))
  rows = [{"head": f"PCA whitening to {a.dim} (the recipe's start)",
           **lfw_descriptor.fold_accuracy(z, pairs, a.test_fold, calib)}]
  for k in (int(v) for v in a.lda_k.split(",")):
    w = lda_directions(z[train], data.labels[train], k, a.shrink)
    e = z @ w
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    rows.append({"head": f"+ LDA to {k} (shrink {a.shrink:g})",
                 **lfw_descriptor.fold_accuracy(e, pairs, a.test_fold, calib)})
  if a.run:
    with open(os.path.join(a.run, "results.json")) as f:
      run = json.load(f)
    for field in ("test_fold", "features", "features_grid", "align", "image_size"):
      if run["config"]["data"][field] != config.data[field]:
        raise SystemExit(f"--run={a.run}: data.{field}={run['config']['data'][field]!r}, "
                         f"this comparison uses {config.data[field]!r}")
    d = run["evals"]["lfw_view2"]
    rows.append({"head": f"+ {run['step']:,} triplet steps (the recipe's run)", "run": a.run,
                 "accuracy": d["distance/accuracy"], "auc": d["distance/roc_auc"]})
  res = {"rows": rows, "test_fold": a.test_fold, "calibration_fold": calib, "dim": a.dim,
         "shrink": a.shrink, "seconds": time.time() - t0, "commit": provenance.commit(),
         "machine": provenance.machine()}
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump(res, f, indent=1)
  print(f"{'head':<60} {'accuracy':>9} {'AUC':>7}")
  for r in rows:
    print(f"{r['head']:<60} {r['accuracy']:>9.4f} {r['auc']:>7.4f}")


if __name__ == "__main__":
  main()
