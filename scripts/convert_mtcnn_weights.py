"""Converts the MTCNN weights of the MIT-licensed ``mtcnn`` 1.0.0 wheel into one ``.npz``.

  pip download mtcnn==1.0.0 --no-deps -d /tmp/mtcnn
  pip install lz4          # the weights are LZ4 frames; only this script needs it
  python scripts/convert_mtcnn_weights.py --out=mtcnn_weights.npz /tmp/mtcnn/mtcnn-1.0.0-py3-none-any.whl
  python scripts/convert_mtcnn_weights.py --out=mtcnn_weights.npz pnet.lz4 rnet.lz4 onet.lz4

Input: the wheel, or its three files ``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``. Every
file's SHA-256 is checked against the pinned values below *before* anything in it is
read, so only the published bytes are ever decompressed and parsed.

Format: each file is an LZ4 frame holding a joblib pickle of a list of numpy arrays, the
Keras ``model.get_weights()`` of one network. joblib writes each array as a
``joblib.numpy_pickle.NumpyArrayWrapper`` object (shape, order, dtype) followed, outside
the pickle opcodes, by an alignment padding (one length byte + that many bytes) and the raw
array bytes. They are read here by a restricted unpickler (:func:`read_joblib_arrays`) that
resolves only that wrapper class, ``numpy.ndarray`` and ``numpy.dtype``; any other global
(``os.system``, ...) is refused, so nothing in the file can run code, and neither joblib nor
TensorFlow is needed.

Output: the 50 float32 arrays named ``pnet/conv1/kernel``, ... (``facenet_jax.faces.nets``),
in the Keras order, written with ``np.savez`` (no pickled objects).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from infra import cli
from infra.errors import UserError

WHEEL_SHA256 = "0a96b4868e56db9ae984449519642be6dba03240e608a67e928ebb47833e9144"
FILE_SHA256 = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}
WHEEL_MEMBER = "mtcnn/assets/weights/{}.lz4"
# Keras get_weights() order: layers as the networks define them; conv/dense hold
# (kernel, bias), PReLU holds alpha
LAYERS = {
    "pnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4-1", "conv4-2"),
    "rnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4",
             "fc5-1", "fc5-2"),
    "onet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4",
             "fc5", "prelu5", "fc6-1", "fc6-2", "fc6-3"),
}
MAX_ARRAY_BYTES = 64 * 2 ** 20   # the largest MTCNN array is 1.2 MB

_OUT = flags.DEFINE_string("out", None, "The .npz to write.", required=True)


class ConvertError(UserError, ValueError):
  """An input that is not the pinned mtcnn 1.0.0 wheel or weights: names the file."""


def array_names(net: str) -> list[str]:
  return [f"{net}/{layer}/{w}" for layer in LAYERS[net]
          for w in (("alpha",) if layer.startswith("prelu") else ("kernel", "bias"))]


class _ArrayWrapper:
  """Stands in for joblib's NumpyArrayWrapper: receives its state dict via BUILD."""


class _NdarrayMarker:
  """Stands in for ``numpy.ndarray`` as the wrapper's ``subclass`` field."""


