"""Neural style transfer (Gatys et al. 2015): optimize an image's pixels against a VGG.

  python scripts/stylize.py --config=configs/style.py[:gatys2015|course|tiny] --workdir=runs/style \
      --config.content=photo.jpg --config.style=a.jpg,b.jpg --config.style_blend_weights=0.7,0.3 \
      --config.weights=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --config.image_size=256 --config.num_steps=300 [--config.preserve_colors=True]

Writes ``<workdir>/final.png``, ``iter_NNNNNN.png`` every ``save_every`` steps, TensorBoard
events and ``results.json`` (initial and final loss terms). Run again with the same workdir
to resume an interrupted run. Under a multi-process launch (the variables or flags of
``scripts/train_facenet.py``) every process computes the same image, a stop signal to any
stops all at one checkpointed step, and process 0 writes the files. ``--config.weights=download`` fetches the Keras ImageNet
file once (needs internet); the default is the shared 8-bit VGG19 beside the repository.
"""

import os

from absl import flags
from ml_collections import config_flags

from infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/style.py", "Style config file[:preset].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (images, checkpoints, results.json).",
                               required=True)
_INITIALIZE = cli.launch_flags()   # --coordinator_address, --num_processes, --process_id


def main(argv):
  del argv
  _INITIALIZE()
  from style_jax import optimize
  r = optimize.stylize(_CONFIG.value, _WORKDIR.value)
  fmt = lambda d: ", ".join(f"{k}={v:.4g}" for k, v in d.items())
  # the terms are sums over the image: with coarse-to-fine scales the two lines are at different
  # sizes and do not compare, so each names its size
  at = lambda hw: f" (at {hw[1]}x{hw[0]})" if len(r["sizes"]) > 1 else ""
  print(f"initial{at(r['sizes'][0])}: {fmt(r['initial'])}\nfinal{at(r['sizes'][-1])}:   "
        f"{fmt(r['final'])}")
  if r["seconds_per_step"]:
    print(f"{r['seconds_per_step']:.3f} s per iteration")
  print(f"wrote {r['output']} and {os.path.join(_WORKDIR.value, 'results.json')}")


if __name__ == "__main__":
  cli.run(main)
