"""The inference engine's exported programs, kept on disk beside the persistent compilation cache.

With a warm compilation cache, compiling a program is a load; but finding its entry needs the
program's HLO, so every image size still costs a trace and a lowering of the model (at the demo's
width about 0.3 CPU-s per size for DeepLab at 6 scales, more than the load). This cache keeps
each program as `jax.export` StableHLO (a flatbuffer: no pickle), under a key of everything that
defines it. A warm run deserializes it and lowers a call of it (~0.03 s), and that lowering's
HLO hits the compilation cache; the model is never traced. A program compiled from its export
computes what the traced one does, bit for bit (tests/test_program_cache.py).

The key is a sha256 of:
  - the per-image function's `fingerprint`: its module-level function and bound arguments (Flax
    modules by their dataclass fields, ConfigDicts by value, plain values). A function that has
    no fingerprint (a lambda, a closure, an object without a stable text) is not cached.
  - the source of the ppc_jax package and of every module defining that function or a model
    class in its arguments (an edit of the code is a new key);
  - the jax, jaxlib and flax versions and the jax options that change a trace (x64, default
    matmul precision); the platform and device kind;
  - the abstract variables and inputs (tree, shapes, dtypes), the number of devices and images
    per device of the program.

Files: `<dir>/<key>.exported`: a header line with the sha256 of the compressed payload, then the
zlib-compressed serialization; written atomically. An entry that fails its checksum or does not
take the expected inputs is logged, ignored and rewritten; a directory that cannot be read or
written is logged and the programs are traced (the cache only saves time). Past `max_bytes`, the
least recently used entries (by mtime, refreshed on use) are removed.
"""

import dataclasses
import functools
import hashlib
import os
import sys
import threading
import types
import zlib

from absl import logging
import flax
import jax
from jax import export
import jaxlib
import ml_collections
import numpy as np

from ppc_jax import atomic_io

MAGIC = b"ppc_jax exported program v1\n"
SUFFIX = ".exported"
SUBDIR = "ppc_jax_programs"  # beside JAX's entries, which it counts and evicts by their suffix
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class NoFingerprint(ValueError):
  """The object has no stable text of what it computes."""


def _source_file(module_name):
  module = sys.modules.get(module_name)
  path = getattr(module, "__file__", None)
  return os.path.abspath(path) if path else None


