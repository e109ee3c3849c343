"""MTCNN detection (facenet_jax/faces) and landmark alignment (facenet_jax/align).

The networks are checked against a plain NumPy forward pass written here (convolution by
kernel offsets, PReLU, -inf padded max pooling, dense, softmax), NMS against a plain loop,
the similarity transform against np.linalg.lstsq; real photos only when ../shared exists.
"""

import glob
import os

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from facenet_jax import align
from facenet_jax.faces import boxes as box_ops
from facenet_jax.faces import detect, nets

WEIGHTS = os.path.join(SHARED, "weights", "mtcnn_weights.npz")
LFW = os.path.join(SHARED, "data", "lfw", "images")
needs_weights = pytest.mark.skipif(not os.path.isfile(WEIGHTS), reason=f"no {WEIGHTS}")
needs_lfw = pytest.mark.skipif(not (os.path.isfile(WEIGHTS) and os.path.isdir(LFW)),
                               reason=f"no {WEIGHTS} or {LFW}")


def random_arrays(seed=0):
  """Every array of a weights file, random, at the scale of trained weights."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in nets.expected_arrays().items():
    fan_in = np.prod(shape[:-1]) if k.endswith("kernel") else 1
    scale = 0.25 if k.endswith("alpha") else 1 / np.sqrt(fan_in)
    out[k] = (rng.standard_normal(shape) * scale).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def random_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp("w") / "mtcnn_random.npz"
  arrays = random_arrays()
  np.savez(path, **arrays)
  return str(path), arrays


@pytest.fixture(scope="module")
def detector():
  if not os.path.isfile(WEIGHTS):
    pytest.skip(f"no {WEIGHTS}")
  return detect.MTCNN(WEIGHTS)


# ----------------------------------------------------------------------------- NumPy reference


def np_conv(x, k, b):
  """Valid stride-1 convolution, (N, H, W, Ci) x (kh, kw, Ci, Co), by kernel offsets."""
  kh, kw = k.shape[:2]
  H, W = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  y = np.zeros(x.shape[:1] + (H, W, k.shape[3]), np.float64)
  for i in range(kh):
    for j in range(kw):
      y += x[:, i:i + H, j:j + W, :] @ k[i, j].astype(np.float64)
  return y + b


def np_prelu(x, a):
  return np.where(x > 0, x, a * x)


def np_pool(x, k, same):
  """k x k stride-2 max pool; "same": ceil(H / 2) outputs, the end padded with -inf."""
  N, H, W, C = x.shape
  oh, ow = ((-(-H // 2), -(-W // 2)) if same else ((H - k) // 2 + 1, (W - k) // 2 + 1))
  ph, pw = max((oh - 1) * 2 + k - H, 0), max((ow - 1) * 2 + k - W, 0)
  xp = np.full((N, H + ph, W + pw, C), -np.inf)
  xp[:, :H, :W] = x
  y = np.full((N, oh, ow, C), -np.inf)
  for i in range(oh):
    for j in range(ow):
      y[:, i, j] = xp[:, 2 * i:2 * i + k, 2 * j:2 * j + k].max(axis=(1, 2))
  return y


def np_softmax1(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True))[..., 1]


def np_forward(name, w, rgb):
  """The reference forward of ``name`` on RGB 0..255 pixels, float64."""
  g = lambda k: w[f"{name}/{k}"].astype(np.float64)
  conv = lambda x, l: np_conv(x, g(f"{l}/kernel"), g(f"{l}/bias"))
  dense = lambda x, l: x @ g(f"{l}/kernel") + g(f"{l}/bias")
  x = (rgb.astype(np.float64) - 127.5) / 128
  if name == "pnet":
    x = np_pool(np_prelu(conv(x, "conv1"), g("prelu1/alpha")), 2, True)
    x = np_prelu(conv(x, "conv2"), g("prelu2/alpha"))
    x = np_prelu(conv(x, "conv3"), g("prelu3/alpha"))
    return conv(x, "conv4-1"), np_softmax1(conv(x, "conv4-2"))
  x = np_pool(np_prelu(conv(x, "conv1"), g("prelu1/alpha")), 3, True)
  x = np_pool(np_prelu(conv(x, "conv2"), g("prelu2/alpha")), 3, False)
  if name == "rnet":
    x = np_prelu(conv(x, "conv3"), g("prelu3/alpha"))
    x = np_prelu(dense(x.transpose(0, 2, 1, 3).reshape(len(x), -1), "fc4"), g("prelu4/alpha"))
    return dense(x, "fc5-1"), np_softmax1(dense(x, "fc5-2"))
  x = np_pool(np_prelu(conv(x, "conv3"), g("prelu3/alpha")), 2, True)
  x = np_prelu(conv(x, "conv4"), g("prelu4/alpha"))
  x = np_prelu(dense(x.transpose(0, 2, 1, 3).reshape(len(x), -1), "fc5"), g("prelu5/alpha"))
  return dense(x, "fc6-1"), dense(x, "fc6-2"), np_softmax1(dense(x, "fc6-3"))


# ----------------------------------------------------------------------------- networks


def test_layer_shapes(random_npz):
  want = nets.expected_arrays()
  assert len(want) == 50 and want["rnet/fc4/kernel"] == (576, 128)
  assert want["onet/fc5/kernel"] == (1152, 256) and want["pnet/conv4-1/kernel"] == (1, 1, 32, 4)
  loaded = nets.load_weights(random_npz[0])
  off, prob = nets.Jitted(loaded["pnet"])(np.zeros((2, 30, 41, 3), np.float32))
  # conv3 valid, pool ceil, conv3, conv3: ceil((30 - 2) / 2) - 4 = 10, ceil(39 / 2) - 4 = 16
  assert off.shape == (2, 10, 16, 4) and prob.shape == (2, 10, 16)
  assert [o.shape for o in nets.Jitted(loaded["rnet"])(np.zeros((3, 24, 24, 3)))] == [(3, 4), (3,)]
  assert ([o.shape for o in nets.Jitted(loaded["onet"])(np.zeros((3, 48, 48, 3)))]
          == [(3, 4), (3, 10), (3,)])


@pytest.mark.parametrize("name,shape", [("pnet", (2, 23, 30, 3)), ("rnet", (3, 24, 24, 3)),
                                        ("onet", (2, 48, 48, 3))])
def test_forward_matches_numpy(random_npz, name, shape):
  path, arrays = random_npz
  rgb = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
  got = nets.Jitted(nets.load_weights(path)[name])(rgb)
  want = np_forward(name, arrays, rgb)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g), w, atol=1e-4, rtol=1e-4)
  assert np.ptp(want[-1]) > 1e-3   # the scores vary: a wrong layer order would show


# ----------------------------------------------------------------------------- weights file


def test_weights_missing_array_named(random_npz, tmp_path):
  arrays = dict(random_npz[1])
  del arrays["rnet/fc4/kernel"]
  np.savez(tmp_path / "m.npz", **arrays)
  with pytest.raises(nets.MTCNNWeightsError, match="'rnet/fc4/kernel'.* missing"):
    nets.load_weights(tmp_path / "m.npz")


def test_weights_wrong_shape_named(random_npz, tmp_path):
  arrays = dict(random_npz[1])
  arrays["onet/conv2/kernel"] = np.zeros((3, 3, 32, 65), np.float32)
  np.savez(tmp_path / "s.npz", **arrays)
  with pytest.raises(nets.MTCNNWeightsError, match=r"'onet/conv2/kernel' has shape \(3, 3, 32, 65\), "
                                                   r"expected \(3, 3, 32, 64\)"):
    nets.load_weights(tmp_path / "s.npz")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_weights_truncated(random_npz, tmp_path, keep):
  data = open(random_npz[0], "rb").read()
  (tmp_path / "t.npz").write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(nets.MTCNNWeightsError, match="truncated or corrupt") as e:
    nets.load_weights(tmp_path / "t.npz")
  assert "\n" not in str(e.value) and "t.npz" in str(e.value)


def test_weights_object_array_refused(random_npz, tmp_path):
  arrays = dict(random_npz[1])
  arrays["pnet/conv1/bias"] = np.array([object()] * 10, dtype=object)
  np.savez(tmp_path / "o.npz", **arrays)
  with pytest.raises(nets.MTCNNWeightsError, match="pnet/conv1/bias"):
    nets.load_weights(tmp_path / "o.npz")


# ----------------------------------------------------------------------------- boxes


def loop_overlap(p, q, method):
  """Intersection over union ("union") or over the smaller box ("min") of two x1y1x2y2 boxes."""
  iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
  ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
  area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
  denom = area(p) + area(q) - iw * ih if method == "union" else min(area(p), area(q))
  return iw * ih / denom


def loop_nms(boxes, scores, threshold, method):
  """Greedy NMS as a plain loop over pairs."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  dead, keep = set(), []
  for a in order:
    if a in dead:
      continue
    keep.append(a)
    for b in order:
      if b in dead or b == a or b in keep:
        continue
      if loop_overlap(boxes[a], boxes[b], method) > threshold:
        dead.add(b)
  return keep


