"""LFW View 1, the development view: choose a model here, report it once on View 2.

LFW's README keeps its two views apart: View 1 (``pairsDevTrain.txt``, 1,100 matched and 1,100
mismatched pairs; ``pairsDevTest.txt``, 500 and 500; the two hold disjoint people) "for
algorithm development", View 2 (``pairs.txt``, 10 folds) for reporting. A model chosen on the
View 2 folds it is then scored on is chosen on its test data.

``config.data.lfw_view = 1`` (with ``config.evals = "lfw_view1"``): train on every person in no
DevTest pair, choose the thresholds on the DevTrain pairs (people the model trained on, as in
View 2's official protocol, ``data.calibration_folds = 0``), score the DevTest pairs. In the
evaluator's terms the DevTest pairs are fold ``TEST_FOLD`` and the DevTrain pairs fold
``CALIBRATION_FOLD``.

The two files are not in ``lfw.tgz``: they sit beside ``pairs.txt`` on the LFW site, and
``config.data.lfw_dev_dir`` (default: ``data.data_dir``) is the folder holding them. A pair
naming a photo the images folder lacks is left out, with a printed count: a copy of LFW that
holds only View 2's 7,701 photos has both photos of 1,250 DevTrain and 581 DevTest pairs.
"""

from __future__ import annotations

import os
import sys

import ml_collections

from facenet_jax.data import raw

FILES = ("pairsDevTest.txt", "pairsDevTrain.txt")   # fold 0 (scored), fold 1 (thresholds)
URL = "http://vis-www.cs.umass.edu/lfw/"
TEST_FOLD, CALIBRATION_FOLD = 0, 1


def dev_dir(config: ml_collections.ConfigDict) -> str:
  """The folder of the View 1 files: ``data.lfw_dev_dir``, else ``data.data_dir``."""
  d = config.data
  return os.path.abspath(os.path.expanduser(str(d.lfw_dev_dir or d.data_dir)))


def read_pairs(config: ml_collections.ConfigDict) -> list[dict]:
  """DevTest pairs (fold 0) then DevTrain pairs (fold 1), in file order, as dicts with the
  keys of the View 2 pairs records (``index``, ``fold``, ``issame``, ``name_a``, ``file_a``,
  ``name_b``, ``file_b``; ``index`` counts across both files). Raises DataError naming a
  missing or malformed file, or a person in both files."""
  folder, out, fold_of = dev_dir(config), [], {}
  for fold, name in enumerate(FILES):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise raw.DataError(
          f"config.data.lfw_view=1 reads LFW's View 1 pairs from {path}, which does not exist: "
          f"download {URL}{FILES[0]} and {URL}{FILES[1]} into one folder and set "
          "config.data.lfw_dev_dir to it")
    text = raw.read_file(path).decode("utf-8", errors="replace")
    for p in raw.parse_lfw_dev_pairs(text, path):
      for person in (p.name_a, p.name_b):
        if fold_of.setdefault(person, fold) != fold:
          raise raw.DataError(f"{path}: line {p.line}: {person} is in {FILES[fold_of[person]]} "
                              f"too; View 1's two files must hold disjoint people")
      out.append({"index": len(out), "fold": fold, "issame": p.issame, "line": p.line,
                  "name_a": p.name_a, "file_a": raw.lfw_image_path(p.name_a, p.num_a),
                  "name_b": p.name_b, "file_b": raw.lfw_image_path(p.name_b, p.num_b)})
  return out


def fold_of_person(pairs: list[dict]) -> dict[str, int]:
  """person -> the View 1 fold whose pairs name them (``read_pairs`` checked them disjoint)."""
  return {m[k]: m["fold"] for m in pairs for k in ("name_a", "name_b")}


def present(pairs: list[dict], held: set[str], where: str) -> list[dict]:
  """The pairs whose two photos are in ``held`` (file names ``NAME/NAME_NNNN.jpg``), with a
  note of how many each file keeps. Raises DataError when a file keeps no matched or no
  mismatched pair (nothing to choose a threshold on or to score)."""
  keep = [m for m in pairs if m["file_a"] in held and m["file_b"] in held]
  for fold, name in enumerate(FILES):
    every = [m for m in pairs if m["fold"] == fold]
    kept = [m for m in keep if m["fold"] == fold]
    same = sum(m["issame"] for m in kept)
    if not same or same == len(kept):
      raise raw.DataError(f"{where}: {len(kept)} of the {len(every)} pairs of {name} have both "
                          f"photos ({same} matched); need matched and mismatched ones")
    if len(kept) < len(every):
      _note_once(f"note: LFW View 1: {len(kept)} of the {len(every)} pairs of {name} have both photos "
            f"in {where} ({same} matched, {len(kept) - same} mismatched); the rest name photos "
            "it does not hold and are left out")
  return keep


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
  """A run reads the pairs for its split and again for its evaluation: one note is enough."""
  if message not in _NOTED:
    _NOTED.add(message)
    print(message, file=sys.stderr, flush=True)