class _RestrictedUnpickler(pickle._Unpickler):   # the Python one: BUILD can be hooked
  """Resolves only joblib's array wrapper, numpy.ndarray and numpy.dtype; after a
  wrapper's BUILD it reads the array bytes that follow in the stream."""

  ALLOWED = {("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayWrapper,
             ("numpy", "ndarray"): _NdarrayMarker}

  def __init__(self, data: bytes, where: str):
    super().__init__(io.BytesIO(data))
    self.where = where

  def find_class(self, module, name):
    import numpy as np
    if (module, name) == ("numpy", "dtype"):
      return np.dtype
    if (module, name) in self.ALLOWED:
      return self.ALLOWED[(module, name)]
    raise ConvertError(f"{self.where}: the pickle refers to {module}.{name}; only numpy arrays "
                       f"(joblib.numpy_pickle.NumpyArrayWrapper) are read")

  def load_build(self):
    import numpy as np
    inst = self.stack[-2]   # BUILD: the state is on top, the object under it
    if not isinstance(inst, _ArrayWrapper):
      if isinstance(inst, np.dtype):   # the dtype's own (version, byte order, ...) state
        return pickle._Unpickler.load_build(self)
      raise ConvertError(f"{self.where}: unexpected pickled object {type(inst).__name__}")
    state = self.stack.pop()
    if not isinstance(state, dict) or state.get("subclass") is not _NdarrayMarker:
      raise ConvertError(f"{self.where}: an array wrapper that is not a plain numpy.ndarray")
    dtype, shape, order = state.get("dtype"), state.get("shape"), state.get("order", "C")
    if (not isinstance(dtype, np.dtype) or dtype.kind != "f" or not isinstance(shape, tuple)
        or not all(isinstance(s, int) and s >= 0 for s in shape) or order not in ("C", "F")):
      raise ConvertError(f"{self.where}: array of dtype {dtype}, shape {shape}: expected floats")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
      raise ConvertError(f"{self.where}: array of shape {shape} is larger than any MTCNN weight")
    if state.get("numpy_array_alignment_bytes") is not None:
      pad = self.read(1)
      self.read(int.from_bytes(pad, "little"))
    raw = self.read(nbytes)
    if len(raw) != nbytes:
      raise ConvertError(f"{self.where}: truncated array data")
    self.stack[-1] = np.frombuffer(raw, dtype).reshape(shape, order=order).copy()

  dispatch = dict(pickle._Unpickler.dispatch)
  dispatch[pickle.BUILD[0]] = load_build


def read_joblib_arrays(data: bytes, where: str) -> list:
  """The list of numpy arrays of a (decompressed) joblib pickle, by the restricted unpickler."""
  try:
    out = _RestrictedUnpickler(data, where).load()
  except ConvertError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
    raise ConvertError(f"{where}: not a joblib pickle of arrays ({type(e).__name__}: {e})") from e
  import numpy as np
  if not isinstance(out, list) or not all(isinstance(a, np.ndarray) for a in out):
    raise ConvertError(f"{where}: expected a list of numpy arrays, got {type(out).__name__}")
  return out


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def read_inputs(paths: list[str]) -> dict[str, bytes]:
  """``{"pnet": bytes, ...}`` of the three .lz4 files, each checked against its SHA-256."""
  if len(paths) == 1 and paths[0].endswith(".whl"):
    with open(paths[0], "rb") as f:
      wheel = f.read()
    if sha256(wheel) != WHEEL_SHA256:
      raise ConvertError(f"{paths[0]}: SHA-256 {sha256(wheel)} is not that of "
                         f"mtcnn-1.0.0-py3-none-any.whl ({WHEEL_SHA256}); nothing was read")
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
      files = {net: (f"{paths[0]}:{WHEEL_MEMBER.format(net)}", z.read(WHEEL_MEMBER.format(net)))
               for net in LAYERS}
  elif len(paths) == 3:
    files = {}
    for p in paths:
      net = os.path.basename(p).split(".")[0]
      if net not in LAYERS or net in files:
        raise ConvertError(f"{p}: expected the files pnet.lz4, rnet.lz4 and onet.lz4")
      with open(p, "rb") as f:
        files[net] = (p, f.read())
  else:
    raise UserError("give the mtcnn-1.0.0 wheel, or its pnet.lz4, rnet.lz4 and onet.lz4")
  for net, (where, data) in files.items():
    if sha256(data) != FILE_SHA256[net]:
      raise ConvertError(f"{where}: SHA-256 {sha256(data)} is not the pinned {net} weights' "
                         f"({FILE_SHA256[net]}); nothing was read")
  return {net: files[net] for net in LAYERS}


def convert(paths: list[str]) -> dict:
  """``{"pnet/conv1/kernel": array, ...}`` from the checked inputs."""
  import numpy as np
  from facenet_jax.faces import nets
  try:
    import lz4.frame
  except ImportError:
    raise UserError("the mtcnn weights are LZ4 frames: `pip install lz4` to convert them "
                    "(only this script needs it)") from None
  inputs = read_inputs(paths)   # a missing or altered file is named before JAX starts
  want = nets.expected_arrays()
  out = {}
  for net, (where, data) in inputs.items():
    try:
      raw = lz4.frame.decompress(data)
    except RuntimeError as e:
      raise ConvertError(f"{where}: not an LZ4 frame ({e})") from e
    arrays = read_joblib_arrays(raw, where)
    names = array_names(net)
    if len(arrays) != len(names):
      raise ConvertError(f"{where}: {len(arrays)} arrays, expected {len(names)}")
    for name, a in zip(names, arrays):
      if a.shape != want[name]:
        raise ConvertError(f"{where}: {name} has shape {a.shape}, expected {want[name]}")
      out[name] = a.astype(np.float32)
  return out


def main(argv):
  import numpy as np
  out = _OUT.value
  if not out.endswith(".npz") or os.path.isdir(out):   # np.savez adds .npz to other names
    raise UserError(f"--out={out}: expected a .npz file name (not a folder)")
  if os.path.exists(out):   # a weights file (or anything else) is not replaced
    raise UserError(f"--out={out}: exists; remove it first, or give a new name")
  arrays = convert(argv[1:])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, out)
  print(f"wrote {out}: {len(arrays)} arrays, {sum(a.size for a in arrays.values())} weights")


if __name__ == "__main__":
  cli.run(main)
