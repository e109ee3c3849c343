"""Omniglot background "small" sets and the 20 official 20-way 1-shot runs, from the
official zips (``images_background_small1.zip``, ``images_background_small2.zip``,
``all_runs.zip``).

Greek and Latin appear in both small sets. In the official zips they are the same
characters drawn by the same drawers, byte for byte (checked: identical file names and
contents), so a character's identity is ``alphabet/characterNN`` whichever zip it came
from, and both splits give it the same label. The loader keeps one copy of each.

The zips are read in place, downloaded or from manual_dir alike, through
``archives.open_zip`` / ``read_member`` (no extraction, no TensorFlow; member paths, links
and sizes checked).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from facenet_jax.data import raw
from facenet_jax.data.tfds_builders import archives
from facenet_jax.data.tfds_builders._common import LocalInfo, manual_root

_GITHUB = "https://github.com/brendenlake/omniglot/raw/master/python/"
_ZIPS = {"small1": "images_background_small1.zip", "small2": "images_background_small2.zip",
         "runs": "all_runs.zip"}
_URLS = {"small1": _GITHUB + _ZIPS["small1"], "small2": _GITHUB + _ZIPS["small2"],
         "runs": _GITHUB + "one-shot-classification/" + _ZIPS["runs"]}
# checked before use (as pinned by tensorflow_datasets); all_runs.zip has no pinned hash
# yet, so it is only read from a manual data_dir
_SHA256 = {"small1": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
           "small2": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
           "runs": None}
SIZE = 105


def _background_members(zf, zip_path: str) -> list[tuple[str, str]]:
  """(identity "alphabet/characterNN", member name) of every image of one zip."""
  out = []
  for name in raw.zip_pngs(zf):
    parts = name.split("/")
    if len(parts) != 4:   # top/alphabet/character/file.png
      raise raw.DataError(f"{zip_path}: {name}: expected <top>/<alphabet>/<character>/<image>.png")
    out.append((f"{parts[1]}/{parts[2]}", name))
  return out


def _decode(data: bytes, where: str) -> bytes:
  im = raw.decode_image(data, where, "L")
  if im.size != (SIZE, SIZE):
    raise raw.DataError(f"{where}: Omniglot images are {SIZE}x{SIZE}, this one is "
                        f"{im.width}x{im.height}")
  return raw.encode_png(im)


class Omniglot(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Config "background": label = index of alphabet/character in the sorted union of both
  small sets. Config "runs": run (1..20), role ("training"/"test"), item (the NN of
  classNN/itemNN), class_id (training: its own NN; test: the answer key's class NN)."""

  name = "omniglot"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="background", description="images_background_small1/2"),
      tfds.core.BuilderConfig(name="runs", description="all_runs: 20 one-shot runs"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + ", ".join(_ZIPS.values()) + "."

  def _info(self) -> tfds.core.DatasetInfo:
    common = {"image": tfds.features.Image(shape=(SIZE, SIZE, 1), encoding_format="png"),
              "file_name": tfds.features.Text()}
    if self.builder_config.name == "background":
      extra = {"label": tfds.features.Scalar(dtype=np.int32), "identity": tfds.features.Text(),
               "alphabet": tfds.features.Text()}
    else:
      extra = {"run": tfds.features.Scalar(dtype=np.int32), "role": tfds.features.Text(),
               "item": tfds.features.Scalar(dtype=np.int32),
               "class_id": tfds.features.Scalar(dtype=np.int32)}
    return LocalInfo(
        builder=self, description="Omniglot (Lake, Salakhutdinov & Tenenbaum 2015).",
        features=tfds.features.FeaturesDict({**common, **extra}),
        homepage="https://github.com/brendenlake/omniglot")

  def _split_generators(self, dl_manager):
    base = manual_root(dl_manager)
    wanted = ("small1", "small2") if self.builder_config.name == "background" else ("runs",)
    if base is not None:
      paths = {k: os.path.join(base, _ZIPS[k]) for k in wanted}
      for p in paths.values():
        if not os.path.isfile(p):
          raise raw.DataError(f"{p}: missing (Omniglot manual_dir must hold the official zips)")
    else:
      if any(_SHA256[k] is None for k in wanted):   # refuse before downloading anything
        raw.check_download("", _URLS[wanted[0]], None)
      paths = {k: raw.check_download(os.fspath(v), _URLS[k], _SHA256[k])
               for k, v in dl_manager.download({k: _URLS[k] for k in wanted}).items()}
    if self.builder_config.name == "runs":
      return {"runs": self._generate_examples(paths["runs"])}
    identities = set()
    for p in paths.values():
      with archives.open_zip(p) as zf:
        identities.update(ident for ident, _ in _background_members(zf, p))
    identities = sorted(identities, key=raw.natural_key)
    label = {ident: k for k, ident in enumerate(identities)}
    return {k: self._generate_examples(p, label) for k, p in paths.items()}

  def _generate_examples(self, zip_path: str, label: dict[str, int] | None = None):
    if self.builder_config.name == "runs":
      return self._generate_runs(zip_path)
    return self._generate_background(zip_path, label)

  def _generate_background(self, zip_path: str, label: dict[str, int]):
    with archives.open_zip(zip_path) as zf:
      for ident, name in _background_members(zf, zip_path):
        image = _decode(archives.read_member(zf, name, zip_path), f"{zip_path}: {name}")
        yield name, {"image": image, "label": label[ident], "identity": ident,
                     "alphabet": ident.split("/")[0], "file_name": name}

  def _generate_runs(self, zip_path: str):
    with archives.open_zip(zip_path) as zf:
      members = set(zf.namelist())
      runs = sorted({n.split("/")[0] for n in members
                     if n.count("/") == 1 and n.endswith("/class_labels.txt")}, key=raw.natural_key)
      if not runs:
        raise raw.DataError(f"{zip_path}: no runNN/class_labels.txt inside")
      for run in runs:
        key_name = f"{run}/class_labels.txt"
        where = f"{zip_path}: {key_name}"
        key = raw.parse_run_answer_key(archives.read_member(zf, key_name, zip_path).decode(), where)
        for role in ("training", "test"):
          files = sorted((n for n in members if n.startswith(f"{run}/{role}/") and n.endswith(".png")),
                         key=raw.natural_key)
          if not files:
            raise raw.DataError(f"{zip_path}: {run}/{role}/ holds no .png images")
          for name in files:
            base = os.path.basename(name)
            if role == "test":
              if base not in key:
                raise raw.DataError(f"{where}: no answer for {name}")
              target = f"{run}/training/{key[base]}"
              if target not in members:
                raise raw.DataError(f"{where}: answer for {name} names {target}, not in the zip")
              class_id = raw.number_in(key[base], where)
            else:
              class_id = raw.number_in(base, f"{zip_path}: {name}")
            image = _decode(archives.read_member(zf, name, zip_path), f"{zip_path}: {name}")
            yield name, {"image": image, "run": raw.number_in(run, zip_path),
                         "role": role, "item": raw.number_in(base, f"{zip_path}: {name}"),
                         "class_id": class_id, "file_name": name}