@pytest.mark.parametrize("method,threshold", [("union", 0.5), ("union", 0.3), ("min", 0.7)])
def test_nms_matches_loop(method, threshold):
  rng = np.random.default_rng(3)
  xy = rng.uniform(0, 60, (80, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (80, 2))], 1)
  scores = rng.uniform(size=80)
  keep = box_ops.nms(boxes, scores, threshold, method)
  assert list(keep) == loop_nms(boxes, scores, threshold, method)
  assert 5 < len(keep) < 80


def loop_nms_fast(boxes, threshold, method):
  """The mtcnn package's rule as a loop: boxes in order, i dropped when any j < i overlaps it."""
  keep = []
  for i in range(len(boxes)):
    dropped = False
    for j in range(i):
      dropped |= loop_overlap(boxes[i], boxes[j], method) > threshold
    if not dropped:
      keep.append(i)
  return keep


@pytest.mark.parametrize("method,threshold", [("union", 0.5), ("union", 0.7), ("min", 0.7)])
def test_nms_fast_matches_loop(method, threshold):
  rng = np.random.default_rng(6)
  xy = rng.uniform(0, 60, (70, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (70, 2))], 1)
  order = box_ops.order_desc(rng.uniform(size=70))
  keep = box_ops.nms_fast(boxes[order], threshold, method)
  assert list(keep) == loop_nms_fast(boxes[order], threshold, method)
  assert 3 < len(keep) < 70
  # a suppressed box still suppresses: fewer kept than greedy NMS of the same order
  assert len(keep) <= len(box_ops.nms(boxes[order], -np.arange(70.0), threshold, method))


