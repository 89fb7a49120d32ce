"""The one path layer: every file the project reads or writes, on local disk or on a bucket.

A path is a local path or a URL (`gs://bucket/dir/file`, any scheme fsspec knows). Local paths go
straight to `os` / `open` (the data readers call these per image; they stay as fast as before).
URLs go through `etils.epath`, the layer orbax already uses for its own files, with etils' fsspec
backend: for `gs://` that is gcsfs, one GCS client for the data reader, every output and orbax's
metadata (orbax writes array data through TensorStore's own GCS driver).

Why fsspec and not TensorFlow's GCS file system (etils' default when TF is installed): TF's client
cannot be pointed at another endpoint, so nothing could test it; gcsfs honours
`STORAGE_EMULATOR_HOST` (and TensorStore `TENSORSTORE_GCS_HTTP_URL`), which is how
tests/test_gcs.py runs training, resume, inference and evaluation against a local GCS-protocol
server. Importing this module sets `EPATH_USE_TF=false` unless the environment already chose.

Atomic writes (`ppc_jax.atomic_io`): a local file is written to a temp file and renamed; an object
on a bucket is uploaded in one request from memory, and GCS makes an object visible only once its
upload completed, so a reader or a crash never sees half a file either way. Objects cannot be
appended to: `append_bytes` composes an uploaded chunk onto one on GCS (see there).

A write to a bucket that does not exist fails naming the path and the missing bucket (the client's
own error names only the HTTP request it made).
"""

import builtins
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import shutil
import uuid

# Must precede etils' first backend choice for a URL (it caches it): see the module docstring.
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's default "extended" client asks the Storage Control API for every bucket whether it is
# zonal (and warns when it cannot tell); plain buckets need the plain client. Read at gcsfs import.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from etils import epath  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import fsspec  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# No cached directory listings for buckets: other writers change them behind gcsfs's back
# (orbax's TensorStore in this very process, other hosts, a resumed run), and a stale listing
# would hide a checkpoint or an output that exists.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
# fsspec logs every read-ahead cache it opens at INFO, which absl prints: one line per file read.
if logging.getLogger("fsspec").level == logging.NOTSET:
  logging.getLogger("fsspec").setLevel(logging.WARNING)


def is_url(path):
  """True for `scheme://...` paths (buckets), False for local paths."""
  return "://" in os.fspath(path)


def as_str(path):
  """`path` as a str (epath.Path and os.PathLike accepted)."""
  return os.fspath(path)


