"""Training augmentation (facenet_jax/preprocess.py) against NumPy / SciPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as sp_ndimage

from facenet_jax import preprocess


def _images(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("spatial", [(9, 11), (12,), (5, 6, 7)])
def test_affine_resample_matches_scipy(spatial):
  x = _images((2, *spatial, 2))
  R = len(spatial)
  rng = np.random.default_rng(1)
  A = np.stack([np.eye(R) * 0.8 + 0.2 * rng.normal(size=(R, R)) for _ in range(2)]).astype(np.float32)
  out = np.asarray(preprocess.affine_resample(jnp.asarray(x), jnp.asarray(A)))
  centre = (np.asarray(spatial) - 1) / 2
  for b in range(2):
    for c in range(2):
      ref = sp_ndimage.affine_transform(x[b, ..., c].astype(np.float64), A[b],
                                        offset=centre - A[b] @ centre, order=1, mode="nearest")
      np.testing.assert_allclose(out[b, ..., c], ref, atol=1e-5)


def test_identity_resample_and_no_op_settings():
  x = jnp.asarray(_images((3, 8, 8, 1)))
  np.testing.assert_allclose(preprocess.affine_resample(x, jnp.stack([jnp.eye(2)] * 3)), x, atol=1e-6)
  key = jax.random.key(0)
  np.testing.assert_array_equal(preprocess.augment(x, key, flip=False, crop_pad=0), x)


def test_rotation_by_90_degrees_is_a_transpose_flip():
  x = jnp.asarray(_images((1, 7, 7, 1)))
  A = jnp.asarray([[[0.0, -1.0], [1.0, 0.0]]])      # out[i, j] = x[c - (j - c), c + (i - c)]
  out = np.asarray(preprocess.affine_resample(x, A))[0, ..., 0]
  np.testing.assert_allclose(out, np.asarray(x)[0, ::-1, :, 0].T, atol=1e-5)


def test_zoom_rotate_draws_stay_in_range_and_keep_the_centre():
  # a single bright centre pixel stays at the centre under any zoom / rotation about it
  x = np.full((16, 9, 9, 1), -1.0, np.float32)
  x[:, 4, 4] = 1.0
  out = np.asarray(preprocess.augment(jnp.asarray(x), jax.random.key(3), flip=False, crop_pad=0,
                                      scale=0.2, rotate=15.0))
  assert np.all(out[:, 4, 4, 0] == out.max(axis=(1, 2, 3)))
  assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
  assert not np.allclose(out, x)   # zoom-ins spread the pixel


def test_brightness_and_contrast_leave_flip_and_crop_draws_unchanged():
  x = jnp.asarray(_images((6, 10, 10, 3)))
  key = jax.random.key(7)
  base = np.asarray(preprocess.augment(x, key, flip=True, crop_pad=2))
  bright = np.asarray(preprocess.augment(x, key, flip=True, crop_pad=2, brightness=0.2))
  offset = (bright - base).reshape(6, -1)
  np.testing.assert_allclose(offset, offset[:, :1] * np.ones_like(offset), atol=1e-6)
  assert np.all(np.abs(offset[:, 0]) <= 0.2) and np.ptp(offset[:, 0]) > 0
  con = np.asarray(preprocess.augment(x, key, flip=True, crop_pad=2, contrast=0.3))
  np.testing.assert_allclose(con.reshape(6, -1).mean(1), base.reshape(6, -1).mean(1), atol=1e-5)
  ratio = con.reshape(6, -1).std(1) / base.reshape(6, -1).std(1)
  assert np.all((ratio >= 0.7 - 1e-5) & (ratio <= 1.3 + 1e-5)) and np.ptp(ratio) > 0


def test_augment_config_errors_name_the_field():
  from configs.facenet import get_config
  from facenet_jax.config_checks import ConfigError, check_config
  c = get_config("ekg")
  c.augment.rotate = 10.0
  with pytest.raises(ConfigError, match="augment.rotate"):
    check_config(c)
  c = get_config("tiny")
  c.augment.contrast = 1.5
  with pytest.raises(ConfigError, match="augment.contrast"):
    check_config(c)


def test_augmentation_keys_are_distinct_and_flip_crop_colour_keep_their_draws():
  """The zoom/rotate key was fold_in(key, 1), which is split(key)[1], the crop key: zoom and
  rotation were drawn from the crop offsets' bits."""
  key = jax.random.key(7)
  keys = preprocess.augment_keys(key)
  data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys]
  assert len(set(data)) == 4   # the warp key is not the crop key any more
  k_flip, k_crop = jax.random.split(key)   # as before: flip and crop draws unchanged
  assert data[0] == tuple(np.asarray(jax.random.key_data(k_flip)).ravel())
  assert data[1] == tuple(np.asarray(jax.random.key_data(k_crop)).ravel())
  assert data[3] == tuple(np.asarray(jax.random.key_data(jax.random.fold_in(key, 2))).ravel())
