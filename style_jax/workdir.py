"""A style run's workdir keeps its config (``config.json``): a resume must be the same run.

Checkpoints hold only the image being optimized and the optimizer's state; resuming them under
another content or style image, other loss weights or layers would continue the old image
under the new objective and save a blend of the two runs as if it were the new one.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections

from infra import files, outdirs
from style_jax.cost import StyleConfigError

CONFIG_FILE = "config.json"
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
  refused = [k for k, (old, new) in changed.items()
             if k not in CONTINUABLE and not (k == "num_steps" and upward(old, new))]
  if refused:
    diffs = "; ".join(f"{k}: {changed[k][0]!r} in the run, {changed[k][1]!r} now" for k in refused)
    raise StyleConfigError(f"workdir {workdir} holds a style run of another config ({path}): "
                           f"{diffs}. Use a new workdir, or the run's values to continue it "
                           f"(a resume may change {', '.join(CONTINUABLE)}, and num_steps upwards "
                           "with one scale)")
  return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  files.write_json_atomic(os.path.join(workdir, CONFIG_FILE), _plain(config))