def test_square_and_calibrate():
  b = np.array([[10.0, 20.0, 30.0, 60.0]])
  np.testing.assert_allclose(box_ops.square(b), [[0.0, 20.0, 40.0, 60.0]])
  # widths counted inclusively: 21 and 41 px
  np.testing.assert_allclose(box_ops.calibrate(b, np.array([[0.1, -0.1, 0.5, 0.0]])),
                             [[12.1, 15.9, 40.5, 60.0]])


def test_area_matrix():
  a = detect.area_matrix(3, 6)   # integer factor: means of pixel pairs
  np.testing.assert_allclose(a, np.kron(np.eye(3), [[0.5, 0.5]]))
  a = detect.area_matrix(106, 250)
  np.testing.assert_allclose(a.sum(1), 1, rtol=1e-6)
  r = 250 / 106   # output 1 covers [r, 2 r): part of pixel 2, pixel 3, part of pixel 4
  np.testing.assert_allclose(a[1, 2:5], np.array([3 - r, 1, 2 * r - 4]) / r, rtol=1e-6)
  img = np.random.default_rng(7).uniform(0, 255, (30, 41, 3)).astype(np.float32)
  got = detect.area_resize(img, 12, 17)
  want = np.einsum("ih,hwc,jw->ijc", detect.area_matrix(12, 30).astype(np.float64), img,
                   detect.area_matrix(17, 41).astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  assert [detect.level_size(250, s) for s in detect.pyramid_scales(250, 250)] == [
      150, 106, 75, 53, 37, 26, 19, 13]   # truncated, as TensorFlow sizes the package's levels


def np_crop_and_resize(img, box, size):
  """TensorFlow's crop_and_resize for one box (y1, x1, y2, x2 as fractions), a plain loop."""
  H, W = img.shape[:2]
  y1, x1, y2, x2 = box
  out = np.zeros((size, size, img.shape[2]))
  for t in range(size):
    in_y = y1 * (H - 1) + t * (y2 - y1) * (H - 1) / (size - 1)
    if not 0 <= in_y <= H - 1:
      continue
    ty, by = int(np.floor(in_y)), int(np.ceil(in_y))
    for u in range(size):
      in_x = x1 * (W - 1) + u * (x2 - x1) * (W - 1) / (size - 1)
      if not 0 <= in_x <= W - 1:
        continue
      lx, rx = int(np.floor(in_x)), int(np.ceil(in_x))
      top = img[ty, lx] + (img[ty, rx] - img[ty, lx]) * (in_x - lx)
      bottom = img[by, lx] + (img[by, rx] - img[by, lx]) * (in_x - lx)
      out[t, u] = top + (bottom - top) * (in_y - ty)
  return out


def test_crop_and_resize_matches_loop():
  rng = np.random.default_rng(8)
  imgs = rng.uniform(-1, 1, (2, 40, 50, 3)).astype(np.float32)
  hw = np.array([[40, 50], [33, 27]], np.float32)   # the second image is padded
  boxes = np.array([[0.1, 0.2, 0.6, 0.7], [-0.2, -0.1, 0.5, 0.4], [0.3, 0.5, 1.2, 1.1]], np.float32)
  img_n = np.array([0, 1, 1], np.int32)
  got = np.asarray(detect.crop_and_resize(imgs, img_n, boxes, hw[img_n], 24))
  for k in range(3):
    H, W = hw[img_n[k]].astype(int)
    want = np_crop_and_resize(imgs[img_n[k], :H, :W].astype(np.float64), boxes[k], 24)
    np.testing.assert_allclose(got[k], want, atol=1e-5)
  assert (got[1] == 0).any() and (got[2] == 0).any()   # outside the image: 0


def test_pnet_mask_makes_padding_invisible(random_npz):
  """A level padded at the bottom/right, with its real size given, yields the unpadded outputs."""
  pnet = nets.load_weights(random_npz[0])["pnet"]
  rng = np.random.default_rng(9)
  for h, w in ((23, 30), (24, 31), (13, 12)):
    x = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    padded = np.concatenate([x, np.full((1, 40 - h, w, 3), 5.0, np.float32)], 1)
    padded = np.concatenate([padded, np.full((1, 40, 44 - w, 3), -3.0, np.float32)], 2)
    want = pnet(x)
    got = pnet(padded, np.array([[h - 2, w - 2]], np.int32))
    oh, ow = (h - 1) // 2 - 4, (w - 1) // 2 - 4
    assert want[1].shape[1:3] == (oh, ow)
    for g, wv in zip(got, want):
      np.testing.assert_allclose(np.asarray(g)[:, :oh, :ow], np.asarray(wv), atol=1e-5)


def test_pyramid_and_buckets():
  assert detect.Settings.reference().thresholds == (0.6, 0.7, 0.8)
  s = detect.pyramid_scales(250, 250, 20, 0.709)
  np.testing.assert_allclose(s, 0.6 * 0.709 ** np.arange(len(s)))
  assert 250 * s[-1] >= 12 > 250 * s[-1] * 0.709 and len(s) == 8
  assert detect.pyramid_scales(15, 300, 20, 0.709) == []   # 15 px * 0.6 < 12: no window fits
  assert [detect.bucket(n) for n in (12, 33, 150, 256, 257, 1000)] == [32, 64, 160, 256, 320, 1024]


# ----------------------------------------------------------------------------- alignment


def lstsq_similarity(src, dst):
  """The 4-parameter similarity [[a, -b, tx], [b, a, ty]] by np.linalg.lstsq."""
  A, y = [], []
  for (x, yy), (u, v) in zip(src, dst):
    A += [[x, -yy, 1, 0], [yy, x, 0, 1]]
    y += [u, v]
  a, b, tx, ty = np.linalg.lstsq(np.array(A, np.float64), np.array(y, np.float64), rcond=None)[0]
  return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similarity_matches_lstsq(seed):
  rng = np.random.default_rng(seed)
  src = rng.uniform(60, 180, (5, 2))
  th, s = rng.uniform(-0.8, 0.8), rng.uniform(0.3, 2.0)
  R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  dst = src @ (s * R).T + rng.uniform(-50, 50, 2) + rng.normal(0, 2.0, (5, 2))
  M = np.asarray(align.similarity_transform(src, dst))
  np.testing.assert_allclose(M, lstsq_similarity(src, dst), rtol=1e-4, atol=1e-3)
  # batched: one matrix per face
  Mb = np.asarray(align.similarity_transform(np.stack([src, dst]), np.stack([dst, src])))
  np.testing.assert_allclose(Mb[0], M, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(Mb[1], lstsq_similarity(dst, src), rtol=1e-4, atol=1e-3)


def test_warp_affine_samples_inverse_map():
  rng = np.random.default_rng(4)
  img = rng.uniform(0, 255, (40, 50, 3)).astype(np.float32)
  # a 2x upscale shifted by (3, 5): output (x, y) reads input ((x - 3) / 2, (y - 5) / 2)
  M = np.array([[2.0, 0.0, 3.0], [0.0, 2.0, 5.0]], np.float32)
  out = np.asarray(align.warp_affine(img, M, (30, 30)))
  for x, y in [(3, 5), (9, 11), (4, 6), (28, 29)]:
    sx, sy = (x - 3) / 2, (y - 5) / 2
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    fx, fy = sx - x0, sy - y0
    want = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x0 + 1])
            + fy * ((1 - fx) * img[y0 + 1, x0] + fx * img[y0 + 1, x0 + 1]))
    np.testing.assert_allclose(out[y, x], want, rtol=1e-5)
  assert np.all(out[0, 0] == 0)   # (0, 0) reads (-1.5, -2.5): outside the image


