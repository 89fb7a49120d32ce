"""Reads `torch.save` files into numpy without torch and without running code from the file.

Two formats:
  * zip (torch >= 1.6 default): `<dir>/data.pkl` pickles the object; each tensor's storage is a
    raw little-endian record `<dir>/data/<key>` (`<dir>/byteorder` says otherwise if present);
  * legacy (`_use_new_zipfile_serialization=False`, torch < 1.6; the released SEAM/PSA
    checkpoints may be in it): five things back to back, the pickled magic number, protocol
    version 1001 and sys_info dict, the object's pickle, the pickled list of storage keys, then
    per key an int64 element count and the raw elements.
Inside the pickle a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks[, metadata])` (or the older `_rebuild_tensor` / `_rebuild_parameter`), and a
storage is the persistent id ('storage', torch.<T>Storage, key, location, numel[, view]).

The pickle goes through `untrusted.RestrictedUnpickler`: admitted are `collections.OrderedDict`,
the tensor rebuild functions above (ours, building numpy arrays), the storage type names of the
dtypes below, numpy's array/scalar reconstruction and `_codecs.encode` for latin-1 only (protocol 2
writes numpy scalars' bytes that way). Anything else, e.g. a pickled nn.Module, quantized or sparse
tensors, or a payload, is refused with `UnsafeFileError` naming the file; no message suggests
another loader.

Tensors become C-contiguous numpy arrays equal to `tensor.numpy()`: storage offset, size and stride
are honoured (views of one storage, transposed tensors), each array owns a copy of its values; a
view with more elements than its storage (an expanded tensor) is refused, which bounds memory.
dtypes: float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8, bool. bfloat16 is
kept exact as `ml_dtypes.bfloat16` (numpy has no bfloat16; ml_dtypes comes with jax), so a caller
decides about widening (`weights.from_torch_state_dict` casts to the model's dtype).
"""

import collections
import io
import math
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from ppc_jax import untrusted
from ppc_jax.untrusted import UnsafeFileError, UntrustedFileError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001                 # torch.serialization.PROTOCOL_VERSION

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": BFLOAT16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

ADMITS = ("dicts, lists, strings, numbers and tensors of dtype float32/float64/float16/bfloat16/"
          "int64/int32/int16/int8/uint8/bool")


class _Sealed:
  """Base of what a pickle is handed: BUILD (setting state or attributes) on it is refused."""
  __slots__ = ()

  def __setstate__(self, state):
    # Unpicklers turn this into an error naming the file.
    raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} refused")


class _StorageType(_Sealed):
  """What `torch.FloatStorage` etc. resolve to: only a dtype (not callable)."""
  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = dtype


class _Storage(_Sealed):
  """A loaded storage: its elements as a flat read-only numpy array (one per key, shared)."""
  __slots__ = ("key", "flat")

  def __init__(self, key, flat):
    self.key = key
    self.flat = flat


class _Callable(_Sealed):
  """An admitted callable; a sealed wrapper so that BUILD cannot alter our functions."""
  __slots__ = ("_fn",)

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, *args):
    return self._fn(*args)


def _is_int(x):
  return isinstance(x, int) and not isinstance(x, bool)


def _tensor(path, storage, offset, size, stride):
  """The numpy array of a tensor view (offset/size/stride in elements) of a storage, copied."""
  if not isinstance(storage, _Storage):
    raise UntrustedFileError(path, f"a tensor's storage is a {type(storage).__name__}, not a "
                                   "storage record")
  size, stride = tuple(size), tuple(stride)
  if not (_is_int(offset) and offset >= 0 and len(size) == len(stride)
          and all(_is_int(n) and n >= 0 for n in size)
          and all(_is_int(s) and s >= 0 for s in stride)):
    raise UntrustedFileError(path, f"tensor on storage {storage.key!r} has an invalid layout: "
                                   f"offset {offset!r}, size {size!r}, stride {stride!r}")
  flat = storage.flat
  if 0 in size:
    return np.zeros(size, flat.dtype)
  # The last element the view reads; as_strided does not check bounds, so this must.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise UntrustedFileError(path, f"tensor reads element {last} of storage {storage.key!r}, "
                                   f"which holds {flat.size}")
  # An overlapping view (stride 0, torch's expand) could decode to far more elements than the file
  # holds; state dicts have none, so decoded sizes stay bounded by the file's size.
  if math.prod(size) > flat.size:
    raise UntrustedFileError(path, f"tensor of size {size} has more elements than its storage "
                                   f"{storage.key!r} ({flat.size}); expanded tensors are not read")
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride),
      writeable=False)
  return np.array(view, order="C")


