"""CPU speed of this tree against an earlier commit, side by side in one run.

  .venv/bin/python benchmarks/vs_commit.py --base 2b748ec --rounds 3

Checks out ``--base`` into a git worktree (once, under /tmp) and times, alternating base and
this tree round by round so both see the same machine load, each in a fresh subprocess with
that tree first on ``PYTHONPATH``:

* ``train_step``: benchmarks/train_step.py's own worker (``--worker ours``): the jitted
  Inception-ResNet-v1 train step (``inception`` config, P x K = 8 x 4 at 160x160 unless
  changed), median seconds per step;
* ``style_adam``: the Gatys style-transfer Adam step of benchmarks/style_vs_torch.py (VGG19
  with the shared ImageNet weights, the ``gatys2015`` objective) at ``--style_size``, through
  the public ``style_jax.optimize`` / ``style_jax.cost`` functions both trees have, median seconds per step.

Prints a markdown table: per round and the median over rounds, and the ratio this / base
(target: within 5%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

from configs.style import get_config as style_config
import provenance   # this folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STYLE_SNIPPET = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from configs.style import get_config
from infra import vgg as vgg_lib
from infra.overrides import with_overrides
from style_jax import optimize
try:
  from style_jax import cost   # the cost's functions; in optimize before style_jax/cost.py
except ImportError:
  cost = optimize
size, steps, weights = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = with_overrides(get_config("gatys2015"), {"optimizer": "adam", "learning_rate": 2.0,
                                                  "weights": weights})
objective = cost.objective_from_config(config)
graphdef, vgg_state = nnx.split(vgg_lib.load_vgg(config.weights, 19, "avg"))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.uniform(-100, 100, (size, size, 3)), jnp.float32)
targets = cost.compute_targets(cost.make_features_fn(graphdef), vgg_state, objective,
                               x, [x[::-1]], [1.0])
tx = optimize.make_optimizer(config)
step = jax.jit(optimize.make_adam_step(cost.make_loss_terms(graphdef, objective), tx))
state = optimize.init_state(tx, x, 0)
state, v = step(vgg_state, targets, state); jax.block_until_ready(state)
times = []
for _ in range(steps):
  t = time.perf_counter(); state, v = step(vgg_state, targets, state); jax.block_until_ready(state)
  times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"times": times, "loss": float(v)}))
"""


def worktree(base: str) -> str:
  """A checkout of ``base`` under /tmp (made once)."""
  got = subprocess.run(["git", "rev-parse", "--short", "--verify", f"{base}^{{commit}}"], cwd=ROOT,
                       capture_output=True, text=True)
  if got.returncode:   # a CalledProcessError traceback before
    raise SystemExit(f"--base={base}: not a commit of this checkout")
  sha = got.stdout.strip()
  path = f"/tmp/facenet_style_jax_{sha}"
  if not os.path.isdir(path):
    subprocess.run(["git", "worktree", "add", "--detach", path, sha], cwd=ROOT, check=True,
                   capture_output=True)
  return path


def timed(tree: str, args: list[str]) -> dict:
  """Runs ``python args`` in ``tree`` with the tree's packages first; returns its RESULT."""
  env = dict(os.environ, PYTHONPATH=tree)
  out = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{tree}: {' '.join(args[:2])} failed:\n{out.stderr[-2000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--base", default="2b748ec")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--p", type=int, default=8)
  p.add_argument("--k", type=int, default=4)
  p.add_argument("--size", type=int, default=160)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--style_size", type=int, default=256)
  p.add_argument("--style_steps", type=int, default=5)
  p.add_argument("--weights", default=style_config().weights, help="VGG19 Keras HDF5 weights")
  p.add_argument("--jobs", default="train_step,style_adam", help="which programs to time")
  args = p.parse_args()
  unknown = sorted(set(args.jobs.split(",")) - {"train_step", "style_adam"})
  if unknown:   # before the worktree is made (a KeyError after it, before)
    p.error(f"--jobs: unknown {unknown}; expected train_step, style_adam")
  trees = {"base": worktree(args.base), "this": ROOT}
  jobs = {
      "train_step": ["benchmarks/train_step.py", "--worker", "ours", "--p", str(args.p), "--k",
                     str(args.k), "--size", str(args.size), "--steps", str(args.steps)],
      # the weights by absolute path: the base checkout is not beside ../shared
      "style_adam": ["-c", STYLE_SNIPPET, str(args.style_size), str(args.style_steps),
                     os.path.abspath(args.weights)],
  }
  jobs = {j: jobs[j] for j in args.jobs.split(",")}
  print(f"# base {args.base} vs this tree (HEAD {provenance.commit()}), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; train step {args.p}x{args.k} at {args.size} px, style Adam at "
        f"{args.style_size} px; median s/step per round, alternating", flush=True)
  med = {(j, t): [] for j in jobs for t in trees}
  for r in range(args.rounds):
    for job, cmd in jobs.items():
      for name, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
        res = timed(tree, cmd)
        med[job, name].append(float(np.median(res["times"])))
        print(f"  round {r} {job} {name}: {med[job, name][-1]:.3f} s/step (loss {res['loss']:.6g})",
              flush=True)
  print("\n| program | base s/step | this s/step | this / base |\n|---|---|---|---|")
  for job in jobs:
    b, t = np.median(med[job, "base"]), np.median(med[job, "this"])
    print(f"| {job} | {b:.3f} | {t:.3f} | {t / b:.3f} |")


if __name__ == "__main__":
  main()
