"""Orbax checkpointing shared by training (facenet_jax) and pixel optimization (style_jax).

A checkpoint holds one pytree of arrays (``state``) and a small JSON dict (``meta``).
Orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact and no half-written step
is ever listed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written or restored, with the path and the reason."""


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_paths(tree: Any) -> dict[str, Any]:
  """Leaves by a '/'-joined path that reads the same for live pytrees and Orbax metadata."""
  return {"/".join(_key_name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
  """Saves every ``every`` steps (and on request), keeps the last ``keep``.

  Args:
    directory: where step subdirectories go (created if missing).
    every: save when ``step % every == 0`` (``force=True`` saves regardless).
    keep: how many of the most recent checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {e}") from e
    if not os.access(self.directory, os.W_OK):
      raise CheckpointError(f"checkpoint directory {self.directory} is not writable")
    self.every = int(every)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict | None = None, *, force: bool = False) -> bool:
    """Writes ``state`` at ``step`` if due (or ``force``); returns whether it saved."""
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    try:
      saved = self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(dict(meta or {}, step=int(step)))),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # disk full, permissions, ...: the older steps are untouched
      raise CheckpointError(
          f"saving step {step} to {self.directory} failed ({type(e).__name__}: {e}); "
          f"earlier checkpoints {self.all_steps()} are intact") from e
    return bool(saved)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """Restores ``step`` (default latest) into the structure/shardings of ``abstract_state``.

    Returns ``(step, state, meta)``, or None when the directory holds no checkpoint.
    A checkpoint whose arrays do not match ``abstract_state`` raises CheckpointError
    naming the first differing leaf.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step))
    self._check_compatible(step, abstract_state, path)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {path} could not be restored ({type(e).__name__}: {e}); it may be "
          f"corrupt: delete that step directory to resume from an earlier one "
          f"({[s for s in self.all_steps() if s != step]})") from e
    return step, restored.state, dict(restored.meta or {})

  def _check_compatible(self, step: int, abstract_state: Any, path: str) -> None:
    try:
      meta = self._manager.item_metadata(step)
      saved = meta["state"] if meta is not None else None
    except Exception as e:
      raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e}); it may be corrupt") from e
    if saved is None:
      raise CheckpointError(f"checkpoint {path} has no 'state' item; it may be corrupt")
    want, have = _leaf_paths(abstract_state), _leaf_paths(saved)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
      raise CheckpointError(
          f"checkpoint {path} does not match the model/state of this config: "
          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
          f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    for key, leaf in want.items():
      got = tuple(getattr(have[key], "shape", ()) or ())
      exp = tuple(np.shape(leaf))
      if got != exp:
        raise CheckpointError(
            f"checkpoint {path}: parameter {key} has shape {got} but this config expects {exp}")

  def close(self) -> None:
    self._manager.close()
