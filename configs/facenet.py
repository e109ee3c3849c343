"""FaceNet triplet-embedding configs.

  python scripts/train_facenet.py --config=configs/facenet.py[:VARIANT] --workdir=DIR \
      --config.margin=0.3 --config.miner=batch_hard

Variants: "synthetic" (default: procedural identities, no downloads, about 3 minutes on
2 CPU cores), "tiny" (seconds; tests), "inception" (Inception-ResNet-v1 at 160x160 on
the synthetic identities), and real data: "orl" (AT&T/ORL faces, 30 people train, 10
held out; "orl_vgg": frozen ImageNet-VGG19 SPoC descriptors + a PCA-whitened, triplet-trained
linear head), "lfw" (LFW View 2: eight folds train, ``data.test_fold`` held out, the next
fold chooses thresholds; "lfw_vgg": as orl_vgg), "omniglot"
(background small1 + small2 characters; 30 held out). Other ranks, same networks, losses,
miners, loop and evaluators: "ekg" (1-D: procedural heartbeat strips, identify the person)
and "volume" (3-D: procedural blob volumes under random pose).

Real data is read from ``data.data_dir``, which the real variants point at the project's
shared copy (``<repo>/../shared/data/...``); use your own with --config.data.data_dir=PATH
("" downloads LFW / Omniglot). ``data.source=folder`` reads ``data_dir/<identity>/<image>``.
Each is prepared once (tfds array_record) into ``data.tfds_dir``.
"""

import os

