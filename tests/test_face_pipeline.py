"""faces.detect_and_align (detection + alignment in one call) and scripts/detect_faces.py.

Real photos and the real detector weights only when ../shared exists (skipped otherwise).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from facenet_jax import align
from facenet_jax.faces import detect, detect_and_align, pipeline
from test_mtcnn import WEIGHTS, lfw_photos, needs_lfw


@pytest.fixture(scope="module")
def detector():
  if not os.path.isfile(WEIGHTS):
    pytest.skip(f"no {WEIGHTS}")
  return detect.MTCNN(WEIGHTS)


def no_face_image():
  """Smooth gradients plus flat blocks: structure but nothing face-like."""
  yy, xx = np.mgrid[:180, :240]
  smooth = np.stack([xx, yy, (xx + yy) / 2], -1) / 240 * 255
  blocks = np.kron(np.random.default_rng(5).uniform(0, 255, (6, 8, 3)), np.ones((30, 30, 1)))
  return (0.5 * smooth + 0.5 * blocks).astype(np.uint8)


def test_select_largest_is_by_area_inside_the_photo_not_score():
  faces = detect.Faces(np.array([[0, 0, 10, 10], [50, 50, 90, 100], [0, 0, 30, 30]], np.float32),
                       np.array([0.99, 0.8, 0.7], np.float32), np.zeros((3, 5, 2), np.float32))
  assert pipeline.select(faces, "largest", 200, 200).tolist() == [1]
  assert pipeline.select(faces, "all", 200, 200).tolist() == [0, 1, 2]
  assert pipeline.select(faces, "central", 200, 200).tolist() == [1]
  assert pipeline.select(detect.Faces.empty(), "largest", 200, 200).tolist() == []
  with pytest.raises(detect.FaceInputError, match="which must be one of"):
    pipeline.select(faces, "biggest", 200, 200)
  # a face cut off at the corner (audit 23: Colin Powell beside Condoleezza Rice) has a box
  # reaching outside the photo; counted whole it won over the subject, exit 0
  cut = detect.Faces(np.array([[-13, -9, 65, 108], [100, 72, 182, 175]], np.float32),
                     np.array([0.99, 0.99], np.float32), np.zeros((2, 5, 2), np.float32))
  assert pipeline.select(cut, "largest", 250, 250).tolist() == [1]
  assert pipeline.select(cut, "central", 250, 250).tolist() == [1]


@needs_lfw
def test_detect_and_align_lfw_and_no_face(detector):
  paths = lfw_photos(3)
  photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  got = detect_and_align(photos + [no_face_image()], detector, "arcface112", which="largest")
  assert [len(f) for f in got] == [1, 1, 1, 0]
  alone = detector.detect(photos)
  for rgb, faces, raw in zip(photos, got, alone):
    f = faces[0]
    assert f.crop.shape == (112, 112, 3) and f.crop.dtype == np.float32 and f.crop.std() > 10
    np.testing.assert_allclose(f.box_4, raw.boxes_Nx4[0], atol=1e-3)   # LFW: the one face
    assert 0.9 < f.score <= 1 and f.landmarks_5x2.shape == (5, 2)
    # the crop is align_faces of the same landmarks (no second warp in the pipeline)
    np.testing.assert_allclose(f.crop, align.align_faces(rgb, f.landmarks_5x2[None])[0], atol=1e-3)
    # the landmarks land near the template points in the crop
    M = np.asarray(align.similarity_transform(f.landmarks_5x2, align.arcface_template()))
    assert np.abs(np.asarray(align.apply_transform(M, f.landmarks_5x2))
                  - align.arcface_template()).max() < 8
    assert f.to_json()["box"] == [round(float(v), 2) for v in f.box_4]
  # another template gives its size; template=None gives boxes without crops
  big = detect_and_align(photos[:1], detector, "facenet160", which="all")[0]
  assert big[0].crop.shape == (160, 160, 3)
  bare = detect_and_align(photos[:1], detector, None)[0]
  assert bare[0].crop is None and np.allclose(bare[0].box_4, got[0][0].box_4, atol=1e-3)


@needs_lfw
def test_all_faces_of_a_two_face_collage(detector):
  """Two LFW photos side by side: "all" finds both (left one's box left of the right one's),
  "largest" the one scaled up."""
  a, b = (Image.open(p).convert("RGB") for p in lfw_photos(2))
  sheet = Image.new("RGB", (250 + 200, 250))
  sheet.paste(a, (0, 0))
  sheet.paste(b.resize((200, 200), Image.Resampling.BILINEAR), (250, 25))
  every = detect_and_align([np.asarray(sheet)], detector, "arcface112", which="all")[0]
  centres = sorted((f.box_4[0] + f.box_4[2]) / 2 for f in every)
  assert len(every) == 2 and centres[0] < 250 < centres[1], [f.box_4 for f in every]
  largest = detect_and_align([np.asarray(sheet)], detector, "arcface112", which="largest")[0]
  assert len(largest) == 1 and (largest[0].box_4[0] + largest[0].box_4[2]) / 2 < 250


def run_absl_script(name, argv):
  """scripts/<name>.py's main in this process with ``argv`` parsed as its absl flags
  (in-process: no second JAX import or compile); its flags are removed afterwards."""
  import importlib.util

  from absl import flags
  before = set(flags.FLAGS)
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
  spec = importlib.util.spec_from_file_location(name, os.path.join(root, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    rest = flags.FLAGS([name, *argv], known_only=True)
    return module.main(rest)
  finally:
    for n in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, n)


@needs_lfw
def test_detect_faces_script(tmp_path, capsys):
  """A folder of 2 LFW photos and a blank image: faces for the photos, [] for the blank,
  --aligned crops of the template's size, one per face."""
  import shutil

  photos = tmp_path / "photos"
  photos.mkdir()
  for p in lfw_photos(2):
    shutil.copy(p, photos / os.path.basename(p))
  Image.new("RGB", (120, 90), (200, 200, 200)).save(photos / "blank.png")
  out = tmp_path / "out"
  run_absl_script("detect_faces", [f"--out={out}", "--aligned", "--template=facenet160",
                                   f"--weights={WEIGHTS}", str(photos)])
  rows = {os.path.basename(r["image"]): r for r in json.load(open(out / "detections.json"))["images"]}
  names = sorted(os.path.basename(p) for p in lfw_photos(2))
  assert sorted(rows) == sorted(names + ["blank.png"])
  assert rows["blank.png"]["faces"] == [] and (rows["blank.png"]["width"], rows["blank.png"]["height"]) == (120, 90)
  for n in names:
    assert len(rows[n]["faces"]) >= 1 and rows[n]["faces"][0]["score"] > 0.9
    assert set(rows[n]["faces"][0]["landmarks"]) == set(detect.LANDMARK_NAMES)
  crops = sorted(os.listdir(out / "aligned"))
  assert len(crops) == sum(len(rows[n]["faces"]) for n in names)
  assert all(c.startswith(tuple(os.path.splitext(n)[0] for n in names)) for c in crops)
  for c in crops:
    assert Image.open(out / "aligned" / c).size == (160, 160)
  assert "2/3 images with a face" in capsys.readouterr().out
