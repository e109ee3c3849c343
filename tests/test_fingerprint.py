"""Content keys of source data: equal to a plain hashlib reference, blind to modification
times, changed by one byte; memoized so untouched files are not read again; a re-staged
folder reuses its prepared dataset."""

import hashlib
import json
import os

import numpy as np
from PIL import Image

from configs.facenet import get_config
from facenet_jax.data import fingerprint, prepare, raw, records, streamed
from infra.overrides import with_overrides


def _people(root, counts=(3, 1, 2)):
  rng = np.random.default_rng(0)
  for k, n in enumerate(counts):
    os.makedirs(root / f"p{k}")
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)).save(root / f"p{k}" / f"{i}.png")
  return root


def _restage(root, seconds=1000):
  """Every file written again with the same bytes and a new modification time (a copy
  made without keeping times)."""
  for dirpath, _, names in os.walk(root):
    for n in names:
      p = os.path.join(dirpath, n)
      data = open(p, "rb").read()
      with open(p, "wb") as f:
        f.write(data)
      st = os.stat(p)
      os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _flip_one_byte(path, where=-30):
  b = bytearray(open(path, "rb").read())
  b[where] ^= 1
  open(path, "wb").write(bytes(b))


def _reference(root):
  h = hashlib.sha256(os.path.abspath(root).encode() + b"\0")
  for ident in sorted(os.listdir(root)):
    for n in sorted(os.listdir(os.path.join(root, ident))):
      data = open(os.path.join(root, ident, n), "rb").read()
      h.update(f"{ident}/{n}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
  return h.hexdigest()[:16]


def test_content_key_is_the_reference_hash_and_ignores_modification_times(tmp_path):
  root = _people(tmp_path / "people")
  listing = raw.list_identity_folder(str(root))
  key, stat = fingerprint.folder_content_key(str(root), listing), fingerprint.folder_stat_key(str(root), listing)
  assert key == _reference(root) and len(key) == fingerprint.KEY_CHARS
  _restage(root)
  assert fingerprint.folder_content_key(str(root), listing) == key
  assert fingerprint.folder_stat_key(str(root), listing) != stat
  _flip_one_byte(root / "p2" / "1.png")       # one bit of one file, the same size
  assert fingerprint.folder_content_key(str(root), listing) != key
  assert fingerprint.folder_content_key(str(root), listing) == _reference(root)
  os.rename(root / "p2" / "1.png", root / "p2" / "7.png")   # the same bytes under a new name
  moved = fingerprint.folder_content_key(str(root), raw.list_identity_folder(str(root)))
  assert moved == _reference(root) and moved not in (key,)


def test_memo_reads_the_files_only_when_their_times_or_sizes_change(tmp_path, monkeypatch):
  root = _people(tmp_path / "people")
  listing = raw.list_identity_folder(str(root))
  memo = str(tmp_path / "memo")
  reads = []
  real = fingerprint.folder_content_key
  monkeypatch.setattr(fingerprint, "folder_content_key", lambda *a: reads.append(1) or real(*a))
  key = fingerprint.folder_key(str(root), listing, memo)
  assert key == _reference(root) and len(reads) == 1
  [memo_file] = [os.path.join(memo, "fingerprints", n) for n in os.listdir(os.path.join(memo, "fingerprints"))]
  assert json.load(open(memo_file)) == {"source": str(root), "stat": fingerprint.folder_stat_key(
      str(root), listing), "content": key}
  assert fingerprint.folder_key(str(root), listing, memo) == key and len(reads) == 1   # not read
  _restage(root)
  assert fingerprint.folder_key(str(root), listing, memo) == key and len(reads) == 2   # read again
  assert fingerprint.folder_key(str(root), listing, memo) == key and len(reads) == 2
  open(memo_file, "w").write("{")                       # a torn memo is a cache miss
  assert fingerprint.folder_key(str(root), listing, memo) == key and len(reads) == 3
  m = json.load(open(memo_file))
  json.dump({**m, "source": "/elsewhere"}, open(memo_file, "w"))   # another folder's memo
  assert fingerprint.folder_key(str(root), listing, memo) == key and len(reads) == 4
  _flip_one_byte(root / "p0" / "2.png")
  st = os.stat(root / "p0" / "2.png")
  os.utime(root / "p0" / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert fingerprint.folder_key(str(root), listing, memo) == _reference(root) != key
  assert fingerprint.folder_key(str(root), listing, None) == _reference(root)   # no memo


def test_a_single_file_key_follows_its_bytes(tmp_path):
  rec = tmp_path / "train.rec"
  rec.write_bytes(bytes(range(256)) * 4096)
  memo = str(tmp_path / "memo")
  key = fingerprint.file_key(str(rec), memo)
  want = hashlib.sha256(f"{rec}\0{4096 * 256}\0{hashlib.sha256(rec.read_bytes()).hexdigest()}".encode()
                       ).hexdigest()[:16]
  assert key == want
  _restage(tmp_path)
  assert fingerprint.file_key(str(rec), memo) == key
  _flip_one_byte(rec, 5)
  os.utime(rec, ns=(0, os.stat(rec).st_mtime_ns + 10**9))
  assert fingerprint.file_key(str(rec), memo) != key


def test_a_restaged_folder_reuses_its_prepared_dataset(tmp_path, capsys):
  root = _people(tmp_path / "people", (2, 3, 2, 2))
  c = with_overrides(get_config("tiny"), {
      "data.source": "folder", "data.data_dir": str(root), "data.tfds_dir": str(tmp_path / "tfds"),
      "data.image_size": 10, "data.prepare_workers": 1, "data.record_encoding": "png"})
  path = streamed.prepared_path(c)
  assert records.is_prepared(path) and "preparing 9 images" in capsys.readouterr().err
  meta = os.path.join(path, records.META)
  made = os.stat(meta).st_mtime_ns
  _restage(root)
  assert streamed.prepared_path(c) == path
  assert os.stat(meta).st_mtime_ns == made and "preparing" not in capsys.readouterr().err
  out = os.path.dirname(path)
  assert sorted(n for n in os.listdir(out) if n.startswith("folder_")) == [os.path.basename(path),
                                                                          os.path.basename(path) + ".lock"]
  Image.fromarray(np.full((14, 12, 3), 7, np.uint8)).save(root / "p1" / "0.png")   # a new image
  changed = streamed.prepared_path(c)
  assert changed != path and records.is_prepared(changed)
  assert prepare.folder_plan(str(root)).fingerprint in os.path.basename(changed)


def _replace_keeping_size_and_mtime(path, data):
  """What ``cp -p``, ``rsync -a`` or ``tar x`` of an edited file do: other bytes of the same
  length, the old modification time."""
  st = os.stat(path)
  assert len(data) == st.st_size
  os.remove(path)                     # a new file, as a copy tool makes (a new inode)
  with open(path, "wb") as f:
    f.write(data)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_file_replaced_with_its_size_and_mtime_kept_is_read_again(tmp_path):
  """The memo and the per-process SHA-256 were keyed on size and mtime only, so such a file
  kept its old key and its stale prepared dataset, detections and VGG features."""
  from infra.files import file_sha256
  root = _people(tmp_path / "people")
  listing = raw.list_identity_folder(str(root))
  memo = str(tmp_path / "memo")
  key = fingerprint.folder_key(str(root), listing, memo)
  target = root / "p0" / "1.png"
  sha = file_sha256(str(target))
  b = bytearray(target.read_bytes())
  b[-30] ^= 1
  _replace_keeping_size_and_mtime(target, bytes(b))
  assert file_sha256(str(target)) == hashlib.sha256(bytes(b)).hexdigest() != sha
  assert fingerprint.folder_key(str(root), listing, memo) == _reference(root) != key
  rec = tmp_path / "train.rec"
  rec.write_bytes(bytes(range(256)) * 64)
  file_key = fingerprint.file_key(str(rec), memo)
  _replace_keeping_size_and_mtime(rec, bytes(reversed(range(256))) * 64)
  assert fingerprint.file_key(str(rec), memo) != file_key


def test_a_recordio_plan_changes_with_its_index(tmp_path):
  """The .idx chooses the records and their order; the key hashed only the .rec, so a cut or
  reordered index reused the old prepared dataset and detections."""
  from facenet_jax.data import recordio
  rec = str(tmp_path / "train.rec")
  recordio.write_rec(rec, [recordio.pack(lab, bytes([k]) * 50) for k, lab in enumerate([0, 0, 1, 1, 2, 2])])
  memo = str(tmp_path / "memo")
  plan = prepare.recordio_plan(rec, memo)
  assert len(plan) == 6 and plan.fingerprint == prepare.recordio_plan(rec, None).fingerprint
  idx = recordio.index_path(rec)
  lines = open(idx).read().splitlines()
  open(idx, "w").write("\n".join(lines[:4]) + "\n")   # the last person's records left out
  cut = prepare.recordio_plan(rec, memo)
  assert len(cut) == 4 and cut.fingerprint != plan.fingerprint
  open(idx, "w").write("\n".join(lines) + "\n")
  assert prepare.recordio_plan(rec, memo).fingerprint == plan.fingerprint


def test_a_tree_key_follows_a_linked_folder(tmp_path):
  """``lfw/images -> /other/disk/...``: os.walk did not follow the link, so the key covered
  only pairs.txt and a changed photo went unnoticed. A link back up the tree does not loop."""
  photos = _people(tmp_path / "elsewhere")
  root = tmp_path / "lfw"
  os.makedirs(root)
  (root / "pairs.txt").write_text("10\t300\n")
  os.symlink(photos, root / "images")
  os.symlink(root, photos / "p0" / "up")        # a loop
  listing = fingerprint.tree_listing(str(root))
  assert listing == [(".", ["pairs.txt"]), ("images/p0", ["0.png", "1.png", "2.png"]),
                     ("images/p1", ["0.png"]), ("images/p2", ["0.png", "1.png"])]
  key = fingerprint.tree_key(str(root), str(tmp_path / "memo"))
  _flip_one_byte(photos / "p2" / "1.png")
  st = os.stat(photos / "p2" / "1.png")
  os.utime(photos / "p2" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert fingerprint.tree_key(str(root), str(tmp_path / "memo")) != key


def test_the_shared_bytes_note_names_only_files_of_two_identities(tmp_path, capsys):
  """A tree's folders are paths (``images/p0``): the note compared the first path part with the
  whole, so every file of LFW was "the same bytes as a file of another identity": itself."""
  root = tmp_path / "lfw"
  _people(root / "images")
  fingerprint.tree_key(str(root), None)
  assert "same bytes" not in capsys.readouterr().err
  (root / "images" / "p2" / "9.png").write_bytes((root / "images" / "p0" / "1.png").read_bytes())
  (root / "images" / "p0" / "8.png").write_bytes((root / "images" / "p0" / "2.png").read_bytes())
  fingerprint.tree_key(str(root), None)
  err = capsys.readouterr().err   # p0's own copy is not another identity's
  assert "note: 1 file(s) of" in err and "(e.g. images/p2/9.png = images/p0/1.png)" in err
