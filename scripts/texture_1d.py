"""Texture synthesis for 1-D signals: Gatys et al.'s Gram-matrix style cost with a
random-weight 1-D ConvNet, on a procedural EKG strip.

  python scripts/texture_1d.py --out=runs/texture_1d            # ~1-3 min on 2 CPU cores

The Gram-matrix cost (``style_jax.losses``: G_kk' = sum_t a_tk a_tk', J = sum_l
1/(4 N_l^2) ||G_l(S)/M_l - G_l(X)/M_l||^2) has no spatial axes in it, so it works
unchanged on (length, channels) activations. The network is ``facenet_jax.models``'
small_cnn at ``spatial_dims=1`` with its seeded He-normal weights, never trained:
random multi-scale filters are known to suffice for textures (Ustyuzhaninov et al. 2017,
"What does it take to generate natural textures?"). Starting from white noise with the
example's mean and standard deviation, the signal is optimized by L-BFGS (the optimizer
``style_jax.optimize`` builds) to match the example's Gram matrices at ``--layers``.

Writes ``<out>/texture_1d.png`` (example, start, result) and ``<out>/results.json``
(Gram loss at the start and the end, and the correlation of the result's log power
spectrum with the example's, next to the noise start's).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags
import numpy as np

from infra import cli

_OUT = cli.folder_flag("out", None, "Output folder.", required=True)
_LENGTH = flags.DEFINE_integer("length", 1024, "Samples of the example strip (100 Hz).",
                               lower_bound=2)
_PERSON_SEED = flags.DEFINE_integer("ekg_seed", 0, "Seed of the procedural EKG person and strip.")
_WIDTHS = flags.DEFINE_list("widths", ["32", "64", "128", "128"], "small_cnn stage widths.")
_LAYERS = flags.DEFINE_list("layers", ["conv1_1", "conv1_2", "conv2_2", "conv3_2", "conv4_2"],
                            "Layers whose Gram matrices are matched (equal weights).")
_STEPS = flags.DEFINE_integer("steps", 300, "L-BFGS iterations.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and of the noise start.")


def log_spectrum(x: np.ndarray) -> np.ndarray:
  """log(|rfft(x - mean)|^2 + eps) of a 1-D signal, smoothed over 5 bins."""
  p = np.abs(np.fft.rfft(x - x.mean())) ** 2
  return np.log(np.convolve(p, np.ones(5) / 5, mode="same") + 1e-8)


def checked_widths() -> tuple[int, ...]:
  """The stage widths; the flags a user can get wrong are refused before any model is built."""
  if not _LAYERS.value:
    raise SystemExit("--layers is empty: name the layers whose Gram matrices are matched")
  try:
    widths = tuple(int(w) for w in _WIDTHS.value)
  except ValueError:
    widths = ()
  if not widths or min(widths) < 1:
    raise SystemExit(f"--widths={','.join(_WIDTHS.value)}: expected positive integers, one per stage")
  return widths


def check_layers(names: list[str], layers: tuple[str, ...], lengths: dict | None = None) -> None:
  """Unknown layers, and (given each layer's map ``lengths``) layers the pools shrink the strip
  to nothing at, whose Gram matrices would be NaN."""
  if set(layers) - set(names):
    raise SystemExit(f"--layers: unknown {sorted(set(layers) - set(names))}; this network has {names}")
  empty = [n for n, length in (lengths or {}).items() if length == 0]
  if empty:
    raise SystemExit(f"--length={_LENGTH.value}: layer(s) {empty} get no samples of so short a "
                     "strip (each stage halves it); give a longer --length or shallower --layers")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from facenet_jax import models
  from facenet_jax.data.ekg import EKGSpec, make_ekg_identities
  from infra import files, outdirs
  from style_jax import lbfgs, losses

  t0 = time.time()
  outdirs.claim(_OUT.value, outdirs.TEXTURE_KIND, "--out")   # not another run's results.json
  widths = checked_widths()
  example = make_ekg_identities(EKGSpec(num_identities=2, images_per_identity=(1, 1),
                                        length=_LENGTH.value), _PERSON_SEED.value).images[0]
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", spatial_dims=1, embedding_dim=8,
                                       widths=widths,
                                       dtype="float32"))
  net = models.create_model(cfg, in_channels=1, rngs=nnx.Rngs(_SEED.value))
  graphdef, state = nnx.split(net)
  layers = tuple(_LAYERS.value)
  check_layers(net.layer_names(), layers)
  weights = {n: 1.0 / len(layers) for n in layers}

  def feats(state, x_L1):
    return nnx.merge(graphdef, state).features(x_L1[None], layers, train=False)

  maps = jax.jit(feats)(state, jnp.asarray(example))
  check_layers(net.layer_names(), layers, {n: a.shape[1] for n, a in maps.items()})
  grams_S = {n: losses.normalized_gram(a[0]) for n, a in maps.items()}

  def loss(x_L1):
    return losses.style_cost(grams_S, {n: a[0] for n, a in feats(state, x_L1).items()}, weights)

  tx = lbfgs.transform(memory=20, linesearch_steps=20)
  step = jax.jit(lbfgs.projected_step(loss, tx))   # no bounds: a signal is not a pixel range

  rng = np.random.default_rng(_SEED.value)
  start = (example.mean() + example.std() * rng.standard_normal(example.shape)).astype(np.float32)
  x, opt_state = jnp.asarray(start), tx.init(jnp.asarray(start))
  first = float(jax.jit(loss)(x))
  history = [first]
  for i in range(_STEPS.value):
    x, opt_state, value = step(x, opt_state)
    if (i + 1) % 50 == 0:
      history.append(float(value))
      print(f"step {i + 1}/{_STEPS.value}: gram loss {float(value):.4g}", flush=True)
  final = float(jax.jit(loss)(x))
  out = np.asarray(x)[:, 0]
  spec_ex = log_spectrum(example[:, 0])
  corr = lambda s: float(np.corrcoef(spec_ex, log_spectrum(s))[0, 1])
  result = {"kind": outdirs.TEXTURE_KIND,
            "gram_loss_start": first, "gram_loss_final": final, "reduction": first / final,
            "log_spectrum_corr_result": corr(out), "log_spectrum_corr_noise_start": corr(start[:, 0]),
            "layers": list(layers), "widths": list(cfg.widths), "steps": _STEPS.value,
            "length": _LENGTH.value, "history": history, "wall_seconds": time.time() - t0}

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(_OUT.value, exist_ok=True)
  t = np.arange(_LENGTH.value) / EKGSpec.sampling_hz
  fig, axes = plt.subplots(3, 1, figsize=(9, 4.2), sharex=True)
  for ax, sig, name in zip(axes, (example[:, 0], start[:, 0], out),
                           ("example: procedural EKG strip (mV)",
                            f"start: white noise (Gram loss {first:.3g})",
                            f"synthesized: Gram matrices of {', '.join(layers)} matched "
                            f"(loss {final:.3g}, {first / final:.0f}x lower)")):
    ax.plot(t, sig, lw=0.7, color="k")
    ax.set_title(name, fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
  axes[-1].set_xlabel("s", fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(_OUT.value, "texture_1d.png"), dpi=80)
  plt.close(fig)
  files.write_json_atomic(os.path.join(_OUT.value, "results.json"), result)
  print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
  cli.run(main)
