"""Test support: N local processes of one multi-process JAX run on CPU (gloo over loopback).

``launch(argv, processes, devices)`` starts ``argv`` once per process with the explicit
launch variables of ``infra/distributed.py`` and ``devices`` simulated CPU devices each;
``Group.wait`` collects every process's output and exit status, calling ``on_line(i, line)``
for each line as it arrives (to send a signal at a chosen step). Not a test: pytest collects
only ``test_*.py``; tests and ``tests/soak.py`` import it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the compiled programs of one test are the next test's: a persistent cache saves minutes
CACHE = os.path.join(tempfile.gettempdir(), "facenet_jax_multiproc_cache")
# ... every one of them: JAX keeps only programs that took over a second to compile, and the
# tiny config's two dozen small ones (initializers, the evaluation's embedding, metrics) cost
# a relaunched run most of its compile time (about 9 s of CPU against 5 s with all cached)
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_argv(workdir: str, *overrides: str) -> list[str]:
  """scripts/train_facenet.py on the tiny config."""
  return [sys.executable, os.path.join(ROOT, "scripts", "train_facenet.py"),
          f"--config={os.path.join(ROOT, 'configs', 'facenet.py')}:tiny", f"--workdir={workdir}",
          *overrides]


# A live process on a loaded 2-core CI machine has missed 20 s of heartbeats (a gloo abort in a
# test that then failed); tests that kill a process on purpose set a shorter one.
HEARTBEAT_S = 120


def env_for(process: int, processes: int, devices: int, port: int,
            heartbeat_s: int = HEARTBEAT_S, base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of process ``process`` of ``processes`` with ``devices`` CPU devices.

  ``NPROC`` = every process's thread count: XLA:CPU runs a process's ops on a pool of
  max(cores or $NPROC, local devices) threads, and Eigen's convolutions block their work by
  that count (the last rows of a 4-image convolution differed in the last bit between a
  process with 4 devices and one with 2), so layouts compared bit for bit get the same pool:
  the run's total device count. ``base``: the environment to start from (default ours)."""
  env = dict(os.environ if base is None else base, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             **CACHE_ENV, PYTHONUNBUFFERED="1",
             JAX_HEARTBEAT_TIMEOUT_S=str(heartbeat_s), NPROC=str(processes * devices))
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
            "SLURM_NTASKS"):
    env.pop(k, None)
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(process))
  return env


@dataclasses.dataclass
class Group:
  procs: list[subprocess.Popen]
  lines: list[list[str]]
  ended: list[float | None]

  def wait(self, timeout: float, on_line: Callable[[int, str], None] | None = None
           ) -> list[int]:
    """Exit statuses of every process (killing all on ``timeout`` and failing)."""
    def read(i):
      for line in self.procs[i].stdout:
        self.lines[i].append(line)
        if on_line is not None:
          on_line(i, line)
      self.procs[i].wait()
      self.ended[i] = time.time()
    threads = [threading.Thread(target=read, args=(i,), daemon=True)
               for i in range(len(self.procs))]
    for t in threads:
      t.start()
    deadline = time.time() + timeout
    for t in threads:
      t.join(max(0.0, deadline - time.time()))
    if any(t.is_alive() for t in threads):
      for p in self.procs:
        p.kill()
      raise TimeoutError(f"processes still running after {timeout} s:\n" + self.text(0)[-3000:])
    return [p.returncode for p in self.procs]

  def text(self, i: int) -> str:
    """Process ``i``'s output without gloo's connection chatter."""
    return "".join(l for l in self.lines[i] if not l.startswith("[Gloo]"))


def launch(argv: list[str], processes: int, devices: int, heartbeat_s: int = HEARTBEAT_S,
           extra: dict[int, list[str]] | None = None,
           extra_env: dict[int, dict[str, str]] | None = None) -> Group:
  """Starts ``argv`` as ``processes`` processes of one run (1: a plain single process);
  ``extra[i]`` / ``extra_env[i]``: arguments after ``argv`` / variables for process ``i``
  (a process launched differently)."""
  port = free_port()
  procs = [subprocess.Popen(["nice", "-n", "5", *argv, *(extra or {}).get(i, [])],
                            env={**env_for(i, processes, devices, port, heartbeat_s),
                                 **(extra_env or {}).get(i, {})},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  return Group(procs, [[] for _ in procs], [None] * len(procs))
