"""Atomic file writes: a reader or a crash never sees a half-written output.

Every local writer goes to a temp file in the target's directory, then `os.replace`s it (atomic on
POSIX within one file system, hence the same directory); a bucket object is uploaded whole
(ppc_jax/fileio.py).
"""

import io
import json
import os
import tempfile

from ppc_jax import fileio


def atomic_write(path, write_fn, suffix=None):
  """Writes `path` through `write_fn(binary_file_object)`; the temp file keeps `path`'s suffix
  (or `suffix`) so format-sniffing writers (PIL, np.save) behave.

  On a bucket (`gs://...`) the bytes are built in memory and uploaded in one request: the object
  appears whole or not at all, and a failing `write_fn` uploads nothing.
  """
  path = fileio.as_str(path)
  if fileio.is_url(path):
    buffer = io.BytesIO()
    write_fn(buffer)
    fileio.upload_bytes(path, buffer.getvalue())
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1] if suffix is None else suffix
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=suffix)
  try:
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_bytes(path, data):
  atomic_write(path, lambda f: f.write(data))


def write_text(path, text):
  write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def save_image(path, pil_image, **save_kwargs):
  """PIL image to `path` (format from the extension)."""
  fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(os.path.splitext(path)[1].lower())
  atomic_write(path, lambda f: pil_image.save(f, format=fmt, **save_kwargs))
