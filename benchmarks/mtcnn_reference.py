"""MTCNN in JAX against the original: per-network agreement, end-to-end agreement on LFW, and
speed beside facenet-pytorch's MTCNN, in one script that runs in three virtual environments.

The reference is the ``mtcnn`` 1.0.0 package (TensorFlow/Keras), whose weights are the ones
``../shared/weights/mtcnn_weights.npz`` was converted from; the speed comparison is
facenet-pytorch's MTCNN (its own copy of the same Caffe-trained networks). Neither is a
dependency of the project: each lives in its own benchmark-only virtual environment outside the
repository (benchmarks/requirements.txt lists them):

  python3 -m venv /work/venvs/mtcnn_ref
  /work/venvs/mtcnn_ref/bin/pip install mtcnn==1.0.0 tensorflow-cpu pillow
  python3 -m venv /work/venvs/facenet_pt
  /work/venvs/facenet_pt/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow requests tqdm
  /work/venvs/facenet_pt/bin/pip install --no-deps facenet-pytorch

Steps (each writes under --out, outside the repository; every step is resumable):

  # 1. reference outputs (in the mtcnn venv): per-network inputs/outputs on the crops the
  #    package itself makes (P-Net levels, R-Net 24x24 and O-Net 48x48 crops) -> nets.npz, and
  #    detections of every LFW image -> ref/part_NNNN.npz (512 images each)
  /work/venvs/mtcnn_ref/bin/python benchmarks/mtcnn_reference.py reference --out=/work/runs/mtcnn_ref
  # 2. ours on the same images (project venv; cached in ours/part_NNNN.npz) and the comparison;
  #    it lists the photos that disagree in disagree.txt
  .venv/bin/python benchmarks/mtcnn_reference.py compare --out=/work/runs/mtcnn_ref
  # 2b. the package again on those photos, one per call (its batched run breaks score ties by
  #     the whole batch's sort), then compare again to see them against that
  /work/venvs/mtcnn_ref/bin/python benchmarks/mtcnn_reference.py recheck --out=/work/runs/mtcnn_ref
  .venv/bin/python benchmarks/mtcnn_reference.py compare --out=/work/runs/mtcnn_ref
  # 3. speed: ours (this process) and facenet-pytorch (a child process in its venv), alternately
  .venv/bin/python benchmarks/mtcnn_reference.py speed --out=/work/runs/mtcnn_ref \\
      --torch_python=/work/venvs/facenet_pt/bin/python

Images are decoded with PIL in every environment (the same pixels for all detectors). The
comparison runs ours with the reference's settings (O-Net threshold 0.8, as the package's
default) and its box and landmark conventions (``detect.Settings.reference()``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from unittest import mock

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
LFW = os.path.join(SHARED, "data", "lfw", "images")
WEIGHTS = os.path.join(SHARED, "weights", "mtcnn_weights.npz")
PART = 512   # images per cached part file


def lfw_paths(root: str, n: int | None = None) -> list[str]:
  paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))
  return paths[:n] if n else paths


def load_rgb(path: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def parts(paths: list[str]):
  for p in range(0, len(paths), PART):
    yield p // PART, paths[p:p + PART]


def save_part(path: str, rel_paths: list[str], rows: list[np.ndarray]):
  """rows[i]: (K_i, 15) = x1, y1, x2, y2, score, 5 landmark x, 5 landmark y."""
  img = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(rows)] or [np.zeros(0, np.int32)])
  det = np.concatenate([r.reshape(-1, 15) for r in rows]) if rows else np.zeros((0, 15))
  tmp = path + ".tmp.npz"
  np.savez(tmp, paths=np.array(rel_paths), img=img, det=det.astype(np.float64))
  os.replace(tmp, path)


def load_parts(folder: str, rel_paths: list[str]) -> list[np.ndarray] | None:
  """The (K, 15) detections of each of rel_paths from folder/part_NNNN.npz, or None if missing."""
  out = []
  for k, chunk in parts(rel_paths):
    f = os.path.join(folder, f"part_{k:04d}.npz")
    if not os.path.isfile(f):
      return None
    with np.load(f, allow_pickle=False) as z:
      have = list(z["paths"])
      if have[:len(chunk)] != chunk:
        raise SystemExit(f"{f} holds other images than asked (delete it)")
      img, det = z["img"], z["det"]
    out += [det[img == i] for i in range(len(chunk))]
  return out


# ----------------------------------------------------------------------------- reference side


def run_reference(a):
  """In the mtcnn venv: per-network dump and end-to-end detections of the package."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # benchmarks/mtcnn.py (this folder, first on sys.path) would shadow the package
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
  import tensorflow as tf
  import mtcnn
  from mtcnn import MTCNN
  os.makedirs(os.path.join(a.out, "ref"), exist_ok=True)
  det = MTCNN()
  paths = lfw_paths(a.lfw, a.n)
  rel = [os.path.relpath(p, a.lfw) for p in paths]
  meta = {"mtcnn": getattr(mtcnn, "__version__", "?"), "tensorflow": tf.__version__}
  with open(os.path.join(a.out, "ref", "meta.json"), "w") as f:
    json.dump(meta, f)

  nets_file = os.path.join(a.out, "nets.npz")
  if not os.path.isfile(nets_file):
    # record what each stage's Keras model is given and gives on 16 photos: the inputs are the
    # package's own pyramid levels and crops (normalized pixels), so both sides see the same.
    rec = {"pnet": [], "rnet": [], "onet": []}
    for stage, name in zip(det.stages, ("pnet", "rnet", "onet")):
      model = stage._model

      def recorder(x, *args, _m=model, _n=name, **kw):
        out = _m(x, *args, **kw)
        rec[_n].append((np.asarray(x), [np.asarray(o) for o in out]))
        return out
      stage._model = recorder
    ims = [load_rgb(p).astype(np.float32) for p in paths[:16]]
    det.detect_faces(ims, output_type="numpy", box_format="xyxy", fit_to_image=False)
    arrays = {}
    for k, (x, outs) in enumerate(rec["pnet"][::3]):   # 3 of the 8 levels
      arrays[f"pnet/{k}/x"] = x.astype(np.float32)
      arrays[f"pnet/{k}/reg"], arrays[f"pnet/{k}/prob"] = outs[0], outs[1][..., 1]
    for name, n_out in (("rnet", 2), ("onet", 3)):
      x, outs = rec[name][0]
      arrays[f"{name}/x"] = x[:256].astype(np.float32)
      for j, o in enumerate(outs):
        arrays[f"{name}/out{j}"] = o[:256]
    np.savez(nets_file, **arrays)
    print(f"wrote {nets_file}: P-Net levels {[arrays[f'pnet/{k}/x'].shape for k in range(len(rec['pnet'][::3]))]}, "
          f"R-Net crops {arrays['rnet/x'].shape}, O-Net crops {arrays['onet/x'].shape}", flush=True)
    det = MTCNN()   # fresh stages (the recorders hold references)

  t0, done = time.perf_counter(), 0
  for k, chunk in parts(rel):
    f = os.path.join(a.out, "ref", f"part_{k:04d}.npz")
    if os.path.isfile(f):
      continue
    rows = []
    for s in range(0, len(chunk), a.batch):
      ims = [load_rgb(os.path.join(a.lfw, r)).astype(np.float32) for r in chunk[s:s + a.batch]]
      out = np.asarray(det.detect_faces(ims, output_type="numpy", box_format="xyxy", fit_to_image=False))
      out = out.reshape(-1, 16)
      for i in range(len(ims)):
        rows.append(out[out[:, 0] == i, 1:16])
      done += len(ims)
    save_part(f, chunk, rows)
    print(f"reference part {k}: {len(chunk)} images ({done / (time.perf_counter() - t0):.1f} images/s)", flush=True)


