"""Multi-process runs: start-up, barriers with timeouts, and the stop step all processes agree on.

Where the process count and id come from (:func:`launch_settings`, first match wins):

* ``explicit``: ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID`` and optionally ``JAX_LOCAL_DEVICE_IDS`` (``0,1``); a script's flags
  override them. JAX itself reads only the address from the environment, so these are read
  here (``jax.distributed.initialize()`` without them fails with "Number of processes must be
  defined").
* ``slurm`` / ``openmpi``: a multi-task SLURM step or an Open MPI launch; JAX reads its variables.
* ``auto``: ``JAX_DISTRIBUTED=auto`` asks JAX to detect any other cluster it knows (Cloud TPU
  pods, Kubernetes, mpi4py).

Nothing set: one process, nothing happens. Missing pieces are a :class:`LaunchError` naming them.
``JAX_HEARTBEAT_TIMEOUT_S`` (any launch) sets how long a silent process may go before it is
declared dead (default :data:`HEARTBEAT_TIMEOUT_S`); raise it on a machine so loaded that a
live process can miss heartbeats that long.

A process that dies must not leave the others hanging: the coordination service's heartbeat
(``heartbeat_timeout_s``) ends the survivors with an error naming the missing task, and every
barrier here has a timeout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Callable, Mapping, TypeVar

import jax
import numpy as np

from infra.errors import UserError

T = TypeVar("T")

INIT_TIMEOUT_S = 300       # how long a process waits for all others to connect
COMPILE_TIMEOUT_S = 3600   # how long a process waits for the others to compile a program
HEARTBEAT_TIMEOUT_S = 20   # a process silent this long is declared dead, and every process exits
EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class LaunchError(UserError, ValueError):
  """The multi-process settings are incomplete or malformed: one line naming the variable
  (or flag) and what was expected. A user error: a script reports it as ``error: ...`` on
  stderr with exit status 2 (``infra.cli``), not as a traceback."""


class ProcessGroupError(RuntimeError):
  """Another process did not reach a barrier in time (it died, hung or failed)."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run (``source`` ``single``: it does not)."""
  source: str = "single"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S


def _int(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise LaunchError(f"{name}={value!r}: expected an integer") from None


def launch_settings(environ: Mapping[str, str] | None = None, *, coordinator_address: str = "",
                    num_processes: int | None = None, process_id: int | None = None,
                    local_device_ids: str = "") -> Launch:
  """The :class:`Launch` of this process from ``environ`` (default ``os.environ``) and the
  explicit arguments (a script's flags; they win over the environment). See the module doc."""
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  n = num_processes if num_processes is not None else (
      _int("JAX_NUM_PROCESSES", env["JAX_NUM_PROCESSES"]) if env.get("JAX_NUM_PROCESSES") else None)
  pid = process_id if process_id is not None else (
      _int("JAX_PROCESS_ID", env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None)
  ids = local_device_ids or env.get("JAX_LOCAL_DEVICE_IDS", "")
  ids = tuple(_int("JAX_LOCAL_DEVICE_IDS", i) for i in ids.split(",")) if ids else None
  heartbeat = _int("JAX_HEARTBEAT_TIMEOUT_S",
                   env.get("JAX_HEARTBEAT_TIMEOUT_S") or str(HEARTBEAT_TIMEOUT_S))
  if heartbeat <= 0:
    raise LaunchError(f"JAX_HEARTBEAT_TIMEOUT_S={heartbeat}: expected a positive number of seconds")
  if n is not None and n < 1:   # before "missing": --num_processes=0 alone said the others were
    raise LaunchError(f"{'--num_processes' if num_processes is not None else EXPLICIT[1]}={n}: "
                      f"expected a positive number of processes")
  if address or n is not None or pid is not None:
    missing = [name for name, v in zip(EXPLICIT, (address, n, pid)) if v in ("", None)]
    if missing:
      raise LaunchError(
          f"multi-process launch needs {', '.join(EXPLICIT)} (or the flags --coordinator_address, "
          f"--num_processes, --process_id); missing: {', '.join(missing)}")
    # each message names where the value came from: a script's flag, else the variable
    addr_name = "--coordinator_address" if coordinator_address else EXPLICIT[0]
    n_name = "--num_processes" if num_processes is not None else EXPLICIT[1]
    pid_name = "--process_id" if process_id is not None else EXPLICIT[2]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      # a bad port crashed JAX's RPC setup (a segfault, or a hang for 99999)
      raise LaunchError(f"{addr_name}={address!r}: expected host:port of process 0, the port "
                        f"1..65535")
    if n < 1:
      raise LaunchError(f"{n_name}={n}: expected a positive number of processes")
    if not 0 <= pid < n:
      raise LaunchError(f"{pid_name}={pid} must be in 0 .. {n_name} - 1 = {n - 1}")
    return Launch("explicit", address, n, pid, ids, heartbeat)
  if env.get("SLURM_JOB_ID") and _int("SLURM_NTASKS", env.get("SLURM_NTASKS") or "1") > 1:
    return Launch("slurm", heartbeat_timeout_s=heartbeat)
  if env.get("OMPI_MCA_orte_hnp_uri") and _int(
      "OMPI_COMM_WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE") or "1") > 1:
    return Launch("openmpi", heartbeat_timeout_s=heartbeat)
  mode = env.get("JAX_DISTRIBUTED", "")
  if mode not in ("", "auto", "off"):
    raise LaunchError(f"JAX_DISTRIBUTED={mode!r}: expected 'auto' (let JAX detect the cluster) or 'off'")
  return Launch("auto" if mode == "auto" else "single", heartbeat_timeout_s=heartbeat)


def initialize(launch: Launch, *, init_timeout_s: int = INIT_TIMEOUT_S) -> None:
  """``jax.distributed.initialize`` for ``launch`` (nothing for ``single``); before any JAX
  computation. CPU processes exchange collectives over gloo (JAX's default)."""
  if launch.source == "single":
    return
  kwargs = {}
  if launch.source == "explicit":
    kwargs = dict(coordinator_address=launch.coordinator_address,
                  num_processes=launch.num_processes, process_id=launch.process_id,
                  local_device_ids=list(launch.local_device_ids) if launch.local_device_ids else None)
  # JAX's preemption service catches SIGTERM for its own sync points, which nothing here uses:
  # a SIGTERM outside the training loop (preparing data, compiling, at a barrier) was logged
  # and dropped, and the process ran on. Off, the default action ends it there, and inside the
  # loop infra.preemption's handler turns it into the agreed checkpoint-and-exit.
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=int(init_timeout_s),
                               heartbeat_timeout_seconds=int(launch.heartbeat_timeout_s))
  except ValueError as e:   # a cluster JAX half-detects: its own message, one line
    raise LaunchError(f"jax.distributed.initialize ({launch.source} launch): {e}") from e


