"""Metrics out of the training loop: JSON lines + TensorBoard summaries, written by process 0 only.

`metrics.jsonl` holds one object per log step (`{"step": ..., "loss": ..., ...}`); TensorBoard event
files go to `<workdir>/tb`. Other processes get a writer that does nothing, so call sites need no
`if process_index == 0`.

A resumed run: `drop_after(step)` (the trainer calls it with the step it starts from) removes what
the interrupted run logged past that step, which this run logs again: the rows of metrics.jsonl
(rewritten whole: temp file + rename, or one upload) and the events of the earlier runs' event
files (each file that holds any is rewritten without them). The files then read as one
uninterrupted run, to any reader. A TensorBoard that was already running when the files were
rewritten keeps the points it had read until they are replaced: its Rust loader (the default)
drops a tag's points from a step on when a point at that step arrives again, which the resumed run
writes at its next log step; the Python loader (`--load_fast=false`) keeps them until restarted.

A work directory on a bucket (`gs://...`): objects cannot be appended to, and TensorFlow's own GCS
client is not the project's path layer (ppc_jax/fileio.py), so both files are written to a local
spool directory, and after every write the bytes added since the last one are appended to the
objects (`fileio.append_bytes`: a chunk composed onto the object on GCS): each row and summary
crosses the network once, so the bytes uploaded grow linearly with the run's length (uploading the
whole files every time grew them quadratically). A resumed run first downloads the metrics.jsonl it
continues. Every row and summary is on the bucket before the trainer's next checkpoint, so an
interrupted run loses nothing it will not recompute.
"""

import json
import os
import shutil
import struct
import tempfile

from absl import logging
import jax
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import fileio

JSONL, TB = "metrics.jsonl", "tb"


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and writes TensorBoard scalars and images."""

  def __init__(self, workdir, *, enabled=None, tensorboard=True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._workdir = workdir
    self._spool = None
    self._uploaded = {}  # spool file -> its bytes already on the bucket (a prefix of the file)
    self._earlier_events = []  # event files of earlier runs, for drop_after
    if not self.enabled:
      return
    fileio.makedirs(workdir)
    local = workdir
    if fileio.is_url(workdir):
      self._spool = local = tempfile.mkdtemp(prefix="ppc_jax_metrics_")
      remote_jsonl = fileio.join(workdir, JSONL)
      if fileio.exists(remote_jsonl):
        spooled = os.path.join(local, JSONL)
        with open(spooled, "wb") as f:
          f.write(fileio.read_bytes(remote_jsonl))
        self._uploaded[spooled] = os.path.getsize(spooled)  # the bucket has these bytes
    self._jsonl_path = os.path.join(local, JSONL)
    self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
    # Listed before this run's writer creates its own file (locally it lands in the same
    # directory), so that drop_after never touches the file being written.
    tb_dir = fileio.join(workdir, TB)
    self._earlier_events = sorted(fileio.join(tb_dir, n) for n in fileio.names_in(tb_dir)
                                  if "tfevents" in n)  # what TensorBoard takes as event files
    if tensorboard:
      import tensorflow as tf  # TF is already a dependency (tf.data); its writer is the standard one.
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(local, TB))

  def drop_after(self, step):
    """Removes rows and summaries past `step` that earlier runs left (see the module docstring).

    Call before the first write of a run that starts at `step`.
    """
    if not self.enabled:
      return
    step = int(step)
    with open(self._jsonl_path, "rb") as f:
      lines = f.read().splitlines(keepends=True)
    steps = [_row_step(line) for line in lines]
    kept = [line for line, s in zip(lines, steps) if s is not None and s <= step]
    if len(kept) != len(lines):
      data = b"".join(kept)
      self._jsonl.close()
      if self._spool is None:
        atomic_io.write_bytes(self._jsonl_path, data)
      else:
        with open(self._jsonl_path, "wb") as f:
          f.write(data)
        fileio.upload_bytes(fileio.join(self._workdir, JSONL), data)  # whole, in one upload
        self._uploaded[self._jsonl_path] = len(data)
      self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
      # Rows past `step` were written before a kill that came before their checkpoint committed;
      # a line that does not parse is one cut short by such a kill.
      logging.info("%s: dropped %d rows past step %d (from an interrupted run; this run logs "
                   "those steps again)", fileio.join(self._workdir, JSONL),
                   len(lines) - len(kept), step)
    for path in self._earlier_events:
      data = fileio.read_bytes(path)
      kept, dropped = _events_up_to(data, step)
      if dropped:
        if fileio.is_url(path):
          fileio.upload_bytes(path, kept)
        else:
          atomic_io.write_bytes(path, kept)
        logging.info("%s: dropped %d events past step %d (from an interrupted run)", path,
                     dropped, step)

  def _sync(self):
    """Appends what the spool's files gained since the last sync to the bucket work directory
    (no-op when local)."""
    if self._spool is None:
      return
    if self._tb is not None:
      self._tb.flush()
    for root, _, names in os.walk(self._spool):
      for name in names:
        local = os.path.join(root, name)
        size = os.path.getsize(local)
        done = self._uploaded.get(local, 0)
        if size == done:
          continue
        remote = fileio.join(self._workdir,
                             os.path.relpath(local, self._spool).replace(os.sep, "/"))
        with open(local, "rb") as f:
          if done == 0 or size < done:  # new (or rewritten) here: the whole file
            fileio.upload_bytes(remote, f.read(size))
          else:
            f.seek(done)
            fileio.append_bytes(remote, f.read(size - done))
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
      try:
        self._sync()
      finally:  # also when the upload fails (e.g. a missing bucket): no spool left behind
        shutil.rmtree(self._spool, ignore_errors=True)
        self._spool = None


def _row_step(line):
  """The step of one metrics.jsonl line; None for a line that is not a row (e.g. cut short)."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  return row.get("step") if isinstance(row, dict) else None


def _events_up_to(data, step):
  """The records of an event file (TFRecord framing: u64 length, u32 CRC, payload, u32 CRC) whose
  Event has a step <= `step`, byte for byte; and how many records were dropped (a record cut short
  at the end of the file counts as one)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  kept, dropped, pos = [], 0, 0
  while pos < len(data):
    if pos + 12 > len(data):
      dropped += 1
      break
    (length,) = struct.unpack_from("<Q", data, pos)
    end = pos + 12 + length + 4
    if end > len(data):
      dropped += 1
      break
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    if event.step <= step:
      kept.append(data[pos:end])
    else:
      dropped += 1
    pos = end
  return b"".join(kept), dropped
