"""Reading pickled data files that someone else wrote, without running code from them.

A pickle may name any importable callable and have it called while loading (`__reduce__`), so
`np.load(..., allow_pickle=True)` or `torch.load` of a crafted file runs its payload. Here every
global a pickle asks for goes through an allow-list (`RestrictedUnpickler.find_class`); anything
else raises `UnsafeFileError` naming the file and the refused global, before anything is called.
Nothing outside the allow-list can be reached: pickle has no opcode that fetches an attribute, so
every callable a file can invoke is one this module (or `ppc_jax.pth_reader`) handed out.

The reference's files read here are `np.save`d pickled dicts (`load_npy_dict`):
  * `cls_labels.npy`: {str image id: float32[F]} (F foreground classes, 20 for VOC);
  * cam_dict and CRF score files in the reference's format (`ppc_jax.data.cam_io`, only when
    that format is selected): {int class index: float32[H, W]}.
ppc_jax's own intermediate files are `.npz` archives of numeric arrays, not pickles
(`load_npz_arrays`: `np.load(..., allow_pickle=False)`).
Their pickles use only numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`, `scalar`,
under `numpy.core.multiarray` as numpy 1.x writes it and `numpy._core.multiarray` as numpy 2 does)
plus dict/str/int/float opcodes, which need no global at all.

Every failure (missing, a directory, empty, truncated, random bytes, a plain array, a wrong
structure, a refused global) is an `UntrustedFileError` (a ValueError) whose message starts with
the file's path; a missing file is a FileNotFoundError naming it.
"""

import errno
import io
import os
import pickle
import pickletools
import threading

import numpy as np

from ppc_jax import fileio

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias.
  from numpy._core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top


class UntrustedFileError(ValueError):
  """A data or weight file that cannot be read as what it should be; `path` names it."""

  def __init__(self, path, problem):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


class UnsafeFileError(UntrustedFileError):
  """The file asks for something outside the allow-list (a global, a persistent id): refused."""


# (module, name) -> object, for what np.save'd numeric arrays, dicts and numpy scalars need.
# These are C functions and types: a pickle cannot set attributes on them (BUILD fails).
NUMPY_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", _multiarray._reconstruct),
                      ("scalar", _multiarray.scalar))
}
NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
NUMPY_GLOBALS[("numpy", "dtype")] = np.dtype

NUMPY_ADMITS = "dicts, strings, numbers and numpy arrays"


def read_file_bytes(path, what):
  """The whole file as bytes, or a named error (FileNotFoundError / UntrustedFileError).

  Args:
    path: the file.
    what: what the file should be, for messages (e.g. "cam file").
  """
  path = os.fspath(path)
  # Read first, classify only on failure: one request per file on a bucket, not three. (gcsfs
  # reads a bucket "directory" as b'': an empty result is checked too.)
  try:
    data = fileio.read_bytes(path)
    if data or not fileio.isdir(path):
      return data
    raise IsADirectoryError(path)
  except (FileNotFoundError, IsADirectoryError) as e:
    if fileio.isdir(path):
      raise UntrustedFileError(path, f"is a directory; expected a {what}") from None
    if not fileio.exists(path):
      raise FileNotFoundError(errno.ENOENT, f"{what} not found", path) from None
    raise UntrustedFileError(path, f"cannot read the {what} ({e})") from e
  except OSError as e:
    raise UntrustedFileError(path, f"cannot read the {what} ({e})") from e


