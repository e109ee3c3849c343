"""FaceNet triplet-embedding configs.

  python scripts/train_facenet.py --config=configs/facenet.py[:VARIANT] --workdir=DIR \
      --config.margin=0.3 --config.miner=batch_hard

Variants: "synthetic" (default: procedural identities, no downloads, under a minute on
2 CPU cores), "tiny" (seconds; tests), "inception" (Inception-ResNet-v1 at 160x160 on
the synthetic identities), and real data: "orl" (AT&T/ORL faces, 30 people train, 10
held out; "orl_vgg": frozen ImageNet-VGG19 SPoC descriptors + a PCA-whitened, triplet-trained
linear head), "lfw" (LFW View 2: eight folds train, ``data.test_fold`` held out, the next
fold chooses thresholds; "lfw_vgg": as orl_vgg; "lfw_vgg_aligned": lfw_vgg on MTCNN-aligned
faces with grid-pooled descriptors; "lfw_vgg_aligned224": that at 224 px, chosen on LFW View 1), "omniglot"
(background small1 + small2 characters; 30 held out). Other ranks, same networks, losses,
miners, loop and evaluators: "ekg" (1-D: procedural heartbeat strips, identify the person)
and "volume" (3-D: procedural blob volumes under random pose).

Real data is read from ``data.data_dir``, which the real variants point at the project's
shared copy (``<repo>/../shared/data/...``); use your own with --config.data.data_dir=PATH
("" downloads LFW / Omniglot). ``data.source=folder`` reads ``data_dir/<identity>/<image>``.
Each is prepared once (tfds array_record) into ``data.tfds_dir``.

Layout: ``default_config`` holds every field with its default; each data family's
overrides are one small function below it, looked up by variant name in ``VARIANTS``.
Evaluator settings live under the evaluator's name (``config.evaluation.one_shot.repeats``);
``upgrade`` turns a config saved in the older flat layout into this one. Ready-made sweeps
are in ``configs/sweeps.py``.
"""

import copy
import os
from typing import Callable

from ml_collections import config_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
SHARED_WEIGHTS = os.path.normpath(os.path.join(REPO, "..", "shared", "weights"))

# ----------------------------------------------------------------------------- defaults


def default_config(variant: str = "synthetic") -> config_dict.ConfigDict:
  """Every field with its default (the "synthetic" variant), unlocked, named ``variant``."""
  c = config_dict.ConfigDict()
  c.variant = variant
  c.seed = 0

  # triplet objective
  c.loss = "triplet"            # triplet | soft_margin | contrastive
  c.miner = "semi_hard"         # semi_hard | batch_hard | batch_all | random
  c.margin = 0.2                # alpha
  # K > 0 margins: train K models (one per alpha, same batches) in one vmapped program,
  # each into <workdir>/margin=<alpha>/ as if it were its own run (facenet_jax/train.py)
  c.margins = ()
  c.semi_hard_fallback = "easiest"  # easiest | hardest | drop

  # offline hard-triplet selection: re-score a candidate pool every `rescore_every`
  # steps and train only on triplets that still violate the margin
  c.offline = config_dict.ConfigDict(dict(
      enabled=False, pool_size=4096, rescore_every=200, triplets_per_batch=32))

  # P identities x K images per global batch
  c.update(identities_per_batch=8, images_per_identity=4)
  # > 0: embed the global batch in chunks of this many images (rows j, j + n, j + 2n, ... of
  # the batch, n = batch / batch_chunk) whose activations are recomputed in the backward
  # pass: memory grows with the chunk, not the batch; the gradient is the whole batch's,
  # exact for a model whose BatchNorm normalizes each chunk with that chunk's statistics
  # (running statistics: one update per step, the mean over chunks). 0: off
  c.batch_chunk = 0

  c.data = _data_defaults()
  # training augmentation (facenet_jax/preprocess.py): flip, pad-and-crop translation, zoom
  # by up to 1+scale, rotation by up to `rotate` degrees (2-D), contrast and brightness jitter
  c.augment = config_dict.ConfigDict(dict(flip=True, crop_pad=2, scale=0.0, rotate=0.0,
                                          brightness=0.0, contrast=0.0))
  c.model = _model_defaults()

  # evaluation protocols run at the end of training (facenet_jax/evaluators.py), and
  # their settings
  c.evals = "pairs"
  c.evaluation = _evaluation_defaults()

  c.optim = config_dict.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, warmup_steps=100, weight_decay=1e-4,
      schedule="cosine", grad_clip_norm=10.0))   # adamw | adam | sgd; cosine | constant

  c.num_steps = 800
  c.log_every = 100
  c.eval_every = 400
  c.eval_batch_size = 256
  c.checkpoint_every = 400
  c.keep_checkpoints = 3
  return c