def abspath(path):
  """Absolute local path (user `~` expanded); a URL is returned as it is."""
  path = as_str(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(path, *parts):
  """os.path.join for local paths, '/'-join for URLs (also correct on Windows)."""
  path = as_str(path)
  return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def dirname(path):
  """os.path.dirname; for a URL after dropping a trailing '/' (`gs://b/x/` -> `gs://b`)."""
  path = as_str(path)
  return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def epath_of(path):
  """The `etils.epath.Path` of `path` (for APIs that take one, e.g. orbax)."""
  return epath.Path(as_str(path))


def exists(path):
  path = as_str(path)
  return epath.Path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path):
  path = as_str(path)
  return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def isfile(path):
  path = as_str(path)
  if is_url(path):
    p = epath.Path(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def listdir(path):
  """Names (not paths) of the entries of a directory, as os.listdir (unsorted)."""
  path = as_str(path)
  if is_url(path):
    return [p.name for p in epath.Path(path).iterdir()]
  return os.listdir(path)


def makedirs(path, exist_ok=True):
  """Creates a directory and its parents (on a bucket directories are implicit: nothing to do
  beyond what epath does)."""
  path = as_str(path)
  if is_url(path):
    epath.Path(path).mkdir(parents=True, exist_ok=exist_ok)
  else:
    os.makedirs(path, exist_ok=exist_ok)


def remove(path):
  path = as_str(path)
  if is_url(path):
    epath.Path(path).unlink()
  else:
    os.remove(path)


def rmtree(path):
  path = as_str(path)
  if is_url(path):
    epath.Path(path).rmtree()
  else:
    shutil.rmtree(path)


def getsize(path):
  path = as_str(path)
  return epath.Path(path).stat().length if is_url(path) else os.path.getsize(path)


def open(path, mode="r", encoding=None):  # pylint: disable=redefined-builtin
  """A file object, as builtins.open. Text modes default to UTF-8.

  On a bucket, 'w' writes the object when the file is closed, also after an exception inside a
  `with` block: for outputs that must never be seen half-written use `atomic_io`.
  """
  path = as_str(path)
  text = "b" not in mode
  if text and encoding is None:
    encoding = "utf-8"
  if not is_url(path):
    return builtins.open(path, mode, encoding=encoding)
  if "a" in mode or "+" in mode:
    raise ValueError(f"{path}: mode {mode!r}: objects on a bucket cannot be appended to or "
                     "updated in place; write the whole file")
  f = epath.Path(path).open(mode.replace("t", "").replace("b", "") + "b")
  return io.TextIOWrapper(f, encoding=encoding) if text else f


def read_bytes(path):
  path = as_str(path)
  if is_url(path):
    return epath.Path(path).read_bytes()
  with builtins.open(path, "rb") as f:
    return f.read()


def read_text(path):
  return read_bytes(path).decode("utf-8")


def _bucket_of(path):
  """`scheme://bucket` of URL `path`."""
  scheme, rest = as_str(path).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


@contextlib.contextmanager
def _naming_a_missing_bucket(path):
  """Turns the client's not-found error of a write into one naming `path` and, when that is the
  cause, the missing bucket (a write needs no parent 'directory', only the bucket)."""
  try:
    yield
  except FileNotFoundError as e:
    bucket = _bucket_of(path)
    if not epath.Path(bucket).exists():
      raise FileNotFoundError(
          f"{path}: the bucket {bucket} does not exist (create it, or fix the path)") from e
    raise


def upload_bytes(path, data):
  """Writes `data` as the object at URL `path` in one upload (atomic on GCS)."""
  path = as_str(path)
  with _naming_a_missing_bucket(path):
    epath.Path(path).write_bytes(data)


def append_bytes(path, data):
  """Appends `data` to the existing file or object at `path`.

  Objects cannot be appended to. On GCS (gcsfs, which has `merge`: the JSON API's compose)
  `data` is uploaded as a temporary object beside `path`, the two are composed server-side into
  `path` and the temporary object is deleted: only `data` crosses the network, and a reader sees
  the object before or after the append, never a part of it. On a bucket without compose the
  object is downloaded and uploaded whole (correct; its cost grows with the object).
  """
  path = as_str(path)
  if not is_url(path):
    with builtins.open(path, "ab") as f:
      f.write(data)
    return
  fs, key = fsspec.core.url_to_fs(path)
  if not hasattr(fs, "merge"):
    upload_bytes(path, read_bytes(path) + data)
    return
  # Beside the target (compose takes objects of one bucket); hidden, and named by a hash of the
  # target's name, not the name itself: a chunk left by a crash between upload and delete must
  # not look like data to readers that pick files by name (TensorBoard reads every '*tfevents*'
  # file). A fresh name per append: GCS limits how often one object name may be written (about
  # once a second), and the target's compose is the only write per append this leaves it.
  digest = hashlib.sha1(posixpath.basename(key).encode("utf-8")).hexdigest()[:12]
  chunk = join(dirname(path), f".append-{digest}-{uuid.uuid4().hex[:12]}")
  chunk_key = fsspec.core.url_to_fs(chunk)[1]
  with _naming_a_missing_bucket(path):
    epath.Path(chunk).write_bytes(data)
    fs.merge(key, [key, chunk_key])
  fs.rm_file(chunk_key)


def copy_to(local_path, path):
  """Copies a local file to `path` (local or URL); the target is replaced as a whole."""
  path = as_str(path)
  if is_url(path):
    with builtins.open(local_path, "rb") as f:
      upload_bytes(path, f.read())
  else:
    shutil.copyfile(local_path, path)


def readable(path):
  """What a reader that takes a path or a file object (PIL.Image.open, ElementTree.parse,
  np.load) should get: the local path itself, or the URL's bytes in memory."""
  path = as_str(path)
  return io.BytesIO(read_bytes(path)) if is_url(path) else path


def names_in(directory):
  """Set of entry names of `directory` (empty when it does not exist): one listing instead of a
  request per file when a resumed run asks which outputs already exist."""
  return set(listdir(directory)) if isdir(directory) else set()
