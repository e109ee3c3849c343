"""Exceptions shared by the training and pixel-optimization loops."""


class Preempted(RuntimeError):
  """A SIGTERM/SIGINT stopped a loop after it checkpointed the current step."""


class NonFiniteLossError(FloatingPointError):
  """A loss or gradient became NaN/Inf; no checkpoint after the last good one was written."""
