"""A PNG of a few identities of a config's training source, several examples each.

  python scripts/preview_identities.py --config=configs/facenet.py:ekg --out=docs/ekg_examples.png
  python scripts/preview_identities.py --config=configs/facenet.py:volume --out=docs/volume_examples.png

Rows are identities, columns their examples, as ``data/sources.py`` loads them: 1-D
signals as traces, 2-D images as images, 3-D volumes as their three central slices
(D, H and W axes) side by side.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/facenet.py", "FaceNet config file[:variant].")
_OUT = cli.png_flag("out", None, "PNG path.", required=True)
_IDENTITIES = flags.DEFINE_integer("identities", 3, "Rows.", lower_bound=1)
_EXAMPLES = flags.DEFINE_integer("examples", 3, "Columns (examples per identity).", lower_bound=1)


def central_slices(vol: np.ndarray) -> np.ndarray:
  """(D, H, W, C) -> the central D, H and W slices side by side, (max, 3 * max + 2, C)."""
  d, h, w = vol.shape[:3]
  s = [vol[d // 2], vol[:, h // 2], vol[:, :, w // 2]]
  side = max(d, h, w)
  out = np.zeros((side, 3 * side + 2, vol.shape[-1]), vol.dtype)
  for i, a in enumerate(s):
    out[:a.shape[0], i * (side + 1):i * (side + 1) + a.shape[1]] = a
  return out


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from facenet_jax.data import sources
  config = _CONFIG.value
  train, _ = sources.load(config)
  people = [p for p in np.unique(train.labels) if np.sum(train.labels == p) >= _EXAMPLES.value]
  if len(people) < _IDENTITIES.value:   # 0 was a matplotlib traceback, fewer a smaller figure
    most = int(np.bincount(train.labels).max())
    raise app.UsageError(f"--identities={_IDENTITIES.value} --examples={_EXAMPLES.value}: "
                         f"{train.name} has {len(people)} identities with {_EXAMPLES.value} or "
                         f"more examples (at most {most} per identity)")
  people = people[:_IDENTITIES.value]
  rank = train.images.ndim - 2
  n, k = len(people), _EXAMPLES.value
  fig, axes = plt.subplots(n, k, figsize=(2.6 * k if rank == 1 else 1.6 * k * (3 if rank == 3 else 1),
                                          1.1 * n if rank == 1 else 1.6 * n), squeeze=False)
  for r, p in enumerate(people):
    rows = np.flatnonzero(train.labels == p)[:k]
    for c, i in enumerate(rows):
      ax, x = axes[r, c], train.images[i]
      if rank == 1:
        ax.plot(x[:, 0], lw=0.6, color="k")
        ax.tick_params(labelsize=5)
      else:
        img = central_slices(x) if rank == 3 else x
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(f"id {p}", fontsize=7)
  what = {1: "traces", 2: "images", 3: "central D / H / W slices"}[rank]
  fig.suptitle(f"{train.name}: {n} identities (rows) x {k} examples, {what}", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  fig.savefig(_OUT.value, dpi=90)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
