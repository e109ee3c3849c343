"""A style run's workdir keeps its config (``config.json``): a resume must be the same run.

Checkpoints hold only the image being optimized and the optimizer's state; resuming them under
another content or style image, other loss weights or layers would continue the old image
under the new objective and save a blend of the two runs as if it were the new one.

The config names its files by path, so the workdir also keeps ``inputs.json``: the SHA-256 of
the content image, every style image and the VGG weights file as the run started (a file
replaced at the same path is another input). Workdirs written before it are resumed with a
note, and the files as they are then are recorded for the next resume (whether they changed
before cannot be known).
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections

from infra import files, outdirs, vgg as vgg_lib
from style_jax.cost import StyleConfigError

CONFIG_FILE = "config.json"
INPUTS_FILE = "inputs.json"
# how often a run logs, saves and checkpoints, and where its final image goes: a resumed run
# may change these; num_steps only upwards and with one scale (it sets the scales' boundaries)
CONTINUABLE = ("log_every", "save_every", "checkpoint_every", "keep_checkpoints", "output",
               "weights_cache", "remat")


def _plain(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict()))   # tuples -> lists, as config.json holds them


def check_continuation(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """The fields ``config`` changes from the run saved in ``workdir`` (for the log), or [] for a
  new run. Raises StyleConfigError listing every field a resume may not change."""
  outdirs.claim(workdir, "style", "workdir")   # another script's run: not ours to continue
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      print(f"note: {workdir} was written before style runs kept their config.json; its "
            "config cannot be checked, and this one is saved for the next resume",
            file=sys.stderr, flush=True)
    return []
  saved, wanted = files.read_json(path), _plain(config)
  changed = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
             if saved.get(k) != wanted.get(k)}
  upward = lambda old, new: (isinstance(old, int) and isinstance(new, int) and new >= old
                             and wanted.get("num_scales") == 1)
  # fewer checkpoints kept would delete the run's older ones, its last step too, at the next save
  refused = [k for k, (old, new) in changed.items()
             if (k not in CONTINUABLE and not (k == "num_steps" and upward(old, new)))
             or (k == "keep_checkpoints" and not (isinstance(old, int) and new >= old))]
  if refused:
    diffs = "; ".join(f"{k}: {changed[k][0]!r} in the run, {changed[k][1]!r} now" for k in refused)
    raise StyleConfigError(f"workdir {workdir} holds a style run of another config ({path}): "
                           f"{diffs}. Use a new workdir, or the run's values to continue it "
                           f"(a resume may change {', '.join(CONTINUABLE)} (keep_checkpoints only "
                           "upwards), and num_steps upwards with one scale)")
  return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  files.write_json_atomic(os.path.join(workdir, CONFIG_FILE), _plain(config))


def input_digests(content: str, styles: list[str], weights: str) -> dict[str, list]:
  """``{config field: [[path, sha256], ...]}`` of the files a run reads (``infra.files.
  file_sha256``): the content image, each style image, and the VGG weights file (sha256
  None for a weights keyword, or a path that is not a file: loading it names that)."""
  sha = lambda path: files.file_sha256(path) if os.path.isfile(path) else None
  weights = str(weights or "")
  weights_sha = None if vgg_lib.weights_keyword(weights) else sha(os.path.expanduser(weights))
  return {"content": [[content, sha(content)]], "style": [[p, sha(p)] for p in styles],
          "weights": [[weights, weights_sha]]}


def check_inputs(digests: dict[str, list], workdir: str) -> None:
  """Raises StyleConfigError when a file the run in ``workdir`` read (``inputs.json``) has
  other contents now (``digests``: :func:`input_digests`); prints a note for a workdir with
  checkpoints written before inputs.json (see module doc). check_continuation first: the paths
  are the run's, so the entries line up."""
  path = os.path.join(workdir, INPUTS_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      print(f"note: {workdir} was written before style runs recorded their input files' "
            f"SHA-256 ({INPUTS_FILE}); that the content, style and weights files are the ones "
            "it started with cannot be checked, and they are recorded now for the next resume",
            file=sys.stderr, flush=True)
    return
  saved = _read_inputs(path)
  for field, entries in digests.items():
    old = saved.get(field, [])
    for k, (file, sha) in enumerate(entries):
      was = old[k][1] if k < len(old) else None
      if sha is not None and was is not None and sha != was:
        raise StyleConfigError(
            f"config.{field}: the contents of {file} changed since the run in {workdir} started "
            f"(SHA-256 {was[:12]} in {INPUTS_FILE}, {sha[:12]} now), and its checkpoints would "
            "continue the image made from the old file: use a new workdir, or put the original "
            "file back")


def _read_inputs(path: str) -> dict[str, list]:
  """``inputs.json`` as :func:`input_digests` wrote it; StyleConfigError naming the file if it
  is not (a damaged record must not pass as "nothing recorded")."""
  try:
    saved = files.read_json(path)
  except (OSError, ValueError) as e:
    saved = e
  entry = lambda x: (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                     and (x[1] is None or isinstance(x[1], str)))
  if not (isinstance(saved, dict) and all(isinstance(v, list) and all(map(entry, v))
                                          for v in saved.values())):
    raise StyleConfigError(f"{path} does not read as the record of the run's input files "
                           "(expected {field: [[path, sha256], ...]} JSON); restore it, or delete "
                           "it to resume without checking the files (they are recorded again)")
  return saved


def save_inputs(digests: dict[str, list], workdir: str) -> None:
  """Writes ``inputs.json`` once: when the run starts, or at the first resume of a workdir
  written before it. What a run started with is never rewritten."""
  path = os.path.join(workdir, INPUTS_FILE)
  if not os.path.exists(path):
    files.write_json_atomic(path, digests)
