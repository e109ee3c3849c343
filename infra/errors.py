"""Exceptions shared by the training and pixel-optimization loops and the scripts."""


class UserError(Exception):
  """An input the user can fix from the message alone: a flag, a config field, a file or a
  workdir, named with what was expected. The project's input errors (``ConfigError``,
  ``WorkdirError``, ``DataError``, ``infra.distributed.LaunchError``, ...) derive from it
  beside their builtin base (``ValueError``, ``OSError``), so ``infra.cli.run`` reports them
  as one line on stderr with exit status 2 and no traceback, while any other exception (a
  bug) keeps its traceback."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder named by a flag or config field is absent (or not the kind of file
  expected); the message names the field or file. A FileNotFoundError, as callers catch."""


class Preempted(RuntimeError):
  """A SIGTERM/SIGINT stopped a loop after it checkpointed the current step."""

  def __init__(self, message: str, *, signum: int | None = None, step: int | None = None):
    super().__init__(message)
    self.signum, self.step = signum, step


class NonFiniteLossError(UserError, FloatingPointError):
  """A loss or gradient became NaN/Inf; no checkpoint after the last good one was written.
  A user error (one line, exit 2): the message names the settings to change."""
