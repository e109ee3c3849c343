"""Dotted config overrides (``{"optim.learning_rate": 1e-3}``) and names derived from them.

The one place that sets a config field by its dotted path: used by sweeps
(``scripts/sweep.py``), cross-validation and anything else that varies a field. A value
may be typed (``0.2``, ``(64, 128)``) or a command-line string (``"0.2"``, ``"64,128"``),
which is parsed as the field's current type.
"""

from __future__ import annotations

import ast
import itertools
import re
from typing import Any, Mapping, Sequence

import ml_collections

from infra.errors import UserError


class OverrideError(UserError, ValueError):
  """An override naming a field the config does not have, or a value it cannot take."""


def _literal(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _parse(current: Any, raw: str, dotted: str) -> Any:
  """``raw`` (a string) as the type of ``current``."""
  if isinstance(current, bool):
    low = raw.strip().lower()
    if low not in ("true", "false", "1", "0"):
      raise OverrideError(f"{dotted}={raw!r}: expected True or False")
    return low in ("true", "1")
  if isinstance(current, tuple):
    parts = [p.strip() for p in raw.strip().strip("()[]").split(",") if p.strip()]
    if not current:   # an empty default: Python literals where they parse, else text
      return tuple(_literal(p) for p in parts)
    kind = type(current[0])
    return tuple(_parse(kind(), p, dotted) if kind is not str else p for p in parts)
  if current is None:
    return raw
  try:
    return type(current)(raw)
  except ValueError as e:
    raise OverrideError(f"{dotted}={raw!r}: expected a {type(current).__name__} ({e})") from e


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """Sets ``config.<dotted> = value`` in place (the config must be unlocked for new values
  of a different type); a string ``value`` is parsed as the field's type."""
  *parents, leaf = dotted.split(".")
  node = config
  for i, p in enumerate(parents):
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise OverrideError(f"{dotted}: config has no section {'.'.join(parents[:i + 1])!r}")
    node = node[p]
  if leaf not in node:
    raise OverrideError(f"{dotted}: config has no field {dotted!r}")
  current = node[leaf]
  if isinstance(value, str) and not isinstance(current, str):
    value = _parse(current, value, dotted)
  elif isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[leaf] = value


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked copy of ``config`` with every dotted override applied (``config`` unchanged)."""
  out = config.copy_and_resolve_references()
  out.unlock()
  for dotted, value in overrides.items():
    set_field(out, dotted, value)
  out.lock()
  return out


def format_value(value: Any) -> str:
  """A short, stable text form: ``0.2``, ``semi_hard``, ``64-128`` for tuples."""
  if isinstance(value, (tuple, list)):
    return "-".join(format_value(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
  """Directory name of a sweep point: ``margin=0.2,seed=1`` (keys in the given order);
  characters other than letters, digits and ``._=,-`` become ``_``. ``{}``: ``base``."""
  if not overrides:
    return "base"
  name = ",".join(f"{k}={format_value(v)}" for k, v in overrides.items())
  return re.sub(r"[^A-Za-z0-9._=,\-]", "_", name)


def to_flags(overrides: Mapping[str, Any], prefix: str = "config") -> list[str]:
  """Command-line form: ``["--config.margin=0.2", "--config.model.widths=(8, 16)"]``."""
  out = []
  for k, v in overrides.items():
    if isinstance(v, (tuple, list)):
      v = "(" + ", ".join(repr(x) if isinstance(x, str) else str(x) for x in v) + \
          ("," if len(v) == 1 else "") + ")"
    out.append(f"--{prefix}.{k}={v}")
  return out


# ----------------------------------------------------------------------------- grids of points


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the axes' values, the last axis fastest:
  ``product({"margin": (0.1, 0.2), "seed": (0, 1)})`` -> 4 points."""
  keys = list(axes)
  return [dict(zip(keys, vals)) for vals in itertools.product(*(tuple(axes[k]) for k in keys))]


def zipped(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The i-th values of every axis together (all axes the same length):
  ``zipped({"identities_per_batch": (16, 8), "images_per_identity": (2, 4)})`` -> 2 points."""
  lengths = {k: len(tuple(v)) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise OverrideError(f"zipped axes need equal lengths, got {lengths}")
  keys = list(axes)
  return [dict(zip(keys, vals)) for vals in zip(*(tuple(axes[k]) for k in keys))]


def chain(*grids: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The points of several grids one after another."""
  return [dict(p) for g in grids for p in g]


def cross(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every point of ``a`` merged with every point of ``b`` (``b`` fastest), e.g. a zipped
  batch shape crossed with seeds."""
  return [dict(p, **q) for p in a for q in b]
