"""No code runs from a data or weight file: cls_labels.npy, cam_dict files and .pth checkpoints.

Every crafted payload is first shown to be live (an unrestricted loader does create its marker
file), so a test that then sees no marker proves the loader refused it, not that the payload was
inert. Damaged files (every truncation point, random bytes, empty, a directory, a missing file)
must give an error naming the file. Real files written by np.save / torch.save must load exactly.
"""

import builtins
import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from data_fixtures import synth_root, voc_copy  # noqa: F401  (pytest fixtures)
import e2e_fixtures as e2e
from ppc_jax.data import cam_io
from ppc_jax import pth_reader
from ppc_jax import untrusted
from ppc_jax import weights
from ppc_jax.data import voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# Payloads: objects whose unpickling creates a marker file through three different callables.
# ------------------------------------------------------------------------------------------------


class ShellPayload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch '{self.marker}'",)


class ExecPayload(ShellPayload):
  def __reduce__(self):
    return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class SubprocessPayload(ShellPayload):
  def __reduce__(self):
    return subprocess.call, (["touch", self.marker],)


PAYLOADS = [ShellPayload, ExecPayload, SubprocessPayload]


def assert_live(payload_bytes_loader, marker):
  """The control: an unrestricted loader runs the payload (creates the marker), then cleanup."""
  assert not os.path.exists(marker)
  payload_bytes_loader()
  assert os.path.exists(marker), "the crafted payload is inert; the test would prove nothing"
  os.remove(marker)


def assert_names_file(excinfo, path):
  msg = str(excinfo.value)
  assert os.fspath(path) in msg, msg
  assert "weights_only" not in msg and "allow_pickle" not in msg, msg  # no unsafe retry advice


# ------------------------------------------------------------------------------------------------
# np.save'd dicts: cls_labels.npy and cam_dict files.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_cls", PAYLOADS)
def test_cls_labels_payload_is_refused(voc_copy, tmp_path, payload_cls):
  ids = voc.VOCSource(voc_copy, "train").ids
  marker = str(tmp_path / "pwned")
  # The data set's own cls_labels.npy outside VOC2012/, one real label and one payload entry.
  path = tmp_path / "cls_labels.npy"
  np.save(path, {ids[0]: np.ones(20, np.float32), ids[1]: payload_cls(marker)}, allow_pickle=True)
  assert_live(lambda: np.load(path, allow_pickle=True), marker)

  with pytest.raises(voc.DataError, match="refused pickled global") as excinfo:
    voc.VOCSource(voc_copy, "train", cls_labels=str(path))
  assert_names_file(excinfo, path)
  with pytest.raises(voc.DataError, match="refused pickled global"):
    voc.VOCSource(voc_copy, "train", cls_labels=str(path), skip_bad=True)  # never skippable
  with pytest.raises(voc.DataError, match="refused pickled global") as excinfo:
    voc.load_cls_labels(str(path))
  assert_names_file(excinfo, path)
  assert isinstance(excinfo.value.__cause__, untrusted.UnsafeFileError)
  assert not os.path.exists(marker)


@pytest.mark.parametrize("payload_cls", PAYLOADS)
def test_cam_dict_payload_is_refused(tmp_path, payload_cls):
  marker = str(tmp_path / "pwned")
  path = tmp_path / "2007_000032.npy"
  np.save(path, {0: np.zeros((2, 3), np.float32), 4: payload_cls(marker)}, allow_pickle=True)
  assert_live(lambda: np.load(path, allow_pickle=True), marker)
  # ppc_jax's own format: an .npy is refused before any unpickling.
  with pytest.raises(untrusted.UntrustedFileError, match="is an .npy file, not the .npz") as e:
    cam_io.load_cam_dict(path)
  assert_names_file(e, path)
  # The reference's format, asked for: the restricted unpickler refuses the payload.
  with pytest.raises(untrusted.UnsafeFileError, match="refused pickled global") as excinfo:
    cam_io.load_cam_dict(path, fmt="reference_npy")
  assert_names_file(excinfo, path)
  assert not os.path.exists(marker)


def test_refusal_names_the_global(tmp_path):
  marker = str(tmp_path / "pwned")
  path = tmp_path / "x.npy"
  np.save(path, {0: SubprocessPayload(marker)}, allow_pickle=True)
  with pytest.raises(untrusted.UnsafeFileError, match=r"refused pickled global subprocess\.call"):
    cam_io.load_cam_dict(path, fmt="reference_npy")
  assert not os.path.exists(marker)