class _Fingerprinter:
  """Builds the text of an object and collects the source files that define its code."""

  def __init__(self):
    self.files = set()

  def _code(self, obj):
    name = f"{obj.__module__}.{obj.__qualname__}"
    if "<locals>" in obj.__qualname__ or "<lambda>" in obj.__qualname__:
      raise NoFingerprint(f"{name} is a local function: what it captures has no fingerprint")
    path = _source_file(obj.__module__)
    if path is None and obj.__module__ != "builtins" and not obj.__module__.startswith(
        ("numpy", "jax")):
      raise NoFingerprint(f"{name}: its module has no source file")
    if path is not None:
      self.files.add(path)
    return name

  def text(self, obj):  # pylint: disable=too-many-return-statements
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
      return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, np.dtype):
      return f"dtype:{obj.str}"
    if isinstance(obj, functools.partial):
      args = [self.text(a) for a in obj.args]
      keywords = sorted((k, self.text(v)) for k, v in obj.keywords.items())
      return f"partial({self.text(obj.func)}, {args}, {keywords})"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
      return "code:" + self._code(obj)
    if isinstance(obj, flax.linen.Module):
      fields = [(f.name, self.text(getattr(obj, f.name))) for f in dataclasses.fields(obj)
                if f.name != "parent"]
      return f"module:{self._code(type(obj))}({fields})"
    if isinstance(obj, ml_collections.ConfigDict):
      return "config:" + self.text(obj.to_dict())
    if isinstance(obj, dict):
      return "dict:" + repr(sorted((self.text(k), self.text(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
      return f"{type(obj).__name__}:" + repr([self.text(v) for v in obj])
    if isinstance(obj, np.generic):
      return f"{obj.dtype.str}:{obj.item()!r}"
    raise NoFingerprint(f"{type(obj).__module__}.{type(obj).__qualname__} has no fingerprint")


def _in_package(path):
  return path.startswith(_PACKAGE_DIR + os.sep)


def _hash_files(paths):
  digest = hashlib.sha256()
  for path in sorted(paths):
    digest.update((os.path.relpath(path, _PACKAGE_DIR) if _in_package(path) else path).encode())
    with open(path, "rb") as f:
      digest.update(hashlib.sha256(f.read()).digest())
  return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def package_source_hash():
  """sha256 over the package's .py files (names relative to the package, and contents)."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(_PACKAGE_DIR)
           for name in names if name.endswith(".py")]
  return _hash_files(paths)


def fingerprint(fn):
  """The stable text of what `fn` computes and the hash of the code defining it.

  Raises:
    NoFingerprint: `fn` (or a bound argument) has no stable text.
  """
  fingerprinter = _Fingerprinter()
  text = fingerprinter.text(fn)
  outside = {p for p in fingerprinter.files if not _in_package(p)}
  return f"{text}\npackage {package_source_hash()}\noutside {_hash_files(outside)}"


def environment_text(device):
  """What else a trace depends on: library versions, trace options, platform and device kind."""
  return (f"jax {jax.__version__} jaxlib {jaxlib.__version__} flax {flax.__version__} "
          f"x64 {jax.config.jax_enable_x64} "
          f"matmul {jax.config.jax_default_matmul_precision} "
          f"platform {device.platform} kind {device.device_kind}")


def abstract_text(tree):
  """Tree structure, shapes and dtypes of a pytree of arrays or ShapeDtypeStructs."""
  leaves, treedef = jax.tree.flatten(tree)
  return f"{treedef} " + " ".join(f"{np.dtype(x.dtype).str}{tuple(x.shape)}" for x in leaves)


def key_of(*parts):
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class ProgramCache:
  """Exported programs under `directory`, at most `max_bytes` of them (<= 0: no limit)."""

  def __init__(self, directory, max_bytes=0):
    self.directory = directory
    self.max_bytes = int(max_bytes)
    self._lock = threading.Lock()

  def path(self, key):
    return os.path.join(self.directory, key + SUFFIX)

  def get(self, key, *, expected_avals, num_devices):
    """The exported program of `key`, or None (absent, damaged or of other inputs: logged)."""
    path = self.path(key)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None
    except OSError as e:
      logging.warning("program cache: cannot read %s (%s); the program is traced", path, e)
      return None
    try:
      exported = self._decode(data)
    except Exception as e:  # pylint: disable=broad-except  (any damage: a miss, never a crash)
      logging.warning("program cache: ignoring %s (%s); it is rewritten", path, e)
      return None
    avals = tuple((tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals)
    if avals != expected_avals or exported.nr_devices != num_devices:
      logging.warning("program cache: ignoring %s: it takes other inputs or devices than its key "
                      "says; it is rewritten", path)
      return None
    try:
      os.utime(path)  # recently used: kept longest
    except OSError:
      pass
    return exported

  @staticmethod
  def _decode(data):
    if not data.startswith(MAGIC):
      raise ValueError("not a ppc_jax exported program")
    header_end = data.find(b"\n", len(MAGIC))
    if header_end < 0:
      raise ValueError("truncated header")
    checksum = data[len(MAGIC):header_end].decode("ascii", "replace")
    payload = data[header_end + 1:]
    if hashlib.sha256(payload).hexdigest() != checksum:
      raise ValueError("checksum mismatch (a damaged or partial file)")
    try:
      serialized = zlib.decompress(payload)
    except zlib.error as e:
      raise ValueError(f"cannot decompress: {e}") from e
    return export.deserialize(bytearray(serialized))

  def put(self, key, exported):
    """Writes `exported` under `key` (atomically), then trims the cache to max_bytes. A cache
    that cannot be written (full disk, no permission) is named in a warning: the run goes on,
    its programs traced as without the cache."""
    payload = zlib.compress(bytes(exported.serialize()), 1)
    data = MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload
    try:
      atomic_io.write_bytes(self.path(key), data)
      if self.max_bytes > 0:
        self._trim()
    except OSError as e:
      logging.warning("program cache: cannot write %s (%s); programs are traced, not stored",
                      self.path(key), e)

  def _trim(self):
    with self._lock:
      entries = []
      for entry in os.scandir(self.directory):
        if entry.name.endswith(SUFFIX):
          try:
            stat = entry.stat()
          except FileNotFoundError:  # removed by another process
            continue
          entries.append((stat.st_mtime, stat.st_size, entry.path))
      total = sum(size for _, size, _ in entries)
      for _, size, path in sorted(entries):
        if total <= self.max_bytes:
          break
        try:
          os.remove(path)
        except FileNotFoundError:
          pass
        total -= size


def default_cache(directory=None, max_size=None, enabled=None):
  """The cache beside JAX's persistent compilation cache, when that is on and local, with a
  quarter of its size limit (none when JAX's has none); else None.

  Args:
    directory, max_size, enabled: JAX's cache directory, its size limit in bytes (-1: none) and
      whether it is on; default the jax.config values (jax_compilation_cache_dir, ...).
  """
  directory = jax.config.jax_compilation_cache_dir if directory is None else directory
  max_size = jax.config.jax_compilation_cache_max_size if max_size is None else max_size
  enabled = jax.config.jax_enable_compilation_cache if enabled is None else enabled
  if not enabled or not directory or "://" in str(directory):
    return None
  path = os.path.join(directory, SUBDIR)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning("program cache off: cannot create %s (%s)", path, e)
    return None
  return ProgramCache(path, max_size // 4 if max_size > 0 else 0)