def pickle_end(payload, start, path):
  """Offset just past the pickle that starts at payload[start], checked opcode by opcode.

  `pickletools.genops` reads every opcode's argument with its declared length and fails when the
  bytes end first, so a truncated or random payload is refused here with a clear message (and no
  unpickler ever allocates a buffer for a length the file does not hold).
  """
  stream = io.BytesIO(payload)
  stream.seek(start)
  try:
    for opcode, _, _ in pickletools.genops(stream):
      if opcode.name == "STOP":
        return stream.tell()
  except Exception as e:  # pylint: disable=broad-except  (ValueError, UnicodeDecodeError, ...)
    raise UntrustedFileError(path, f"truncated or not a pickle ({e})") from e
  raise UntrustedFileError(path, "truncated pickle (no STOP opcode)")


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only the globals in `allowed` and refuses everything else.

  Args:
    file: a binary stream positioned at the pickle.
    path: the file's path, for messages.
    allowed: {(module, name): object} handed out for GLOBAL / STACK_GLOBAL opcodes.
    admits: words for the message of a refusal ("dicts, strings, ...").
    persistent_load: optional callable for persistent ids (torch storages); without it a
      persistent id is refused.
  """

  def __init__(self, file, path, allowed, admits, persistent_load=None):
    # latin1: Python 2 pickles of numpy arrays hold their bytes as str; numpy's own advice.
    super().__init__(file, encoding="latin1")
    self._path = os.fspath(path)
    self._allowed = allowed
    self._admits = admits
    self._persistent = persistent_load

  def find_class(self, module, name):
    key = (module, name)
    if key not in self._allowed:
      raise UnsafeFileError(
          self._path, f"refused pickled global {module}.{name}: this file may only hold "
                      f"{self._admits} (nothing in it is executed)")
    return self._allowed[key]

  def persistent_load(self, pid):
    if self._persistent is None:
      raise UnsafeFileError(self._path, f"refused pickled persistent id {str(pid)[:80]!r}: this "
                                        f"file may only hold {self._admits}")
    return self._persistent(pid)


def unpickle(payload, path, allowed, admits, start=0, persistent_load=None):
  """Loads one pickle from payload[start:] with `RestrictedUnpickler`.

  Returns:
    (object, offset just past the pickle).

  Raises:
    UnsafeFileError: a global or persistent id outside the allow-list.
    UntrustedFileError: anything else that goes wrong (truncated, malformed, wrong arguments to an
      admitted callable), always naming the file.
  """
  end = pickle_end(payload, start, path)
  stream = io.BytesIO(payload)
  stream.seek(start)
  try:
    obj = RestrictedUnpickler(stream, path, allowed, admits, persistent_load).load()
  except UntrustedFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any malformed-pickle error)
    raise UntrustedFileError(path, f"malformed pickle ({type(e).__name__}: {e})") from e
  return obj, end


# numpy parses .npy headers with `ast.literal_eval`. CPython 3.11's AST constructor keeps its
# recursion depth in interpreter-wide state, so two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), and tf.data's
# parallel map reads several CRF files at once. Every header parse of the package takes this lock;
# the data itself is read outside it.
NPY_HEADER_LOCK = threading.Lock()


def _parse_npy_header(stream):
  """(shape, fortran_order, dtype) of the .npy file at `stream`'s position, via numpy's parser
  (versions 1.0 and 2.0; 3.0 is only written for non-latin1 field names, never for our files),
  under `NPY_HEADER_LOCK`. Leaves `stream` at the start of the data.

  Raises:
    ValueError / SyntaxError (numpy's) for a malformed header.
  """
  with NPY_HEADER_LOCK:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
      return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
      return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"npy format version {version[0]}.{version[1]} is not expected here")


class PickledArrayError(ValueError):
  """`load_npy_array` met an object array (a pickle): nothing of it was unpickled."""


def load_npy_array(path):
  """`np.load(path, allow_pickle=False)` with its header parsed under `NPY_HEADER_LOCK`.

  Raises:
    PickledArrayError (a ValueError) for a pickled object array; ValueError (numpy's) for a
    malformed file; OSError.
  """
  remote = fileio.is_url(path)
  with (io.BytesIO(fileio.read_bytes(path)) if remote else open(path, "rb")) as f:
    shape, fortran, dtype = _parse_npy_header(f)
    if dtype.hasobject:
      raise PickledArrayError("an object array (a pickle) where a numeric array was expected")
    count = int(np.prod(shape, dtype=np.int64))
    if remote:  # np.fromfile needs an OS file
      payload = f.read(count * dtype.itemsize)
      data = np.frombuffer(payload, dtype, count=len(payload) // dtype.itemsize).copy()
    else:
      data = np.fromfile(f, dtype=dtype, count=count)
  if data.size != count:
    raise ValueError(f"truncated data: {data.size} of {count} values")
  return data.reshape(shape[::-1]).transpose() if fortran else data.reshape(shape)


def _read_npy_header(payload, path, expected):
  """(shape, dtype, offset of the data) from an .npy file's bytes, via numpy's header parser."""
  stream = io.BytesIO(payload)
  try:
    shape, _, dtype = _parse_npy_header(stream)
  except Exception as e:  # pylint: disable=broad-except  (numpy raises ValueError / SyntaxError)
    raise UntrustedFileError(path, f"not a readable .npy file ({e}); expected {expected}") from e
  return shape, dtype, stream.tell()


def load_npy_dict(path, *, key_types, expected, what):
  """Reads an `np.save`d pickled dict {key: numeric ndarray} without running code from it.

  Args:
    path: the .npy file.
    key_types: the types every key must be an instance of (bool is never accepted).
    expected: words for messages, e.g. "np.save of a dict id -> float32[20]".
    what: the file's role for messages, e.g. "cls_labels file".

  Returns:
    the dict, values numpy arrays of a bool / integer / float dtype (any shape; callers check).

  Raises:
    FileNotFoundError: the file does not exist (named).
    UnsafeFileError: the pickle asks for a global outside numpy's array reconstruction.
    UntrustedFileError: a directory, empty, truncated, random bytes, a non-object array, not a
      dict, keys of another type, or values that are not numeric arrays.
  """
  payload = read_file_bytes(path, what)
  shape, dtype, offset = _read_npy_header(payload, path, expected)
  if dtype != np.dtype(object) or shape != ():
    raise UntrustedFileError(path, f"holds a {dtype} array of shape {shape}, not a pickled dict; "
                                   f"expected {expected}")
  obj, _ = unpickle(payload, path, NUMPY_GLOBALS, NUMPY_ADMITS, start=offset)
  # np.save pickles the 0-d object array that wraps the dict.
  if not (type(obj) is np.ndarray and obj.dtype == object and obj.shape == ()):
    raise UntrustedFileError(path, f"the pickle holds {type(obj).__name__}, not the 0-d object "
                                   f"array np.save writes; expected {expected}")
  table = obj.item()
  if type(table) is not dict:
    raise UntrustedFileError(path, f"holds {type(table).__name__}; expected {expected}")
  for key, value in table.items():
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, key_types):
      names = "/".join(t.__name__ for t in key_types)
      raise UntrustedFileError(path, f"key {key!r} is a {type(key).__name__}, not {names}; "
                                     f"expected {expected}")
    if type(value) is not np.ndarray or value.dtype.kind not in "biuf":
      desc = (f"a {value.dtype} array" if isinstance(value, np.ndarray)
              else type(value).__name__)
      raise UntrustedFileError(path, f"value of {key!r} is {desc}, not a numeric numpy array; "
                                     f"expected {expected}")
  return table


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy members


def load_npz_arrays(path, *, names, what, expected, npy_hint=""):
  """Reads an `np.savez` archive of numeric arrays with `np.load(..., allow_pickle=False)`.

  No pickle is ever loaded: numpy refuses object members when allow_pickle is False, and this is
  reported as a damaged file.

  Args:
    path: the .npz file (local or a bucket URL).
    names: the array names the archive must hold, exactly.
    what: the file's role for messages, e.g. "cam file".
    expected: words for messages, e.g. "np.savez of keys int [K] and maps float32 [K, H, W]".
    npy_hint: appended to the message when the file is an .npy instead (e.g. how to read the
      reference's pickled format).

  Returns:
    {name: ndarray} of a bool / integer / float dtype.

  Raises:
    FileNotFoundError: the file does not exist (named).
    UntrustedFileError: a directory, empty, an .npy, not a zip, truncated, other members, an
      object (pickled) member, or any other read failure; always naming the file.
  """
  payload = read_file_bytes(path, what)
  if payload.startswith(NPY_MAGIC):
    raise UntrustedFileError(path, f"is an .npy file, not the .npz {what} expected ({expected})"
                                   f"{npy_hint}")
  if not payload.startswith(ZIP_MAGIC):
    raise UntrustedFileError(path, f"{'empty' if not payload else 'not an .npz (zip) file'}; "
                                   f"expected {expected}")
  try:
    # The lock: numpy parses each member's header with ast.literal_eval (see NPY_HEADER_LOCK).
    # The members are read from memory, so it is held for a copy, not for I/O.
    with NPY_HEADER_LOCK, np.load(io.BytesIO(payload), allow_pickle=False) as archive:
      present = sorted(archive.files)
      if present != sorted(names):
        raise UntrustedFileError(path, f"holds the arrays {present}, not {sorted(names)}; "
                                       f"expected {expected}")
      arrays = {}
      for name in names:
        try:
          arrays[name] = archive[name]
        except ValueError as e:
          if "allow_pickle" not in str(e):
            raise
          # numpy's own message reads like advice to allow pickles; say what the file holds.
          raise UnsafeFileError(path, f"array {name!r} is a pickled object array: refused, "
                                      f"unread (expected {expected})") from None
  except UntrustedFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (BadZipFile, ValueError, EOFError, ...)
    raise UntrustedFileError(path, f"unreadable .npz ({type(e).__name__}: {e}); expected "
                                   f"{expected}") from e
  for name, array in arrays.items():
    # A member not stored as .npy comes back as raw bytes.
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
      desc = f"a {array.dtype} array" if isinstance(array, np.ndarray) else "not an .npy member"
      raise UntrustedFileError(path, f"array {name!r} is {desc}, not numeric; expected "
                                     f"{expected}")
  return arrays