def test_templates():
  np.testing.assert_allclose(align.arcface_template(112), align.ARCFACE_112_5x2)
  t = align.facenet_template(160, 32)
  assert t.min() > 16 and t.max() < 144   # inside the margin
  M = np.asarray(align.similarity_transform(align.arcface_template(112), t))
  np.testing.assert_allclose(M[:, :2], np.eye(2) * 128 / 112, atol=1e-5)


# ----------------------------------------------------------------------------- detection


def lfw_photos(n):
  people = sorted(os.listdir(LFW))[::500][:n]
  return [sorted(glob.glob(os.path.join(LFW, p, "*.jpg")))[0] for p in people]


def test_tiny_image_has_no_face(random_npz):
  d = detect.MTCNN(random_npz[0])
  faces = d(np.zeros((15, 15, 3), np.uint8))
  assert len(faces) == 0 and faces.boxes_Nx4.shape == (0, 4)
  assert "smaller than min_face_size=20 px" in faces.note


def test_max_batch_default_is_the_host_side_choice(random_npz, monkeypatch):
  """Settings.max_batch=None: infra.convolution.detector_batch(), 1 photo per call on a CPU
  (these tests run on one), 32 on an accelerator; a set max_batch is kept."""
  from infra import convolution
  assert convolution.detector_batch() == convolution.CPU_DETECTOR_BATCH == 1
  assert detect.MTCNN(random_npz[0]).max_batch == 1
  assert detect.MTCNN(random_npz[0], detect.Settings(max_batch=4)).max_batch == 4
  monkeypatch.setattr(convolution.jax, "default_backend", lambda: "gpu")
  assert detect.MTCNN(random_npz[0]).max_batch == convolution.ACCELERATOR_DETECTOR_BATCH == 32