def write_numpy1_npy(path, obj):
  """An .npy as numpy 1.x's np.save writes it: pickle protocol 3, `numpy.core.multiarray` names."""
  arr = np.empty((), object)
  arr[()] = obj
  body = pickle.dumps(arr, protocol=3)
  assert b"numpy._core.multiarray\n" in body  # GLOBAL opcodes, as text (protocol 3)
  body = body.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|O", "fortran_order": False, "shape": ()})
    f.write(body)


@pytest.mark.parametrize("writer", ["numpy2", "numpy1"])
def test_reference_cls_labels_load(voc_copy, tmp_path, writer):
  src = voc.VOCSource(voc_copy, "train")
  rng = np.random.default_rng(0)
  table = {i: (rng.random(20) < 0.3).astype(np.float32) for i in src.ids}
  path = str(tmp_path / "cls_labels.npy")
  if writer == "numpy2":
    np.save(path, table, allow_pickle=True)
  else:
    write_numpy1_npy(path, table)
    assert b"numpy.core.multiarray" in open(path, "rb").read()
  # The reference's own loading idiom reads the same dict (the file is really in its format).
  ref = np.load(path, allow_pickle=True).item()
  got = voc.load_cls_labels(path)
  assert list(got) == list(ref) == list(table)
  for k in table:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], ref[k])
    np.testing.assert_array_equal(got[k], table[k])
  loaded = voc.VOCSource(voc_copy, "train", cls_labels=path)
  np.testing.assert_array_equal(loaded.labels, np.stack([table[i] for i in src.ids]))


@pytest.mark.parametrize("writer", ["numpy2", "numpy1"])
def test_reference_cam_dict_loads(tmp_path, writer):
  rng = np.random.default_rng(1)
  cams = {3: rng.random((5, 7), dtype=np.float32), 14: rng.random((5, 7), dtype=np.float32)}
  # np.int64 keys (a numpy scalar, pickled through `scalar`) are read as the ints they are.
  cams_np_keys = {np.int64(k): v for k, v in cams.items()}
  path = tmp_path / "c.npy"
  if writer == "numpy2":
    np.save(path, cams_np_keys, allow_pickle=True)
  else:
    write_numpy1_npy(path, cams_np_keys)
  got = cam_io.load_cam_dict(path, fmt="reference_npy")
  assert list(got) == [3, 14] and all(type(k) is int for k in got)
  for k, v in cams.items():
    np.testing.assert_array_equal(got[k], v)


def test_structure_checks_name_the_file(tmp_path):
  cases = [
      ({"a": np.zeros(20, object)}, r"value of 'a' is a object array"),
      ({"a": [0.0] * 20}, r"value of 'a' is list, not a numeric numpy array"),
      ({"a": "text"}, r"value of 'a' is str"),
      ({1: np.zeros(20, np.float32)}, r"key 1 is a int, not str"),
      ([np.zeros(20, np.float32)], r"holds list; expected np.save of a dict"),
  ]
  for i, (obj, match) in enumerate(cases):
    path = tmp_path / f"bad{i}.npy"
    arr = np.empty((), object)
    arr[()] = obj
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(voc.DataError, match=match) as excinfo:
      voc.load_cls_labels(str(path))
    assert_names_file(excinfo, path)
  path = tmp_path / "boolkey.npy"
  np.save(path, {True: np.zeros((2, 2), np.float32)}, allow_pickle=True)
  with pytest.raises(untrusted.UntrustedFileError, match="key True is a bool"):
    cam_io.load_cam_dict(path, fmt="reference_npy")


