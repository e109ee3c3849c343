"""Train a FaceNet triplet embedding.

  python scripts/train_facenet.py --config=configs/facenet.py --workdir=runs/demo \
      [--config.margin=0.3 --config.miner=batch_hard ...]
"""

import os

from absl import flags
from ml_collections import config_flags

from infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/facenet.py", "FaceNet config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, results.json).",
                               required=True)
_INITIALIZE = cli.launch_flags()   # --coordinator_address, --num_processes, --process_id


def main(argv):
  del argv
  _INITIALIZE()
  from facenet_jax import train
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  out = os.path.join(_WORKDIR.value, "results.json")
  if "members" in results:   # config.margins: K models, one vmapped program
    accs = ", ".join(f"{name}: {m['verification_accuracy']:.4f}" if m else f"{name}: skipped"
                     for name, m in results["members"].items())
    print(f"held-out verification accuracy {accs}; results in {out}")
    return
  m = results["metrics"]
  if not m:   # every identity trained (data.eval_identities = 0)
    print(f"skipped {', '.join(results['skipped'])} (no held-out identities); results in {out}")
    return
  print(f"held-out verification accuracy {m['verification_accuracy']:.4f} "
        f"(raw-pixel baseline {results['pixel_baseline']['pixel_verification_accuracy']:.4f}); "
        f"results in {out}")


if __name__ == "__main__":
  cli.run(main)