def test_compiler_options_leave_convolutions_to_xla_and_change_no_output(random_npz, monkeypatch):
  """On a CPU the networks compile with infra.convolution.detector_compiler_options(): this
  jaxlib accepts them, YNNPACK then takes only the dots (R-Net's program holds no YNNPACK
  convolution: XLA's own is faster on these layers, benchmarks/RESULTS.md 8b), and the outputs
  equal those of XLA's default options; on an accelerator there are no options."""
  import functools
  import jax
  from infra import convolution
  assert convolution.detector_compiler_options() == convolution.CPU_DETECTOR_COMPILER_OPTIONS
  d = detect.MTCNN(random_npz[0])
  rng = np.random.default_rng(0)
  args = (d._rnet_leaves, rng.integers(0, 256, (2, 40, 50, 3)).astype(np.float32),
          np.array([0, 1, 1, 0], np.int32), np.array([[0.1, 0.1, 0.8, 0.7], [0.0, 0.2, 0.5, 0.9],
          [-0.1, -0.2, 1.1, 1.2], [0.3, 0.3, 0.6, 0.6]], np.float32), np.array([[40, 50]] * 4, np.float32))
  ours = d._rnet.lower(*args).compile()
  ynn_convs = [line for line in ours.as_text().splitlines()
               if "__ynn_fusion" in line and "conv_general_dilated" in line]
  assert ynn_convs == []
  graphdef, treedef, _ = detect._split(nets.RNet())
  plain = jax.jit(functools.partial(detect._crops_net, graphdef, treedef, 24))
  for a, b in zip(ours(*args), plain(*args)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  monkeypatch.setattr(convolution.jax, "default_backend", lambda: "gpu")
  assert convolution.detector_compiler_options() == {}


def test_compiler_options_a_jaxlib_refuses_fall_back_to_xla_defaults_with_a_warning(monkeypatch):
  """The YNNPACK option is experimental: should a jaxlib refuse it, the detector keeps working
  with XLA's defaults, and says so once."""
  from infra import convolution
  monkeypatch.setattr(convolution, "CPU_DETECTOR_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"})
  with pytest.warns(RuntimeWarning, match="refuses the MTCNN detector's XLA options.*XLA's defaults"):
    assert convolution.detector_compiler_options() == {}
  monkeypatch.setattr(convolution, "CPU_DETECTOR_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"})
  assert convolution.detector_compiler_options() == convolution.CPU_DETECTOR_COMPILER_OPTIONS


