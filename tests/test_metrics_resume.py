"""Logs survive a resume: what an interrupted run logged past the checkpoint a rerun restores
leaves metrics.jsonl and the TensorBoard files (`MetricWriter.drop_after`, called by the trainer),
and a save that a kill cut short is named in a warning.

Local work directories here; tests/test_gcs.py runs the same writer check on a bucket (with the
bytes it uploads).
"""

import os
import shutil
import tempfile

import ml_collections
import numpy as np

import e2e_fixtures as e2e
import test_trainer_loop
from ppc_jax import fileio
from ppc_jax import metrics_writer
from ppc_jax import sharding as shd
from ppc_jax import trainer

TAG = "train/loss"


def scalars(step, run):
  """A row's scalars: distinct per step and per run (run 1 or 2), so rows name their writer."""
  return dict(loss=step + run / 10, lr=1e-3 * step, images_per_sec=100.0 * run)


def tensorboard_points(workdir, tag=TAG):
  """[(step, value)] of a scalar tag as TensorBoard's Python loader shows `<workdir>/tb` (a bucket
  directory is copied to a local one first): every event file, restarts handled its own way."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from tensorboard.backend.event_processing import plugin_event_accumulator
  from tensorboard.util import tensor_util
  tb = fileio.join(workdir, metrics_writer.TB)
  with tempfile.TemporaryDirectory() as local:
    for name in fileio.listdir(tb):
      with open(os.path.join(local, name), "wb") as f:
        f.write(fileio.read_bytes(fileio.join(tb, name)))
    acc = plugin_event_accumulator.EventAccumulator(local, size_guidance={"tensors": 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
      return []
    # Sorted by step, as TensorBoard plots them: the loader reads the files in name order, and
    # two writers made in one second by one process (as here) are ordered by TF's per-process
    # file counter as text ('10' before '9'), so the reading order is not what is checked.
    return sorted((e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                  for e in acc.Tensors(tag))


def check_writer_resume(workdir):
  """Run 1 logs steps 1-6 and is killed; run 2 restores step 4 and logs 5-6 again. The files end
  as one run's: steps 1-6 once each, 5 and 6 from run 2 (also a row cut short at the end)."""
  first = metrics_writer.MetricWriter(workdir, enabled=True)
  for step in range(1, 7):
    first.write_scalars(step, scalars(step, run=1))
  first.close()
  jsonl = fileio.join(workdir, metrics_writer.JSONL)
  if not fileio.is_url(workdir):  # a kill in the middle of a local write leaves half a row
    with open(jsonl, "a", encoding="utf-8") as f:
      f.write('{"step": 7, "lo')

  second = metrics_writer.MetricWriter(workdir, enabled=True)
  second.drop_after(4)
  assert [r["step"] for r in e2e.metric_rows(workdir)] == [1, 2, 3, 4]
  assert [s for s, _ in tensorboard_points(workdir)] == [1, 2, 3, 4]
  for step in (5, 6):
    second.write_scalars(step, scalars(step, run=2))
  second.close()

  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in rows] == [scalars(s, run=1 if s <= 4 else 2)["loss"]
                                       for s in range(1, 7)]
  points = tensorboard_points(workdir)
  assert [s for s, _ in points] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([v for _, v in points], [r["loss"] for r in rows], rtol=1e-6)


def test_writer_resume_drops_rows_and_events_past_the_restored_step(tmp_path):
  check_writer_resume(str(tmp_path / "run"))


def test_writer_resume_before_anything_past_the_step_leaves_the_files_as_they_are(tmp_path):
  workdir = str(tmp_path)
  first = metrics_writer.MetricWriter(workdir, enabled=True)
  first.write_scalars(2, scalars(2, run=1))
  first.close()
  before = fileio.read_bytes(os.path.join(workdir, "metrics.jsonl"))
  events = sorted(os.listdir(os.path.join(workdir, "tb")))
  mtimes = [os.stat(os.path.join(workdir, "tb", n)).st_mtime_ns for n in events]
  second = metrics_writer.MetricWriter(workdir, enabled=True)
  second.drop_after(2)
  second.close()
  assert fileio.read_bytes(os.path.join(workdir, "metrics.jsonl")) == before
  assert [os.stat(os.path.join(workdir, "tb", n)).st_mtime_ns for n in events] == mtimes


# ------------------------------------------------------------------------------------------------
# Through the trainer: a toy stage (tests/test_trainer_loop.py's) on the shared loop.
# ------------------------------------------------------------------------------------------------

def _toy_stage(mesh, num_steps):
  # Its batches are seeded by the start step: a resumed run's batches (and so its losses) differ
  # from the uninterrupted run's, which tells the two runs' rows apart.
  return test_trainer_loop._toy_stage(mesh, num_steps, sleep_s=0.0)  # pylint: disable=protected-access


def test_trainer_resume_rewrites_the_logs_from_the_restored_step(tmp_path, caplog):
  mesh = shd.make_mesh()
  config = ml_collections.ConfigDict(dict(
      log_every_steps=1, ckpt_every_steps=2, ckpt_max_to_keep=10, tensorboard=True,
      progress_bar=False, log_images_every_steps=0))
  workdir = str(tmp_path)
  trainer.run_loop(_toy_stage(mesh, 6), config, workdir, mesh)
  first = {r["step"]: r["loss"] for r in e2e.metric_rows(workdir)}
  assert sorted(first) == [1, 2, 3, 4, 5, 6]

  # As if killed while saving step 4: step 6 never saved, step 4's save left orbax's temporary
  # directory (the name orbax gives it), rows and summaries of steps 3-6 written.
  ckpts = os.path.join(workdir, "checkpoints")
  shutil.rmtree(os.path.join(ckpts, "6"))
  tmp = os.path.join(ckpts, "4.orbax-checkpoint-tmp-1700000000000000")
  os.rename(os.path.join(ckpts, "4"), tmp)
  assert e2e.checkpoint_steps(workdir) == [2]

  with caplog.at_level("INFO"):
    trainer.run_loop(_toy_stage(mesh, 6), config, workdir, mesh)
  assert f"ignoring the uncommitted checkpoint {tmp} (an interrupted save)" in caplog.text
  assert "resumed from step 2" in caplog.text
  assert e2e.checkpoint_steps(workdir) == [2, 4, 6]

  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # before: 1, ..., 6, 3, 4, 5, 6
  assert [r["loss"] for r in rows[:2]] == [first[1], first[2]]
  assert all(r["loss"] != first[r["step"]] for r in rows[2:])  # the resumed run's rows
  points = tensorboard_points(workdir)
  assert [s for s, _ in points] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([v for _, v in points], [r["loss"] for r in rows], rtol=1e-6)