def run_recheck(a):
  """In the mtcnn venv: the package one photo per call on the photos 'compare' found disagreeing
  (disagree.txt), to tell our differences from its own batch-dependent ones -> recheck.npz."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
  from mtcnn import MTCNN
  det = MTCNN()
  with open(os.path.join(a.out, "disagree.txt")) as f:
    rel = [line.strip() for line in f if line.strip()]
  rows = []
  for r in rel:
    out = np.asarray(det.detect_faces(load_rgb(os.path.join(a.lfw, r)).astype(np.float32), output_type="numpy",
                                      box_format="xyxy", fit_to_image=False)).reshape(-1, 16)
    rows.append(out[:, 1:16])
  save_part(os.path.join(a.out, "recheck.npz"), rel, rows)
  print(f"rechecked {len(rel)} photos one per call")


# ----------------------------------------------------------------------------- metrics


def iou_matrix(a_Nx4: np.ndarray, b_Mx4: np.ndarray) -> np.ndarray:
  """(N, M) intersection over union of x1, y1, x2, y2 boxes (0 where a union is empty)."""
  a, b = np.asarray(a_Nx4, np.float64)[:, None], np.asarray(b_Mx4, np.float64)[None]
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)
  union = area(a) + area(b) - iw * ih
  return np.where(union > 0, iw * ih / np.where(union > 0, union, 1), 0.0)


def compare_detections(ours: list[np.ndarray], ref: list[np.ndarray], iou_min: float = 0.9,
                       px: float = 2.0) -> dict:
  """Per image: the reference's top-scoring face against our face of highest IoU with it.

  ours, ref: per image (K, 15) rows x1, y1, x2, y2, score, 5 x, 5 y. Returns counts: images,
  ref_found / ours_found (a face in the image), both_found, agree (IoU >= iou_min and every
  landmark within px, Euclidean), iou_ok, lm_ok, same_count, plus per-image iou and the largest
  landmark distance (NaN where either found nothing).
  """
  n = len(ref)
  ious, lm_err = np.full(n, np.nan), np.full(n, np.nan)
  same_count = 0
  for i, (o, r) in enumerate(zip(ours, ref)):
    same_count += len(o) == len(r)
    if not len(o) or not len(r):
      continue
    top = int(np.argmax(r[:, 4]))
    iou = iou_matrix(r[top:top + 1, :4], o[:, :4])[0]
    j = int(np.argmax(iou))
    ious[i] = iou[j]
    d = np.hypot(o[j, 5:10] - r[top, 5:10], o[j, 10:15] - r[top, 10:15])
    lm_err[i] = d.max()
  both = ~np.isnan(ious)
  iou_ok = both & (np.nan_to_num(ious) >= iou_min)
  lm_ok = both & (np.nan_to_num(lm_err, nan=np.inf) <= px)
  return {"images": n, "ref_found": int(sum(len(r) > 0 for r in ref)),
          "ours_found": int(sum(len(o) > 0 for o in ours)), "both_found": int(both.sum()),
          "iou_ok": int(iou_ok.sum()), "lm_ok": int(lm_ok.sum()), "agree": int((iou_ok & lm_ok).sum()),
          "same_count": int(same_count), "iou": ious, "lm_err": lm_err}


# ----------------------------------------------------------------------------- our side


def faces_rows(faces) -> np.ndarray:
  lm = faces.landmarks_Nx5x2
  return np.concatenate([faces.boxes_Nx4, faces.scores_N[:, None], lm[:, :, 0], lm[:, :, 1]], 1).astype(np.float64)


def run_compare(a):
  sys.path.insert(0, REPO)
  from facenet_jax.faces import detect, nets
  settings = detect.Settings.reference()
  loaded = nets.load_weights(a.weights)

  # per network, on the package's own inputs (normalized pixels -> 0..255 for ours)
  nf = os.path.join(a.out, "nets.npz")
  rows = []
  if os.path.isfile(nf):
    with np.load(nf, allow_pickle=False) as z:
      arr = dict(z)
    for name in ("pnet", "rnet", "onet"):
      net = nets.Jitted(loaded[name])
      if name == "pnet":
        k = 0
        worst = [0.0, 0.0]
        shapes = []
        while f"pnet/{k}/x" in arr:
          x = arr[f"pnet/{k}/x"] * 128.0 + 127.5
          reg, prob = net(x)
          worst[0] = max(worst[0], float(np.abs(np.asarray(reg) - arr[f"pnet/{k}/reg"]).max()))
          worst[1] = max(worst[1], float(np.abs(np.asarray(prob) - arr[f"pnet/{k}/prob"]).max()))
          shapes.append("x".join(str(s) for s in x.shape[:3]))
          k += 1
        rows.append(("P-Net", ", ".join(shapes), f"offsets {worst[0]:.1e}, face prob {worst[1]:.1e}", max(worst)))
      else:
        x = arr[f"{name}/x"] * 128.0 + 127.5
        got = [np.asarray(g) for g in net(x)]
        want = [arr[f"{name}/out{j}"] for j in range(len(got))]
        want[-1] = want[-1][:, 1]
        diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
        labels = ["offsets", "landmarks", "face prob"] if name == "onet" else ["offsets", "face prob"]
        rows.append((name.upper().replace("NET", "-Net"), f"{len(x)} crops",
                     ", ".join(f"{l} {d:.1e}" for l, d in zip(labels, diffs)), max(diffs)))
    print("\nPer network, the package's own inputs (max abs difference; target 1e-4):")
    print("| network | inputs | max abs diff | <= 1e-4 |")
    print("| --- | --- | --- | --- |")
    for name, inp, d, worst in rows:
      print(f"| {name} | {inp} | {d} | {'yes' if worst <= 1e-4 else 'NO'} |")

  # end to end
  paths = lfw_paths(a.lfw, a.n)
  rel = [os.path.relpath(p, a.lfw) for p in paths]
  ref_parts = sorted(glob.glob(os.path.join(a.out, "ref", "part_*.npz")))
  n_ref = min(len(rel), len(ref_parts) * PART)
  rel = rel[:n_ref]
  ref = load_parts(os.path.join(a.out, "ref"), rel)
  if ref is None or not rel:
    raise SystemExit(f"no reference detections under {a.out}/ref: run the 'reference' step first")
  tag = a.tag or "ours"
  os.makedirs(os.path.join(a.out, tag), exist_ok=True)
  det = detect.MTCNN(loaded, settings)
  t0, done = time.perf_counter(), 0
  for k, chunk in parts(rel):
    f = os.path.join(a.out, tag, f"part_{k:04d}.npz")
    if os.path.isfile(f) and not a.redo:
      continue
    out = []
    for s in range(0, len(chunk), a.batch):
      ims = [load_rgb(os.path.join(a.lfw, r)) for r in chunk[s:s + a.batch]]
      out += [faces_rows(fc) for fc in det.detect(ims)]
      done += len(ims)
    save_part(f, chunk, out)
    print(f"ours part {k}: {len(chunk)} images ({done / (time.perf_counter() - t0):.1f} images/s)", flush=True)
  ours = load_parts(os.path.join(a.out, tag), rel)
  c = compare_detections(ours, ref)
  n = c["images"]
  pct = lambda v, d=n: f"{v}/{d} ({100 * v / max(d, 1):.2f}%)"
  print(f"\nEnd to end, {n} LFW images (250x250), ours with the package's settings "
        f"(thresholds {settings.thresholds}, min face {settings.min_face_size:g} px, factor {settings.scale_factor}):")
  print("| measure | value | target |")
  print("| --- | --- | --- |")
  print(f"| a face found, reference | {pct(c['ref_found'])} | |")
  print(f"| a face found, ours | {pct(c['ours_found'])} | >= 99.5% |")
  print(f"| IoU >= 0.9 with the reference's top face | {pct(c['iou_ok'])} | |")
  print(f"| every landmark within 2 px | {pct(c['lm_ok'])} | |")
  print(f"| both (IoU >= 0.9 and landmarks within 2 px) | {pct(c['agree'])} | >= 99% |")
  print(f"| same number of faces | {pct(c['same_count'])} | |")
  neither = sum(not len(o) and not len(r) for o, r in zip(ours, ref))
  print(f"| no face in either (counted as not agreeing above) | {neither} | |")
  iou, lm = c["iou"][~np.isnan(c["iou"])], c["lm_err"][~np.isnan(c["lm_err"])]
  if len(iou):
    print(f"| IoU median / 1st percentile / min | {np.median(iou):.4f} / {np.percentile(iou, 1):.4f} / {iou.min():.4f} | |")
    print(f"| largest landmark distance median / 99th pct / max (px) | {np.median(lm):.3f} / {np.percentile(lm, 99):.3f} / {lm.max():.2f} | |")
  bad = np.flatnonzero(~((np.nan_to_num(c["iou"]) >= 0.9) & (np.nan_to_num(c["lm_err"], nan=np.inf) <= 2)))
  with open(os.path.join(a.out, "disagree.txt"), "w") as f:
    f.write("".join(rel[i] + "\n" for i in bad))
  recheck = os.path.join(a.out, "recheck.npz")
  if len(bad) and os.path.isfile(recheck):
    with np.load(recheck, allow_pickle=False) as z:
      have = {p: z["det"][z["img"] == i] for i, p in enumerate(z["paths"])}
    todo = [i for i in bad if rel[i] in have]
    r = compare_detections([ours[i] for i in todo], [have[rel[i]] for i in todo])
    exact = sum(len(ours[i]) == len(have[rel[i]]) and np.allclose(ours[i], have[rel[i]], atol=1e-2) for i in todo)
    print(f"\nThe {len(todo)} disagreeing photos against the package run one photo per call ('recheck'): "
          f"{r['agree']}/{r['images']} agree (IoU >= 0.9, landmarks within 2 px), {exact} identical to 0.01 "
          f"(boxes, landmarks, scores), {sum(not len(ours[i]) and not len(have[rel[i]]) for i in todo)} "
          f"with no face in either")
  if len(bad):
    print("disagreeing (first 10): " + ", ".join(
        f"{rel[i]} (iou {c['iou'][i]:.3f}, lm {c['lm_err'][i]:.2f} px, faces {len(ours[i])} vs {len(ref[i])})"
        for i in bad[:10]))


# ----------------------------------------------------------------------------- speed


def speed_images(lfw: str, n: int) -> list[str]:
  """n photos: every k-th person's first (as benchmarks/mtcnn.py picks them)."""
  people = sorted(os.listdir(lfw))
  people = people[::max(1, len(people) // n)][:n]
  return [sorted(glob.glob(os.path.join(lfw, p, "*.jpg")))[0] for p in people]


def timed(fn, rgbs, batch: int) -> tuple[float, float, int]:
  """(images per wall second, images per CPU second of this process, images with a face) of fn
  over rgbs in chunks of batch (1: one at a time)."""
  t, c = time.perf_counter(), time.process_time()
  found = 0
  for s in range(0, len(rgbs), batch):
    found += fn(rgbs[s:s + batch])
  return len(rgbs) / (time.perf_counter() - t), len(rgbs) / (time.process_time() - c), found


def run_torch_worker(a):
  """In the facenet-pytorch venv: answers 'single' / 'batched' lines on stdin with one JSON line."""
  import torch
  from facenet_pytorch import MTCNN
  torch.set_grad_enabled(False)
  torch.set_num_threads(a.threads)
  mt = MTCNN(keep_all=True, device="cpu")   # defaults: min face 20, factor 0.709, 0.6/0.7/0.7
  rgbs = [load_rgb(p) for p in speed_images(a.lfw, a.n or 48)]

  def fn(chunk):
    boxes, _, _ = mt.detect(np.stack(chunk) if len(chunk) > 1 else chunk[0], landmarks=True)
    boxes = boxes if len(chunk) > 1 else [boxes]
    return sum(b is not None and len(b) > 0 for b in boxes)
  for b in (1, a.batch):   # warm-up
    timed(fn, rgbs[:b], b)
  print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    b = 1 if line.strip() == "single" else a.batch
    ips, cps, found = timed(fn, rgbs, b)
    print(json.dumps({"ips": ips, "cps": cps, "found": found}), flush=True)


def run_speed(a):
  import subprocess
  sys.path.insert(0, REPO)
  from benchmarks import provenance
  import jax
  from facenet_jax.faces import detect
  paths = speed_images(a.lfw, a.n or 48)
  rgbs = [load_rgb(p) for p in paths]
  # default settings: thresholds 0.6/0.7/0.7 as facenet-pytorch; "ours" has the default
  # workers (2 threads per batch on a CPU), "ours_w1" one thread, to show what the threads add
  dets = {"ours": detect.MTCNN(a.weights), "ours_w1": detect.MTCNN(a.weights, detect.Settings(workers=1))}
  # "ours_xla": ours compiled with XLA's default options (on a CPU: YNNPACK convolutions), to
  # show what infra.convolution.detector_compiler_options adds
  from infra import convolution
  with mock.patch.object(convolution, "detector_compiler_options", lambda: {}):
    dets["ours_xla"] = detect.MTCNN(a.weights)

  def detector(who):
    return lambda chunk: sum(len(f) > 0 for f in dets[who].detect(chunk))
  threads = [int(t) for t in a.torch_threads.split(",")]
  workers = {f"torch{t}": subprocess.Popen(
      [a.torch_python, os.path.abspath(__file__), "torch_worker", "--out", a.out, "--lfw", a.lfw,
       "--n", str(len(rgbs)), "--batch", str(a.batch), "--threads", str(t)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for t in threads}
  for who in dets:
    for b in (1, a.batch):   # compile every shape this run meets
      timed(detector(who), rgbs, b)
  hello = {k: json.loads(w.stdout.readline()) for k, w in workers.items()}
  names = list(dets) + list(workers)
  results = {(who, mode): [] for who in names for mode in ("single", "batched")}
  per_cpu = {(who, mode): [] for who in names for mode in ("single", "batched")}
  found = {}
  for r in range(a.rounds):   # alternate, rotating the order, so that other jobs' load hits all alike
    for mode in ("single", "batched"):
      for who in names[r % len(names):] + names[:r % len(names)]:
        if who in dets:
          ips, cps, f = timed(detector(who), rgbs, 1 if mode == "single" else a.batch)
        else:
          workers[who].stdin.write(mode + "\n")
          workers[who].stdin.flush()
          got = json.loads(workers[who].stdout.readline())
          ips, cps, f = got["ips"], got["cps"], got["found"]
        results[(who, mode)].append(ips)
        per_cpu[(who, mode)].append(cps)
        found[(who, mode)] = f
      print(f"round {r}: {mode}: " + ", ".join(f"{w} {results[(w, mode)][-1]:.2f}" for w in names)
            + f" images/s (load {os.getloadavg()[0]:.1f})", flush=True)
  for w in workers.values():
    w.stdin.close()
    w.wait()
  label = {"ours": f"ours (JAX, {dets['ours'].workers} worker threads)",
           "ours_w1": "ours, 1 worker thread",
           "ours_xla": "ours, XLA's default compiler options"} | {k: f"facenet-pytorch, {v['threads']} thread{'s' * (v['threads'] > 1)}"
                                   for k, v in hello.items()}
  first = next(iter(hello.values()))
  print(f"\nSpeed, {len(rgbs)} LFW photos 250x250 (every k-th person's first), {a.rounds} rounds alternating "
        f"the detectors, median images/s; ours: JAX {jax.__version__} on {jax.devices()[0].platform}, "
        f"facenet-pytorch 2.6.0 on torch {first['torch']}; commit {provenance.commit()}, {provenance.machine()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}; thresholds 0.6/0.7/0.7, min face 20 px, factor 0.709")
  for title, table in (("images per wall-clock second", results),
                       ("images per CPU second of the detector's own process (all its threads; "
                        "less sensitive to other jobs' load)", per_cpu)):
    print(f"\n{title}:")
    print("| mode | " + " | ".join(label[w] for w in names) + " | ours / fastest facenet-pytorch | photos with a face |")
    print("| --- " * (len(names) + 3) + "|")
    for mode, text in (("single", "one photo per call"), ("batched", f"batches of {a.batch}")):
      med = {w: float(np.median(table[(w, mode)])) for w in names}
      best = max(med[w] for w in workers)
      print(f"| {text} | " + " | ".join(f"{med[w]:.2f}" for w in names) + f" | {med['ours'] / best:.2f}x | "
            + ", ".join(f"{found[(w, mode)]}/{len(rgbs)}" for w in names) + " |")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("step", choices=["reference", "recheck", "compare", "speed", "torch_worker"])
  ap.add_argument("--out", required=True)
  ap.add_argument("--lfw", default=LFW)
  ap.add_argument("--weights", default=WEIGHTS)
  ap.add_argument("--n", type=int, default=None, help="first n LFW images (sorted paths); all by default")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--tag", default=None)
  ap.add_argument("--redo", action="store_true")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--torch_python", default="/work/venvs/facenet_pt/bin/python")
  ap.add_argument("--torch_threads", default="1,2", help="one facenet-pytorch worker per thread count")
  ap.add_argument("--threads", type=int, default=1, help="(torch_worker) torch.set_num_threads")
  a = ap.parse_args()
  {"reference": run_reference, "recheck": run_recheck, "compare": run_compare, "speed": run_speed,
   "torch_worker": run_torch_worker}[a.step](a)


if __name__ == "__main__":
  main()