def test_workers_default_is_the_host_side_choice(random_npz, monkeypatch):
  """Settings.workers=None: infra.convolution.detector_workers(), min(2, cores) threads on a
  CPU, 1 on an accelerator; a set value is kept and a value below 1 is refused."""
  from infra import convolution
  monkeypatch.setattr(convolution.os, "cpu_count", lambda: 8)
  assert detect.MTCNN(random_npz[0]).workers == convolution.CPU_DETECTOR_WORKERS == 2
  monkeypatch.setattr(convolution.os, "cpu_count", lambda: 1)
  assert detect.MTCNN(random_npz[0]).workers == 1
  assert detect.MTCNN(random_npz[0], detect.Settings(workers=3)).workers == 3
  with pytest.raises(detect.FaceInputError, match="workers must be >= 1, got 0"):
    detect.Settings(workers=0)
  monkeypatch.setattr(convolution.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(convolution.os, "cpu_count", lambda: 8)
  assert detect.MTCNN(random_npz[0]).workers == 1


def test_bad_image_shape(random_npz):
  with pytest.raises(detect.FaceInputError, match=r"shape \(4, 5, 2\)"):
    detect.to_rgb(np.zeros((4, 5, 2)))


@needs_weights
def test_synthetic_image_has_no_face(detector):
  yy, xx = np.mgrid[:180, :240]
  smooth = np.stack([xx, yy, (xx + yy) / 2], -1) / 240 * 255   # gradients, no structure
  rng = np.random.default_rng(5)
  blocks = np.kron(rng.uniform(0, 255, (6, 8, 3)), np.ones((30, 30, 1)))   # flat squares
  for img in (smooth, blocks):
    faces = detector(img.astype(np.float32))
    assert len(faces) == 0 and faces.note is None


@needs_lfw
def test_lfw_one_centred_face_per_photo(detector):
  paths = lfw_photos(4)
  rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  results = detector.detect(rgbs)   # one batch
  for p, faces in zip(paths, results):
    assert len(faces) >= 1, p
    x1, y1, x2, y2 = faces.boxes_Nx4[0]
    assert abs((x1 + x2) / 2 - 125) < 25 and abs((y1 + y2) / 2 - 125) < 30, (p, faces.boxes_Nx4[0])
    assert 60 < x2 - x1 < 160 and faces.scores_N[0] > 0.9
    lm = faces.landmarks_Nx5x2[0]
    eyes_y, nose_y, mouth_y = lm[:2, 1].mean(), lm[2, 1], lm[3:, 1].mean()
    assert eyes_y < nose_y < mouth_y, (p, lm)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]   # image-left eye and mouth corner first
    assert x1 <= lm[:, 0].min() and lm[:, 0].max() <= x2
  # the batch gives what each photo gives alone (padding and bucketing change nothing)
  alone = detector(rgbs[1])
  np.testing.assert_allclose(alone.boxes_Nx4, results[1].boxes_Nx4, atol=1e-3)
  np.testing.assert_allclose(alone.landmarks_Nx5x2, results[1].landmarks_Nx5x2, atol=1e-3)



@needs_lfw
def test_a_large_photo_is_not_batched_with_small_ones(detector, monkeypatch):
  """The crop networks' batch is padded to its largest photo: one large photo among small ones
  made every photo that large (16 x 8000 x 6000 floats, 9 GB). Photos are grouped by padded
  shape, and each photo's faces are those it gets alone."""
  small = [np.asarray(Image.open(p).convert("RGB")) for p in lfw_photos(2)]
  large = np.asarray(Image.fromarray(small[0]).resize((700, 700)))
  seen = []
  real = detect.MTCNN._cascade

  def spy(self, rgbs, out):
    seen.append({(detect.bucket(r.shape[0]), detect.bucket(r.shape[1])) for r in rgbs})
    return real(self, rgbs, out)
  monkeypatch.setattr(detect.MTCNN, "_cascade", spy)
  together = detector.detect([small[0], large, small[1]])
  assert seen and all(len(shapes) == 1 for shapes in seen)
  for img, faces in zip([small[0], large, small[1]], together):
    alone = detector(img)
    assert len(alone) == len(faces) >= 1
    np.testing.assert_allclose(faces.boxes_Nx4, alone.boxes_Nx4, atol=1e-3)


@needs_lfw
@pytest.mark.parametrize("workers", [2, 3])
def test_worker_threads_find_what_one_thread_finds(workers):
  """Splitting a batch between threads (parts of 2 and 1 photos for 3 threads and 5 photos,
  one photo repeated, all threads sharing the pyramid cache) changes only who does the work:
  the faces of every photo, in order, are those of a single thread."""
  paths = lfw_photos(4)
  rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in paths + paths[:1]]
  rgbs[2] = rgbs[2][:200]   # another shape in the batch
  weights = nets.load_weights(WEIGHTS)
  one = detect.MTCNN(weights, detect.Settings(workers=1)).detect(rgbs)
  many_det = detect.MTCNN(weights, detect.Settings(workers=workers))
  for _ in range(2):   # the second call reuses the threads and the cached pyramid inputs
    many = many_det.detect(rgbs)
    assert [len(f) for f in many] == [len(f) for f in one] and all(len(f) for f in one)
    for a, b in zip(one, many):
      np.testing.assert_allclose(b.boxes_Nx4, a.boxes_Nx4, atol=1e-4)
      np.testing.assert_allclose(b.landmarks_Nx5x2, a.landmarks_Nx5x2, atol=1e-4)
      np.testing.assert_allclose(b.scores_N, a.scores_N, atol=1e-6)