def _data_defaults() -> config_dict.ConfigDict:
  """``config.data``: where the examples come from, their size, and the identity split."""
  return config_dict.ConfigDict(dict(
      source="synthetic",       # synthetic | orl | lfw | omniglot | folder | ekg | volume
      data_dir="",              # raw files of a real source ("": download where possible)
      tfds_dir="~/tensorflow_datasets/facenet_jax",   # prepared tfds data (cache)
      image_size=32,            # images are resized to image_size x image_size at load
      center_crop=0,            # real sources: centered square (px) cut first; 0: largest
      channels=3,               # 1 or 3 (grey is repeated, RGB turned to luma)
      # identities: synthetic / ekg / volume generate this many (0: 400 training and 100
      # held-out people); orl / omniglot / folder / recordio split their people into this
      # many (seeded by split_seed; 0: all the rest, so 0 and 0, the default, trains on every
      # person and holds none out; more than the data holds is an error)
      train_identities=0,
      eval_identities=0,
      split_seed=0,
      test_fold=0,              # lfw: the View 2 fold held out (0..9)
      # lfw: this many View 2 folds after the test fold are held out of training too and
      # choose the thresholds (0: the nine training folds do, scored by a model that
      # trained on their people, whose distances are smaller than a new person's)
      calibration_folds=0,
      # lfw: 2 (View 2's ten folds, for reporting) or 1 (the development view, for choosing
      # a model: trains on everyone in no pairsDevTest.txt pair, thresholds from
      # pairsDevTrain.txt, scores pairsDevTest.txt; with evals="lfw_view1")
      lfw_view=2,
      lfw_dev_dir="",           # lfw_view=1: the folder of the two View 1 files ("": data_dir)
      images_per_identity=(4, 16),
      eval_images_per_identity=(10, 10),
      eval_pairs=3000,          # matched and as many mismatched
      eval_folds=10,
      # transfer learning: train on cached frozen-backbone activations ("vgg19:pool5",
      # with model.name=feature_head) instead of images; "" = images; pooled, several
      # layers joined by "+" ("vgg19:conv4_4+conv5_4") sit side by side with equal weight
      features="",
      # "" keeps the activation map; "mean" / "max" pool it over positions to one
      # L2-normalized vector, after raising it to features_power (0.5 with "mean": SPoC)
      features_pool="",
      features_power=1.0,
      # pooled descriptors: the sum of the image's and its mirror's, then normalized
      features_flip=False,
      # pooled descriptors over a grid x grid partition of the map, concatenated (1: over
      # all positions, SPoC; 2..: keeps the coarse layout of an aligned face)
      features_grid=1,
      features_cache="",        # "": <tfds_dir>/features
      # folder / recordio sources (facenet_jax/data/streamed.py): prepared once into fitted
      # array_record shards under <tfds_dir>/prepared, then read and decoded per batch
      record_encoding="jpeg",   # jpeg (quality 95, 4:4:4) | png (lossless)
      prepare_workers=0,        # processes preparing shards (0: every CPU core)
      workers=-1,               # training input worker processes (-1: 0 for in-memory
                                # sources, else min(4, CPU cores - 1), at least 1)
      prefetch=2,               # steps each input worker prepares ahead
      skip_corrupt=False,       # a record that does not decode: error (False) or masked out
      # face alignment at preparation (facenet_jax/data/aligned.py; lfw, folder, recordio):
      # "none" | "mtcnn" (detect once with the pretrained MTCNN, warp the picked face onto
      # align_template, store the crops; center_crop then applies to no-face images only)
      align="none",
      align_template="arcface112",   # arcface112 | facenet160 (then resized to image_size)
      align_pick="central",     # central (box centre nearest the image centre) | largest
      align_min_face=20.0,      # MTCNN's smallest face (px); in the detection cache key
      no_face="center_crop",    # images without a face: center_crop (fitted unaligned) | drop
      mtcnn_weights=os.path.join(SHARED_WEIGHTS, "mtcnn_weights.npz"),
  ))


