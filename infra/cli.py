"""How every script starts and ends: ``cli.run(main)`` in place of ``app.run(main)``.

Exit statuses, the same for every script in scripts/:

  0    done
  1    a bug: any other exception, with its traceback (please report it)
  2    a user error, as one line on stderr: ``error: <message>``, the message naming the
       flag, config field, file or workdir and what was expected. User errors are
       ``infra.errors.UserError`` (``ConfigError``, ``WorkdirError``, ``DataError``, a
       malformed multi-process launch variable or flag: ``LaunchError``, a missing input
       file: ``MissingFileError``, a NaN loss: ``NonFiniteLossError``, ...),
       flag parsing errors, ``app.UsageError``, ``SystemExit("message")`` and an OSError
       that names its file (a missing input, a folder given as a file, ...)
  128 + signal (143 SIGTERM, 130 SIGINT)
       preempted: the run checkpointed the current step and stopped; run it again to resume

``$FACENET_TRACEBACK=1`` prints the traceback of a user error too (for a bug report).

Compiled XLA programs are kept between runs (JAX's persistent compilation cache) in
``$JAX_COMPILATION_CACHE_DIR``, by default ``~/.cache/facenet_jax/xla`` (``$XDG_CACHE_HOME``
honoured; a few MB per program, never pruned: delete it whenever you like): compiling the train step is most
of a run's start-up on a CPU (about 15-30 s for the small ConvNet at 112 px here), so a
resumed run, a sweep's next member or a rerun starts in seconds. ``FACENET_COMPILE_CACHE=off``
turns it off (for a home directory shared by machines of different CPU types, say).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

from infra.errors import Preempted, UserError

USAGE_ERROR = 2
TRACEBACK_ENV = "FACENET_TRACEBACK"
CACHE_SWITCH_ENV = "FACENET_COMPILE_CACHE"


def default_compile_cache(environ: dict | None = None) -> str:
  """Where scripts keep compiled programs when ``$JAX_COMPILATION_CACHE_DIR`` is unset."""
  env = os.environ if environ is None else environ
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "facenet_jax", "xla")


def use_compile_cache(environ: dict | None = None) -> None:
  """Turns on JAX's persistent cache unless the user set ``$JAX_COMPILATION_CACHE_DIR``
  (theirs wins) or ``$FACENET_COMPILE_CACHE=off``. JAX reads its variables when imported, so
  once it is imported (a script's imports usually do) its config is updated instead."""
  env = os.environ if environ is None else environ
  if (env.get(CACHE_SWITCH_ENV, "on").lower() in ("off", "0", "false", "no")
      or env.get("JAX_COMPILATION_CACHE_DIR")):
    return
  # (no size limit: JAX's needs the filelock package, which the project does not use)
  path = default_compile_cache(env)
  if environ is None and "jax" in sys.modules:
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
  else:
    env["JAX_COMPILATION_CACHE_DIR"] = path


def user_message(e: BaseException) -> str | None:
  """The one-line message of a user error, or None when ``e`` is not one (a bug)."""
  from absl import app, flags
  if isinstance(e, SystemExit):
    text = e.code if isinstance(e.code, str) else None
  elif isinstance(e, (UserError, flags.Error, app.UsageError)):
    text = str(e)
  elif isinstance(e, OSError) and e.filename is not None:
    text = f"{e.filename}: {e.strerror or e}"
  else:
    text = None
  return None if text is None else " ".join(text.split("\n")).strip()


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
  """``main`` with user errors turned into one line on stderr and exit status 2, and a
  preempted run into its message on stdout and exit status 128 + the signal."""
  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except Preempted as e:   # checkpointed: the message says so; no traceback
      from infra import preemption   # imports JAX: only here, so an input error stays fast
      print(e, flush=True)
      sys.exit(preemption.exit_status(e))
    except (Exception, SystemExit) as e:
      message = user_message(e)
      if message is None or os.environ.get(TRACEBACK_ENV) == "1":
        raise
      _fail(message)
  return wrapper


def _flag_message(e: Exception, argv: list[str]) -> str:
  """One line for a flag parsing error: absl's message, the last line of a config file's
  traceback it embeds, or the ``--config.FIELD`` that names no field (ml_collections'
  KeyError / AttributeError, with its "Did you mean" hint)."""
  from absl import flags
  lines = [l.strip() for l in str(e).replace("\\n", "\n").splitlines() if l.strip()]
  if isinstance(e, flags.Error):
    if any(l.startswith("Traceback") for l in lines):   # raised inside the config file
      return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    return " ".join(lines)
  key = lines[0].strip("'\"\\") if lines else ""
  flag = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
               and key and key in a.split("=")[0].split(".")), "--config.FIELD")
  hint = " ".join(lines[1:]).strip("'\"\\")
  return f"{flag}: the config has no such field" + (f" ({hint})" if hint else "")