@needs_lfw
def test_grey_and_rgba_inputs(detector):
  im = Image.open(lfw_photos(1)[0]).convert("RGB")
  rgb = np.asarray(im)
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
  grey = np.asarray(im.convert("L"))
  got_rgb, got_rgba, got_grey, got_grey1 = detector.detect([rgb, rgba, grey, grey[:, :, None]])
  np.testing.assert_array_equal(got_rgba.boxes_Nx4, got_rgb.boxes_Nx4)   # alpha dropped
  assert len(got_grey) >= 1
  np.testing.assert_allclose(got_grey.boxes_Nx4[0], got_rgb.boxes_Nx4[0], atol=8)
  np.testing.assert_array_equal(got_grey1.boxes_Nx4, got_grey.boxes_Nx4)


@needs_lfw
def test_align_faces_puts_landmarks_on_template(detector):
  rgb = np.asarray(Image.open(lfw_photos(1)[0]).convert("RGB"))
  faces = detector(rgb)
  crops = align.align_faces(rgb, faces.landmarks_Nx5x2[:1], "arcface112")
  assert crops.shape == (1, 112, 112, 3) and crops.std() > 10
  M = np.asarray(align.similarity_transform(faces.landmarks_Nx5x2[0], align.arcface_template()))
  mapped = np.asarray(align.apply_transform(M, faces.landmarks_Nx5x2[0]))
  assert np.abs(mapped - align.arcface_template()).max() < 8   # a face fits the template well


# ----------------------------------------------------------------------------- conversion


@pytest.fixture(scope="module")
def convert_script():
  from conftest import load_script
  return load_script("convert_mtcnn_weights")


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch /tmp/mtcnn_test_pwned",))


def test_restricted_unpickler_refuses_code(convert_script, tmp_path):
  import pickle
  for payload in (pickle.dumps([_Evil()]), pickle.dumps([os.system]), pickle.dumps({"a": 1})):
    with pytest.raises(convert_script.ConvertError, match="x.lz4"):
      convert_script.read_joblib_arrays(payload, "x.lz4")
  assert not os.path.exists("/tmp/mtcnn_test_pwned")


def test_convert_refuses_unpinned_files(convert_script, tmp_path):
  fake = tmp_path / "mtcnn-1.0.0-py3-none-any.whl"
  fake.write_bytes(b"PK\x03\x04 not the wheel")
  with pytest.raises(convert_script.ConvertError, match="SHA-256 .* nothing was read"):
    convert_script.read_inputs([str(fake)])
  for n in ("pnet", "rnet", "onet"):
    (tmp_path / f"{n}.lz4").write_bytes(b"\x04\x22\x4d\x18 tampered")
  with pytest.raises(convert_script.ConvertError, match="pnet.lz4: SHA-256"):
    convert_script.read_inputs([str(tmp_path / f"{n}.lz4") for n in ("pnet", "rnet", "onet")])


@needs_weights
def test_convert_real_wheel_equals_shared_weights(convert_script, tmp_path):
  """The wheel from the registry (or $MTCNN_WHEEL), converted, equals the shared .npz."""
  import subprocess
  import sys
  pytest.importorskip("lz4.frame", reason="lz4 not installed (pip install lz4)")
  wheel = os.environ.get("MTCNN_WHEEL")
  if not wheel:
    r = subprocess.run([sys.executable, "-m", "pip", "download", "mtcnn==1.0.0", "--no-deps",
                        "-q", "-d", str(tmp_path)], capture_output=True, timeout=120)
    wheel = str(tmp_path / "mtcnn-1.0.0-py3-none-any.whl")
    if r.returncode or not os.path.isfile(wheel):
      pytest.skip(f"pip download mtcnn==1.0.0 failed: {r.stderr.decode()[-200:]}")
  got = convert_script.convert([wheel])
  with np.load(WEIGHTS, allow_pickle=False) as want:
    assert list(got) == list(want.files)
    for k in want.files:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ----------------------------------------------------------------------------- against the package


REF_PYTHON = os.environ.get("MTCNN_REF_PYTHON", "/work/venvs/mtcnn_ref/bin/python")


