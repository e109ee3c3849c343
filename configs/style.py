"""Neural style transfer configs (Gatys et al. 2015).

  python scripts/stylize.py --config=configs/style.py[:PRESET] --workdir=DIR \
      --config.content=photo.jpg --config.style=painting.jpg \
      --config.weights=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --config.image_size=256 --config.num_steps=300

Presets:
  "gatys2015" (default): Gatys, Ecker & Bethge 2015. Content conv4_2 with 1/2 sum of
    squares, style conv1_1..conv5_1 with equal weights 1/5, alpha/beta = 1e-3, average
    pooling, white-noise init, L-BFGS. "gatys2015_1e-4": the same with alpha/beta = 1e-4.
  "course": deeplearning.ai (Ng, CNN course week 4): content conv4_2 with 1/(4 nH nW nC),
    style conv1_1..conv5_1 lambda 0.2 each, alpha 10, beta 40, Adam lr 2 on 0..255-range
    (Caffe-preprocessed) pixels, init 0.6 noise + 0.4 content.
  "tiny": tests: 32x32, random-weight VGG19 cut after conv3_1 (content conv2_2, style
    conv1_1..conv3_1: fast to compile), 4 Adam steps, checkpoints every 2.

Paths: ``content``/``style`` default to the project's shared example images and
``weights`` to the shared 8-bit ImageNet VGG19, all resolved relative to this repository
(``<repo>/../shared``); point them at your own files with --config.content=PATH etc.
``weights`` may also be "download" (fetch the canonical Keras notop file once into
``weights_cache`` and check its md5) or "random" (seeded random VGG: tests only).
"""

import os
from typing import Callable

from ml_collections import config_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
_CONTENT = os.path.join(SHARED, "data", "style_images", "content")
_STYLE = os.path.join(SHARED, "data", "style_images", "style")
_GATYS_STYLE_LAYERS = "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1"


def base_config(variant: str) -> config_dict.ConfigDict:
  """Every field, at its gatys2015 value; ``variant`` names the preset that builds on it."""
  c = config_dict.ConfigDict()
  c.variant = variant
  c.seed = 0

  # inputs
  c.content = os.path.join(_CONTENT, "tubingen.jpg")
  c.style = os.path.join(_STYLE, "starry_night_vangogh.jpg")   # comma-separated for a blend
  c.style_blend_weights = ""   # comma-separated floats, one per style image (normalized); "": equal
  c.image_size = 512           # longest side of the output (px); 0: the content image's size
  c.style_scale = 1.0          # style image's longest side = style_scale x the output's
  c.num_scales = 1             # coarse-to-fine: optimize at image_size / scale_factor**k first
  c.scale_factor = 2.0

  # network
  c.weights = os.path.join(SHARED, "weights", "vgg19_notop_imagenet_8bit_f16.h5")
  c.weights_cache = ""         # for weights="download"; "": $VGG_WEIGHTS_CACHE or ~/.cache/facenet_style_jax
  c.depth = 19
  c.pooling = "avg"            # avg (Gatys) | max
  c.remat = False              # jax.checkpoint each VGG block: less memory, ~1/3 more compute

  # objective: alpha J_content + beta J_style + tv_weight TV
  c.content_layers = "conv4_2"
  c.content_loss = "sum"       # sum: 1/2 sum sq (Gatys) | normalized: 1/(4 nH nW nC) sum sq (course)
  c.style_layers = _GATYS_STYLE_LAYERS
  c.style_layer_weights = ""   # comma-separated lambda_l; "": 1/L each
  c.content_weight = 1.0       # alpha
  c.style_weight = 1e3         # beta
  c.tv_weight = 0.0

  # optimization of the pixels (Caffe-preprocessed, clipped to the image of RGB 0..255)
  c.optimizer = "lbfgs"        # lbfgs (style_jax.lbfgs: optax.lbfgs with zoom line search) | adam
  c.learning_rate = 2.0        # adam
  c.lbfgs_memory = 10
  c.lbfgs_linesearch_steps = 20
  c.init = "noise"             # noise | content | content_noise
  c.init_noise_scale = 20.0    # uniform(-s, s) around the ImageNet mean colour
  c.init_noise_ratio = 0.6     # content_noise: ratio x noise + (1 - ratio) x content
  c.num_steps = 500            # per scale
  c.preserve_colors = False    # output luminance + content chroma (YIQ)

  # bookkeeping
  c.log_every = 10
  c.save_every = 100           # intermediate PNGs (0: none)
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  c.output = "final.png"       # in the workdir
  return c


def gatys2015(c: config_dict.ConfigDict) -> None:
  """Gatys, Ecker & Bethge 2015: the base config as it is (alpha/beta = 1e-3)."""


def gatys2015_1e4(c: config_dict.ConfigDict) -> None:
  """Gatys 2015 with alpha/beta = 1e-4: more style."""
  c.style_weight = 1e4


def course(c: config_dict.ConfigDict) -> None:
  """deeplearning.ai's CNN course (week 4): normalized content cost, Adam from content + noise."""
  c.content_loss = "normalized"
  c.style_layer_weights = "0.2,0.2,0.2,0.2,0.2"
  c.content_weight = 10.0
  c.style_weight = 40.0
  c.optimizer = "adam"
  c.learning_rate = 2.0
  c.init = "content_noise"
  c.num_steps = 200
  c.image_size = 300
  c.log_every = 20
  c.save_every = 20


def tiny(c: config_dict.ConfigDict) -> None:
  """Tests: 32 px, random VGG cut after conv3_1, 4 Adam steps, a log every step."""
  c.image_size = 32
  c.weights = "random"
  c.optimizer = "adam"
  c.learning_rate = 2.0
  c.init = "content_noise"
  c.content_loss = "normalized"
  c.content_weight = 10.0
  c.style_weight = 40.0
  c.content_layers = "conv2_2"
  c.style_layers = "conv1_1,conv2_1,conv3_1"
  c.num_steps = 4
  c.log_every = 1
  c.save_every = 2
  c.checkpoint_every = 2


PRESETS: dict[str, Callable[[config_dict.ConfigDict], None]] = {
    "gatys2015": gatys2015, "gatys2015_1e-4": gatys2015_1e4, "course": course, "tiny": tiny}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The preset ``arg`` (default gatys2015): ``base_config`` with that preset's overrides."""
  variant = arg or "gatys2015"
  if variant not in PRESETS:
    raise ValueError(f"unknown style config preset {variant!r}; expected one of "
                     f"{', '.join(PRESETS)}")
  c = base_config(variant)
  PRESETS[variant](c)
  c.lock()
  return c