HELP_FLAGS = ("help", "h", "?", "helpfull", "helpshort", "helpxml")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing whose errors (unknown or mistyped flags, a missing required flag, a
  bad ``--config.FIELD``, an unknown config variant) are one line and exit status 2 (absl
  prints its usage hint and exits 1; ml_collections raises KeyError for a missing field)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    # absl prints the usage asked for with --help / -h / --helpfull and exits 1, which reads as
    # a failure to a shell or a launcher; asking for help succeeded
    if e.code == 1 and any(a.split("=")[0].lstrip("-") in HELP_FLAGS for a in argv[1:]):
      raise SystemExit(0) from None
    raise
  except (flags.Error, AttributeError, KeyError) as e:
    if os.environ.get(TRACEBACK_ENV) == "1":
      raise
    _fail(_flag_message(e, argv))


class ArgumentParser(argparse.ArgumentParser):
  """argparse for scripts run with ``run(main, absl_flags=False)``: a usage error is one line
  and exit 2 like every other user error (argparse prints its usage block first)."""

  def error(self, message: str):
    raise SystemExit(f"{self.prog}: {message}")


def png_flag(name: str, default: str | None, help: str, *, required: bool = False) -> Any:
  """A string flag naming a PNG to write, checked when the flags are parsed: a figure path
  without ``.png`` used to fail in the savefig at the end, after all the work."""
  from absl import flags
  holder = flags.DEFINE_string(name, default, help, required=required)
  flags.register_validator(name, lambda v: v is None or v.lower().endswith(".png"),
                           message="expected a .png file name")
  return holder


def folder_flag(name: str, default: str | None, help: str, *, required: bool = False) -> Any:
  """A string flag naming an output folder (made if missing), refused at parse time when it
  is an existing file: that used to fail at the first write, after the work."""
  from absl import flags
  holder = flags.DEFINE_string(name, default, help, required=required)
  flags.register_validator(name, lambda v: v is None or not os.path.exists(v) or os.path.isdir(v),
                           message="is a file, expected an output folder")
  return holder


def int_list_flag(name: str, default: list[str], help: str, lo: int, hi: int | None = None,
                  allow_empty: bool = False) -> Any:
  """A comma-separated list flag of integers in ``lo..hi``, checked when the flags are parsed
  (a value like 'abc' or 500 used to be a traceback after the model and data had loaded).
  The values stay strings, as ``DEFINE_list`` gives them; ``int()`` each. ``allow_empty``:
  the empty list is a value too (the caller's automatic choice)."""
  from absl import flags
  holder = flags.DEFINE_list(name, default, help)
  ok = lambda v: v.strip().lstrip("-").isdigit() and lo <= int(v) and (hi is None or int(v) <= hi)
  flags.register_validator(name, lambda vs: (allow_empty or bool(vs)) and all(ok(v) for v in vs),
                           message=f"expected integers {lo}..{'' if hi is None else hi}, "
                                   f"comma-separated")
  return holder


def json_flag(name: str, default: str | None, help: str) -> Any:
  """A string flag naming a JSON file to write, checked at parse time (not a folder, .json)."""
  from absl import flags
  holder = flags.DEFINE_string(name, default, help)
  flags.register_validator(name, lambda v: not v or (v.lower().endswith(".json")
                                                     and not os.path.isdir(v)),
                           message="expected a .json file name (not a folder)")
  return holder


def launch_flags() -> Callable[[], Any]:
  """Defines a script's multi-process flags (``--coordinator_address``, ``--num_processes``,
  ``--process_id``; defaults from ``$JAX_*``, see ``infra.distributed``) and returns the
  function that joins the launch with their values (the first thing ``main`` calls)."""
  from absl import flags
  coordinator = flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of "
                                    "process 0 (default $JAX_COORDINATOR_ADDRESS).")
  num_processes = flags.DEFINE_integer("num_processes", None, "Multi-process: process count "
                                       "(default $JAX_NUM_PROCESSES).")
  process_id = flags.DEFINE_integer("process_id", None, "Multi-process: this process's id "
                                    "(default $JAX_PROCESS_ID).")

  def initialize():
    from infra.distributed import maybe_initialize
    return maybe_initialize(coordinator_address=coordinator.value,
                            num_processes=num_processes.value, process_id=process_id.value)
  return initialize


def run(main: Callable[..., Any], *, absl_flags: bool = True) -> None:
  """Runs a script's ``main``: through absl's ``app.run`` (flags parsed first), or with
  ``absl_flags=False`` called with no arguments (a script that parses ``sys.argv`` itself,
  e.g. with argparse, whose own usage errors exit 2 too). Compiled programs are cached
  between runs (see the module doc). Library INFO logs (Orbax's per-save lines, JAX's probe
  for a TPU) stay off the terminal unless ``--verbosity`` / ``-v`` asks for them."""
  use_compile_cache()
  if absl_flags:
    from absl import app
    app.run(guarded(_quiet(main)), flags_parser=_parse_flags)
  else:
    guarded(_quiet(main))()


def _quiet(main: Callable[..., Any]) -> Callable[..., Any]:
  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    from absl import flags, logging
    if "verbosity" not in flags.FLAGS or not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return main(*args, **kwargs)
  return wrapper
