"""The streaming input pipeline: preparation speed, host throughput, startup and peak RSS.

  .venv/bin/python benchmarks/input_pipeline.py                      # the issue's sizes
  .venv/bin/python benchmarks/input_pipeline.py --folder_images=4000 --shard_images=5000,50000

All generated data goes under ``--work`` (default /tmp/facenet_input_bench), never the repo.

1. prepare: a procedural identity folder of ``--folder_images`` 250x250 face-sized JPEGs
   (20 per person) -> fitted 112 px shards with ``--prepare_workers`` processes; images/s
   and images/s per worker.
2. shards written directly (no source files) for each of ``--shard_images`` at 112 px, and
   at 160 px for the first size: procedural smooth images, JPEG quality 95.
3. host throughput: ``data/batches.TrainBatches`` (read, decode, batch; the records are
   already fitted) over the prepared shards, P x K = 45 x 4, with 1 and 2 grain workers
   at 112 and 160 px: images/s and images/s per worker process.
   Images per CPU second (this process and its workers) are printed beside images per
   wall second: per core, and robust to other jobs on a shared machine.
4. training runs per shard size: ``scripts/train_facenet.py --config.data.source=folder``
   on the prepared folder (small ConvNet, ``--train_steps`` steps): seconds from launch to
   the first finished step, and the peak RSS of its process tree (polled every 0.1 s); a
   cold start (an empty compilation cache per size: the run compiles), then the same run
   again (warm: the train step comes from the cache, as on a resume or rerun). With
   ``--long_steps``, one longer run on the largest size: the peak RSS in each quarter of its
   steps (memory that stays flat over a run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from facenet_jax.data import batches, prepare, records   # noqa: E402
from facenet_jax.data.images import Fit   # noqa: E402
from facenet_jax.sampler import PKSampler   # noqa: E402
from infra import cli   # noqa: E402

import provenance   # noqa: E402  (this folder)

_WORK = flags.DEFINE_string("work", "/tmp/facenet_input_bench", "generated data and runs")
_FOLDER = flags.DEFINE_integer("folder_images", 50_000, "images of the procedural folder (0: skip)",
                               lower_bound=0)
_SHARDS = flags.DEFINE_list("shard_images", ["50000", "500000"], "sizes written directly as shards")
_PREP_WORKERS = flags.DEFINE_integer("prepare_workers", 0, "0: every core", lower_bound=0)
_STEPS = flags.DEFINE_integer("throughput_steps", 40, "batches timed per throughput point",
                              lower_bound=1)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "steps of each training run", lower_bound=1)
_LONG_STEPS = flags.DEFINE_integer("long_steps", 0, "then one run of this many steps on the largest "
                                   "size: peak RSS per quarter of its steps (0: skip)", lower_bound=0)
# checked when the flags are parsed: a bad size failed after the folder had been prepared
flags.register_validator("shard_images", lambda v: bool(v) and all(
    t.strip().isdigit() and int(t) >= 1 for t in v), message="expected positive integers, e.g. 50000,500000")


def face(person: int, k: int, size: int) -> np.ndarray:
  """A smooth procedural 'face' (low-frequency template of the person + per-image shift,
  lighting and noise): JPEG sizes and decode cost close to real face crops."""
  rng = np.random.default_rng(person)
  coarse = rng.integers(40, 220, (6, 6, 3)).astype(np.float32)
  ys = np.linspace(0, 5, size)[:, None]
  xs = np.linspace(0, 5, size)[None, :]
  y0, x0 = np.floor(ys).astype(int).clip(0, 4), np.floor(xs).astype(int).clip(0, 4)
  fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
  img = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
         + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
  r = np.random.default_rng((person, k))
  img = np.roll(img, r.integers(-size // 16, size // 16 + 1, 2), (0, 1)) * r.uniform(0.8, 1.2)
  img += r.normal(0, 6, img.shape)
  return img.clip(0, 255).astype(np.uint8)


def _write_people(root: str, people: range) -> None:
  from PIL import Image
  for p in people:
    os.makedirs(f"{root}/p{p:06d}", exist_ok=True)
    for k in range(20):
      dst = f"{root}/p{p:06d}/{k:02d}.jpg"
      if not os.path.exists(dst):   # each file renamed into place when whole: resumable
        Image.fromarray(face(p, k, 250)).save(dst + ".partial.jpg", quality=90)
        os.replace(dst + ".partial.jpg", dst)


def _parallel(fn, jobs: list) -> None:
  """``fn(*job)`` for every job over one process per core, with a progress line."""
  import multiprocessing as mp
  t = time.perf_counter()
  with mp.get_context("spawn").Pool(len(os.sched_getaffinity(0))) as pool:
    tty = sys.stdout.isatty()   # a log file gets a line per tenth, a terminal one line redrawn
    for i, _ in enumerate(pool.imap_unordered(_star, [(fn, j) for j in jobs]), 1):
      if tty or i == len(jobs) or i % max(1, len(jobs) // 10) == 0:
        rate = i / (time.perf_counter() - t)
        start = "\r" if tty else ""
        print(f"{start}  {fn.__name__} {i}/{len(jobs)}  {rate:.2f}/s  "
              f"eta {(len(jobs) - i) / rate:.0f} s", end="" if tty else "\n", flush=True)
  if tty:
    print(flush=True)


def _star(fn_job):
  fn, job = fn_job
  return fn(*job)


def write_folder(root: str, n: int) -> None:
  """``n`` procedural 250x250 JPEGs, 20 per person, as root/p<person>/<k>.jpg (resumable)."""
  people = -(-n // 20)
  _parallel(_write_people, [(root, range(p, min(people, p + 100))) for p in range(0, people, 100)])


def write_shards(path: str, n: int, size: int, per_shard: int = prepare.RECORDS_PER_SHARD) -> str:
  """A prepared dataset of ``n`` procedural images at ``size`` px written directly (resumable:
  finished shards are kept)."""
  if records.is_prepared(path):
    return path
  os.makedirs(path, exist_ok=True)
  fit = Fit(size, 0, 3)
  num = -(-n // per_shard)
  _parallel(_write_shard, [(path, s, num, n, size, per_shard) for s in range(num)])
  labels = (np.arange(n) // 20).astype(np.int32)
  plan = prepare.Plan("generated", "procedural", [f"{i}" for i in range(n)], labels,
                      [f"p{p}" for p in range(labels[-1] + 1)], f"n{n}")
  meta = prepare.plan_record(plan, fit, "jpeg", 95, per_shard)
  prepare.write_index(path, plan, {**meta, "shards": [records.shard_name(s, num) for s in range(num)]})
  return path


def _write_shard(path: str, s: int, num: int, n: int, size: int, per_shard: int) -> None:
  from array_record.python import array_record_module as arm
  final = os.path.join(path, records.shard_name(s, num))
  if os.path.exists(final):   # each shard renamed into place when whole: a killed run resumes
    return
  w = arm.ArrayRecordWriter(final + ".partial", "group_size:1")
  for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
    w.write(records.encode(face(i // 20, i % 20, size), "jpeg", 95))
  w.close()
  os.replace(final + ".partial", final)


def _cpu_seconds(proc: psutil.Process) -> float:
  """User + system CPU seconds of ``proc`` and its live children (grain's workers)."""
  total = 0.0
  for p in [proc] + proc.children(recursive=True):
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.Error:
      pass
  return total


def throughput(path: str, workers: int, steps: int) -> dict:
  """TrainBatches over ``path`` (first batch, with worker start, excluded): images per wall
  second, and images per CPU second of this process and its workers, which is what one
  core would deliver and much less sensitive than wall time to other jobs on the machine."""
  ds = records.open_prepared(path)
  loader = batches.TrainBatches(records.RecordImages(ds), PKSampler(ds.labels, 45, 4, 0),
                                steps + 1, workers=workers, prefetch=4)
  loader(0)
  me = psutil.Process()
  cpu0, t = _cpu_seconds(me), time.perf_counter()
  for s in range(1, steps + 1):
    loader(s)
  dt, cpu = time.perf_counter() - t, _cpu_seconds(me) - cpu0
  loader.close()
  return {"images_per_s": steps * 180 / dt, "per_worker": steps * 180 / dt / workers,
          "images_per_cpu_s": steps * 180 / cpu}


def train_run(path: str, size: int, workdir: str, steps: int, cache: str) -> dict:
  """Launch-to-first-step seconds and peak RSS (process tree) of a short training run whose
  compiled programs are kept under ``cache`` (an empty one: a cold start)."""
  cmd = [sys.executable, os.path.join(REPO, "scripts/train_facenet.py"), "--config=configs/facenet.py",
         f"--workdir={workdir}", "--config.data.source=folder", f"--config.data.data_dir={path}",
         f"--config.data.image_size={size}", f"--config.num_steps={steps}", "--config.log_every=1",
         f"--config.eval_every={steps}", f"--config.checkpoint_every={steps}",
         "--config.identities_per_batch=16", "--config.images_per_identity=4"]
  t0 = time.time()
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["XDG_CACHE_HOME"] = cache   # scripts keep compiled programs under it (infra/cli.py)
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
  lines, first, step = [], [], [0]

  def read():   # progress lines: the first marks the end of start-up, each one the step
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("step ") and "/" in line.split()[1]:
        step[0] = int(line.split()[1].split("/")[0])
        if not first:
          first.append(time.time() - t0)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  peak, quarters = 0, [0, 0, 0, 0]   # peak RSS while the run was in each quarter of its steps
  while proc.poll() is None:
    try:
      tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
      rss = sum(p.memory_info().rss for p in tree if p.is_running())
      peak = max(peak, rss)
      if first:
        q = min(3, 4 * (step[0] - 1) // steps)
        quarters[q] = max(quarters[q], rss)
    except psutil.Error:
      pass
    time.sleep(0.1)
  reader.join(timeout=10)
  if proc.returncode:
    raise RuntimeError("training run failed:\n" + "".join(lines[-40:]))
  # flat memory over a run: the four quarters' peaks equal (the last includes the final
  # evaluation and checkpoint)
  return {"first_step_s": first[0] if first else None, "peak_rss_gb": peak / 2 ** 30,
          "peak_rss_by_quarter_gb": [round(q / 2 ** 30, 3) for q in quarters],
          "wall_s": time.time() - t0}


def main(argv):
  del argv
  work = _WORK.value
  os.makedirs(work, exist_ok=True)
  cores = len(os.sched_getaffinity(0))
  out = {"commit": provenance.commit(), "machine": provenance.machine(), "cores": cores,
         "load_before": os.getloadavg()[0]}
  if _FOLDER.value:
    root = os.path.join(work, f"folder{_FOLDER.value}")
    write_folder(root, _FOLDER.value)
    t = time.perf_counter()
    plan = prepare.folder_plan(root)
    out["plan_s"] = time.perf_counter() - t   # listing + reading every file for the content key
    workers = _PREP_WORKERS.value or cores
    t = time.perf_counter()
    # shards of N / (4 x workers) records: every worker has shards to write
    per = max(64, -(-len(plan) // (4 * workers)))
    prepare.prepare(plan, os.path.join(work, f"prepared_run{time.time_ns()}"), Fit(112, 0, 3),
                    workers=workers, records_per_shard=per)
    dt = time.perf_counter() - t
    out["prepare"] = {"commit": out["commit"], "machine": out["machine"],
                      "images": len(plan), "workers": workers, "images_per_s": len(plan) / dt,
                      "images_per_s_per_worker": len(plan) / dt / workers}
    print(json.dumps(out["prepare"]), flush=True)
  sizes = [int(s) for s in _SHARDS.value]
  out["throughput"], out["train"] = {}, {}
  for px in (112, 160):
    path = write_shards(os.path.join(work, f"shards{sizes[0]}_{px}"), sizes[0], px)
    for w in (1, 2):
      out["throughput"][f"{px}px_{w}w"] = throughput(path, w, _STEPS.value)
      print(px, w, out["throughput"][f"{px}px_{w}w"], flush=True)
  for n in sizes:
    path = write_shards(os.path.join(work, f"shards{n}_112"), n, 112)
    cache = os.path.join(work, f"xla_cache{time.time_ns()}")   # empty: the cold run compiles
    for start in ("cold", "warm"):   # warm: the same run started again, programs cached
      out["train"][f"{n}_{start}"] = r = train_run(
          path, 112, os.path.join(work, f"run{n}_{time.time_ns()}"), _TRAIN_STEPS.value, cache)
      print(n, start, r, flush=True)
  if _LONG_STEPS.value:
    out["train"][f"{n}_long"] = r = train_run(
        path, 112, os.path.join(work, f"run{n}_{time.time_ns()}"), _LONG_STEPS.value, cache)
    print(n, "long", r, flush=True)
  out["load_after"] = os.getloadavg()[0]
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  cli.run(main)
