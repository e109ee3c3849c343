"""What kind of run an output folder holds, so one script does not write over another's results.

train_facenet and stylize (their ``--workdir``), reproduce_gatys and texture_1d (``--out``)
each write a ``results.json`` into their folder. Given a folder of another kind, each used to
replace that file, exit 0 (a FaceNet run then lost the metrics recognize takes its threshold
from; a Gatys run's results no longer matched its settings.json). ``kind_of`` tells the kinds
apart by the files each writes; ``claim`` refuses a folder of another kind before anything is
written. Folders of the same kind are left to each script's own resume checks. A folder with
another program's logs (metrics.jsonl rows, TensorBoard summaries) but no config.json is a
kind too: a training run started there dropped them (its logs restart at step 0).
"""

from __future__ import annotations

import json
import os

from infra import metric_writer
from infra.errors import UserError

# kind -> what it is, for messages
KINDS = {
    "facenet": "a FaceNet training run (config.json with a model)",
    "style": "a style-transfer run (config.json with content and style images)",
    "gatys": "a reproduce_gatys.py run (settings.json)",
    "gatys_combined": "a figure combined by reproduce_gatys.py --combine",
    "texture_1d": "a texture_1d.py result",
    "unknown": "a results.json of an unknown kind of run",
    "logs": "logged metrics (metrics.jsonl rows or TensorBoard summaries) but no run's config.json",
}
TEXTURE_KIND = "texture_1d"   # the "kind" texture_1d.py writes into its results.json


class OutputFolderError(UserError, ValueError):
  """An output folder that holds another kind of run."""


def _json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def kind_of(folder: str) -> str | None:
  """The kind of run in ``folder`` (a key of KINDS), or None when it holds none (missing,
  empty, or only files no run writes). A config.json that does not read is "unknown"."""
  if not os.path.isdir(folder):
    return None
  has = lambda name: os.path.isfile(os.path.join(folder, name))
  if has("config.json"):
    config = _json(os.path.join(folder, "config.json")) or {}
    if "model" in config:
      return "facenet"
    return "style" if "content" in config and "style" in config else "unknown"
  if has("settings.json"):
    return "gatys"
  if not has("results.json"):
    # another program's logs: a run started here would rewrite them (a fresh training run
    # drops every earlier row and summary of steps >= 0) or mix its rows into them
    # (with a checkpoints/ folder it is left to the scripts: training refuses it, a style
    # run from before config.json was kept continues)
    if os.path.isdir(os.path.join(folder, "checkpoints")):
      return None
    return "logs" if _has_logged_values(folder) else None
  results = _json(os.path.join(folder, "results.json")) or {}
  if results.get("kind") == TEXTURE_KIND or has("texture_1d.png"):
    return "texture_1d"
  if "runs" in (results.get("figures") or {}).get("fig3", {}):
    return "gatys_combined"
  return "unknown"


def claim(folder: str, kind: str, what: str) -> None:
  """Raises OutputFolderError when ``folder`` holds a run of a kind other than ``kind``.
  ``what`` names the folder in the message (e.g. "--out", "workdir")."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r}: expected one of {sorted(KINDS)}")
  found = kind_of(folder)
  if found is not None and found != kind:
    harm = "rewrite those logs" if found == "logs" else "replace its results.json"
    raise OutputFolderError(f"{what} {folder} holds {KINDS[found]}; writing {KINDS[kind]} there "
                            f"would {harm}: use another folder")


def _has_logged_values(folder: str) -> bool:
  """Whether ``folder`` holds a metrics.jsonl with a row or an event file with a summary
  (what a run of this codebase writes only after its config.json)."""
  try:
    if metric_writer.read_metrics(folder):
      return True
  except (UserError, OSError, ValueError):
    return True   # a metrics.jsonl that is not ours to read: not ours to rewrite
  from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
  from tensorboard.compat.proto.event_pb2 import Event
  for name in os.listdir(folder):
    if "tfevents" in name and os.path.isfile(path := os.path.join(folder, name)):
      if any(Event.FromString(r).HasField("summary") for r in RawEventFileLoader(path).Load()):
        return True
  return False


def check_own_file(path: str | None, flag: str, kind: str) -> None:
  """Raises OutputFolderError when the JSON output file ``path`` (given as ``flag``) exists and
  is not one that the writer ``kind`` wrote (a JSON object with ``"kind": kind``): a table
  written to the path of a run's results.json or a user's file replaced it, exit 0."""
  if not path or not os.path.lexists(path):
    return
  found = _json(path) if os.path.isfile(path) else None
  if (found or {}).get("kind") != kind:
    raise OutputFolderError(f"{flag}={path} exists and is not a {kind} output; writing there "
                            f"would replace it: remove it or choose another path")
