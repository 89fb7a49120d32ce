"""MXNet `.params` files (NDArray lists) read and written with numpy alone: no mxnet needed.

The ImageNet ResNet38 every SEAM / PPC / EPS run starts from
(`ilsvrc-cls_rna-a1_cls1000_ep-0001.params`, itijyou/ademxapp) is an MXNet NDArray list, and
mxnet does not install on current Pythons. The format (MXNet `src/ndarray/ndarray.cc`,
`NDArray::Save` / `Load` / `LegacyLoad`, and `src/c_api/c_api.cc`, `MXNDArraySave`), all
little-endian:

  list:   uint64 magic 0x112 | uint64 reserved (0)
          uint64 n | n arrays
          uint64 m | m names, each uint64 length + UTF-8 bytes   (m = n, or 0 for an unnamed list)
  array, by its first uint32:
    0xF993FAC9 (V2) / 0xF993FACA (V3, numpy-shape mode):
          int32 storage type (0 = dense; sparse ones are refused here)
          shape: uint32 ndim | int64 dims[ndim]   (V3: ndim is int32, -1 = unknown)
          then, unless the array is empty: context (int32 device type, int32 device id),
          int32 type flag, raw data (C order)
    0xF993FAC8 (V1): shape as above, no storage type; then context, type flag, data
    anything else (legacy, MXNet < 0.9): that uint32 is ndim, then uint32 dims[ndim], then
          context, type flag, data
  An empty ("none") array is ndim 0 in legacy / V1 / V2 (MXNet's writers cannot produce one,
  its loaders accept it) and ndim -1 or a dim -1 in V3, where ndim 0 is a 0-d scalar with data:
  nothing follows its shape.

Type flags (mshadow `base.h`): 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8,
6 int64, 7 bool, 8 int16, 9 uint16, 10 uint32, 11 uint64, 12 bfloat16.

Module / gluon checkpoints prefix names with 'arg:' (parameters) and 'aux:' (BN moving
statistics); the names are kept as written.

A `.params` file holds no code, but it is still untrusted input: every count, rank and length is
checked against the bytes left before anything is allocated, so a truncated or crafted file gets
an `UntrustedFileError` naming it (never a huge allocation, a hang or numpy's own message).
"""

import hashlib
import os
import struct

import ml_dtypes
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import untrusted

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
HEADERS = ("legacy", "v1", "v2", "v3")

# MXNet type flag <-> numpy dtype (little-endian).
TYPE_FLAGS = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"),
    4: np.dtype("<i4"), 5: np.dtype("i1"), 6: np.dtype("<i8"), 7: np.dtype("?"),
    8: np.dtype("<i2"), 9: np.dtype("<u2"), 10: np.dtype("<u4"), 11: np.dtype("<u8"),
    12: np.dtype(ml_dtypes.bfloat16),
}
_FLAG_OF = {dtype: flag for flag, dtype in TYPE_FLAGS.items()}

# The published md5 of the ImageNet ResNet38 "Model A1" (itijyou/ademxapp models/checksum.md5).
RESNET38_A1_MD5 = "ff21f45d6bf03284100dcbec571edfad"
RESNET38_A1_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"

_MAX_NDIM = 32  # MXNet's own limit is far below this; a larger rank means a corrupt header.


class _Reader:
  """Sequential little-endian reads from a byte buffer; every read checks the bytes left."""

  def __init__(self, path, data):
    self.path = path
    self.data = memoryview(data)
    self.pos = 0

  def fail(self, problem):
    raise untrusted.UntrustedFileError(self.path, f"{problem} (at byte {self.pos})")

  def take(self, n, what):
    if n < 0 or n > len(self.data) - self.pos:
      self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def unpack(self, fmt, what):
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

  def count(self, what, min_item_bytes):
    """A uint64 count whose items, `min_item_bytes` each at least, must fit in what is left."""
    (n,) = self.unpack("Q", what)
    if n * min_item_bytes > len(self.data) - self.pos:
      self.fail(f"truncated or corrupt: {what} says {n}, more than the "
                f"{len(self.data) - self.pos} bytes left can hold")
    return n


