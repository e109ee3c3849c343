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
spectrum with the example's, next to the noise start's; ``history``: the Gram loss of the
signal after each of the steps ``history_steps``, 0 = the noise start). Both files are
written atomically.

Rerunning into the same ``--out``: with the same settings (--length, --ekg_seed, --widths,
--layers, --steps, --seed) the result is computed again and replaces the old one (the same
numbers on the same machine); with other settings, or over a result that does not record
them (written before they were saved), the run is refused before any work, and the old
result stays: give another ``--out``.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags
import numpy as np

from infra import cli

_OUT = cli.folder_flag("out", None, "Output folder. One holding a texture_1d result of other "
                       "settings is refused; the same settings again recompute and replace it.",
                       required=True)
_LENGTH = flags.DEFINE_integer("length", 1024, "Samples of the example strip (100 Hz).",
                               lower_bound=2)
_PERSON_SEED = flags.DEFINE_integer("ekg_seed", 0, "Seed of the procedural EKG person and strip.")
_WIDTHS = flags.DEFINE_list("widths", ["32", "64", "128", "128"], "small_cnn stage widths.")
_LAYERS = flags.DEFINE_list("layers", ["conv1_1", "conv1_2", "conv2_2", "conv3_2", "conv4_2"],
                            "Layers whose Gram matrices are matched (equal weights).")
_STEPS = flags.DEFINE_integer("steps", 300, "L-BFGS iterations.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and of the noise start.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Print (and keep in history) the Gram loss "
                                  "after every this many steps.", lower_bound=1)
# what a result depends on: a rerun into an --out holding another result of these is refused
SETTINGS = ("length", "ekg_seed", "widths", "layers", "steps", "seed")


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


def settings(widths: tuple[int, ...]) -> dict:
  """The flags a result depends on, as results.json records them."""
  return {"length": _LENGTH.value, "ekg_seed": _PERSON_SEED.value, "widths": list(widths),
          "layers": list(_LAYERS.value), "steps": _STEPS.value, "seed": _SEED.value}


def check_rerun(folder: str, now: dict) -> None:
  """Raises outdirs.OutputFolderError when ``folder`` holds a texture_1d result of settings
  other than ``now`` (or of settings it does not record): a rerun replaced its results.json
  and texture_1d.png without a word. The same settings again may replace it (the same result)."""
  from infra import outdirs
  if outdirs.kind_of(folder) != outdirs.TEXTURE_KIND:
    return   # empty or new (claim refused any other kind)
  path = os.path.join(folder, "results.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    saved = None
  if not isinstance(saved, dict):
    raise outdirs.OutputFolderError(f"--out {folder} holds a texture_1d result whose {path} does "
                                    "not read, so its settings are unknown; a run there would "
                                    "replace it: use another --out")
  diff = [f"{k}: {saved[k]!r} there, {v!r} now" for k, v in now.items()
          if k in saved and saved[k] != v]
  missing = [k for k in now if k not in saved]
  if diff or missing:
    why = "; ".join(diff + ([f"it records no {', '.join(missing)}"] if missing else []))
    raise outdirs.OutputFolderError(
        f"--out {folder} holds a texture_1d result of other settings ({why}); a run there would "
        f"replace its results.json and texture_1d.png: use another --out (the same settings "
        f"again recompute it)")


def plot(png: str, example, start, out, layers, first: float, final: float, hz: float) -> None:
  """The example strip, the noise start and the synthesized signal, one above the other, as
  ``png`` (written atomically: a kill leaves the old figure or the new one)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from infra import files
  t = np.arange(len(example)) / hz
  fig, axes = plt.subplots(3, 1, figsize=(9, 4.2), sharex=True)
  for ax, sig, name in zip(axes, (example, start, out),
                           ("example: procedural EKG strip (mV)",
                            f"start: white noise (Gram loss {first:.3g})",
                            f"synthesized: Gram matrices of {', '.join(layers)} matched "
                            f"(loss {final:.3g}, {first / final:.0f}x lower)")):
    ax.plot(t, sig, lw=0.7, color="k")
    ax.set_title(name, fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
  axes[-1].set_xlabel("s", fontsize=7)
  fig.tight_layout()
  try:
    with files.replacing(png, ".png") as tmp:
      fig.savefig(tmp, dpi=80)
  finally:
    plt.close(fig)


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
  check_rerun(_OUT.value, settings(widths))   # before any work, and before anything is written
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
  loss_at = jax.jit(loss)
  first = float(loss_at(x))
  history, history_steps = [first], [0]
  for i in range(_STEPS.value):
    # the value step() returns is the loss at the point it started from (before this step):
    # printed as "step 50/50" it was the loss after 49 steps, and history lagged one step
    # behind its labels; the loss of the signal this step produced is measured instead
    x, opt_state, _ = step(x, opt_state)
    if (i + 1) % _LOG_EVERY.value == 0:
      history.append(float(loss_at(x)))
      history_steps.append(i + 1)
      print(f"step {i + 1}/{_STEPS.value}: gram loss {history[-1]:.4g}", flush=True)
  final = history[-1] if history_steps[-1] == _STEPS.value else float(loss_at(x))
  out = np.asarray(x)[:, 0]
  spec_ex = log_spectrum(example[:, 0])
  corr = lambda s: float(np.corrcoef(spec_ex, log_spectrum(s))[0, 1])
  result = {"kind": outdirs.TEXTURE_KIND,
            "gram_loss_start": first, "gram_loss_final": final, "reduction": first / final,
            "log_spectrum_corr_result": corr(out), "log_spectrum_corr_noise_start": corr(start[:, 0]),
            **settings(widths), "history": history, "history_steps": history_steps,
            "wall_seconds": time.time() - t0}

  os.makedirs(_OUT.value, exist_ok=True)
  plot(os.path.join(_OUT.value, "texture_1d.png"), example[:, 0], start[:, 0], out, layers,
       first, final, EKGSpec.sampling_hz)
  files.write_json_atomic(os.path.join(_OUT.value, "results.json"), result)
  print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
  cli.run(main)