def _model_defaults() -> config_dict.ConfigDict:
  """``config.model``: the embedding network (facenet_jax/models.py create_model)."""
  return config_dict.ConfigDict(dict(
      name="small_cnn", embedding_dim=64, spatial_dims=2, widths=(16, 32, 64), depth=18,
      dtype="float32",
      # vgg16 / vgg19 (fine-tuned backbone) and data.features: ImageNet weights, layer
      vgg_weights=os.path.join(SHARED_WEIGHTS, "vgg19_notop_imagenet_8bit_f16.h5"),
      vgg_layer="pool5",
      # feature_head: "random", or "pca_whiten" (a linear head, widths=(), set to PCA
      # whitening of the training features before any step; whitening.fit_pca_whitening),
      # whose eigenvalues (scaled to mean 1) are shrunk by whiten_eps
      head_init="random", whiten_eps=1.0))


def _evaluation_defaults() -> config_dict.ConfigDict:
  """``config.evaluation``: ``flip_tta`` for every evaluator, then one sub-dict of settings
  per evaluator that has any, under its name in ``facenet_jax/evaluators.py``."""
  return config_dict.ConfigDict(dict(
      flip_tta=False,           # embed image + mirror image, normalized sum (every evaluator)
      lfw_view2=dict(
          far=1e-3,             # VAL@FAR target
          pair_features="abs_diff,chi2,concat",   # DeepFace pair heads next to the distance
          pair_head_pairs=3000, pair_head_steps=500, pair_head_lr=0.05,
          pair_head_weight_decay=0.0),
      one_shot=dict(
          repeats=5,            # seeded choices of the enrolment images
          open_set_enrolled=0,  # open set: people enrolled (0: half)
          open_set_far=0.01,    # open set: accepted fraction of calibration impostors
          calibrate_on="train"),  # open set: train | held_out (calibration people)
      episodes=dict(n_way=5, k_shot=1, n_query=5, num_episodes=200),
      clustering=dict(linkage="average"),   # single | average | complete
  ))


# ------------------------------------------------------------------- variant overrides


def _synthetic(c: config_dict.ConfigDict) -> None:
  """The defaults as they are."""
  del c


def _tiny(c: config_dict.ConfigDict) -> None:
  """Seconds on a CPU: few, small identities and a handful of steps (tests)."""
  c.data.train_identities = 24
  c.data.eval_identities = 12
  c.data.images_per_identity = (2, 6)
  c.data.eval_pairs = 200
  c.data.image_size = 16
  c.model.widths = (8, 16)
  c.model.embedding_dim = 16
  c.update(identities_per_batch=4, images_per_identity=4)
  c.num_steps = 6
  c.log_every = 2
  c.eval_every = 6
  c.checkpoint_every = 2
  c.eval_batch_size = 64
  c.offline.pool_size = 64
  c.offline.rescore_every = 3
  c.offline.triplets_per_batch = 8


def _inception(c: config_dict.ConfigDict) -> None:
  """Inception-ResNet-v1 at 160x160 on the synthetic identities."""
  c.data.image_size = 160
  c.model.name = "inception_resnet_v1"
  c.model.embedding_dim = 128
  c.update(identities_per_batch=8, images_per_identity=4)
  c.eval_batch_size = 64
  c.augment.crop_pad = 8


def _spoc_head(c: config_dict.ConfigDict, image_size: int, embedding_dim: int) -> None:
  """Frozen ImageNet VGG19: SPoC of conv4_4 (square root, mean over positions, plus the
  mirror image's, L2-normalized) at ``image_size``, and a linear head set to PCA whitening
  of the training people's descriptors, then triplet-trained."""
  c.data.update(image_size=image_size, features="vgg19:conv4_4", features_pool="mean",
                features_power=0.5, features_flip=True)
  c.model.update(name="feature_head", widths=(), embedding_dim=embedding_dim,
                 head_init="pca_whiten", whiten_eps=1.0)
  c.augment.update(flip=False, crop_pad=0)   # the descriptors are cached, one per image
  c.optim.learning_rate = 1e-3