def assert_damaged_files_fail_clearly(tmp_path, load, error, good, missing=FileNotFoundError):
  """Every truncation point, random bytes (also behind a valid start), a directory, a missing file.

  Random bytes that happen to decode are fine (they hold plain data only); anything raised must be
  `error` naming the file, never a raw exception from inside numpy, zipfile or pickle.
  """
  load(_write(tmp_path / "intact", good))  # the control: the intact bytes load
  bad = tmp_path / "damaged"
  for n in range(len(good)):  # every prefix: header cut, pickle cut, array data cut
    _write(bad, good[:n])
    with pytest.raises(error) as excinfo:
      load(bad)
    assert_names_file(excinfo, bad)
  for head in (b"", good[:2], good[:10], good[:len(good) // 2]):
    for seed in range(20):
      tail = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
      _write(bad, head + tail)
      try:
        load(bad)
      except error as e:
        assert os.fspath(bad) in str(e), str(e)
  with pytest.raises(error) as excinfo:
    load(tmp_path)
  assert_names_file(excinfo, tmp_path)
  assert "directory" in str(excinfo.value)
  with pytest.raises(missing, match="nope"):
    load(tmp_path / "nope")


def _write(path, data):
  with open(path, "wb") as f:
    f.write(data)
  return path


def test_damaged_cls_labels_files(tmp_path):
  good = tmp_path / "good.npy"
  np.save(good, {"2007_000032": np.eye(20, dtype=np.float32)[3]}, allow_pickle=True)
  assert_damaged_files_fail_clearly(tmp_path, lambda p: voc.load_cls_labels(str(p)),
                                    voc.DataError, good.read_bytes(), missing=voc.DataError)


def test_damaged_cam_dict_files(tmp_path):
  good = tmp_path / "good.npy"
  np.save(good, {3: np.ones((2, 3), np.float32)}, allow_pickle=True)
  assert_damaged_files_fail_clearly(
      tmp_path, lambda p: cam_io.load_cam_dict(p, fmt="reference_npy"),
      untrusted.UntrustedFileError, good.read_bytes())


def test_damaged_npz_cam_files(tmp_path):
  good = cam_io.save_cam_dict(tmp_path / "good", np.ones((2, 3, 20), np.float32), np.eye(20)[3])
  with open(good, "rb") as f:
    good_bytes = f.read()
  assert_damaged_files_fail_clearly(tmp_path, cam_io.load_cam_dict,
                                    untrusted.UntrustedFileError, good_bytes)


@pytest.mark.parametrize("payload_cls", PAYLOADS)
def test_npz_with_a_pickled_member_is_refused(tmp_path, payload_cls):
  """An .npz whose member is an object array: np.load(allow_pickle=False) refuses it unread."""
  marker = str(tmp_path / "pwned")
  path = tmp_path / "2007_000032.npz"
  maps = np.empty(1, object)
  maps[0] = payload_cls(marker)
  np.savez(path, keys=np.array([3]), maps=maps)
  assert_live(lambda: np.load(path, allow_pickle=True)["maps"], marker)
  with pytest.raises(untrusted.UnsafeFileError, match="pickled object array: refused") as e:
    cam_io.load_cam_dict(path)
  assert_names_file(e, path)
  assert not os.path.exists(marker)


# ------------------------------------------------------------------------------------------------
# torch.save files.
# ------------------------------------------------------------------------------------------------

try:  # torch writes the reference files (a test-only dependency); the reader never imports it
  import torch
except ImportError:
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch writes these test files")


def reference_state_dict():
  """A state_dict with every supported dtype, a transposed tensor and views sharing a storage."""
  g = torch.Generator().manual_seed(0)
  base = torch.arange(24, dtype=torch.float32) * 1.5
  sd = collections.OrderedDict()
  sd["module.conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
  sd["module.fc.weight_t"] = torch.randn(5, 6, generator=g).t()           # non-contiguous
  sd["module.view_a"] = base[2:10].view(2, 4)                               # offset 2
  sd["module.view_b"] = base.view(4, 6)[:, 1::2]                            # same storage, strided
  sd["module.bn.running_mean"] = torch.randn(7, dtype=torch.float64, generator=g)
  sd["module.half"] = torch.randn(3, 2, generator=g).half()
  sd["module.bf16"] = torch.randn(9, generator=g).bfloat16()
  sd["module.bn.num_batches_tracked"] = torch.tensor(12345678901, dtype=torch.int64)  # 0-d
  sd["module.i32"] = torch.arange(-5, 5, dtype=torch.int32)
  sd["module.u8"] = torch.arange(250, 256, dtype=torch.uint8)
  sd["module.mask"] = torch.tensor([True, False, True, True])
  sd["module.empty"] = torch.zeros(0, 3)
  return sd


def expected_numpy(t):
  if t.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the bits
    return t.view(torch.int16).numpy()
  return t.numpy()


def assert_matches_torch(got, sd):
  assert list(got) == list(sd)
  for k, t in sd.items():
    g = got[k]
    assert isinstance(g, np.ndarray) and g.flags.c_contiguous, k
    assert g.shape == tuple(t.shape), k
    if t.dtype == torch.bfloat16:
      assert g.dtype.name == "bfloat16", k
      g = g.view(np.int16)
    want = expected_numpy(t)
    assert g.dtype == want.dtype, k
    np.testing.assert_array_equal(g, want, err_msg=k)


@needs_torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_real_torch_files_load_exactly(tmp_path, legacy):
  sd = reference_state_dict()
  assert not sd["module.fc.weight_t"].is_contiguous()
  assert (sd["module.view_a"].untyped_storage().data_ptr()
          == sd["module.view_b"].untyped_storage().data_ptr())
  path = tmp_path / "plain.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  assert zipfile.is_zipfile(path) != legacy
  assert_matches_torch(weights.load_torch_file(path), sd)

  # A training checkpoint: {'state_dict': ..., other entries} and a module's real state_dict
  # (an OrderedDict carrying `_metadata`, set through pickle BUILD).
  model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
  msd = model.state_dict()
  torch.save({"state_dict": msd, "epoch": 7, "best": np.float64(0.25), "note": "x"},
             tmp_path / "ckpt.pth", _use_new_zipfile_serialization=not legacy)
  assert_matches_torch(weights.load_torch_file(tmp_path / "ckpt.pth"), msd)
  raw = pth_reader.read_torch_file(tmp_path / "ckpt.pth")
  assert raw["epoch"] == 7 and raw["best"] == 0.25 and raw["note"] == "x"
  assert raw["state_dict"]._metadata == msd._metadata


@needs_torch
def test_torch_files_read_without_torch(tmp_path):
  """A subprocess where `import torch` fails reads .pth files (zip and legacy) exactly."""
  sd = reference_state_dict()
  for legacy in (False, True):
    torch.save(sd, tmp_path / f"m{int(legacy)}.pth", _use_new_zipfile_serialization=not legacy)
  np.savez(tmp_path / "want.npz", **{k: expected_numpy(t) for k, t in sd.items()})
  script = f"""
import sys
sys.modules['torch'] = None  # any `import torch` now raises ImportError
try:
  import torch
  raise SystemExit('torch still importable')
except ImportError:
  pass
import numpy as np
from ppc_jax import weights
want = np.load({str(tmp_path / 'want.npz')!r})
for name in ('m0.pth', 'm1.pth'):
  got = weights.load_torch_file({str(tmp_path)!r} + '/' + name)
  assert list(got) == list(want.files), (list(got), want.files)
  for k in want.files:
    g = got[k].view(np.int16) if got[k].dtype.name == 'bfloat16' else got[k]
    assert g.dtype == want[k].dtype and np.array_equal(g, want[k]), k
try:
  weights.save_torch_file({{}}, {str(tmp_path / 'out.pth')!r})
  raise SystemExit('save_torch_file worked without torch')
except ImportError as e:
  assert 'pip install .[torch]' in str(e), e
assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]
print('READ_WITHOUT_TORCH_OK')
"""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=e2e.PROCESS_TIMEOUT_S,
                        check=False)
  assert proc.returncode == 0 and "READ_WITHOUT_TORCH_OK" in proc.stdout, proc.stdout + proc.stderr


@needs_torch
@pytest.mark.parametrize("payload_cls", PAYLOADS)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_payload_is_refused(tmp_path, payload_cls, legacy):
  marker = str(tmp_path / "pwned")
  path = tmp_path / "evil.pth"
  # Written by torch.save itself: a real tensor next to the payload, as an attacker would ship.
  torch.save({"state_dict": {"w": torch.ones(2), "x": payload_cls(marker)}}, path,
             _use_new_zipfile_serialization=not legacy)
  if not legacy:  # the control: plain pickle runs the data.pkl payload
    with zipfile.ZipFile(path) as z:
      body = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))

    class Plain(pickle.Unpickler):
      """Unrestricted, with torch's globals stubbed so that only the payload does anything."""

      def find_class(self, module, name):
        if module.startswith("torch"):
          return lambda *args: None
        return super().find_class(module, name)

      def persistent_load(self, pid):
        return None
    assert_live(lambda: Plain(io.BytesIO(body)).load(), marker)
  else:
    assert_live(lambda: torch.load(path, weights_only=False), marker)
  with pytest.raises(untrusted.UnsafeFileError, match="refused pickled global") as excinfo:
    weights.load_torch_file(path)
  assert_names_file(excinfo, path)
  assert not os.path.exists(marker)


