"""The run directory contract, shared by the training driver and everything that reads a run.

A FaceNet workdir holds ``config.json`` (written before the first step, so a run can be
rebuilt from it), Orbax checkpoints under ``checkpoints/``, ``metrics.jsonl`` and TensorBoard
events, and at the end ``results.json``. A K-margin run's workdir holds one such directory
per margin (``margin=<alpha>/``) plus its own ``config.json``, ``results.json`` and
``sweep.json``.
"""

from __future__ import annotations

import json
import os

import ml_collections

from configs import facenet as facenet_configs
from facenet_jax import steps, vgg_features
from facenet_jax.data import sources
from infra import checkpoints, files, outdirs, vgg as vgg_lib
from infra.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
DATA_FILE = "data.json"   # what the run trains on (check_training_data)
CHECKPOINTS = "checkpoints"


class WorkdirError(UserError, FileNotFoundError):
  """A workdir without a usable config or checkpoint (names the path)."""


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  files.write_json_atomic(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def write_results(workdir: str, results: dict) -> None:
  files.write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)


def checkpointer(workdir: str, config: ml_collections.ConfigDict) -> checkpoints.Checkpointer:
  """The run's checkpoint manager: every ``checkpoint_every`` steps, the last
  ``keep_checkpoints`` kept."""
  return checkpoints.Checkpointer(os.path.join(workdir, CHECKPOINTS),
                                  every=config.checkpoint_every, keep=config.keep_checkpoints)


def _merge(dst: ml_collections.ConfigDict, src: dict, prefix: str, path: str) -> None:
  for k, v in src.items():
    if k not in dst:
      raise WorkdirError(f"{path}: field {prefix}{k} is not in configs/facenet.py")
    if isinstance(dst[k], ml_collections.ConfigDict):
      _merge(dst[k], v, f"{prefix}{k}.", path)
    else:
      dst[k] = tuple(v) if isinstance(dst[k], tuple) else v


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, with fields added to ``configs/facenet.py`` since it was written
  taking their generic defaults, the values that do what code did before the field existed
  (features_flip False, calibration_folds 0, ...). The variant's values took their place: an
  lfw_vgg run from before data.features_flip was then evaluated on mirrored features, and an
  old LFW run as if it had held out a calibration fold, without a word."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f"{path} not found: is {workdir!r} a workdir written by "
                       "scripts/train_facenet.py?")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path}: not a readable JSON config ({e})") from e
  saved = facenet_configs.upgrade(saved)   # older runs' layout -> today's field names
  config = facenet_configs.default_config(saved.get("variant") or "synthetic")
  _merge(config, saved, "config.", path)
  return config


# Fields a run may change when it continues in its workdir, and why that is safe; every
# other field must equal the run's config.json (a different margin or model would resume
# the old run's checkpoints under the new config's name).
CONTINUABLE = {
    "num_steps": "more steps continue the run (batches are functions of (seed, step); only "
                 "under a schedule that does not depend on num_steps, see _continuable)",
    "log_every": "a logging period", "eval_every": "a logging period",
    "checkpoint_every": "a logging period",
    "keep_checkpoints": "how many checkpoints stay (only upwards: fewer deleted the run's older "
                        "ones at the next save, its last step too)",
    "eval_batch_size": "how evaluation batches the held-out images",
    "evals": "evaluation: the evaluators run again at the end",
    "evaluation": "evaluation settings: the evaluators run again at the end",
    "data.workers": "how batches are read (a step's batch is a function of (seed, step))",
    "data.prefetch": "how batches are read (a step's batch is a function of (seed, step))",
    "data.prepare_workers": "how a source is prepared (the same shards, byte for byte)",
    "data.tfds_dir": "where prepared data is kept (data.json refuses other training data)",
}


# The data fields a finished run may be evaluated with (scripts/evaluate_facenet.py --set):
# where the images come from and how their people are split, never what the model takes
# (data.image_size, channels, features*: its input). With evaluation.*, nothing else may
# differ from config.json when a run is read.
EVALUATION_DATA_FIELDS = ("source", "data_dir", "tfds_dir", "train_identities",
                          "eval_identities", "split_seed", "test_fold", "calibration_folds",
                          "images_per_identity", "eval_images_per_identity", "eval_pairs",
                          "eval_folds", "center_crop")