def _admitted(path, dry=False):
  """{(module, name): object} for a torch pickle; the rebuild functions close over `path`.

  With dry=True tensors are not built (they become None): the legacy reader's first pass, which
  only collects the storage ids.
  """

  def rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    del requires_grad, hooks, metadata  # autograd state; the metadata bits concern complex dtypes
    return None if dry else _tensor(path, storage, offset, size, stride)

  def rebuild_v1(storage, offset, size, stride):
    return None if dry else _tensor(path, storage, offset, size, stride)

  def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    if not dry and not isinstance(data, np.ndarray):
      raise UntrustedFileError(path, f"a parameter holds {type(data).__name__}, not a tensor")
    return data

  def latin1_encode(text, encoding="utf-8"):
    # Only the form pickle protocol 2 emits for bytes: _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
      raise UnsafeFileError(path, f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")

  allowed = dict(untrusted.NUMPY_GLOBALS)
  allowed[("collections", "OrderedDict")] = collections.OrderedDict
  allowed[("_codecs", "encode")] = _Callable(latin1_encode)
  allowed[("torch._utils", "_rebuild_tensor_v2")] = _Callable(rebuild_v2)
  allowed[("torch._utils", "_rebuild_tensor")] = _Callable(rebuild_v1)
  allowed[("torch._utils", "_rebuild_parameter")] = _Callable(rebuild_parameter)
  allowed[("torch._utils", "_rebuild_parameter_with_state")] = _Callable(rebuild_parameter)
  for name, dtype in _STORAGE_DTYPES.items():
    allowed[("torch", name)] = _StorageType(name, dtype)
  return allowed


def _flat(path, data, dtype, big_endian, key):
  """The raw bytes of a storage as a read-only flat array of `dtype` (native byte order)."""
  if len(data) % dtype.itemsize:
    raise UntrustedFileError(path, f"storage {key!r} holds {len(data)} bytes, not a whole number "
                                   f"of {dtype} elements")
  if not big_endian or dtype.itemsize == 1:
    return np.frombuffer(data, dtype)
  uint = np.dtype(f"u{dtype.itemsize}")
  return np.frombuffer(data, uint).byteswap().view(dtype)


def _storage_pid(path, pid, legacy):
  """Checks a persistent id; returns (dtype, key, numel, view or None)."""
  n = 6 if legacy else 5
  if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
    what = "a pickled nn.Module" if isinstance(pid, tuple) and pid[:1] == ("module",) else "it"
    raise UnsafeFileError(path, f"refused persistent id {str(pid)[:80]!r} ({what} is not a "
                                f"tensor storage); this file may only hold {ADMITS}")
  storage_type, key, _, numel = pid[1:5]
  if not isinstance(storage_type, _StorageType):
    raise UntrustedFileError(path, f"storage {key!r} has type {storage_type!r}, not a storage "
                                   "type name")
  if not (isinstance(key, str) and _is_int(numel) and numel >= 0):
    raise UntrustedFileError(path, f"malformed storage id {str(pid)[:80]!r}")
  view = pid[5] if legacy else None
  return storage_type.dtype, key, numel, view


def _read_zip(path, payload):
  try:
    archive = zipfile.ZipFile(io.BytesIO(payload))
    names = archive.namelist()
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise UntrustedFileError(path, f"damaged zip archive, truncated? ({e}); expected a torch.save "
                                   "file") from e
  pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    if any(n.endswith("/constants.pkl") for n in names):
      raise UntrustedFileError(path, "is a TorchScript archive (torch.jit.save), not a torch.save "
                                     "file of tensors")
    raise UntrustedFileError(path, f"zip archive with {len(pickles)} '<dir>/data.pkl' records "
                                   "(expected exactly 1); not a torch.save file")
  prefix = pickles[0][:-len("data.pkl")]
  try:
    big_endian = (prefix + "byteorder" in names
                  and archive.read(prefix + "byteorder").strip() == b"big")
    data_pkl = archive.read(pickles[0])
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise UntrustedFileError(path, f"damaged zip record ({e})") from e
  storages = {}

  def persistent_load(pid):
    dtype, key, numel, _ = _storage_pid(path, pid, legacy=False)
    if key not in storages:
      record = f"{prefix}data/{key}"
      try:
        size = archive.getinfo(record).file_size
      except KeyError:
        raise UntrustedFileError(path, f"no record {record!r} for storage {key!r}") from None
      if size != numel * dtype.itemsize:
        raise UntrustedFileError(path, f"record {record!r} holds {size} bytes; its storage "
                                       f"declares {numel} x {dtype} = {numel * dtype.itemsize}")
      try:
        data = archive.read(record)
      except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UntrustedFileError(path, f"damaged zip record {record!r} ({e})") from e
      storages[key] = _Storage(key, _flat(path, data, dtype, big_endian, key))
    storage = storages[key]
    if storage.flat.dtype != dtype:
      raise UntrustedFileError(path, f"storage {key!r} is used as {storage.flat.dtype} and {dtype}")
    return storage

  obj, _ = untrusted.unpickle(data_pkl, path, _admitted(path), ADMITS,
                              persistent_load=persistent_load)
  return obj


def _read_legacy(path, payload):
  """The legacy stream; the object's pickle is read twice: once for its storage ids (which give the
  dtypes needed to cut the raw data that follows it), then with the storages loaded."""
  none = {}
  pos = 0
  header = []
  for _ in range(3):  # magic, protocol version, sys_info: plain values, no globals admitted
    value, pos = untrusted.unpickle(payload, path, none, "plain values", start=pos)
    header.append(value)
  magic, protocol, sys_info = header
  if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(sys_info, dict):
    raise UntrustedFileError(path, "not a torch.save file (bad magic number or protocol version)")
  big_endian = not sys_info.get("little_endian", True)
  main_start = pos

  ids = {}  # root key -> (dtype, numel)

  def record_pid(pid):
    dtype, key, numel, _ = _storage_pid(path, pid, legacy=True)
    if ids.setdefault(key, (dtype, numel)) != (dtype, numel):
      raise UntrustedFileError(path, f"storage {key!r} is declared twice, differently")
    return _Storage(key, None)

  _, pos = untrusted.unpickle(payload, path, _admitted(path, dry=True), ADMITS, start=main_start,
                              persistent_load=record_pid)
  keys, pos = untrusted.unpickle(payload, path, none, "plain values", start=pos)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise UntrustedFileError(path, "the storage key list is not a list of strings")
  roots = {}
  count = struct.Struct(">q" if big_endian else "<q")
  for key in keys:
    if key not in ids:
      raise UntrustedFileError(path, f"storage {key!r} is listed but used by no tensor")
    dtype, numel = ids[key]
    if pos + count.size > len(payload):
      raise UntrustedFileError(path, f"truncated: the data of storage {key!r} is missing")
    (stored,) = count.unpack_from(payload, pos)
    pos += count.size
    nbytes = stored * dtype.itemsize
    if stored != numel or pos + nbytes > len(payload):
      raise UntrustedFileError(path, f"truncated or inconsistent: storage {key!r} declares "
                                     f"{numel} elements, the data section {stored} with "
                                     f"{len(payload) - pos} bytes left")
    roots[key] = _flat(path, payload[pos:pos + nbytes], dtype, big_endian, key)
    pos += nbytes
  missing = sorted(set(ids) - set(roots))
  if missing:
    raise UntrustedFileError(path, f"no data for storages {missing[:5]}")

  def persistent_load(pid):
    dtype, key, _, view = _storage_pid(path, pid, legacy=True)
    flat = roots[key]
    if flat.dtype != dtype:
      raise UntrustedFileError(path, f"storage {key!r} is used as {flat.dtype} and {dtype}")
    if view is None:
      return _Storage(key, flat)
    # A storage view (old torch): (view key, offset, size) in elements of the root.
    if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])
            and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= flat.size):
      raise UntrustedFileError(path, f"invalid view {view!r} of storage {key!r}")
    return _Storage(f"{key}[{view[1]}:{view[1] + view[2]}]", flat[view[1]:view[1] + view[2]])

  obj, _ = untrusted.unpickle(payload, path, _admitted(path), ADMITS, start=main_start,
                              persistent_load=persistent_load)
  return obj