def maybe_initialize(**flags) -> Launch:
  """:func:`launch_settings` (``flags``: its keyword arguments) then :func:`initialize`;
  returns the launch (``source == "single"``: one process, nothing done)."""
  launch = launch_settings(**flags)
  initialize(launch)
  return launch


def is_lead() -> bool:
  """Whether this process writes the run's single files (config, results, events, images)."""
  return jax.process_index() == 0


_BARRIERS = itertools.count()


def barrier(what: str, timeout_s: float) -> None:
  """Waits until every process reaches this barrier (each call site is a new barrier), or
  raises ProcessGroupError naming ``what`` after ``timeout_s``."""
  if jax.process_count() == 1:
    return
  import orbax.checkpoint as ocp   # its barrier has a timeout; jax's sync_global_devices has none
  key = f"infra-{next(_BARRIERS)}-{what}"
  try:
    ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=int(timeout_s * 1000))
  except Exception as e:   # the client raises a generic XlaRuntimeError (DEADLINE_EXCEEDED, ...)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ProcessGroupError(
        f"process {jax.process_index()}: not every one of the {jax.process_count()} processes "
        f"reached '{what}' within {timeout_s:g} s ({first}); did one die or fail?") from e


def run_on_process_zero_then_barrier(fn: Callable[[], T], timeout_s: float, what: str) -> T | None:
  """Runs ``fn`` on process 0 while the others wait (at most ``timeout_s``) for it to finish;
  returns its result on process 0 and None elsewhere. For work that must happen once per
  shared filesystem (preparing a dataset). An error in ``fn`` on process 0 propagates there;
  the others then time out with a ProcessGroupError naming ``what``."""
  result = fn() if is_lead() else None
  barrier(what, timeout_s)
  return result


def agreed_signal(local: int | None) -> int | None:
  """The stop signal every process acts on: the largest signal number any process received
  (None when none did). A collective: every process must call it at the same point."""
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  got = np.asarray(multihost_utils.process_allgather(np.int32(local or 0)))
  top = int(got.max())
  return top or None