from ml_collections import config_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
SHARED_WEIGHTS = os.path.normpath(os.path.join(REPO, "..", "shared", "weights"))


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  variant = arg or "synthetic"
  c = config_dict.ConfigDict()
  c.variant = variant
  c.seed = 0

  # triplet objective
  c.loss = "triplet"            # triplet | soft_margin | contrastive
  c.miner = "semi_hard"         # semi_hard | batch_hard | batch_all | random
  c.margin = 0.2                # alpha
  # K > 0 margins: train K models (one per alpha, same batches) in one vmapped program,
  # each into <workdir>/margin=<alpha>/ as if it were its own run (facenet_jax/multi_margin.py)
  c.margins = ()
  c.semi_hard_fallback = "easiest"  # easiest | hardest | drop

  # offline hard-triplet selection: re-score a candidate pool every `rescore_every`
  # steps and train only on triplets that still violate the margin
  c.offline = config_dict.ConfigDict(dict(
      enabled=False, pool_size=4096, rescore_every=200, triplets_per_batch=32))

  # P identities x K images per global batch
  c.identities_per_batch = 8
  c.images_per_identity = 4

  c.data = config_dict.ConfigDict(dict(
      source="synthetic",       # synthetic | orl | lfw | omniglot | folder
      data_dir="",              # raw files of a real source ("": download where possible)
      tfds_dir="~/tensorflow_datasets/facenet_jax",   # prepared tfds data (cache)
      image_size=32,            # images are resized to image_size x image_size at load
      center_crop=0,            # real sources: centered square (px) cut first; 0: largest
      channels=3,               # 1 or 3 (grey is repeated, RGB turned to luma)
      # identities: synthetic generates this many; orl / omniglot / folder split their
      # people into this many (seeded by split_seed; 0: all the rest)
      train_identities=400,
      eval_identities=100,
      split_seed=0,
      test_fold=0,              # lfw: the View 2 fold held out (0..9)
      # lfw: this many View 2 folds after the test fold are held out of training too and
      # choose the thresholds (0: the nine training folds do, scored by a model that
      # trained on their people, whose distances are smaller than a new person's)
      calibration_folds=0,
      images_per_identity=(4, 16),
      eval_images_per_identity=(10, 10),
      eval_pairs=3000,          # matched and as many mismatched
      eval_folds=10,
      # transfer learning: train on cached frozen-backbone activations ("vgg19:pool5",
      # with model.name=feature_head) instead of images; "" = images
      features="",
      # "" keeps the activation map; "mean" / "max" pool it over positions to one
      # L2-normalized vector, after raising it to features_power (0.5 with "mean": SPoC)
      features_pool="",
      features_power=1.0,
      # pooled descriptors: the sum of the image's and its mirror's, then normalized
      features_flip=False,
      features_cache="",        # "": <tfds_dir>/features
  ))
  # training augmentation (facenet_jax/preprocess.py): flip, pad-and-crop translation, zoom
  # by up to 1+scale, rotation by up to `rotate` degrees (2-D), contrast and brightness jitter
  c.augment = config_dict.ConfigDict(dict(flip=True, crop_pad=2, scale=0.0, rotate=0.0,
                                          brightness=0.0, contrast=0.0))

  c.model = config_dict.ConfigDict(dict(
      name="small_cnn", embedding_dim=64, spatial_dims=2, widths=(16, 32, 64), depth=18,
      dtype="float32",
      # vgg16 / vgg19 (fine-tuned backbone) and data.features: ImageNet weights, layer
      vgg_weights=os.path.join(SHARED_WEIGHTS, "vgg19_notop_imagenet_8bit_f16.h5"),
      vgg_layer="pool5",
      # feature_head: "random", or "pca_whiten" (a linear head, widths=(), set to PCA
      # whitening of the training features before any step; models.fit_pca_whitening),
      # whose eigenvalues (scaled to mean 1) are shrunk by whiten_eps
      head_init="random", whiten_eps=1.0))

  # evaluation protocols run at the end of training (facenet_jax/evaluators.py), and
  # their settings
  c.evals = "pairs"
  c.evaluation = config_dict.ConfigDict(dict(
      far=1e-3,                 # VAL@FAR target (lfw_view2)
      flip_tta=False,           # embed image + mirror image, normalized sum (every evaluator)
      repeats=5,                # one_shot: seeded choices of the enrolment images
      open_set_enrolled=0,      # one_shot open set: people enrolled (0: half)
      open_set_far=0.01,        # one_shot open set: accepted fraction of calibration impostors
      calibrate_on="train",     # one_shot open set: train | held_out (calibration people)
      n_way=5, k_shot=1, n_query=5, num_episodes=200,   # episodes
      linkage="average",        # clustering: single | average | complete
      pair_features="abs_diff,chi2,concat",   # lfw: DeepFace heads next to the distance
      pair_head_pairs=3000, pair_head_steps=500, pair_head_lr=0.05, pair_head_weight_decay=0.0,
  ))

  c.optim = config_dict.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, warmup_steps=100, weight_decay=1e-4,
      schedule="cosine", grad_clip_norm=10.0))

  c.num_steps = 800
  c.log_every = 100
  c.eval_every = 400
  c.eval_batch_size = 256
  c.checkpoint_every = 400
  c.keep_checkpoints = 3

  if variant == "synthetic":
    pass
  elif variant == "tiny":
    c.data.train_identities = 24
    c.data.eval_identities = 12
    c.data.images_per_identity = (2, 6)
    c.data.eval_pairs = 200
    c.data.image_size = 16
    c.model.widths = (8, 16)
    c.model.embedding_dim = 16
    c.identities_per_batch = 4
    c.images_per_identity = 4
    c.num_steps = 6
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 2
    c.eval_batch_size = 64
    c.offline.pool_size = 64
    c.offline.rescore_every = 3
    c.offline.triplets_per_batch = 8
  elif variant == "inception":
    c.data.image_size = 160
    c.model.name = "inception_resnet_v1"
    c.model.embedding_dim = 128
    c.identities_per_batch = 8
    c.images_per_identity = 4
    c.eval_batch_size = 64
    c.augment.crop_pad = 8
  elif variant in ("orl", "orl_vgg"):
    # 400 grey 112x92 faces: the central 92x92 square at 64x64, one channel
    c.data.update(source="orl", data_dir=os.path.join(SHARED_DATA, "att_faces"), image_size=64,
                  channels=1, train_identities=30, eval_identities=10, eval_pairs=500)
    c.augment.crop_pad = 4
    c.identities_per_batch = 8
    c.images_per_identity = 4
    c.num_steps = 600
    c.eval_every = 200
    c.checkpoint_every = 200
    c.evals = "pairs,one_shot,clustering"
    if variant == "orl_vgg":
      # frozen ImageNet VGG19: SPoC of conv4_4 (square root, mean over the 12x12 positions
      # of the 92 px square at 96x96, plus its mirror's, L2-normalized; grey repeated to
      # RGB), a linear head set to PCA whitening of the training people's descriptors,
      # then triplet-trained
      c.data.update(image_size=96, features="vgg19:conv4_4", features_pool="mean",
                    features_power=0.5, features_flip=True)
      c.model.update(name="feature_head", widths=(), embedding_dim=256, head_init="pca_whiten",
                     whiten_eps=1.0)
      c.augment.update(flip=False, crop_pad=0)
      c.optim.learning_rate = 1e-3
      c.num_steps = 300
  elif variant in ("lfw", "lfw_vgg"):
    # 250x250 photos, face roughly in the central 128 px: that square at 64x64, RGB
    c.data.update(source="lfw", data_dir=os.path.join(SHARED_DATA, "lfw"), image_size=64,
                  center_crop=128, channels=3, test_fold=0, calibration_folds=1)
    c.augment.crop_pad = 4
    c.model.widths = (32, 64, 128)
    c.model.embedding_dim = 128
    c.identities_per_batch = 16
    c.images_per_identity = 4
    c.num_steps = 2000
    c.eval_every = 500
    c.checkpoint_every = 500
    c.evals = "lfw_view2"
    if variant == "lfw_vgg":
      # frozen ImageNet VGG19: SPoC of conv4_4 (square root, mean over the 14x14 positions
      # of the central 128 px at 112x112, plus its mirror's, L2-normalized), a linear head
      # set to PCA whitening of the training folds' descriptors, then triplet-trained; the
      # backbone runs once per image (cached), so a step is cheap
      c.data.update(image_size=112, features="vgg19:conv4_4", features_pool="mean",
                    features_power=0.5, features_flip=True)
      c.model.update(name="feature_head", widths=(), embedding_dim=512, head_init="pca_whiten",
                     whiten_eps=1.0)
      c.augment.update(flip=False, crop_pad=0)
      c.optim.learning_rate = 1e-3
      c.identities_per_batch = 32
      c.num_steps = 1000
  elif variant == "omniglot":
    # 105x105 binary characters at 32x32, one channel; a mirrored character can be
    # another character, so no flips
    c.data.update(source="omniglot", data_dir=os.path.join(SHARED_DATA, "omniglot"),
                  image_size=32, channels=1, train_identities=0, eval_identities=30)
    c.augment.flip = False
    c.augment.crop_pad = 2
    c.identities_per_batch = 16
    c.images_per_identity = 4
    c.num_steps = 1500
    c.eval_every = 500
    c.checkpoint_every = 500
    c.evals = "omniglot_runs,episodes"
  elif variant == "ekg":
    # 1-D: 256-sample (2.56 s at 100 Hz) single-lead strips; image_size is the length
    c.data.update(source="ekg", image_size=256, channels=1, train_identities=200,
                  eval_identities=100, images_per_identity=(4, 10),
                  eval_images_per_identity=(6, 6), eval_pairs=2000)
    c.model.update(spatial_dims=1, widths=(16, 32, 64, 64), embedding_dim=64)
    c.augment.update(flip=False, crop_pad=16)   # time reversal is not a heartbeat
    c.num_steps = 1500
    c.eval_every = 750
    c.checkpoint_every = 750
    c.evals = "pairs,one_shot"
  elif variant == "volume":
    # 3-D: 12^3 one-channel volumes (image_size is the side): 3-D convs are slow on CPU
    c.data.update(source="volume", image_size=12, channels=1, train_identities=200,
                  eval_identities=100, images_per_identity=(4, 10),
                  eval_images_per_identity=(6, 6), eval_pairs=2000)
    c.model.update(spatial_dims=3, widths=(8, 16, 32), embedding_dim=32)
    c.augment.update(flip=False, crop_pad=1)    # a mirror image is another identity
    c.num_steps = 400
    c.eval_every = 200
    c.checkpoint_every = 200
    c.evals = "pairs,one_shot"
  else:
    raise ValueError(f"unknown facenet config variant {variant!r}; expected one of synthetic, "
                     "tiny, inception, orl, orl_vgg, lfw, lfw_vgg, omniglot, ekg, volume")
  c.lock()
  return c