def read_torch_file(path):
  """Reads a `torch.save` file; tensors come back as numpy arrays, containers as pickled.

  Args:
    path: a .pth / .pt file (zip or legacy format).

  Returns:
    the saved object (e.g. an OrderedDict state_dict, or a dict holding one), every tensor a
    C-contiguous numpy array (bfloat16 as ml_dtypes.bfloat16).

  Raises:
    FileNotFoundError: no such file (named).
    UnsafeFileError: the pickle asks for anything outside the allow-list (see the module doc).
    UntrustedFileError: a directory, empty, truncated, random bytes, a damaged archive, a tensor
      outside its storage; always naming the file.
  """
  path = os.fspath(path)
  payload = untrusted.read_file_bytes(path, "torch.save file")
  if not payload:
    raise UntrustedFileError(path, "is empty; expected a torch.save file")
  if payload.startswith(b"PK\x03\x04") or zipfile.is_zipfile(io.BytesIO(payload)):
    return _read_zip(path, payload)
  if payload[257:262] == b"ustar":
    raise UntrustedFileError(path, "is a tar archive (the torch < 0.4 format), which is not read "
                                   "here; expected a zip or legacy torch.save file")
  if payload[:1] == b"\x80":  # a pickle PROTO opcode: the legacy format starts with its magic
    return _read_legacy(path, payload)
  raise UntrustedFileError(path, "not a torch.save file (neither a zip archive nor the legacy "
                                 "pickle stream)")
