"""Exceptions shared by the training and pixel-optimization loops."""


class Preempted(RuntimeError):
  """A SIGTERM/SIGINT stopped a loop after it checkpointed the current step."""

  def __init__(self, message: str, *, signum: int | None = None, step: int | None = None):
    super().__init__(message)
    self.signum, self.step = signum, step


class NonFiniteLossError(FloatingPointError):
  """A loss or gradient became NaN/Inf; no checkpoint after the last good one was written."""
