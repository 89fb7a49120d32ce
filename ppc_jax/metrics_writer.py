"""Metrics out of the training loop: JSON lines + TensorBoard summaries, written by process 0 only.

`metrics.jsonl` holds one object per log step (`{"step": ..., "loss": ..., ...}`); TensorBoard event
files go to `<workdir>/tb`. Other processes get a writer that does nothing, so call sites need no
`if process_index == 0`.
"""

import json
import os

import jax
import numpy as np


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and writes TensorBoard scalars and images."""

  def __init__(self, workdir, *, enabled=None, tensorboard=True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      import tensorflow as tf  # TF is already a dependency (tf.data); its writer is the standard one.
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

  def write_scalars(self, step, scalars):
    """scalars: dict name -> python/numpy scalar."""
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in scalars.items():
          self._tf.summary.scalar(f"train/{k}", float(v))

  def write_images(self, step, images):
    """images: dict name -> uint8 [N, H, W, 3]."""
    if not self.enabled or self._tb is None:
      return
    with self._tb.as_default(step=int(step)):
      for k, v in images.items():
        self._tf.summary.image(k, np.asarray(v), max_outputs=len(v))

  def write_text(self, step, name, text):
    if not self.enabled or self._tb is None:
      return
    with self._tb.as_default(step=int(step)):
      self._tf.summary.text(name, text)

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