def _ops(value):
  """The pickle opcodes of a plain value (no PROTO / STOP), for hand-made torch pickles."""
  return pickle.dumps(value, protocol=2)[2:-1]


def tensor_pickle(offset, size, stride, numel, storage_global=b"ctorch\nFloatStorage\n",
                  rebuild=b"ctorch._utils\n_rebuild_tensor_v2\n"):
  """data.pkl of {'w': tensor} with a chosen layout, as torch's pickler writes it."""
  pid = b"(" + _ops("storage") + storage_global + _ops("0") + _ops("cpu") + _ops(numel) + b"t"
  args = (b"(" + pid + b"Q" + _ops(offset) + _ops(tuple(size)) + _ops(tuple(stride))
          + b"\x89" + b"}" + b"t")
  return b"\x80\x02}" + _ops("w") + rebuild + args + b"R" + b"s."


def write_zip(path, data_pkl, storage_bytes):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/data/0", storage_bytes)
    z.writestr("archive/version", "3\n")  # torch's reader insists on it; ours does not read it
  return path


@needs_torch
def test_hand_made_zip_layouts(tmp_path):
  values = np.arange(6, dtype=np.float32)
  # The hand-made writer is faithful: torch reads it, and so do we, identically.
  good = write_zip(tmp_path / "good.pth", tensor_pickle(1, (2, 2), (1, 2), 6), values.tobytes())
  want = torch.load(good, weights_only=True)["w"].numpy()
  np.testing.assert_array_equal(weights.load_torch_file(good)["w"], want)
  np.testing.assert_array_equal(want, [[1, 3], [2, 4]])

  cases = [
      (tensor_pickle(0, (3, 3), (3, 1), 6), values, "reads element 8 of storage '0'"),
      (tensor_pickle(5, (2,), (1,), 6), values, "reads element 6"),
      (tensor_pickle(0, (2,), (-1,), 6), values, "invalid layout"),
      (tensor_pickle(0, (7,), (0,), 6), values, "more elements than its storage"),
      (tensor_pickle(0, (2, 2), (1,), 6), values, "invalid layout"),
      (tensor_pickle(0, (2,), (1,), 7), values, "holds 24 bytes; its storage declares 7"),
      (tensor_pickle(0, (2,), (1,), 6, storage_global=b"ctorch\nQInt8Storage\n"), values,
       r"refused pickled global torch\.QInt8Storage"),
      (tensor_pickle(0, (2,), (1,), 6, rebuild=b"ctorch._utils\n_rebuild_qtensor\n"), values,
       r"refused pickled global torch\._utils\._rebuild_qtensor"),
      # BUILD on an admitted callable (to alter it for later files) is refused too.
      (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}" + _ops("a") + _ops(1) + b"sb.", values,
       "BUILD on _Callable refused"),
      # A storage type name used as a callable.
      (b"\x80\x02ctorch\nFloatStorage\n)R.", values, "malformed pickle"),
  ]
  for i, (body, data, match) in enumerate(cases):
    path = write_zip(tmp_path / f"bad{i}.pth", body, data.tobytes())
    with pytest.raises(untrusted.UntrustedFileError, match=match) as excinfo:
      weights.load_torch_file(path)
    assert_names_file(excinfo, path)