def check_evaluation_settings(settings: dict) -> None:
  """Raises WorkdirError naming a ``--set`` key that evaluating a finished run cannot change:
  anything but ``evaluation.*`` and ``data.<EVALUATION_DATA_FIELDS>``; an evaluator setting
  spelled in the older flat layout (``evaluation.repeats``) gets its current name."""
  for k in settings:
    section, _, field = k.partition(".")
    if section == "evaluation" and field in facenet_configs.FLAT_EVALUATION_FIELDS:
      raise WorkdirError(f"--set={k}=...: evaluator settings are under the evaluator's name: "
                         f"--set=evaluation.{facenet_configs.FLAT_EVALUATION_FIELDS[field]}.{field}=...")
    if section == "evaluation" or (section == "data" and field in EVALUATION_DATA_FIELDS):
      continue
    raise WorkdirError(f"--set={k}=...: only evaluation.* settings and the data fields "
                       f"data.{{{','.join(EVALUATION_DATA_FIELDS)}}} can change after training "
                       "(the rest define the trained model)")


_PHOTO_SOURCES = tuple(s for s in sources.SOURCES if s not in sources.GENERATED)


def _feature_cache_in_tfds_dir(d: ml_collections.ConfigDict) -> bool:
  """Cached backbone features go to <tfds_dir>/features (vgg_features.cache_dir_for)."""
  return bool(d.features) and not d.features_cache


_SPLIT_SEED_SOURCES = tuple(s for s, fs in sources.SPLIT_FIELDS.items() if "data.split_seed" in fs)

# The EVALUATION_DATA_FIELDS that some data sources (facenet_jax/data/sources.py and the loaders
# of real.py / streamed.py) or evaluators never read: field -> (whether ``config.data`` with the
# evaluators ``running`` reads it, what reads it). The rest (source, data_dir) choose the data.
EVALUATION_DATA_READERS = {
    "center_crop": (lambda d, running: d.source in _PHOTO_SOURCES,
                    f"the photo sources {_PHOTO_SOURCES}; a generated source makes its images "
                    "at data.image_size"),
    "tfds_dir": (lambda d, running: d.source in _PHOTO_SOURCES or _feature_cache_in_tfds_dir(d),
                 f"the photo sources {_PHOTO_SOURCES}, for their prepared data, and "
                 "data.features with data.features_cache='', for its feature cache"),
    "split_seed": (lambda d, running: d.source in _SPLIT_SEED_SOURCES,
                   f"the sources {_SPLIT_SEED_SOURCES}; LFW splits people by data.test_fold, a "
                   "generated source makes them from config.seed"),
    "test_fold": (lambda d, running: d.source == "lfw" and d.lfw_view == 2,
                  "data.source='lfw' with data.lfw_view=2, of View 2 folds"),
    "calibration_folds": (lambda d, running: d.source == "lfw" and d.lfw_view == 2,
                          "data.source='lfw' with data.lfw_view=2, of View 2 folds"),
    "train_identities": (lambda d, running: d.source != "lfw",
                         "every source but 'lfw', whose people are split by View 2 fold"),
    "eval_identities": (lambda d, running: d.source != "lfw",
                        "every source but 'lfw', whose people are split by View 2 fold"),
    "images_per_identity": (lambda d, running: d.source in sources.GENERATED,
                            f"the generated sources {sources.GENERATED}; photo sources hold "
                            "the images they hold"),
    "eval_images_per_identity": (lambda d, running: d.source in sources.GENERATED,
                                 f"the generated sources {sources.GENERATED}; photo sources "
                                 "hold the images they hold"),
    "eval_pairs": (lambda d, running: "pairs" in running, "the pairs evaluator"),
    "eval_folds": (lambda d, running: "pairs" in running, "the pairs evaluator"),
}


def check_evaluation_data_read(settings: dict, config: ml_collections.ConfigDict,
                               running: list[str]) -> None:
  """Raises WorkdirError naming a ``--set=data.FIELD`` that evaluating with ``config`` (the
  run's config with every change applied) and the evaluators ``running`` never reads
  (EVALUATION_DATA_READERS): ``--set=data.center_crop=8`` on a synthetic run gave the run's
  own results, under a results file named after the setting, as if the setting had been
  evaluated (as an evaluator's setting whose evaluator is not run is refused)."""
  d = config.data
  for k, v in settings.items():
    section, _, field = k.partition(".")
    if section != "data" or field not in EVALUATION_DATA_READERS:
      continue
    reads, readers = EVALUATION_DATA_READERS[field]
    if not reads(d, running):
      raise WorkdirError(f"--set={k}={v}: evaluating data.source={d.source!r} with {running} does "
                         f"not read it (read only by {readers}), so the results would be those "
                         "without it, in a file named after it; leave it out")