# ----------------------------------------------------------------------------- sweeps

MARGINS = (0.05, 0.1, 0.2, 0.5, 1.0)


def sweep(name: str = "margin") -> list[dict]:
  """A ready-made sweep for ``scripts/sweep.py --sweep=NAME``: a list of points, each a dict
  of dotted overrides applied to the chosen variant (plus any --config.x=y given).

    margin          alpha in MARGINS, one run per value
    margin_vmapped  the same alphas as one point: K models in one vmapped program
                    (config.margins), written as one run directory per alpha
    embedding_dim   64, 128, 256, 512
    miner           semi_hard, batch_hard, batch_all, random
    batch_shape     P identities x K images = 16x2, 8x4, 4x8 (32 images per batch each)
    seed            seeds 0, 1, 2
    margin_seeds    margin_vmapped repeated for seeds 0, 1, 2 (compare_runs.py --average=seed)
  """
  from infra.overrides import product, zipped
  sweeps = {
      "margin": lambda: product({"margin": MARGINS}),
      "margin_vmapped": lambda: [{"margins": MARGINS}],
      "embedding_dim": lambda: product({"model.embedding_dim": (64, 128, 256, 512)}),
      "miner": lambda: product({"miner": ("semi_hard", "batch_hard", "batch_all", "random")}),
      "batch_shape": lambda: zipped({"identities_per_batch": (16, 8, 4),
                                     "images_per_identity": (2, 4, 8)}),
      "seed": lambda: product({"seed": (0, 1, 2)}),
      "margin_seeds": lambda: product({"margins": [MARGINS], "seed": (0, 1, 2)}),
  }
  if name not in sweeps:
    raise ValueError(f"unknown sweep {name!r}; expected one of {sorted(sweeps)}")
  return sweeps[name]()