def _orl(c: config_dict.ConfigDict) -> None:
  """AT&T/ORL: 400 grey 112x92 faces, the central 92x92 square at 64x64, one channel."""
  c.data.update(source="orl", data_dir=os.path.join(SHARED_DATA, "att_faces"), image_size=64,
                channels=1, train_identities=30, eval_identities=10, eval_pairs=500)
  c.augment.crop_pad = 4
  c.update(identities_per_batch=8, images_per_identity=4)
  c.update(num_steps=600, eval_every=200, checkpoint_every=200)
  c.evals = "pairs,one_shot,clustering"


def _orl_vgg(c: config_dict.ConfigDict) -> None:
  """ORL on SPoC descriptors: the 92 px square at 96x96 (12x12 conv4_4 positions; grey
  repeated to RGB), a 256-d head."""
  _orl(c)
  _spoc_head(c, image_size=96, embedding_dim=256)
  c.num_steps = 300


def _lfw(c: config_dict.ConfigDict) -> None:
  """LFW View 2: 250x250 photos, face roughly in the central 128 px; that square at 64x64."""
  c.data.update(source="lfw", data_dir=os.path.join(SHARED_DATA, "lfw"), image_size=64,
                center_crop=128, channels=3, test_fold=0, calibration_folds=1)
  # with --config.data.align=mtcnn: the subject is the centred face, about 100 px in a 250 px
  # photo, so faces under 40 px are not searched (twice the detector's speed); aligned crops
  # are stored lossless. The arcface112 crop frames the face about as the central 128 px does.
  c.data.update(align_min_face=40.0, record_encoding="png")
  c.augment.crop_pad = 4
  c.model.widths = (32, 64, 128)
  c.model.embedding_dim = 128
  c.update(identities_per_batch=16, images_per_identity=4)
  c.update(num_steps=2000, eval_every=500, checkpoint_every=500)
  c.evals = "lfw_view2"


def _lfw_vgg(c: config_dict.ConfigDict) -> None:
  """LFW on SPoC descriptors: the central 128 px at 112x112 (14x14 conv4_4 positions), a
  512-d head; the backbone runs once per image (cached), so a step is cheap."""
  _lfw(c)
  _spoc_head(c, image_size=112, embedding_dim=512)
  c.identities_per_batch = 32
  c.num_steps = 1000


def _lfw_vgg_aligned(c: config_dict.ConfigDict) -> None:
  """lfw_vgg on MTCNN-aligned arcface112 crops, conv4_4 pooled on a 7x7 grid (one cell per
  2x2 positions): the aligned face's layout kept. The grid was chosen on tuning fold 0 only
  (benchmarks/lfw_descriptor.py); 10 folds: README, Aligned LFW."""
  _lfw_vgg(c)
  c.data.update(align="mtcnn", features_grid=7)


def _lfw_vgg_aligned224(c: config_dict.ConfigDict) -> None:
  """lfw_vgg_aligned with the arcface112 crop resized to 224 x 224 (VGG19's ImageNet scale, a
  28 x 28 conv4_4 map on the same 7 x 7 grid): chosen over 112 px on LFW View 1 by a rule
  declared before the runs; View 2, three seeds: 0.9036 (README, Aligned LFW)."""
  _lfw_vgg_aligned(c)
  c.data.image_size = 224


def _omniglot(c: config_dict.ConfigDict) -> None:
  """Omniglot: 105x105 binary characters at 32x32, one channel; a mirrored character can
  be another character, so no flips."""
  c.data.update(source="omniglot", data_dir=os.path.join(SHARED_DATA, "omniglot"),
                image_size=32, channels=1, train_identities=0, eval_identities=30)
  c.augment.flip = False
  c.augment.crop_pad = 2
  c.update(identities_per_batch=16, images_per_identity=4)
  c.update(num_steps=1500, eval_every=500, checkpoint_every=500)
  c.evals = "omniglot_runs,episodes"