@pytest.fixture(scope="module")
def reference_script():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "mtcnn_reference.py")
  spec = importlib.util.spec_from_file_location("mtcnn_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_comparison_metrics(reference_script):
  """IoU and the per-image agreement of benchmarks/mtcnn_reference.py against plain loops."""
  rng = np.random.default_rng(10)
  xy = rng.uniform(0, 100, (6, 2))
  a = np.concatenate([xy, xy + rng.uniform(10, 50, (6, 2))], 1)
  b = a + rng.normal(0, 4, a.shape)
  got = reference_script.iou_matrix(a, b)
  for i in range(6):
    for j in range(6):
      iw = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
      ih = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
      union = np.prod(a[i, 2:] - a[i, :2]) + np.prod(b[j, 2:] - b[j, :2]) - iw * ih
      assert got[i, j] == pytest.approx(iw * ih / union)
  row = lambda box, score, lm: np.concatenate([box, [score], lm[:, 0], lm[:, 1]])[None]
  lm = np.array([[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]], np.float64)
  box = np.array([30.0, 30, 70, 80])
  ref = [row(box, 0.99, lm), row(box, 0.99, lm), np.zeros((0, 15)), row(box, 0.9, lm)]
  ref[3] = np.concatenate([row(box + 200, 0.95, lm + 200), ref[3]])   # the top face is the other
  ours = [row(box + 1, 0.98, lm + [1.0, 1.0]),       # IoU 0.91, landmarks 1.41 px off: agrees
          row(box, 0.99, lm + [0.0, 2.5]),           # a landmark 2.5 px off
          row(box, 0.99, lm),                        # found where the reference found none
          np.concatenate([row(box, 0.9, lm), row(box + 200, 0.95, lm + 200)])]
  c = reference_script.compare_detections(ours, ref)
  assert (c["images"], c["ref_found"], c["ours_found"], c["both_found"]) == (4, 3, 4, 3)
  assert (c["iou_ok"], c["lm_ok"], c["agree"], c["same_count"]) == (3, 2, 2, 3)
  assert c["iou"][0] == pytest.approx(39 * 49 / (2 * 40 * 50 - 39 * 49))
  assert c["lm_err"][0] == pytest.approx(np.sqrt(2)) and c["lm_err"][1] == pytest.approx(2.5)
  assert np.isnan(c["iou"][2]) and c["iou"][3] == 1.0


@needs_lfw
def test_matches_the_mtcnn_package(reference_script, tmp_path):
  """The mtcnn 1.0.0 package itself (its own venv, $MTCNN_REF_PYTHON) on 4 LFW photos: the
  networks agree to 1e-4 on its own inputs, and the detections to 1e-2 px."""
  import subprocess
  if not os.path.isfile(REF_PYTHON):
    pytest.skip(f"no reference venv at {REF_PYTHON} (see benchmarks/mtcnn_reference.py; "
                f"set MTCNN_REF_PYTHON)")
  r = subprocess.run([REF_PYTHON, reference_script.__file__, "reference", f"--out={tmp_path}",
                      "--n=4", f"--lfw={LFW}"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  with np.load(tmp_path / "nets.npz") as z:
    arrays = dict(z)
  loaded = nets.load_weights(WEIGHTS)
  for k in range(3):
    reg, prob = nets.Jitted(loaded["pnet"])(arrays[f"pnet/{k}/x"] * 128 + 127.5)
    np.testing.assert_allclose(np.asarray(reg), arrays[f"pnet/{k}/reg"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(prob), arrays[f"pnet/{k}/prob"], atol=1e-4)
  for name in ("rnet", "onet"):
    got = nets.Jitted(loaded[name])(arrays[f"{name}/x"] * 128 + 127.5)
    for j, g in enumerate(got):
      want = arrays[f"{name}/out{j}"]
      np.testing.assert_allclose(np.asarray(g), want[:, 1] if j == len(got) - 1 else want, atol=1e-4)
  rel = [os.path.relpath(p, LFW) for p in reference_script.lfw_paths(LFW, 4)]
  ref = reference_script.load_parts(str(tmp_path / "ref"), rel)
  det = detect.MTCNN(loaded, detect.Settings.reference())
  ours = [reference_script.faces_rows(f) for f in det.detect(
      [np.asarray(Image.open(os.path.join(LFW, p)).convert("RGB")) for p in rel])]
  for o, want in zip(ours, ref):
    assert o.shape == want.shape
    np.testing.assert_allclose(o[:, :4], want[:, :4], atol=1e-2)
    np.testing.assert_allclose(o[:, 5:], want[:, 5:], atol=1e-2)
    np.testing.assert_allclose(o[:, 4], want[:, 4], atol=1e-4)
