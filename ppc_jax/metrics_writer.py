"""Metrics out of the training loop: JSON lines + TensorBoard summaries, written by process 0 only.

`metrics.jsonl` holds one object per log step (`{"step": ..., "loss": ..., ...}`); TensorBoard event
files go to `<workdir>/tb`. Other processes get a writer that does nothing, so call sites need no
`if process_index == 0`.

A work directory on a bucket (`gs://...`): objects cannot be appended to, and TensorFlow's own GCS
client is not the project's path layer (ppc_jax/fileio.py), so both files are written to a local
spool directory and uploaded whole after every write (a resumed run first downloads the
metrics.jsonl it continues). Every row and summary is on the bucket before the trainer's next
checkpoint, so an interrupted run loses nothing it will not recompute.
"""

import json
import os
import shutil
import tempfile

import jax
import numpy as np

from ppc_jax import fileio


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and writes TensorBoard scalars and images."""

  def __init__(self, workdir, *, enabled=None, tensorboard=True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._workdir = workdir
    self._spool = None
    self._uploaded = {}  # spool file -> size at its last upload
    if not self.enabled:
      return
    fileio.makedirs(workdir)
    local = workdir
    if fileio.is_url(workdir):
      self._spool = local = tempfile.mkdtemp(prefix="ppc_jax_metrics_")
      remote_jsonl = fileio.join(workdir, "metrics.jsonl")
      if fileio.exists(remote_jsonl):
        with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
          f.write(fileio.read_bytes(remote_jsonl))
    self._jsonl = open(os.path.join(local, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      import tensorflow as tf  # TF is already a dependency (tf.data); its writer is the standard one.
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(local, "tb"))

  def _sync(self):
    """Uploads the spool's changed files to the bucket work directory (no-op when local)."""
    if self._spool is None:
      return
    if self._tb is not None:
      self._tb.flush()
    for root, _, names in os.walk(self._spool):
      for name in names:
        local = os.path.join(root, name)
        size = os.path.getsize(local)
        if self._uploaded.get(local) != size:
          rel = os.path.relpath(local, self._spool).replace(os.sep, "/")
          fileio.copy_to(local, fileio.join(self._workdir, rel))
          self._uploaded[local] = size

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
    self._sync()

  def write_images(self, step, images):
    """images: dict name -> uint8 [N, H, W, 3]."""
    if not self.enabled or self._tb is None:
      return
    with self._tb.as_default(step=int(step)):
      for k, v in images.items():
        self._tf.summary.image(k, np.asarray(v), max_outputs=len(v))
    self._sync()

  def write_text(self, step, name, text):
    if not self.enabled or self._tb is None:
      return
    with self._tb.as_default(step=int(step)):
      self._tf.summary.text(name, text)
    self._sync()

  def flush(self):
    if self._tb is not None:
      self._tb.flush()
    self._sync()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._spool is not None:
      self._sync()
      shutil.rmtree(self._spool, ignore_errors=True)
      self._spool = None