def process_sum(n: int) -> int:
  """The sum of ``n`` over the processes (a collective: every process calls it at the same
  point); ``n`` itself in a one-process run."""
  if jax.process_count() == 1:
    return int(n)
  from jax.experimental import multihost_utils
  return int(np.asarray(multihost_utils.process_allgather(np.int64(n))).sum())


class ProcessMismatchError(UserError, ValueError):
  """The processes of one run were started with different configs or read different data."""


def check_equal_device_counts() -> None:
  """Raises ProcessMismatchError when the processes hold different numbers of devices (read
  from the global device list, no collective: the all-gathers below need equal counts). The
  data mesh puts each process's devices in one row; 1 + 3 devices failed with "cannot reshape
  array of size 4 into shape (2,1)"."""
  import collections
  counts = collections.Counter(d.process_index for d in jax.devices())
  if len(set(counts.values())) > 1:
    raise ProcessMismatchError(
        "the processes of this run hold different numbers of devices (" + ", ".join(
            f"process {p}: {n}" for p, n in sorted(counts.items())) + "); give every process "
        "the same number (JAX_NUM_CPU_DEVICES, JAX_LOCAL_DEVICE_IDS or the accelerators visible)")


def gathered_bytes(data: bytes) -> list[bytes]:
  """``data`` of every process, in process order (a collective: every process calls it at the
  same point). Two all-gathers: the lengths, then the bytes padded to the longest."""
  from jax.experimental import multihost_utils
  lengths = np.asarray(multihost_utils.process_allgather(np.int64(len(data)))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
  return [bytes(r[:n]) for r, n in zip(rows, lengths)]


def _leaves(obj, prefix: str = "") -> dict:
  """A JSON object's leaves by dotted name."""
  if not isinstance(obj, dict):
    return {prefix.rstrip("."): obj}
  out = {}
  for k, v in obj.items():
    out.update(_leaves(v, f"{prefix}{k}."))
  return out


def _difference(a: str, b: str, k: int) -> str:
  """How process ``k``'s value ``b`` differs from process 0's ``a``: the differing fields of
  two JSON objects (up to three, both values), else both values."""
  try:
    fa, fb = _leaves(json.loads(a)), _leaves(json.loads(b))
  except ValueError:
    return f"{a!r} on process 0, {b!r} on process {k}"
  diff = [n for n in sorted(set(fa) | set(fb)) if fa.get(n) != fb.get(n)]
  more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
  return "; ".join(f"{n}: {fa.get(n)!r} on process 0, {fb.get(n)!r} on process {k}"
                   for n in diff[:3]) + more


def check_same_everywhere(what: str, value: str) -> None:
  """Raises ProcessMismatchError when ``value`` (a config as JSON, the name of the data read)
  differs between the processes of the run, naming how (the differing fields of JSON, else
  both values). Every process must call it at the same point. The processes of one run must agree:
  a process launched with another flag trained its half of every batch under another objective,
  one reading another copy of the data fed its rows from it, and both ended with exit 0 and
  results of neither (and a different data_dir per process waited a day at the preparation's
  barrier). One process: nothing to compare."""
  if jax.process_count() == 1:
    return
  check_equal_device_counts()
  values = [v.decode() for v in gathered_bytes(value.encode())]
  for k, v in enumerate(values):
    if v != values[0]:
      raise ProcessMismatchError(f"the processes of this run disagree on {what}: "
                                 f"{_difference(values[0], v, k)}; start every process with the "
                                 "same flags and data")


class CompiledTogether:
  """A jitted function that, in a multi-process run, is compiled on its first call and
  entered by every process only once all of them have compiled it (a barrier of
  ``timeout_s``). XLA:CPU connects its gloo collectives lazily, at a program's first
  collective, and gives the other processes 30 s to arrive: a process still compiling
  (minutes on a loaded machine) made the others fail with "Gloo context initialization
  failed ... GetKeyValue() timed out". One process: the jitted function itself. Every call
  must have the first call's shapes and shardings (a train step's do)."""

  def __init__(self, jitted: Callable, what: str, timeout_s: float = COMPILE_TIMEOUT_S):
    self.jitted, self.what, self.timeout_s = jitted, what, timeout_s
    self.compiled: Callable | None = None

  def __call__(self, *args):
    if jax.process_count() == 1:
      return self.jitted(*args)
    if self.compiled is None:
      self.compiled = self.jitted.lower(*args).compile()
      barrier(f"compiled {self.what}", self.timeout_s)
    return self.compiled(*args)

  def lower(self, *args):
    """The jitted function's ``lower`` (ahead-of-time compilation, benchmarks)."""
    return self.jitted.lower(*args)
