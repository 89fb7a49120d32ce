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
