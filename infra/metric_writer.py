"""Scalar/image metrics to TensorBoard event files and to a JSON-lines log.

Written on the ``tensorboard`` package's own event writer: clu's metric writers import
TensorFlow at module import, which this codebase keeps off the training path.
``metrics.jsonl`` (one ``{"step": s, name: value, ...}`` per line) is what scripts such as
the sweep comparison read back without TensorBoard.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Mapping

import numpy as np

from infra import files
from infra.errors import UserError


class MetricWriter:
  """Writes to ``<logdir>/events.out.tfevents.*`` and ``<logdir>/metrics.jsonl``."""

  def __init__(self, logdir: str, *, enabled: bool = True):
    self.logdir = logdir
    self.enabled = enabled
    self._events = None
    self._jsonl = None
    self._earlier_events: list[str] = []   # event files of earlier runs (restart_at cuts them)
    if enabled:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      os.makedirs(logdir, exist_ok=True)
      self._earlier_events = sorted(os.path.join(logdir, n) for n in os.listdir(logdir)
                                    if n.startswith("events.out.tfevents"))
      _after_earlier_files(self._earlier_events)
      self._events = EventFileWriter(logdir)
      path = os.path.join(logdir, "metrics.jsonl")
      _drop_partial_last_line(path)
      self._jsonl = open(path, "a")

  def _event(self, step: int, values) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    self._events.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

  def restart_at(self, step: int) -> None:
    """Forgets what earlier runs of this directory logged from ``step`` on: the first step a
    resumed run logs (its checkpoint's step + 1; 0 for a run that starts over). A run killed
    between two checkpoints logged steps it now runs again; without this, they appear twice.
    ``metrics.jsonl`` and the earlier event files lose those rows and summaries (each rewritten
    atomically, only if it has any), so every reader sees the uninterrupted run's. This run's
    event file also starts with a ``SessionLog.START`` at ``step``, TensorBoard's own mark of
    a restart (it drops the events of steps >= ``step`` read before it)."""
    if not self.enabled:
      return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    self._jsonl.close()
    _drop_rows_from(os.path.join(self.logdir, "metrics.jsonl"), step)
    self._jsonl = open(os.path.join(self.logdir, "metrics.jsonl"), "a")
    for path in self._earlier_events:
      _drop_events_from(path, step)
    self._events.add_event(Event(wall_time=time.time(), step=int(step),
                                 session_log=SessionLog(status=SessionLog.START)))

  def forget(self, step: int, prefix: str) -> None:
    """Forgets the scalars named ``prefix...`` that earlier runs of this directory logged at
    steps >= ``step`` (their other values stay). A finished run run again logs its end-of-run
    summaries (``final/...``) at the step it had logged them at; without this, each rerun
    added a second copy to ``metrics.jsonl`` and to TensorBoard."""
    if not self.enabled:
      return
    self._jsonl.close()
    _drop_rows_from(os.path.join(self.logdir, "metrics.jsonl"), step, prefix)
    self._jsonl = open(os.path.join(self.logdir, "metrics.jsonl"), "a")
    for path in self._earlier_events:
      _drop_events_from(path, step, prefix)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto.summary_pb2 import Summary
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._event(step, [Summary.Value(tag=k, simple_value=v) for k, v in clean.items()])
    row = {"step": int(step)}
    row.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
    self._jsonl.write(json.dumps(row) + "\n")

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """``images``: name -> (H, W, 3) or (H, W) uint8 or float in [0, 1]."""
    if not self.enabled:
      return
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary
    values = []
    for k, img in images.items():
      img = np.asarray(img)
      if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")
      values.append(Summary.Value(tag=k, image=Summary.Image(
          encoded_image_string=buf.getvalue(), height=img.shape[0], width=img.shape[1],
          colorspace=1 if img.ndim == 2 else img.shape[-1])))
    self._event(step, values)

  def write_text(self, step: int, texts: Mapping[str, str]) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    values = [Summary.Value(tag=k, metadata=meta, tensor=TensorProto(
        dtype=7, string_val=[v.encode()], tensor_shape=TensorShapeProto(dim=[])))
        for k, v in texts.items()]
    self._event(step, values)

  def flush(self) -> None:
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._events.close()
      self._jsonl.close()
      self.enabled = False


def _after_earlier_files(paths: list[str]) -> None:
  """Waits (under a second) until a new event file's name sorts after ``paths``. TensorBoard
  reads a folder's event files in name order, and the name is events.out.tfevents.<second>.
  <host>.<pid>: a run resumed in the second its killed run started could sort first (by pid
  as text), and TensorBoard then applied the restart to the wrong file (a test saw it)."""
  seconds = []
  for p in paths:
    try:
      seconds.append(int(os.path.basename(p).split(".")[3]))
    except (IndexError, ValueError):
      pass
  wait = max(seconds, default=0) + 1 - time.time()
  if 0 < wait <= 2:
    time.sleep(wait)


def _drop_partial_last_line(path: str) -> None:
  """A process killed mid-write leaves a last line without its newline: cut it off, so the
  rows appended by the resumed run do not follow half a JSON object."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    keep, pos = 0, size
    while pos > 0:   # the last newline, read backwards in blocks
      n = min(65536, pos)
      f.seek(pos - n)
      block = f.read(n)
      k = block.rfind(b"\n")
      if k >= 0:
        keep = pos - n + k + 1
        break
      pos -= n
    f.truncate(keep)


def _drop_rows_from(path: str, step: int, prefix: str = "") -> None:
  """Rewrites the JSON lines ``path`` without the values named ``prefix...`` of its rows of
  steps >= ``step`` (a row left with none goes; a line that is not such a row stays);
  untouched when nothing goes."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [kept for line in lines if (kept := _row_without(line, step, prefix))]
  if keep != lines:
    _replace(path, "".join(keep).encode())


def _row_without(line: str, step: int, prefix: str) -> str:
  """``line`` without its values named ``prefix...`` if it is a row of a step >= ``step``;
  "" when no value is left."""
  try:
    row = json.loads(line)
  except ValueError:
    return line
  if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] >= step):
    return line
  kept = {k: v for k, v in row.items() if k == "step" or not k.startswith(prefix)}
  if len(kept) == len(row):
    return line
  return json.dumps(kept) + "\n" if len(kept) > 1 else ""


def _drop_events_from(path: str, step: int, prefix: str = "") -> None:
  """Rewrites the event file ``path`` without the summary values tagged ``prefix...`` of its
  steps >= ``step`` (a summary left with none goes; its other records, such as the file
  version, stay); untouched when nothing goes."""
  from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
  from tensorboard.compat.proto.event_pb2 import Event
  from tensorboard.summary.writer.record_writer import RecordWriter
  records = list(RawEventFileLoader(path).Load())   # a record cut by a kill is left out
  keep = []
  for r in records:
    e = Event.FromString(r)
    if not (e.HasField("summary") and e.step >= step):
      keep.append(r)
      continue
    values = [v for v in e.summary.value if not v.tag.startswith(prefix)]
    if len(values) == len(e.summary.value):
      keep.append(r)
    elif values:
      del e.summary.value[:]
      e.summary.value.extend(values)
      keep.append(e.SerializeToString())
  if keep == records:
    return
  buf = io.BytesIO()
  for r in keep:
    RecordWriter(buf).write(r)
  _replace(path, buf.getvalue())


def _replace(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temporary file and an atomic rename: a kill during the
  rewrite leaves the old file whole (and a hidden temporary one, which no reader takes for
  an event file: TensorBoard reads every name containing "tfevents")."""
  with files.replacing(path, ".tmp", prefix=".rewrite-") as tmp, open(tmp, "wb") as f:
    f.write(data)


def read_metrics(logdir: str) -> list[dict]:
  """The rows of ``<logdir>/metrics.jsonl`` (empty if absent). A last row without its newline
  (the writer was killed inside it; a resumed run trims it) is left out; any other line that
  is not a JSON object is a MetricsFileError naming the file and line (it was a JSONDecodeError
  traceback in compare_runs)."""
  path = os.path.join(logdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")   # the last item: "" when the file ends in a newline
  rows = []
  for k, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
    elif k < len(lines):   # a whole line, yet not a row
      raise MetricsFileError(f"{path}: line {k} is not a JSON object of metrics: {line[:80]!r}")
  return rows


class MetricsFileError(UserError, ValueError):
  """A metrics.jsonl line that does not read (named with its line number)."""
