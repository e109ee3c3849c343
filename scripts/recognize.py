"""Face recognition with a trained workdir and a gallery file of enrolled people.

  # enrol everyone in a folder of people (faces/<person>/<images>), in one call
  python scripts/recognize.py enroll --workdir=runs/orl --gallery=people.npz faces/
  # or one person from one image (one-shot) or several (files or a folder of them)
  python scripts/recognize.py enroll --workdir=runs/orl --gallery=people.npz --name=alice a1.pgm a2.pgm
  # who is enrolled; take someone out (no model needed)
  python scripts/recognize.py list --gallery=people.npz
  python scripts/recognize.py remove --gallery=people.npz --name=alice
  # who is this? the nearest enrolled person and distance, accepted within the threshold
  python scripts/recognize.py identify --workdir=runs/orl --gallery=people.npz photo.jpg [...] [--out=who.csv]
  # is this the claimed person?
  python scripts/recognize.py verify --workdir=runs/orl --gallery=people.npz --name=alice photo.jpg

The gallery stores embeddings, never images (``facenet_jax.recognition.Gallery``; one
``.npz``, written atomically), and the fingerprint of the model that made them: another
model's gallery is refused. Images are cropped, resized and converted exactly as the run's
training data (``config.data.image_size``, ``center_crop``, ``channels``). Every input (the
gallery, each image, the output file) is checked before the model is loaded.

Photos in the wild (``--detect=mtcnn``): each photo's face is found by MTCNN
(``--mtcnn_weights``, checked before any model loads; ``--faces=largest`` the largest face,
``--faces=all`` every face, identify / verify only) and made into the model's input as the
run's training images were (``facenet_jax.faces.inputs``: the alignment template of the run's
input size for a run trained on aligned faces, else a square around the face fitted like its
training photos; the output says which). A photo without a face is refused at enroll (before
the gallery is touched) and reported as "no face found" by identify and verify. The gallery
records which ``--detect`` enrolled it; photos read the other way are refused (a face cut out
and a whole photo of it embed far apart) unless ``--allow_other_fit`` says the enrolled photos
already were face crops.

Threshold (squared L2 distance; accept when distance <= threshold): by default the one the
run saved for a false-accept rate of 1e-3 per comparison (one probe against one enrolled
person), calibrated on its held-out impostor pairs (``results.json``:
``metrics.threshold_at_far_1e-3``); ``--far`` picks another saved rate (1e-4, 1e-3, 1e-2,
0.1); ``--threshold`` sets it directly. A stranger compared with N enrolled people is
accepted as one of them with probability up to about N x FAR.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from typing import NamedTuple

import numpy as np

from facenet_jax import open_set, recognition
from facenet_jax.data import raw
from infra import files, imagefile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MTCNN_WEIGHTS = os.path.normpath(os.path.join(REPO, "..", "shared", "weights",
                                                      "mtcnn_weights.npz"))
DETECT_BATCH = 16   # photos per MTCNN call
NO_FACE = "no face found"
MIXED_FIT = "mixed"   # a gallery enrolled with --detect=none and mtcnn (--allow_other_fit)

COMMANDS = ("enroll", "identify", "verify", "list", "remove")
NEEDS_MODEL = ("enroll", "identify", "verify")
CHUNK = 256   # images decoded / embedded between progress lines


def parse(argv: list[str] | None) -> argparse.Namespace:
  from infra import cli
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("command", choices=COMMANDS)
  p.add_argument("paths", nargs="*", help="image files or folders (enroll without --name: "
                 "folders of people, <folder>/<person>/<images>)")
  p.add_argument("--workdir", default="", help="a trained run (scripts/train_facenet.py)")
  p.add_argument("--gallery", required=True, help="gallery file (.npz), created by enroll")
  p.add_argument("--name", default="", help="enroll: the person's name; verify: the claimed "
                 "one; remove: the person to remove")
  p.add_argument("--threshold", type=float, default=None,
                 help="squared-L2 acceptance threshold (overrides --far)")
  p.add_argument("--far", type=float, default=None, help="false-accept rate per comparison "
                 f"whose saved threshold to use (default {open_set.DEFAULT_FAR:g})")
  p.add_argument("--out", default="", help="identify / verify: also write the results to "
                 "this .json or .csv file")
  p.add_argument("--detect", choices=("none", "mtcnn"), default="none",
                 help="find the face(s) in each photo first (photos in the wild)")
  p.add_argument("--mtcnn_weights", default=DEFAULT_MTCNN_WEIGHTS,
                 help="--detect=mtcnn: the MTCNN .npz (scripts/convert_mtcnn_weights.py)")
  p.add_argument("--faces", choices=("largest", "central", "all"), default=None,
                 help="--detect=mtcnn: the largest face of each photo (its area inside the photo), "
                 "the one nearest its centre, or every face (identify / verify); default: a run "
                 "trained on aligned faces picks as its training photos were (data.align_pick), "
                 "others the largest")
  p.add_argument("--min_face", type=float, default=None,
                 help="--detect=mtcnn: the smallest face searched for, in px (default: for a run "
                 "trained on aligned faces its data.align_min_face, as its photos were detected; "
                 "else MTCNN's 20)")
  p.add_argument("--allow_other_fit", action="store_true",
                 help="identify / verify / enroll into a gallery enrolled with the other --detect "
                 "(refused by default: e.g. photos enrolled whole, probes detected)")
  args = p.parse_intermixed_args(argv)   # images may come before or after the flags
  if args.threshold is not None and not args.threshold >= 0:   # also catches NaN
    raise SystemExit(f"--threshold={args.threshold:g}: expected a squared L2 distance >= 0 "
                     "(below 0 no one is accepted; 4 or more accepts the nearest person always)")
  if args.min_face is not None and not args.min_face > 0:
    raise SystemExit(f"--min_face={args.min_face:g}: expected a face size in px > 0")
  if args.command in NEEDS_MODEL and not args.workdir:
    raise SystemExit(f"{args.command} needs --workdir (the trained run)")
  if args.command in NEEDS_MODEL and not args.paths:
    raise SystemExit(f"{args.command} needs image files or folders")
  if args.command in ("verify", "remove") and not args.name:
    raise SystemExit(f"{args.command} needs --name (the person "
                     f"{'claimed' if args.command == 'verify' else 'to remove'})")
  if args.command == "enroll" and args.faces == "all":
    raise SystemExit("enroll takes one face per photo (--faces=largest or central); --faces=all "
                     "is for identify and verify")
  _check_ignored_flags(args)
  if args.out and os.path.exists(args.out):   # it replaced any file, a run's results.json too
    raise SystemExit(f"--out={args.out}: exists; recognize does not write over a file (remove "
                     "it, or give a new name)")
  if args.out and os.path.splitext(args.out)[1].lower() not in (".json", ".csv"):
    raise SystemExit(f"--out={args.out}: expected a .json or .csv file name")
  if args.out and os.path.isdir(args.out):
    raise SystemExit(f"--out={args.out}: is a folder, expected a .json or .csv file name")
  if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
    raise SystemExit(f"--out={args.out}: folder {os.path.dirname(os.path.abspath(args.out))} "
                     "does not exist")
  return args


def _check_ignored_flags(args: argparse.Namespace) -> None:
  """Flags that the command would ignore, exit 0, are refused (the user meant something)."""
  given = lambda flag: getattr(args, flag) not in (None, "", False)
  ignored = {"faces": args.detect == "none" and given("faces"),
             "min_face": args.detect == "none" and given("min_face"),
             "out": args.command in ("enroll", "list", "remove") and given("out"),
             "far": given("threshold") and given("far"),
             "workdir": args.command in ("list", "remove") and given("workdir")}
  for flag, bad in ignored.items():
    if bad:
      raise SystemExit(f"--{flag} has no effect " + (
          "without --detect=mtcnn" if flag in ("faces", "min_face") else
          "with --threshold (it sets the threshold directly)" if flag == "far" else
          f"on {args.command}"))
  if args.command in ("list", "remove") and args.paths:
    raise SystemExit(f"{args.command} takes no image paths (remove takes out every embedding "
                     f"of --name)")
  if args.name and (not args.name.strip() or not args.name.isprintable()):
    raise SystemExit(f"--name={args.name!r}: expected a printable, non-blank name")


def image_files(paths: list[str]) -> list[str]:
  """Files as given, folders expanded to their image files (natural order); a missing
  path or a folder without images is a ``DataError`` naming it."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      names = sorted((n for n in os.listdir(p) if imagefile.is_image_name(n)
                      and os.path.isfile(os.path.join(p, n))), key=raw.natural_key)
      if not names:
        raise raw.DataError(f"{p}: folder holds no image files ({'/'.join(imagefile.IMAGE_SUFFIXES)})")
      out += [os.path.join(p, n) for n in names]
    elif os.path.exists(p):
      out.append(p)
    else:
      raise raw.DataError(f"{p}: no such image file or folder")
  return out


