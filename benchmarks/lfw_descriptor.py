"""Which pooled VGG descriptor for aligned LFW: the conv4_4 SPoC mean against grid pools, chosen
on one tuning fold before any 10-fold run.

For every ``--grids`` value g, the descriptor of ``lfw_vgg`` (ImageNet VGG19 conv4_4, square
root, plus the mirror image's, L2-normalized; ``vgg_features.pool_descriptor``) pooled over a
g x g grid of the map (g = 1 is the recipe's SPoC mean) is PCA-whitened to ``--dim`` values
on the training people of test fold ``--test_fold`` (``whitening.fit_pca_whitening``, as the
recipe's head starts), the threshold is chosen on the calibration fold's 600 pairs and the
accuracy is read on the test fold's 600 pairs. No triplet training: this compares the
descriptors the head starts from, in minutes instead of a run per variant. The winner is then
run through ``scripts/cross_validate.py`` on all 10 folds (the README reports folds 1-9 apart
from the tuning fold 0).

  .venv/bin/python benchmarks/lfw_descriptor.py --out=/work/runs/lfw_descriptor

The conv4_4 maps of the 7,701 aligned View 2 images and of their mirrors are computed once
(unpooled, about 6 GB in ``--out``; the feature cache of ``vgg_features``), every pooling is
computed from float16 copies of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import facenet as facenet_configs
from facenet_jax import models, vgg_features, verification, whitening
from facenet_jax.data import real
from infra import overrides

import provenance   # noqa: E402  (this folder)


def lfw_aligned(test_fold: int, align: str):
  """(config, view2 images, pairs) of ``lfw_vgg`` with ``data.align`` = ``align``."""
  config = overrides.with_overrides(facenet_configs.get_config("lfw_vgg"),
                                    {"data.align": align, "data.test_fold": test_fold})
  data, pairs = real.lfw_view2(config)
  return config, data, pairs


def fold_of_rows(labels: np.ndarray, pairs) -> np.ndarray:
  """The View 2 fold of each image's person (-1: in no pair), from the pairs' folds (people
  are disjoint across folds)."""
  fold_of_label = {}
  for i, j, f in zip(pairs.i, pairs.j, pairs.fold):
    fold_of_label[int(labels[i])] = fold_of_label[int(labels[j])] = int(f)
  return np.asarray([fold_of_label.get(int(l), -1) for l in labels], np.int32)


def descriptors(maps, mirror_maps, grid: int, power: float, chunk: int = 256) -> np.ndarray:
  """(N, grid * grid * C) pooled descriptors of (N, h, w, C) maps, in chunks."""
  fn = jax.jit(lambda a, m: vgg_features.pool_descriptor(a, "mean", power, m, grid))
  out = [np.asarray(fn(jnp.asarray(maps[i:i + chunk], jnp.float32),
                       jnp.asarray(mirror_maps[i:i + chunk], jnp.float32)))
         for i in range(0, len(maps), chunk)]
  return np.concatenate(out).reshape(len(maps), -1)


def whitened(desc_NxF: np.ndarray, train: np.ndarray, dim: int, eps: float) -> np.ndarray:
  """Embeddings of every row by the recipe's head set to PCA whitening of the training rows."""
  head = models.FeatureHead(desc_NxF.shape[1], (), dim, rngs=nnx.Rngs(0))
  whitening.fit_pca_whitening(head, desc_NxF[train], eps)
  return np.concatenate([np.asarray(head(jnp.asarray(desc_NxF[i:i + 1024]), train=False))
                         for i in range(0, len(desc_NxF), 1024)])


def fold_accuracy(emb_NxD: np.ndarray, pairs, test: int, calib: int) -> dict:
  """Accuracy on fold ``test`` at the threshold best on fold ``calib``; AUC on ``test``."""
  d = np.sum((emb_NxD[pairs.i] - emb_NxD[pairs.j]) ** 2, axis=1)
  on_c, on_t = pairs.fold == calib, pairs.fold == test
  t, _ = verification.best_threshold(d[on_c], pairs.issame[on_c])
  acc = float(np.mean((d[on_t] <= t) == pairs.issame[on_t]))
  return {"accuracy": acc, "auc": verification.roc_auc(d[on_t], pairs.issame[on_t])}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="folder for the conv4_4 map cache and results.json")
  ap.add_argument("--test_fold", type=int, choices=range(10), default=0)
  ap.add_argument("--align", default="mtcnn")
  ap.add_argument("--grids", default="1,2,3,4,7")
  ap.add_argument("--dim", type=int, default=512)
  ap.add_argument("--eps", type=float, default=1.0)
  a = ap.parse_args()
  t0 = time.time()
  config, data, pairs = lfw_aligned(a.test_fold, a.align)
  calib = real.lfw_calibration_folds(config, 10)[0]
  folds = fold_of_rows(data.labels, pairs)
  train = (folds >= 0) & (folds != a.test_fold) & (folds != calib)
  print(f"{len(data)} images {data.images.shape[1:]}, {train.sum()} training rows (folds other "
        f"than test {a.test_fold} and calibration {calib})", flush=True)
  kw = dict(weights=str(config.model.vgg_weights), layer="conv4_4", pool="", cache_dir=a.out)
  # float16 copies (half the memory; pooled in float32): the two float32 map sets and the
  # cache file they come from do not fit in this machine's memory together
  maps = vgg_features.features(data.images, name="view2", **kw).astype(np.float16)
  # the mirror images' maps as computed: pool_descriptor flips them back
  mirror = vgg_features.features(np.ascontiguousarray(data.images[:, :, ::-1]),
                                 name="view2 mirrored", **kw).astype(np.float16)
  power = float(config.data.features_power)
  rows = []
  for g in (int(v) for v in a.grids.split(",")):
    desc = descriptors(maps, mirror, g, power)
    r = fold_accuracy(whitened(desc, train, a.dim, a.eps), pairs, a.test_fold, calib)
    rows.append({"grid": g, "values": desc.shape[1], **r})
    print(f"grid {g}x{g}: {desc.shape[1]:>6} values -> {a.dim}-d whitened: fold {a.test_fold} "
          f"accuracy {r['accuracy']:.4f}, AUC {r['auc']:.4f}", flush=True)
  res = {"rows": rows, "test_fold": a.test_fold, "calibration_fold": calib, "dim": a.dim,
         "eps": a.eps, "align": a.align, "seconds": time.time() - t0, "commit": provenance.commit(),
         "machine": provenance.machine()}
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump(res, f, indent=1)
  print(f"{'grid':>6} {'values':>7} {'accuracy':>9} {'AUC':>7}")
  for r in rows:
    print(f"{r['grid']:>6} {r['values']:>7} {r['accuracy']:>9.4f} {r['auc']:>7.4f}")


if __name__ == "__main__":
  main()
