"""Sources bigger than RAM: identity folders and insightface RecordIO, prepared once into
fitted array_record shards (``prepare.py``) and read back lazily (``records.RecordImages``).

``data.data_dir`` is one of
  * ``root/<identity>/<image>`` (CASIA-WebFace, VGGFace2, LFW layouts): ``source=folder``;
  * a folder holding insightface ``train.rec`` + ``train.idx`` (MS1M, WebFace): ``source=recordio``;
  * a folder prepared before (it holds ``dataset.json``): either source reads it as it is.

Preparation goes to ``<data.tfds_dir>/prepared/<kind>_<fingerprint>_<size>px_...`` and
happens once: later runs (and other processes) find it finished. Nothing but the labels is
loaded; a dataset of N images costs about 30 bytes of RAM per image.

Splits: ``data.train_identities`` / ``data.eval_identities`` people (seeded by
``data.split_seed``; 0: all the rest) as for ORL; 0 and 0 trains on every identity and
holds none out. Asking for more people than the data holds is an error naming both.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

import ml_collections
import numpy as np

from facenet_jax.data import aligned, prepare, raw, records
from facenet_jax.data.dataset import IdentityDataset
from facenet_jax.data.images import Fit
from infra import distributed

PREPARE_TIMEOUT_S = 24 * 3600   # other processes wait this long for process 0 to prepare


def fit_of(config: ml_collections.ConfigDict) -> Fit:
  d = config.data
  return Fit(size=int(d.image_size), crop=int(d.center_crop), channels=int(d.channels))


def _data_dir(config: ml_collections.ConfigDict) -> str:
  d = config.data.data_dir
  if not d:
    raise raw.DataError(f"config.data.source = {config.data.source!r} needs config.data.data_dir; "
                        "it is empty")
  path = os.path.abspath(os.path.expanduser(d))
  if not os.path.isdir(path):
    raise raw.DataError(f"config.data.data_dir = {d!r}: no such folder")
  return path


def _plan(config: ml_collections.ConfigDict, root: str, out: str) -> prepare.Plan:
  if config.data.source == "recordio":
    return prepare.recordio_plan(os.path.join(root, "train.rec"), out)
  return prepare.folder_plan(root, out)


def prepared_path(config: ml_collections.ConfigDict,
                  check_plan: Callable[[prepare.Plan], None] | None = None) -> str:
  """The prepared dataset of ``config`` (preparing it first when needed, on process 0 of a
  multi-process run while the others wait; on one machine, a file lock makes concurrent
  runs prepare it once). ``check_plan`` sees the source's plan (its identities and files)
  before any image is decoded."""
  root = _data_dir(config)
  if records.is_prepared(root):
    return root
  out = os.path.join(os.path.abspath(os.path.expanduser(config.data.tfds_dir)), "prepared")
  plan = prepare.shared_plan(lambda: _plan(config, root, out), PREPARE_TIMEOUT_S,
                             f"dataset {root} fingerprinted by process 0")
  d = config.data
  if check_plan is not None:
    check_plan(plan)
  alignment = aligned.alignment_of(config)
  run = lambda: prepare.prepare(plan, out, fit_of(config), encoding=d.record_encoding,
                                workers=int(d.prepare_workers), alignment=alignment)
  distributed.run_on_process_zero_then_barrier(run, PREPARE_TIMEOUT_S,
                                               f"dataset {root} prepared by process 0")
  return os.path.join(out, prepare.prepared_name(plan, fit_of(config), d.record_encoding, alignment))


def _check_fit(prepared: records.PreparedDataset, config: ml_collections.ConfigDict) -> None:
  alignment = aligned.alignment_of(config)
  want_key = alignment.key() if alignment is not None else None
  have_key = (prepared.meta.get("align") or {}).get("key")
  if want_key != have_key:
    have = "not aligned" if have_key is None else f"aligned ({prepared.meta['align']['template']}, " \
        f"no_face={prepared.meta['align']['no_face']}, key {have_key})"
    raise raw.DataError(
        f"{prepared.path} holds images {have}; config.data.align={config.data.get('align', 'none')!r} "
        f"asks for {'unaligned images' if want_key is None else 'alignment key ' + want_key}: "
        "set data.align and its fields to match, or prepare from the raw images")
  want, have = fit_of(config), prepared.fit
  if want != have:
    raise raw.DataError(
        f"{prepared.path} holds images prepared at {have.size} px (center crop {have.crop}, "
        f"{have.channels} channels); config.data asks for image_size={want.size}, center_crop="
        f"{want.crop}, channels={want.channels}: set those, or prepare from the raw images")


def _subset(prepared: records.PreparedDataset, keep: np.ndarray, name: str) -> IdentityDataset:
  """The records whose label is in ``keep``, labels renumbered 0..n-1 in label order."""
  rows = np.nonzero(np.isin(prepared.labels, keep))[0]
  _, labels = np.unique(prepared.labels[rows], return_inverse=True)
  return IdentityDataset(images=records.RecordImages(prepared, rows),
                         labels=labels.astype(np.int32), name=name)


def split(prepared: records.PreparedDataset, config: ml_collections.ConfigDict,
          what: str) -> tuple[IdentityDataset, IdentityDataset]:
  """(train, held-out) by identity (see the module doc); the held-out side may be empty."""
  from facenet_jax.data.real import split_identities   # lazy: real.py imports tfds lazily too
  d = config.data
  n = int(prepared.meta["num_identities"])
  names = [str(k) for k in range(n)]   # labels stand for the identities: no names needed
  tr, ho = split_identities(names, int(d.train_identities), int(d.eval_identities),
                            int(d.split_seed), what)
  seed = f"split_seed={d.split_seed}"
  to_ids = lambda s: np.sort(np.fromiter((int(x) for x in s), np.int64, len(s)))
  return (_subset(prepared, to_ids(tr), f"{what}-train({seed})"),
          _subset(prepared, to_ids(ho), f"{what}-held-out({seed})"))


def load(config: ml_collections.ConfigDict, identities_per_batch: int | None = None
         ) -> tuple[IdentityDataset, IdentityDataset]:
  """``source=folder`` / ``recordio``: (train, held-out) IdentityDatasets over the
  prepared shards (images decoded on demand). ``identities_per_batch``: the P x K sampler's
  P, checked on the training people of the plan (sources.load)."""
  def check_split(plan: prepare.Plan) -> None:
    # a split that cannot be made, refused before every image is decoded (it was found after
    # the preparation: minutes on a large folder)
    from facenet_jax.data.real import split_identities   # lazy, as in split()
    from facenet_jax.sampler import check_enough_identities
    d = config.data
    train, _ = split_identities([str(k) for k in range(len(plan.identities))],
                                int(d.train_identities), int(d.eval_identities),
                                int(d.split_seed), _what(config))
    if identities_per_batch is not None:   # the sampler found it after the preparation
      counts = np.bincount(plan.labels, minlength=len(plan.identities))
      check_enough_identities(counts[[int(k) for k in train]], identities_per_batch)
  prepared = records.open_prepared(prepared_path(config, check_split))
  _check_fit(prepared, config)
  return split(prepared, config, _what(config))


def prepared_name(ds: IdentityDataset) -> str | None:
  """The prepared dataset ``ds`` reads (its folder's name: kind, the source files' content
  fingerprint, size, fit), or None for data held in memory. A run records it, so that reading
  its data again can tell when the files under data_dir changed since it trained."""
  prepared = getattr(ds.images, "prepared", None)
  return os.path.basename(os.path.normpath(prepared.path)) if prepared is not None else None


def data_key(ds: IdentityDataset) -> str:
  """What a run trains on, in a line: the prepared dataset's name for streamed data (its
  source files' content fingerprint and the fit), else ``sha256:<hex>`` of the in-memory
  images and labels (generated data, tfds sources: hashing them takes well under a second)."""
  name = prepared_name(ds)
  if name:
    return name
  h = hashlib.sha256()
  for a in (ds.labels, ds.images):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
  return f"sha256:{h.hexdigest()[:16]}"


def _what(config: ml_collections.ConfigDict) -> str:
  """How messages name the source: ``folder:<folder name>``."""
  return f"{config.data.source}:{os.path.basename(os.path.normpath(config.data.data_dir))}"
