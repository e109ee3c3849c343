"""Face recognition with a trained workdir and a gallery file of enrolled people.

  # add a person from one image (one-shot) or several
  python scripts/recognize.py enroll --workdir=runs/orl --gallery=people.npz --name=alice a1.pgm [a2.pgm]
  # who is this? (nearest enrolled person within the threshold, else "not recognized")
  python scripts/recognize.py identify --workdir=runs/orl --gallery=people.npz photo.jpg [...]
  # is this the claimed person?
  python scripts/recognize.py verify --workdir=runs/orl --gallery=people.npz --name=alice photo.jpg

The gallery stores embeddings, never images (``facenet_jax.recognition.Gallery``; one
``.npz``, written atomically). Images are cropped, resized and converted exactly as the
run's training data (``config.data.image_size``, ``center_crop``, ``channels``). The
threshold defaults to the one the run's k-fold verification chose (``results.json``:
``metrics.threshold``); set ``--threshold`` for another operating point.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load_images(paths: list[str], config) -> np.ndarray:
  """Files -> (N, S, S, C) uint8 fitted like the training data; errors name the file."""
  from facenet_jax.data import images as data_images, raw
  fit = data_images.Fit(size=int(config.data.image_size), crop=int(config.data.center_crop),
                        channels=int(config.data.channels))
  out = []
  for p in paths:
    im = raw.decode_image(raw.read_file(p), p, "L" if fit.channels == 1 else "RGB")
    out.append(data_images.fit_image(im, fit, p))
  return np.stack(out)


def default_threshold(workdir: str) -> float:
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      return float(json.load(f)["metrics"]["threshold"])
  except (OSError, KeyError, ValueError) as e:
    raise SystemExit(f"no --threshold given and {path} has no metrics.threshold ({e}); "
                     "pass --threshold") from e


def run(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("command", choices=("enroll", "identify", "verify"))
  p.add_argument("images", nargs="+", help="image files")
  p.add_argument("--workdir", required=True, help="a trained run (scripts/train_facenet.py)")
  p.add_argument("--gallery", required=True, help="gallery file (.npz), created by enroll")
  p.add_argument("--name", default="", help="enroll: the person's name; verify: the claimed one")
  p.add_argument("--threshold", type=float, default=None,
                 help="squared-L2 acceptance threshold (default: the run's verification threshold)")
  args = p.parse_args(argv)

  from facenet_jax import inference, recognition
  trained = inference.load(args.workdir)
  emb = trained.embed(load_images(args.images, trained.config))
  dim = emb.shape[1]
  if args.command == "enroll":
    if not args.name:
      raise SystemExit("enroll needs --name")
    g = (recognition.Gallery.load(args.gallery, dim) if os.path.exists(args.gallery)
         else recognition.Gallery(dim))
    g.enrol(args.name, emb)
    g.save(args.gallery)
    print(f"enrolled {args.name!r} from {len(args.images)} image(s); {args.gallery} holds "
          f"{len(g)} people")
    return {"enrolled": args.name, "people": len(g)}
  g = recognition.Gallery.load(args.gallery, dim)
  t = args.threshold if args.threshold is not None else default_threshold(args.workdir)
  if args.command == "identify":
    ids, dist = recognition.identify(g, emb, t)
    for path, who, d in zip(args.images, ids, dist):
      print(f"{path}: {'not recognized' if who is recognition.UNKNOWN else who} "
            f"(nearest distance {d:.3f}, threshold {t:.3f})")
    return {"ids": ids, "distances": dist.tolist(), "threshold": t}
  if not args.name:
    raise SystemExit("verify needs --name (the claimed identity)")
  results = []
  for path, e in zip(args.images, emb):
    ok, d = recognition.verify(g, e, args.name, t)
    results.append(ok)
    print(f"{path}: {'accepted' if ok else 'rejected'} as {args.name!r} "
          f"(distance {d:.3f}, threshold {t:.3f})")
  return {"accepted": results, "threshold": t}


if __name__ == "__main__":
  from infra import cli
  cli.run(run, absl_flags=False)