def _read_shape(r, dim_fmt, ndim_fmt, header):
  (ndim,) = r.unpack(ndim_fmt, "array rank")
  if header == "v3" and ndim == -1:
    return None  # unknown shape: an empty array
  if not 0 <= ndim <= _MAX_NDIM:
    r.fail(f"array rank {ndim} is not a valid MXNet rank (0..{_MAX_NDIM}); corrupt header?")
  dims = r.unpack(dim_fmt * ndim, "array dims")
  if header == "v3" and -1 in dims:
    return None  # a dimension unknown: an empty array
  if any(d < 0 for d in dims):
    r.fail(f"negative dimension in shape {dims}")
  return tuple(int(d) for d in dims)


def _read_array(r, index):
  (first,) = r.unpack("I", f"header of array {index}")
  if first in (V2_MAGIC, V3_MAGIC):
    header = "v2" if first == V2_MAGIC else "v3"
    (stype,) = r.unpack("i", f"storage type of array {index}")
    if stype != 0:
      r.fail(f"array {index} has sparse storage type {stype}; only dense arrays are supported")
    shape = _read_shape(r, "q", "i" if header == "v3" else "I", header)
  elif first == V1_MAGIC:
    header = "v1"
    shape = _read_shape(r, "q", "I", header)
  else:
    header = "legacy"
    if first > _MAX_NDIM:
      r.fail(f"array {index} starts with 0x{first:08x}, neither an MXNet NDArray magic "
             f"(0x{V1_MAGIC:08x}..0x{V3_MAGIC:08x}) nor a legacy rank; not an MXNet .params file?")
    dims = r.unpack("I" * first, f"dims of array {index}")
    shape = tuple(int(d) for d in dims)
  # An empty ("none") array: nothing after its shape (rank 0 in legacy / V1 / V2, -1 in V3).
  if shape is None or (header != "v3" and len(shape) == 0):
    return np.zeros((0,), np.float32), header
  r.unpack("ii", f"context of array {index}")  # device type and id: data is always read to host
  (flag,) = r.unpack("i", f"type flag of array {index}")
  if flag not in TYPE_FLAGS:
    r.fail(f"array {index} has MXNet type flag {flag}; known flags: {sorted(TYPE_FLAGS)}")
  dtype = TYPE_FLAGS[flag]
  size = int(np.prod(shape, dtype=np.int64)) if shape else 1
  raw = r.take(size * dtype.itemsize, f"data of array {index} ({dtype.name}{list(shape)})")
  return np.frombuffer(raw, dtype=dtype).reshape(shape).copy(), header


def read_ndarray_list(path):
  """Reads an MXNet NDArray list (`mx.nd.save` of a list or a dict).

  Returns:
    (arrays, names, headers): lists of np.ndarray (native numpy dtypes; bfloat16 as
    ml_dtypes.bfloat16), of str (empty for an unnamed list), and of the per-array header kind
    ('legacy', 'v1', 'v2' or 'v3').

  Raises:
    FileNotFoundError: no such file.
    untrusted.UntrustedFileError: anything else, naming the file.
  """
  path = os.fspath(path)
  return parse_ndarray_list(path, untrusted.read_file_bytes(path, "MXNet .params file"))


def parse_ndarray_list(path, data):
  """`read_ndarray_list` of bytes already read from `path` (named in errors)."""
  r = _Reader(path, data)
  if len(data) < 16:
    r.fail(f"only {len(data)} bytes; an MXNet NDArray list starts with a 16-byte header")
  magic, _ = r.unpack("QQ", "list header")
  if magic != LIST_MAGIC:
    r.pos = 0
    r.fail(f"starts with 0x{magic:x}, not the MXNet NDArray-list magic 0x{LIST_MAGIC:x}; "
           "not an MXNet .params file")
  n = r.count("array count", 4)
  arrays, headers = [], []
  for i in range(n):
    array, header = _read_array(r, i)
    arrays.append(array)
    headers.append(header)
  m = r.count("name count", 8)
  if m not in (0, n):
    r.fail(f"{m} names for {n} arrays")
  names = []
  for i in range(m):
    length = r.count(f"length of name {i}", 1)
    raw = bytes(r.take(length, f"name {i}"))
    try:
      names.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
      r.fail(f"name {i} is not UTF-8: {raw[:40]!r}")
  if r.pos != len(data):
    r.fail(f"{len(data) - r.pos} bytes after the last name; corrupt or not an NDArray list")
  return arrays, names, headers