def people_to_enrol(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
  """``[(person, [image path, ...])]``: ``--name`` and its images, or every
  ``<folder>/<person>/<images>`` of each folder given."""
  if args.name:
    paths = image_files(args.paths)
    seen: dict[str, str] = {}
    for p in paths:   # one photo enrolled twice weighs the person toward it, unseen
      if os.path.realpath(p) in seen:
        raise raw.DataError(f"{p}: given twice (also as {seen[os.path.realpath(p)]}); enrol each "
                            f"photo once")
      seen[os.path.realpath(p)] = p
    return [(args.name, paths)]
  people: dict[str, list[str]] = {}
  for root in args.paths:
    if not os.path.isdir(root):
      raise raw.DataError(f"{root}: enroll without --name takes folders of people "
                          f"(<folder>/<person>/<images>); for images of one person pass --name")
    for person, names in raw.list_identity_folder(root, imagefile.IMAGE_SUFFIXES):
      people.setdefault(person, []).extend(os.path.join(root, person, n) for n in names)
  return list(people.items())


def load_images(paths: list[str], config, progress=None) -> np.ndarray:
  """Files -> (N, S, S, C) uint8 fitted like the training data; errors name the file."""
  from facenet_jax.data import images as data_images
  fit = data_images.Fit(size=int(config.data.image_size), crop=int(config.data.center_crop),
                        channels=int(config.data.channels))
  out = []
  if progress is not None:
    progress.mark_compiled(0)
  for k, p in enumerate(paths):
    im = raw.decode_image(raw.read_file(p), p, "L" if fit.channels == 1 else "RGB")
    out.append(data_images.fit_image(im, fit, p))
    if progress is not None and ((k + 1) % CHUNK == 0 or k + 1 == len(paths)):
      progress.report(k + 1)
  return np.stack(out)


class Probe(NamedTuple):
  """One line of identify / verify output: a photo, or (--detect) one face of it."""
  image: str
  face: int | None = None    # --detect: face number in the photo, from 1
  box: list | None = None    # --detect: (x1, y1, x2, y2) px of the face
  found: bool = True         # False: --detect found no face in the photo

  def label(self) -> str:
    if self.face is None:
      return self.image
    return f"{self.image} face {self.face} at [{', '.join(f'{v:.0f}' for v in self.box)}]"

  def columns(self) -> dict:
    """The --out columns of the photo / face (detection ones only with --detect)."""
    if self.face is None and self.found:
      return {"image": self.image}
    return {"image": self.image, "face": self.face, "box": self.box}


def check_detector(args: argparse.Namespace) -> None:
  """--detect=mtcnn: the weights file must exist (checked before any model loads)."""
  if args.detect == "mtcnn" and not os.path.isfile(args.mtcnn_weights):
    raise raw.DataError(f"--mtcnn_weights={args.mtcnn_weights}: no such file (make it with "
                        f"scripts/convert_mtcnn_weights.py from the mtcnn 1.0.0 wheel)")


def face_fit(detect: str, config) -> str:
  """What a gallery records of how its photos became model inputs: "none" (whole photos),
  "mtcnn" (a run trained on aligned faces: its template crops) or "mtcnn-square<scale>" (the
  centred square of ``faces.inputs.CENTRED_SCALE`` x the box: galleries enrolled with the
  1.25 square, recorded as "mtcnn", are refused, not compared with 1.05 squares)."""
  if detect == "none":
    return "none"
  from facenet_jax.faces import inputs
  return "mtcnn" if inputs.face_input(config).template else f"mtcnn-square{inputs.CENTRED_SCALE:g}"


def load_faces(paths: list[str], config, weights: str, which: str | None, progress=None,
               min_face: float | None = None) -> tuple[np.ndarray, list[Probe], str]:
  """Photos -> faces found by MTCNN, each fitted as the run's training images were.

  ``min_face``: MTCNN's smallest face (px); None: the run's ``data.align_min_face`` when it
  was trained on aligned faces (the detector its photos were prepared with), else 20.
  ``which``: "largest" | "central" | "all"; None: a run trained on aligned faces picks as its
  training photos were picked (``data.align_pick``), else "largest". A photo of several faces
  of which one is kept gets a line saying which (it enrolled a cut-off face at the photo's
  corner, exit 0, before the pick counted only a box's area inside the photo).

  Returns (M, S, S, C) uint8 model inputs, one ``Probe`` per face (or per photo without
  one, ``found=False``; the images hold only found faces, in probe order) and the line
  saying how faces were fitted (``faces.inputs.face_input``).
  """
  from facenet_jax.faces import detect, inputs, pipeline
  fit = inputs.face_input(config)   # a run no face can be fitted for fails before detection
  aligned_run = config.data.get("align", "none") != "none"
  if min_face is None:
    min_face = (float(config.data.get("align_min_face", 20.0)) if aligned_run
                else detect.Settings().min_face_size)
  if which is None:
    which = str(config.data.get("align_pick", "central")) if aligned_run else "largest"
  detector = detect.MTCNN(weights, detect.Settings(min_face_size=min_face))
  probes, out = [], []
  if progress is not None:
    progress.mark_compiled(0)
  for start in range(0, len(paths), DETECT_BATCH):
    batch = paths[start:start + DETECT_BATCH]
    photos = [raw.decode_image(raw.read_file(p), p, "RGB") for p in batch]
    found = pipeline.detect_and_align([np.asarray(im) for im in photos], detector, fit.template,
                                      "all")
    for path, photo, every in zip(batch, photos, found):
      faces = every
      if which != "all" and len(every) > 1:
        k = pipeline.pick(np.stack([f.box_4 for f in every]), photo.width, photo.height, which)
        faces = [every[k]]
        print(f"{path}: {len(every)} faces, kept the {which} one at "
              f"{[round(float(v)) for v in every[k].box_4]} (--faces=all lists them)", flush=True)
      if not faces:
        probes.append(Probe(path, found=False))
      for k, face in enumerate(faces, 1):
        probes.append(Probe(path, k, [round(float(v), 1) for v in face.box_4]))
        out.append(inputs.fit_face(photo, face, fit))
    if progress is not None:
      progress.report(start + len(batch))
  shape = (0, fit.size, fit.size, fit.channels)
  images = np.stack(out) if out else np.zeros(shape, np.uint8)
  return images, probes, (f"faces: MTCNN ({weights}, min face {min_face:g} px), "
                  f"{'every face' if which == 'all' else f'the {which} face of each photo'}, "
                  f"{fit.description}")


def threshold(args: argparse.Namespace) -> tuple[float, str]:
  """The acceptance threshold and a line saying where it comes from (see the module doc)."""
  if args.threshold is not None:
    return args.threshold, f"threshold {args.threshold:.4g} (--threshold)"
  path = os.path.join(args.workdir, "results.json")
  try:
    metrics = files.read_json(path)["metrics"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise recognition.GalleryError(f"{path}: no saved metrics to take a threshold from "
                                   f"({type(e).__name__}: {e}); pass --threshold") from e
  far = open_set.DEFAULT_FAR if args.far is None else args.far
  t = open_set.saved_threshold(metrics, far, path)
  n = int(metrics.get("impostor_pairs", 0))
  # n pairs resolve rates down to 1/n: below it the threshold accepts none of them, and the
  # label promised a rate it could not measure (ORL's 500 pairs: 1e-4 and 1e-3 gave one
  # threshold, which accepted 0.0013 of 4,500 other impostor pairs)
  unresolved = (f" (below the 1/{n} = {1 / n:.2g} these pairs resolve: it accepts none of "
                f"them, and on other pairs the rate can be higher)") if n and far * n < 1 else ""
  return t, (f"threshold {t:.4g}: false-accept rate {far:g} per comparison, calibrated on "
             f"{n} impostor pairs of the run's held-out people ({path}){unresolved}")


def open_gallery(args: argparse.Namespace) -> recognition.Gallery | None:
  """The gallery file (checked, no model needed); None for a new one (enroll only)."""
  if args.command == "enroll" and not os.path.exists(args.gallery):
    files.check_directory(os.path.dirname(os.path.abspath(args.gallery)), "gallery folder")
    return None
  return recognition.Gallery.load(args.gallery)


def embed(trained, images: np.ndarray, progress=None) -> np.ndarray:
  """Embeddings of ``images`` in chunks, with a progress line after each."""
  if images.shape[0] == 0:   # every photo without a face: nothing to embed
    return np.zeros((0, 0), np.float32)
  out = []
  for start in range(0, images.shape[0], CHUNK):
    out.append(trained.embed(images[start:start + CHUNK]))
    if progress is not None:
      if start == 0:
        progress.mark_compiled(min(CHUNK, images.shape[0]))
      progress.report(min(start + CHUNK, images.shape[0]))
  return np.concatenate(out)


def list_or_remove(args: argparse.Namespace) -> dict:
  g = recognition.Gallery.load(args.gallery)
  if args.command == "remove":
    rows = g.remove(args.name)
    g.save(args.gallery)
    print(f"removed {args.name!r} ({rows} embedding(s)); {args.gallery} holds {len(g)} people")
    return {"removed": args.name, "people": len(g)}
  counts = g.counts()
  print(f"{args.gallery}: {len(g)} people, {g.num_embeddings} embeddings of {g.dim} dimensions, "
        f"model {g.model_source or 'not recorded'} (fingerprint {g.model_fingerprint[:12] or '-'}), "
        + ("photos read both with --detect=none and mtcnn (--allow_other_fit)" if g.face_fit == MIXED_FIT
           else f"photos read with --detect={g.face_fit or '(not recorded)'}"))
  for person, n in counts.items():
    print(f"  {person}: {n}")
  return {"people": counts, "model_source": g.model_source, "face_fit": g.face_fit}


def progress_for(n: int, what: str):
  """A progress printer for ``n`` images when there are more than one chunk of them."""
  from infra import progress as progress_lib
  if n <= CHUNK:
    return None
  print(f"{what} {n} images", flush=True)
  return progress_lib.Progress(n, unit="images")


def enroll(args, trained, gallery, people, images) -> dict:
  rows = np.cumsum([0] + [len(p) for _, p in people])
  emb = embed(trained, images, progress_for(images.shape[0], "embedding"))
  g = gallery or recognition.Gallery(emb.shape[1], trained.fingerprint, trained.source, args.fit)
  if g.face_fit and g.face_fit != args.fit:   # --allow_other_fit: both kinds from now on
    g.face_fit = MIXED_FIT
  for k, (person, _) in enumerate(people):
    g.enrol(person, emb[rows[k]:rows[k + 1]])
  g.save(args.gallery)
  who = repr(people[0][0]) if len(people) == 1 else f"{len(people)} people"
  print(f"enrolled {who} from {images.shape[0]} image(s); {args.gallery} holds {len(g)} people")
  return {"enrolled": [p for p, _ in people], "people": len(g)}


def write_out(path: str, rows: list[dict]) -> None:
  """``rows`` as JSON (a list of objects) or CSV (a header, one line per image), atomically."""
  if path.lower().endswith(".json"):
    files.write_json_atomic(path, rows)
    return
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(buf.getvalue())
  os.replace(tmp, path)


def identify(args, trained, gallery, probes, images, t, why) -> dict:
  emb = embed(trained, images)
  ids, dist, nearest = [], np.zeros(0), []
  if emb.shape[0]:
    ids, dist = recognition.identify(gallery, emb, t)
    nearest, _ = recognition.identify(gallery, emb, np.inf)
  print(f"{why}; {len(gallery)} people enrolled")
  rows, found = [], iter(zip(ids, nearest, dist.tolist()))
  for probe in probes:
    who, near, d = next(found) if probe.found else (recognition.UNKNOWN, None, None)
    if not probe.found:
      print(f"{probe.image}: {NO_FACE}")
    elif who is recognition.UNKNOWN:
      print(f"{probe.label()}: not recognized (nearest {near}, distance {d:.3f} > threshold {t:.3f})")
    else:
      print(f"{probe.label()}: {who} (distance {d:.3f} <= threshold {t:.3f})")
    rows.append({**probe.columns(), "identity": who, "nearest": near, "distance": d,
                 "threshold": float(t), "accepted": probe.found and who is not recognition.UNKNOWN})
    if args.detect != "none":
      rows[-1]["note"] = "" if probe.found else NO_FACE
  if args.out:
    write_out(args.out, rows)
  return {"ids": [r["identity"] for r in rows], "nearest": [r["nearest"] for r in rows],
          "distances": [r["distance"] for r in rows], "threshold": t, "rows": rows}


def verify(args, trained, gallery, probes, images, t, why) -> dict:
  emb = iter(embed(trained, images))
  print(why)
  rows = []
  for probe in probes:
    if probe.found:
      ok, d = recognition.verify(gallery, next(emb), args.name, t)
      print(f"{probe.label()}: {'accepted' if ok else 'rejected'} as {args.name!r} "
            f"(distance {d:.3f}, threshold {t:.3f})")
    else:
      ok, d = False, None
      print(f"{probe.image}: {NO_FACE}")
    rows.append({**probe.columns(), "claimed": args.name, "accepted": ok, "distance": d,
                 "threshold": float(t)})
    if args.detect != "none":
      rows[-1]["note"] = "" if probe.found else NO_FACE
  if args.out:
    write_out(args.out, rows)
  return {"accepted": [r["accepted"] for r in rows], "threshold": t}


def run(argv: list[str] | None = None) -> dict:
  args = parse(argv)
  if args.command not in NEEDS_MODEL:
    return list_or_remove(args)
  # every input is checked before the model is restored (seconds): the files first (no JAX
  # import needed), then the run's config and every image decoded as the model takes it
  gallery = open_gallery(args)
  if args.command == "enroll":
    people = people_to_enrol(args)
    paths = [p for _, ps in people for p in ps]
  else:
    paths = image_files(args.paths)
    if gallery.num_embeddings == 0:
      raise recognition.GalleryError(f"{args.gallery}: the gallery is empty; enrol people first")
    if args.command == "verify" and args.name not in gallery:
      raise recognition.GalleryError(f"{args.gallery}: claimed identity {args.name!r} is not "
                                     f"enrolled ({len(gallery)} people enrolled)")
  from facenet_jax import inference, workdir as workdir_lib
  config = workdir_lib.load_config(args.workdir)
  if int(config.model.spatial_dims) != 2:   # photos fitted to (S, S, C): a traceback after loading
    raise recognition.GalleryError(f"{args.workdir} is a {config.model.spatial_dims}-D run "
                                   f"(data.source={config.data.source!r}); recognize.py reads "
                                   f"photos, for 2-D runs")
  args.fit = face_fit(args.detect, config)
  if gallery is not None and not args.allow_other_fit:
    gallery.check_face_fit(args.fit, args.gallery, "--allow_other_fit")
  check_detector(args)
  if gallery is not None and gallery.dim != int(config.model.embedding_dim):
    raise recognition.GalleryError(f"gallery file {args.gallery!r} holds {gallery.dim}-D "
                                   f"embeddings, the model of {args.workdir} gives "
                                   f"{config.model.embedding_dim}-D")
  if args.command != "enroll":
    t, why = threshold(args)
  if args.detect == "none":
    images = load_images(paths, config, progress_for(len(paths), "reading"))
    probes = [Probe(p) for p in paths]
  else:
    images, probes, how = load_faces(paths, config, args.mtcnn_weights, args.faces,
                                     progress_for(len(paths), "detecting faces in"),
                                     args.min_face)
    print(how, flush=True)
    missing = [p.image for p in probes if not p.found]
    if args.command == "enroll" and missing:   # before the model loads or the gallery changes
      named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
      raise raw.DataError(f"{NO_FACE} in {named}: enroll needs a face in every photo (nothing "
                          f"was written to {args.gallery})")
  trained = inference.load(args.workdir)
  if gallery is not None:
    gallery.check_model(trained.fingerprint, trained.source, args.gallery)
  if args.command == "enroll":
    return enroll(args, trained, gallery, people, images)
  return (identify if args.command == "identify" else verify)(args, trained, gallery, probes,
                                                               images, t, why)


if __name__ == "__main__":
  from infra import cli
  cli.run(run, absl_flags=False)