@needs_torch
def test_not_a_state_dict(tmp_path):
  torch.save([torch.ones(1)], tmp_path / "list.pth")
  with pytest.raises(ValueError, match="list.pth: holds list; expected a state_dict"):
    weights.load_torch_file(tmp_path / "list.pth")
  torch.save({"w": torch.ones(1), "step": 3, "names": np.array(["a"], object)},
             tmp_path / "mixed.pth")
  with pytest.raises(ValueError, match="mixed.pth: entries that are not tensors .*: names, step"):
    weights.load_torch_file(tmp_path / "mixed.pth")
  with zipfile.ZipFile(tmp_path / "two.pth", "w") as z:
    z.writestr("a/data.pkl", pickle.dumps({}, protocol=2))
    z.writestr("b/data.pkl", pickle.dumps({}, protocol=2))
  with pytest.raises(ValueError, match="two.pth: zip archive with 2 '<dir>/data.pkl' records"):
    weights.load_torch_file(tmp_path / "two.pth")


@needs_torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_damaged_pth_files(tmp_path, legacy):
  sd = collections.OrderedDict(a=torch.arange(6.0).view(2, 3), b=torch.ones(2, dtype=torch.int64))
  path = tmp_path / "m.pth"
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  good = path.read_bytes()
  assert_damaged_files_fail_clearly(tmp_path, weights.load_torch_file,
                                    untrusted.UntrustedFileError, good)
  empty = _write(tmp_path / "empty.pth", b"")
  with pytest.raises(untrusted.UntrustedFileError, match="empty.pth: is empty"):
    weights.load_torch_file(empty)
  # Random bytes: torch's own message here suggests weights_only=False; ours names the file only.
  noise = _write(tmp_path / "noise.pth", np.random.default_rng(3).bytes(4096))
  with pytest.raises(untrusted.UntrustedFileError, match="noise.pth: not a torch.save file") as e:
    weights.load_torch_file(noise)
  assert_names_file(e, noise)