def load_params(path, *, md5=None):
  """Reads a named MXNet `.params` file into {name: np.ndarray}, in file order.

  Args:
    path: the file.
    md5: if given, the file's md5 (hex) must equal it, e.g. the published checksum of the
      ImageNet ResNet38, `RESNET38_A1_MD5`; checked before parsing.

  Raises:
    FileNotFoundError: no such file.
    untrusted.UntrustedFileError: a checksum mismatch, an unnamed list, duplicate names, or any
      format problem; naming the file.
  """
  path = os.fspath(path)
  data = untrusted.read_file_bytes(path, "MXNet .params file")
  if md5 is not None:
    actual = hashlib.md5(data).hexdigest()
    if actual != md5.lower():
      raise untrusted.UntrustedFileError(
          path, f"md5 {actual} differs from the expected {md5.lower()} (a different or "
          "damaged download)")
  arrays, names, _ = parse_ndarray_list(path, data)
  if arrays and not names:
    raise untrusted.UntrustedFileError(
        path, f"an unnamed list of {len(arrays)} arrays; parameters need names")
  out = {}
  for name, array in zip(names, arrays):
    if name in out:
      raise untrusted.UntrustedFileError(path, f"the name {name!r} occurs twice")
    out[name] = array
  return out


def _encode_array(array, header):
  array = np.asarray(array)
  dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
  if dtype not in _FLAG_OF:
    raise ValueError(f"dtype {array.dtype} has no MXNet type flag")
  if header == "legacy" and array.ndim == 0:
    raise ValueError("the legacy header cannot hold a 0-d array (rank 0 means an empty array)")
  parts = []
  if header == "legacy":
    if any(d >= 2**32 for d in array.shape):
      raise ValueError(f"legacy uint32 dims cannot hold shape {array.shape}")
    parts.append(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
  else:
    magic = {"v1": V1_MAGIC, "v2": V2_MAGIC, "v3": V3_MAGIC}[header]
    parts.append(struct.pack("<I", magic))
    if header in ("v2", "v3"):
      parts.append(struct.pack("<i", 0))  # dense storage
    parts.append(struct.pack(f"<{'i' if header == 'v3' else 'I'}{array.ndim}q", array.ndim,
                             *array.shape))
  parts.append(struct.pack("<iii", 1, 0, _FLAG_OF[dtype]))  # cpu(0), type flag
  parts.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
  return b"".join(parts)


def encode_params(arrays, *, header="v2"):
  """Bytes of an MXNet NDArray list: `arrays` a {name: array} dict (or a list: unnamed).

  `header` picks the per-array layout ('legacy', 'v1', 'v2' as MXNet 1.x writes, 'v3' as its
  numpy-shape mode writes). Used for the reverse export and to test the reader.
  """
  if header not in HEADERS:
    raise ValueError(f"header must be one of {HEADERS}, got {header!r}")
  named = isinstance(arrays, dict)
  values = list(arrays.values()) if named else list(arrays)
  out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(values))]
  out += [_encode_array(v, header) for v in values]
  names = [n.encode("utf-8") for n in arrays] if named else []
  out.append(struct.pack("<Q", len(names)))
  for name in names:
    out.append(struct.pack("<Q", len(name)) + name)
  return b"".join(out)


def save_params(arrays, path, *, header="v2"):
  """Writes `encode_params(arrays, header=header)` to `path` atomically."""
  atomic_io.write_bytes(path, encode_params(arrays, header=header))