def _procedural(c: config_dict.ConfigDict, source: str, image_size: int) -> None:
  """A procedural one-channel source of another rank (ekg, volume): 200 people train,
  100 held out, 4-10 examples each (6 held out), 2,000 evaluation pairs."""
  c.data.update(source=source, image_size=image_size, channels=1, train_identities=200,
                eval_identities=100, images_per_identity=(4, 10),
                eval_images_per_identity=(6, 6), eval_pairs=2000)
  c.evals = "pairs,one_shot"


def _ekg(c: config_dict.ConfigDict) -> None:
  """1-D: 256-sample (2.56 s at 100 Hz) single-lead strips; image_size is the length."""
  _procedural(c, "ekg", image_size=256)
  c.model.update(spatial_dims=1, widths=(16, 32, 64, 64), embedding_dim=64)
  c.augment.update(flip=False, crop_pad=16)   # time reversal is not a heartbeat
  c.update(num_steps=1500, eval_every=750, checkpoint_every=750)


def _volume(c: config_dict.ConfigDict) -> None:
  """3-D: 12^3 one-channel volumes (image_size is the side): 3-D convs are slow on CPU."""
  _procedural(c, "volume", image_size=12)
  c.model.update(spatial_dims=3, widths=(8, 16, 32), embedding_dim=32)
  c.augment.update(flip=False, crop_pad=1)    # a mirror image is another identity
  c.update(num_steps=400, eval_every=200, checkpoint_every=200)


# variant name -> its overrides of the defaults, in the order the docs list them
VARIANTS: dict[str, Callable[[config_dict.ConfigDict], None]] = {
    "synthetic": _synthetic,
    "tiny": _tiny,
    "inception": _inception,
    "orl": _orl,
    "orl_vgg": _orl_vgg,
    "lfw": _lfw,
    "lfw_vgg": _lfw_vgg,
    "lfw_vgg_aligned": _lfw_vgg_aligned,
    "lfw_vgg_aligned224": _lfw_vgg_aligned224,
    "omniglot": _omniglot,
    "ekg": _ekg,
    "volume": _volume,
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The locked config of variant ``arg`` ("synthetic" when empty): the defaults with that
  variant's overrides (``--config=configs/facenet.py:VARIANT`` passes ``arg``)."""
  variant = arg or "synthetic"
  if variant not in VARIANTS:
    raise ValueError(f"unknown facenet config variant {variant!r}; expected one of "
                     f"{', '.join(VARIANTS)}")
  c = default_config(variant)
  VARIANTS[variant](c)
  c.lock()
  return c


# ------------------------------------------------------------------ saved-config layout

# evaluation settings of the older flat layout (config.evaluation.<field>) -> the
# evaluator whose sub-dict holds them now (config.evaluation.<evaluator>.<field>)
FLAT_EVALUATION_FIELDS = {
    "far": "lfw_view2", "pair_features": "lfw_view2", "pair_head_pairs": "lfw_view2",
    "pair_head_steps": "lfw_view2", "pair_head_lr": "lfw_view2",
    "pair_head_weight_decay": "lfw_view2",
    "repeats": "one_shot", "open_set_enrolled": "one_shot", "open_set_far": "one_shot",
    "calibrate_on": "one_shot",
    "n_way": "episodes", "k_shot": "episodes", "n_query": "episodes", "num_episodes": "episodes",
    "linkage": "clustering",
}


def upgrade(saved: dict) -> dict:
  """A copy of ``saved`` (a config dict as a run's ``config.json`` holds it) in the current
  layout: flat ``evaluation`` settings of older runs moved under their evaluator's name
  (``evaluation.repeats`` -> ``evaluation.one_shot.repeats``). A dict already in the
  current layout comes back equal to ``saved``; ``saved`` itself is never changed."""
  out = copy.deepcopy(saved)
  evaluation = out.get("evaluation")
  if not isinstance(evaluation, dict):
    return out
  for field, evaluator in FLAT_EVALUATION_FIELDS.items():
    if field in evaluation:
      evaluation.setdefault(evaluator, {})[field] = evaluation.pop(field)
  return out