def check_held_out_people(run: ml_collections.ConfigDict, now: ml_collections.ConfigDict) -> None:
  """Raises WorkdirError when evaluating with ``now`` would score people the run trained on
  as held-out people: on the run's own files (same ``data.source`` and ``data_dir``),
  another LFW ``test_fold`` / ``calibration_folds``, or another ``split_seed`` /
  ``train_identities`` of a source split by name (``real.split_identities``: the held-out
  people follow the first ``train_identities`` of a seeded order, so only more held-out
  people after the same training ones stay unseen). ``evaluate_facenet --set=data.split_seed=1``
  on an ORL run scored 6 of its 10 "held-out" people from training (accuracy 0.978 for 0.891).
  Generated sources hold their people out by generator seed and are not checked."""
  r, n = run.data, now.data
  same = r.source == n.source and os.path.abspath(os.path.expanduser(r.data_dir or ".")) == \
      os.path.abspath(os.path.expanduser(n.data_dir or "."))
  if not same or r.source in sources.GENERATED:
    return
  fields = [f.removeprefix("data.") for f in sources.SPLIT_FIELDS[r.source]]
  if r.source != "lfw":   # split by name: the training count too, and held-out counts after 0
    fields += ["train_identities"] + (["eval_identities"] if not int(r.train_identities) else [])
  value = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  for f in fields:
    if value(r[f]) != value(n[f]):
      raise WorkdirError(
          f"--set=data.{f}={n[f]}: the run trained on data.source={r.source!r} with data.{f}="
          f"{r[f]}; on its own files another split scores people it trained on as held-out "
          "(evaluate other data with --source / --data_dir, or train a run on this split)")


def _flat(d: dict, prefix: str = "") -> dict:
  """``{"model.embedding_dim": 64, ...}``: a nested config dict's leaves by dotted name."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _continuable(field: str, old, new, saved: dict) -> bool:
  """Whether continuing a run of the flat config ``saved`` may change ``field`` from ``old``
  to ``new`` (CONTINUABLE; ``num_steps`` only upwards, and only when the learning rate of
  the steps already taken does not depend on it: ``steps.make_optimizer``'s cosine decays
  to 0 at num_steps, and a warmup longer than the run is cut at num_steps. Continuing such a
  run to 1,600 steps took the rate at step 800 from 0 back up to 1.1e-3 and wrote results
  under num_steps=1600 that a fresh 1,600-step run does not give)."""
  if field == "num_steps":
    return new == old or (new > old and schedule_extends(saved, old))
  if field == "keep_checkpoints":
    return new >= old
  if field == "evaluation.flip_tta" and saved.get("offline.enabled"):
    return False   # offline selection scores its triplets with the evaluation embedding
  return field in CONTINUABLE or field.split(".")[0] in CONTINUABLE


def schedule_extends(saved: dict, num_steps: int) -> bool:
  """Whether the learning rates of a run's first ``num_steps`` steps stay the same for any
  larger num_steps: a constant schedule whose warmup ends inside them."""
  return (saved.get("optim.schedule") == "constant"
          and int(saved.get("optim.warmup_steps", 0)) <= max(int(num_steps) - 1, 0))


def check_continuation(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Checks that ``config`` may run in ``workdir`` before anything is written there: a new
  or empty folder, or a run whose ``config.json`` differs from ``config`` only in fields
  of CONTINUABLE. Returns those changes (``["num_steps: 400 -> 800", ...]``) for the log.

  Raises WorkdirError: ``workdir`` holds checkpoints but no config.json, or a run of another
  config (every differing field listed with both values); files.WriteError: it is a file.
  """
  files.check_directory(workdir, "workdir")
  outdirs.claim(workdir, "facenet", "workdir")   # another script's run: not ours to continue
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    if os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
      raise WorkdirError(f"workdir {workdir} holds {CHECKPOINTS}/ but no {CONFIG_FILE}: not a run "
                         "this config can continue; use a new workdir")
    return []
  saved = _flat(load_config(workdir).to_dict())
  wanted = _flat(config.to_dict())
  changed = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
             if saved.get(k) != wanted.get(k)}
  refused = [k for k, (old, new) in changed.items() if not _continuable(k, old, new, saved)]
  if refused:
    diffs = "; ".join(f"{k}: {changed[k][0]!r} in the run, {changed[k][1]!r} now" for k in refused)
    if "num_steps" in refused and changed["num_steps"][1] > changed["num_steps"][0]:
      diffs += (f" (its optim.schedule={saved.get('optim.schedule')!r} with optim.warmup_steps="
                f"{saved.get('optim.warmup_steps')} sets the learning rate from num_steps, so the "
                "steps already taken would not be those of the longer run)")
    raise WorkdirError(
        f"workdir {workdir} holds a run of another config ({os.path.join(workdir, CONFIG_FILE)}): "
        f"{diffs}. Use a new workdir for this config, or the run's values to continue it "
        f"(continuing may change only num_steps, upwards under a constant schedule, "
        f"keep_checkpoints, upwards, and "
        f"{', '.join(k + ('.*' if k == 'evaluation' else '') for k in CONTINUABLE if k not in ('num_steps', 'keep_checkpoints'))})")
  return [f"{k}: {old!r} -> {new!r} ({CONTINUABLE.get(k, CONTINUABLE.get(k.split('.')[0]))})"
          for k, (old, new) in changed.items()]



