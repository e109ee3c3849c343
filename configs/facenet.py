"""FaceNet triplet-embedding configs.

  python scripts/train_facenet.py --config=configs/facenet.py[:VARIANT] --workdir=DIR \
      --config.margin=0.3 --config.miner=batch_hard

Variants: "synthetic" (default: procedural identities, no downloads, about 3 minutes on
2 CPU cores), "tiny" (seconds; tests), "inception" (Inception-ResNet-v1 at 160x160 on
the synthetic identities).
"""

from ml_collections import config_dict


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  variant = arg or "synthetic"
  c = config_dict.ConfigDict()
  c.variant = variant
  c.seed = 0

  # triplet objective
  c.loss = "triplet"            # triplet | soft_margin | contrastive
  c.miner = "semi_hard"         # semi_hard | batch_hard | batch_all | random
  c.margin = 0.2                # alpha
  c.semi_hard_fallback = "easiest"  # easiest | hardest | drop

  # offline hard-triplet selection: re-score a candidate pool every `rescore_every`
  # steps and train only on triplets that still violate the margin
  c.offline = config_dict.ConfigDict(dict(
      enabled=False, pool_size=4096, rescore_every=200, triplets_per_batch=32))

  # P identities x K images per global batch
  c.identities_per_batch = 8
  c.images_per_identity = 4

  c.data = config_dict.ConfigDict(dict(
      source="synthetic",
      data_dir="",
      image_size=32,
      channels=3,
      train_identities=400,
      eval_identities=100,
      images_per_identity=(4, 16),
      eval_images_per_identity=(10, 10),
      eval_pairs=3000,          # matched and as many mismatched
      eval_folds=10,
  ))
  c.augment = config_dict.ConfigDict(dict(flip=True, crop_pad=2))

  c.model = config_dict.ConfigDict(dict(
      name="small_cnn", embedding_dim=64, spatial_dims=2, widths=(16, 32, 64), depth=18,
      dtype="float32"))

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
  else:
    raise ValueError(f"unknown facenet config variant {variant!r}; "
                     "expected one of synthetic, tiny, inception")
  c.lock()
  return c
