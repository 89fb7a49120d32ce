"""Process-level setup shared by the entry points (train, infer, demo)."""

import os


def setup_host():
  """Keeps TensorFlow (used only for tf.data) off accelerators and quiet.

  Must run before TensorFlow is imported: TF would otherwise grab GPU memory that JAX needs.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (ValueError, RuntimeError):
    pass
  quiet_library_logs()


class _QuietLibraries:
  """logging.Filter: drops INFO-and-below records from chatty libraries (orbax logs every file)."""

  def __init__(self, prefixes=("orbax", "jax._src")):
    self._markers = tuple(f"/{p.replace('.', '/')}/" for p in prefixes)

  def filter(self, record):
    if record.levelno > 20:  # WARNING and above always pass
      return True
    return not any(m in record.pathname for m in self._markers)


def quiet_library_logs():
  """Keeps ppc_jax's own INFO logs while hiding orbax/jax INFO chatter."""
  import logging as std_logging
  from absl import logging as absl_logging
  quiet = _QuietLibraries()
  absl_logging.get_absl_handler().addFilter(quiet)
  std_logging.getLogger().addFilter(quiet)