def _resolved(path: str) -> str:
  return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, root: str) -> bool:
  """Whether the resolved ``path`` is the resolved ``root`` or below it."""
  return os.path.commonpath([path, root]) == root


def check_paths(workdir: str, config: ml_collections.ConfigDict) -> str | None:
  """Checks the paths a run's config names before anything reads or writes through them;
  returns the feature cache folder to use (None when the run takes raw images).

  A run's ``config.json`` is an input like any other (copied, downloaded, edited), so reading
  a run writes nothing outside its workdir and its caches:

  * ``model.vgg_weights`` (read with ``data.features`` or a vgg16/vgg19 model): "random",
    "download" / "" (the md5-checked Keras file in the VGG weights cache), or an existing
    regular file (not a folder, a device or a pipe).
  * the feature cache folder (``data.features_cache``, or ``<data.tfds_dir>/features`` when
    "") must, with ``~`` and symbolic links resolved, lie under the workdir or under the
    default tfds dir (``configs/facenet.py``: ``~/tensorflow_datasets/facenet_jax``), where
    it may be created; anywhere else it is used only if it already holds this run's cache
    file (which its training wrote), so only that file is ever rewritten there.

  Raises WorkdirError naming ``<workdir>/config.json``, the field and what was expected.
  """
  where = os.path.join(workdir, CONFIG_FILE)
  if config.data.features or str(config.model.name) in ("vgg16", "vgg19"):
    _check_weights(where, str(config.model.vgg_weights))
  if not config.data.features:
    return None
  return _check_feature_cache(workdir, where, config)


def _check_weights(where: str, weights: str) -> None:
  """``model.vgg_weights`` is a keyword or an existing regular file."""
  path = os.path.expanduser(weights)
  if vgg_lib.weights_keyword(weights) or os.path.isfile(path):
    return
  what = "is not a regular file" if os.path.exists(path) else "does not exist"
  raise WorkdirError(f"{where}: config.model.vgg_weights = {weights!r} {what}; expected a "
                     f"Keras VGG HDF5 file, 'random' or 'download'")


