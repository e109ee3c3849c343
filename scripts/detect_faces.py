"""Detect faces (MTCNN) in images and folders; write boxes, scores and five landmarks.

  python scripts/detect_faces.py --out=runs/faces ../shared/data/lfw/images/Aaron_Eckhart
  python scripts/detect_faces.py --out=runs/faces --aligned --template=arcface112 photo.jpg
  python scripts/detect_faces.py --grid=docs/mtcnn_lfw.png --grid_count=12 ../shared/data/lfw/images

Writes ``OUT/detections.json``: ``{"settings": {...}, "images": [{"image": path, "width": W,
"height": H, "faces": [{"box": [x1, y1, x2, y2], "score": p, "landmarks": {"left_eye": [x, y],
...}}, ...]}, ...]}`` (an empty ``faces`` list where none was found, with a ``note`` when the
image is smaller than the minimum face size). ``--aligned`` also writes each face warped onto
the template as ``OUT/aligned/<image stem>_<k>.png``. ``--grid`` draws the detections of the
first ``--grid_count`` images on one PNG (boxes green, landmarks red). An OUT that holds an
earlier run's detections.json or aligned/ is refused, as are two photos with one file stem
under ``--aligned`` (their crops would share names).

Weights: the MTCNN ``.npz`` of ``scripts/convert_mtcnn_weights.py``; the default is the
shared copy beside the repository (``<repo>/../shared/weights/mtcnn_weights.npz``).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from infra import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WEIGHTS = os.path.normpath(os.path.join(REPO, "..", "shared", "weights", "mtcnn_weights.npz"))

_OUT = cli.folder_flag("out", None, "Output folder for detections.json (and aligned/).")
_WEIGHTS = flags.DEFINE_string("weights", DEFAULT_WEIGHTS, "The MTCNN weights .npz.")
_ALIGNED = flags.DEFINE_bool("aligned", False, "Also write aligned face crops to OUT/aligned/.")
_TEMPLATE = flags.DEFINE_enum("template", "arcface112", ["arcface112", "facenet160"],
                              "Alignment template for --aligned.")
_GRID = cli.png_flag("grid", None, "Write a PNG grid of the detections here.")
_GRID_COUNT = flags.DEFINE_integer("grid_count", 12, "Images in the --grid PNG.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 16, "Images detected per batch.")
_MIN_FACE = flags.DEFINE_float("min_face_size", 20.0, "Smallest face searched for (px).")
_SCALE = flags.DEFINE_float("scale_factor", 0.709, "Ratio between pyramid levels.")


def list_images(paths: list[str]) -> list[str]:
  """Files as given, folders searched recursively for image files (sorted)."""
  from infra import imagefile
  from infra.errors import UserError
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = imagefile.walk_images(p)   # hidden files (macOS ._*) and folders skipped
      if not found:
        raise UserError(f"{p}: folder holds no image files ({', '.join(imagefile.IMAGE_SUFFIXES)})")
      out += found
    elif os.path.isfile(p):
      out.append(p)
    else:
      raise UserError(f"{p}: no such image file or folder")
  return out


def check_distinct_stems(files: list[str]) -> None:
  """Aligned crops are named ``<stem>_<k>.png``: two photos with one stem (a/x.jpg, b/x.png)
  would write the same crops, the second replacing the first."""
  seen: dict[str, str] = {}
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    if stem in seen:
      from infra.errors import UserError
      raise UserError(f"--aligned: {seen[stem]} and {f} would both write aligned/{stem}_K.png: "
                      f"rename one or detect them in separate runs")
    seen[stem] = f


def draw_grid(images, results, path: str, tile: int = 200, cols: int = 4) -> None:
  """Each image scaled to ``tile`` px (long side) with its boxes and landmarks, on a grid."""
  from PIL import Image, ImageDraw
  rows = -(-len(images) // cols)
  sheet = Image.new("RGB", (cols * tile, rows * tile), "white")
  for k, (im, faces) in enumerate(zip(images, results)):
    scale = tile / max(im.width, im.height)
    t = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    d = ImageDraw.Draw(t)
    for box, lms in zip(faces.boxes_Nx4 * scale, faces.landmarks_Nx5x2 * scale):
      d.rectangle([float(v) for v in box], outline=(0, 220, 0), width=2)
      for x, y in lms:
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 40, 40))
    sheet.paste(t, ((k % cols) * tile, (k // cols) * tile))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # an adaptive palette keeps a photo grid small (the README's PNGs stay < 300 KB)
  sheet.quantize(colors=192, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
      path, optimize=True)


def main(argv):
  from infra.errors import UserError
  paths = argv[1:]
  if not paths:
    raise UserError("give one or more IMAGE_OR_FOLDER arguments")
  if not _OUT.value and not _GRID.value:
    raise UserError("--out=DIR (detections.json) or --grid=PNG is required")
  if _BATCH.value < 1:
    raise UserError(f"--batch must be >= 1, got {_BATCH.value}")
  if _ALIGNED.value and not _OUT.value:
    raise UserError("--aligned writes OUT/aligned/: give --out=DIR too")
  for name in ("detections.json", "aligned") if _OUT.value else ():
    if os.path.exists(os.path.join(_OUT.value, name)):   # a rerun would mix old crops with new
      raise UserError(f"--out={_OUT.value} already holds {name} from an earlier run: give "
                      f"another folder or remove it")
  files = list_images(paths)
  if _GRID.value and not _OUT.value:
    files = files[:_GRID_COUNT.value]
  if _ALIGNED.value:
    check_distinct_stems(files)
  if not os.path.isfile(_WEIGHTS.value):
    raise UserError(f"--weights={_WEIGHTS.value}: no such file (make it with "
                    f"scripts/convert_mtcnn_weights.py)")

  import numpy as np
  from PIL import Image
  from facenet_jax import align
  from facenet_jax.faces import detect, pipeline
  from infra import files as files_lib
  from infra import imagefile
  from infra import progress as progress_lib

  imagefile.check_decodes(files, error=UserError)   # a bad file, before any detection
  settings = detect.Settings(min_face_size=_MIN_FACE.value, scale_factor=_SCALE.value)
  detector = detect.MTCNN(_WEIGHTS.value, settings)
  out_dir = _OUT.value
  if out_dir and _ALIGNED.value:
    os.makedirs(os.path.join(out_dir, "aligned"), exist_ok=True)
  progress = progress_lib.Progress(len(files), unit="images", what="images", stream=sys.stderr)
  rows, grid_images, grid_results, found = [], [], [], 0
  t0 = time.perf_counter()
  for start in range(0, len(files), _BATCH.value):
    batch = files[start:start + _BATCH.value]
    ims = [imagefile.decode(f, f, "RGB", error=UserError) for f in batch]
    results = detector.detect([np.asarray(im) for im in ims])
    for f, im, faces in zip(batch, ims, results):
      row = {"image": f, "width": im.width, "height": im.height, "faces": faces.to_json()}
      if faces.note:
        row["note"] = faces.note
      rows.append(row)
      found += len(faces) > 0
      if len(grid_images) < _GRID_COUNT.value:
        grid_images.append(im), grid_results.append(faces)
      if out_dir and _ALIGNED.value and len(faces):
        stem = os.path.splitext(os.path.basename(f))[0]
        for k, face in enumerate(pipeline.faces_of(np.asarray(im), faces, _TEMPLATE.value, "all")):
          Image.fromarray(align.to_uint8(face.crop)).save(
              os.path.join(out_dir, "aligned", f"{stem}_{k}.png"))
    done = start + len(batch)
    if start == 0:
      progress.mark_compiled(done)
    progress.report(done, {"with_face": found})
  seconds = time.perf_counter() - t0
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    files_lib.write_json_atomic(os.path.join(out_dir, "detections.json"), {
        "settings": {"weights": _WEIGHTS.value, "min_face_size": settings.min_face_size,
                     "scale_factor": settings.scale_factor, "thresholds": list(settings.thresholds)},
        "images": rows})
  if _GRID.value:
    draw_grid(grid_images, grid_results, _GRID.value)
  print(f"{found}/{len(files)} images with a face, {len(files) / seconds:.2f} images/s "
        f"(first batch's compile included); "
        + ", ".join(p for p in (out_dir and os.path.join(out_dir, "detections.json"), _GRID.value) if p),
        flush=True)


if __name__ == "__main__":
  cli.run(main)