def _check_feature_cache(workdir: str, where: str, config: ml_collections.ConfigDict) -> str:
  """The feature cache folder, if it may be written (see :func:`check_paths`)."""
  cache = vgg_features.cache_dir_for(config)
  real = _resolved(cache)
  default_tfds = _resolved(facenet_configs.default_config().data.tfds_dir)
  if _inside(real, _resolved(workdir)) or _inside(real, default_tfds):
    return cache
  if os.path.isfile(vgg_features.cache_file_for(config, input_shape(config), cache)):
    return cache
  field = ("config.data.features_cache" if config.data.features_cache
           else "config.data.tfds_dir (its features/ folder)")
  raise WorkdirError(f"{where}: {field} puts the feature cache in {real}, outside the workdir and "
                     f"{default_tfds}, and no cache file of this run is there; expected a folder "
                     f"under one of them (or the one the run's training cached into)")


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(*spatial, C) of the images the data sources produce for ``config``."""
  return (config.data.image_size,) * config.model.spatial_dims + (config.data.channels,)


def restore(workdir: str, config: ml_collections.ConfigDict,
            model_shape: tuple[int, ...]) -> tuple[int, object, dict]:
  """``(step, graphdef, state)`` of the latest checkpoint of ``workdir``; ``state`` as
  ``steps.create_train_state`` builds it (``params``, ``model_state``, ...), so
  ``nnx.merge(graphdef, state["params"], state["model_state"])`` is the trained model."""
  graphdef, _, state = steps.create_train_state(config, example_shape=model_shape)
  directory = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(directory):
    members = sorted(n for n in os.listdir(workdir) if n.startswith("margin=")
                     and os.path.isdir(os.path.join(workdir, n, CHECKPOINTS)))
    if members:   # a K-margin run's root: its models are one folder down
      raise WorkdirError(f"{workdir} is a K-margin run (config.margins): it holds one model per "
                         f"margin, in {', '.join(members)}; give one of those as the workdir")
    raise WorkdirError(f"{workdir}/checkpoints holds no finished checkpoint (no such folder)")
  # read-only: a finished run on storage this process cannot write to is still usable
  ckpt = checkpoints.Checkpointer(directory, every=1, read_only=True)
  restored = ckpt.restore(state)
  ckpt.close()
  if restored is None:
    raise WorkdirError(f"{workdir}/checkpoints holds no finished checkpoint")
  step, state, _ = restored
  return int(step), graphdef, state


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The results.json of a finished run of exactly ``config`` in ``workdir``, or None when
  the run is still to train, or to continue (a CONTINUABLE change: more ``num_steps``, other
  evaluations). Raises WorkdirError for a run of another config (``check_continuation``):
  sweeps and cross-validations reported such a run's old results as the new config's."""
  changes = check_continuation(config, workdir)
  path = os.path.join(workdir, RESULTS_FILE)
  if changes or not os.path.exists(path):
    return None
  results = files.read_json(path)
  # results of fewer steps than the config: a continuation that stopped before its end
  # (from before set_aside_results renamed them), not this config's finished run
  return results if results.get("step") == int(config.num_steps) else None


def check_training_data(workdir: str, key: str, run_dirs: list[str]) -> str | None:
  """Raises WorkdirError when the run in ``workdir`` (its models in ``run_dirs``) holds
  checkpoints trained on other data than ``key`` (``streamed.data_key``, recorded in
  data.json by :func:`record_training_data`): files under data_dir changed since it started,
  and a resume trained its later steps on them without a word (its config is the same).
  Read from the folders alone, before the run opens anything there. Returns a note for a run
  from before the record, which cannot be checked."""
  path = os.path.join(workdir, DATA_FILE)
  steps_done = [int(n) for d in run_dirs if os.path.isdir(c := os.path.join(d, CHECKPOINTS))
                for n in os.listdir(c) if n.isdigit()]
  if not steps_done:
    return None   # nothing trained yet: the run starts on the data it reads now
  if not os.path.exists(path):
    return f"{path}: not written by the code this run started with; its data is recorded now"
  try:
    was = files.read_json(path)["train"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{path}: not a readable record of the run's data ({type(e).__name__}: {e}); "
                       "expected {\"train\": ...}") from e
  if was != key:
    raise WorkdirError(f"{path}: the run trained up to step {max(steps_done)} on {was}, and the data "
                       f"read now is {key}: the files under config.data.data_dir changed since it "
                       "started. Restore them to continue the run, or train in a new workdir")
  return None


def record_training_data(workdir: str, key: str) -> None:
  """Writes data.json (``{"train": key}``) before the run's first step."""
  files.write_json_atomic(os.path.join(workdir, DATA_FILE), {"train": key})


def set_aside_results(workdir: str, start: int, num_steps: int) -> str | None:
  """Renames ``workdir``'s results.json to ``results.step<k>.json`` when the run is about to
  train from ``start`` on to ``num_steps`` (a run continued with more steps): a stop before
  the new end left the old results beside a config.json of the new num_steps, and sweeps
  and cross-validations took them as that config's finished run. Returns the new path (None:
  nothing to set aside); an existing file of that name is not overwritten."""
  path = os.path.join(workdir, RESULTS_FILE)
  if start >= num_steps or not os.path.exists(path):
    return None
  try:
    step = int(files.read_json(path).get("step", start))
  except (OSError, ValueError, TypeError, AttributeError):
    step = start   # unreadable: kept all the same, under the step it resumes from
  stem, n = f"results.step{step}", 0
  while os.path.exists(new := os.path.join(workdir, f"{stem}{f'.{n}' if n else ''}.json")):
    n += 1
  os.replace(path, new)
  return new
