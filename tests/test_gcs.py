"""Bucket paths end to end, against a real GCS-protocol server on localhost (gcp-storage-emulator,
started by tests/gcs_emulator.py):
the path layer (ppc_jax/fileio.py, atomic writes), the VOC reader on a bucket, and a training run
whose data and work directory are on the bucket: SIGTERM, resume to the uninterrupted run's exact
parameters, inference and evaluation writing and reading there. Also the metrics writer's uploads
(bytes counted by the server: linear in the run's length), its resume, uncommitted checkpoints and
a work directory in a bucket that does not exist.

gcsfs finds the server through STORAGE_EMULATOR_HOST and orbax's TensorStore through
TENSORSTORE_GCS_HTTP_URL; the metadata-server variables point at a closed port so neither client
waits for credentials that do not exist here.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

import e2e_fixtures as e2e
import test_metrics_resume
from ppc_jax import interrupt
from ppc_jax import atomic_io
from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import evaluate
from ppc_jax import fileio
from ppc_jax import metrics_writer
from ppc_jax import untrusted
from ppc_jax.data import voc
from ppc_jax.data import cam_io
from ppc_jax.seeds import infer

# The training test compares with the in-process reference run of test_end_to_end.py: same
# worker, so that run and its compiled programs are made once.
pytestmark = pytest.mark.xdist_group("train_e2e")

BUCKET = "ppc-test"
SERVER_START_TIMEOUT_S = e2e.PROCESS_TIMEOUT_S  # a hang guard (it starts in a second or two)


def _emulator_env(url):
  return dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, NO_GCE_CHECK="true",
              GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_ROOT="127.0.0.1:9",
              GCE_METADATA_IP="127.0.0.1:9")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A GCS-protocol server with bucket BUCKET; its variables set in this process for the module.

  Yields:
    dict(url, env: the variables for subprocesses, log: the server's log, with a `[BYTES]` line
    per request body it read).
  """
  port = e2e.free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(e2e.ROOT, "tests", "gcs_emulator.py"), "start",
         "--host=127.0.0.1",
         f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
      with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
        break
      if proc.poll() is not None or time.monotonic() > deadline:
        raise AssertionError(f"the GCS emulator did not start:\n{e2e.tail(str(log_path))}")
      time.sleep(0.2)
    env = _emulator_env(url)
    with pytest.MonkeyPatch.context() as mp:
      for k, v in env.items():
        mp.setenv(k, v)
      yield dict(url=url, env=env, log=str(log_path))
  finally:
    e2e.kill_all([proc])
    # gcsfs keeps one client per argument set: drop the one bound to this server.
    import gcsfs  # pylint: disable=import-outside-toplevel
    gcsfs.GCSFileSystem.clear_instance_cache()


def _upload_tree(local_root, url_root):
  """Copies a local directory tree to a bucket prefix; returns the number of files."""
  count = 0
  for root, _, names in os.walk(local_root):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), local_root).replace(os.sep, "/")
      fileio.copy_to(os.path.join(root, name), fileio.join(url_root, rel))
      count += 1
  return count


def test_path_layer_reads_and_writes_a_bucket(gcs):
  del gcs
  base = f"gs://{BUCKET}/layer"
  assert not fileio.exists(base) and fileio.names_in(base) == set()
  atomic_io.write_json(f"{base}/a/x.json", {"k": 1})
  atomic_io.write_text(f"{base}/a/y.txt", "héllo\n")
  assert fileio.isdir(f"{base}/a") and not fileio.isfile(f"{base}/a")
  assert fileio.isfile(f"{base}/a/x.json") and not fileio.isdir(f"{base}/a/x.json")
  assert sorted(fileio.listdir(f"{base}/a")) == ["x.json", "y.txt"]
  assert json.loads(fileio.read_text(f"{base}/a/x.json")) == {"k": 1}
  with fileio.open(f"{base}/a/y.txt") as f:
    assert f.read() == "héllo\n"
  assert fileio.getsize(f"{base}/a/y.txt") == len("héllo\n".encode())

  # Atomic: a writer that fails leaves the object as it was (here: absent, then the old bytes).
  def failing(f):
    f.write(b"half")
    raise RuntimeError("writer failed")
  with pytest.raises(RuntimeError, match="writer failed"):
    atomic_io.atomic_write(f"{base}/a/z.bin", failing)
  assert not fileio.exists(f"{base}/a/z.bin")
  with pytest.raises(RuntimeError, match="writer failed"):
    atomic_io.atomic_write(f"{base}/a/y.txt", failing)
  assert fileio.read_text(f"{base}/a/y.txt") == "héllo\n"

  # Arrays, reference-format dicts and images round-trip through the untrusted readers.
  array = np.arange(12, dtype=np.float32).reshape(3, 4)
  atomic_io.atomic_write(f"{base}/arr.npy", lambda f: np.save(f, array))
  np.testing.assert_array_equal(untrusted.load_npy_array(f"{base}/arr.npy"), array)
  norm_cam = np.random.default_rng(0).random((2, 3, 20), dtype=np.float32)  # [H, W, F]
  labels = np.zeros(20, np.float32)
  labels[[0, 4]] = 1
  cam_io.save_cam_dict(f"{base}/cam.npz", norm_cam, labels)
  loaded = cam_io.load_cam_dict(f"{base}/cam.npz")
  assert sorted(loaded) == [0, 4]
  assert all(np.array_equal(loaded[k], norm_cam[..., k]) for k in (0, 4))
  cam_io.save_cam_dict(f"{base}/cam.npy", norm_cam, labels, fmt="reference_npy")
  loaded = cam_io.load_cam_dict(f"{base}/cam.npy", fmt="reference_npy")
  assert all(np.array_equal(loaded[k], norm_cam[..., k]) for k in (0, 4))
  atomic_io.save_image(f"{base}/m.png", Image.fromarray(np.eye(5, dtype=np.uint8)))
  with Image.open(fileio.readable(f"{base}/m.png")) as im:
    np.testing.assert_array_equal(np.asarray(im), np.eye(5, dtype=np.uint8))

  # The untrusted readers' named errors on a bucket: a "directory" (gcsfs reads it as b'') and a
  # missing object.
  with pytest.raises(untrusted.UntrustedFileError, match=r"/a: is a directory; expected a cam"):
    untrusted.read_file_bytes(f"{base}/a", "cam file")
  with pytest.raises(FileNotFoundError, match="cam file not found"):
    untrusted.read_file_bytes(f"{base}/a/missing.npy", "cam file")

  # Appending to an object is refused by name (GCS objects are written whole).
  with pytest.raises(ValueError, match=r"y\.txt.*cannot be appended"):
    fileio.open(f"{base}/a/y.txt", "a")
  fileio.rmtree(base)
  assert not fileio.exists(f"{base}/a/x.json")


def test_voc_reader_on_a_bucket_equals_the_local_reader(gcs, tmp_path_factory):
  del gcs
  local = e2e.synth_root(tmp_path_factory)
  remote = f"gs://{BUCKET}/voc_reader/VOC2012"
  assert _upload_tree(local, remote) > 0
  a, b = voc.VOCSource(local, "train"), voc.VOCSource(remote, "train")
  assert a.ids == b.ids and len(a.ids) == 8
  np.testing.assert_array_equal(np.stack(a.labels), np.stack(b.labels))
  assert a.classes.names == b.classes.names
  for i in (0, len(a.ids) - 1):
    np.testing.assert_array_equal(np.asarray(a.image_pil(i)), np.asarray(b.image_pil(i)))
    np.testing.assert_array_equal(a.mask(i), b.mask(i))
  with pytest.raises(voc.DataError, match=f"gs://{BUCKET}/voc_reader/VOC2012/.*missing.*not found"):
    voc.VOCSource(remote, "missing")


def test_tfds_data_set_built_to_and_read_from_a_bucket(gcs, tmp_path_factory, tmp_path):
  """array_record writes and reads local files only: build() uploads a local build (shards
  first, dataset_info.json last), the source copies it into its cache once."""
  del gcs
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import tfds_voc  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  local = e2e.synth_root(tmp_path_factory)
  manual = os.path.dirname(os.path.dirname(local))
  data_dir = f"gs://{BUCKET}/tfds"
  path, splits = tfds_voc.build(manual, data_dir)
  assert path == f"{data_dir}/{tfds_voc.NAME}/1.0.0" and splits["train"] == 8
  assert tfds_voc.build(manual, data_dir) == (path, splits)  # found prepared: nothing rebuilt
  assert "dataset_info.json" in fileio.listdir(path)
  cache = str(tmp_path / "cache")
  stored = tfds_voc.TFDSSource(data_dir, "train", cache_dir=cache)
  direct = voc.VOCSource(local, "train")
  assert stored.ids == direct.ids
  np.testing.assert_array_equal(stored.labels, direct.labels)
  for i in range(direct.num_examples):
    np.testing.assert_array_equal(np.asarray(stored.image_pil(i)), np.asarray(direct.image_pil(i)))
  copied = os.path.join(cache, "gs", BUCKET, "tfds", tfds_voc.NAME, "1.0.0")
  assert sorted(os.listdir(copied)) == sorted(fileio.listdir(path))
  with pytest.raises(FileNotFoundError, match=f"gs://{BUCKET}/elsewhere/.*not prepared there"):
    tfds_voc.TFDSSource(f"gs://{BUCKET}/elsewhere", "train", cache_dir=cache)


def _bytes_received(gcs):
  """Request-body bytes the server has read so far: all that clients uploaded (object data,
  upload and compose requests). tests/gcs_emulator.py logs each body before answering it."""
  with open(gcs["log"], encoding="utf-8", errors="replace") as f:
    return sum(int(line.split()[-1]) for line in f if line.startswith("[BYTES] "))


def _write_run(workdir, num_steps):
  """A writer logging `num_steps` rows as the trainer does (one write per log step); each row is
  on the bucket as soon as it is written (the trainer's checkpoint of that step comes after)."""
  writer = metrics_writer.MetricWriter(workdir, enabled=True)
  for step in range(1, num_steps + 1):
    writer.write_scalars(step, dict(test_metrics_resume.scalars(step, run=1),
                                    loss_cls=0.5 / step, loss_ppc=0.25 / step))
    assert [r["step"] for r in e2e.metric_rows(workdir)] == list(range(1, step + 1))
  writer.close()


def test_metric_uploads_grow_linearly_with_the_run(gcs):
  n = 10
  sent = {}
  for steps in (n, 2 * n):
    workdir = f"gs://{BUCKET}/metrics_bytes/{steps}"
    before = _bytes_received(gcs)
    _write_run(workdir, steps)
    sent[steps] = _bytes_received(gcs) - before
    assert [s for s, _ in test_metrics_resume.tensorboard_points(workdir)] == list(
        range(1, steps + 1))
    # Every chunk composed and deleted: nothing beside the two files.
    assert sorted(fileio.listdir(workdir)) == ["metrics.jsonl", "tb"]
    assert all("tfevents" in name for name in fileio.listdir(f"{workdir}/tb"))
  # Each write sends its row and summaries (the bytes appended to metrics.jsonl and the event
  # file) plus a fixed cost per file (the chunk's upload request and the compose request):
  # bytes(k) ~ a + b * k with a >= 0, so bytes(2n) / bytes(n) <= 2, give or take the few bytes
  # rows gain as their numbers gain digits (measured: 10317 -> 21219 bytes, 2.06). Uploading both
  # files whole at every write, as before, costs ~ b * k^2 / 2: 27513 -> 103213 bytes, 3.75.
  assert sent[2 * n] < 2.5 * sent[n], sent


def test_resume_on_a_bucket_drops_what_the_interrupted_run_logged_past_the_step(gcs):
  del gcs
  test_metrics_resume.check_writer_resume(f"gs://{BUCKET}/metrics_resume")


def test_an_uncommitted_checkpoint_on_a_bucket_is_named(gcs):
  """On GCS orbax commits a step by writing commit_success.txt into its directory last."""
  del gcs
  workdir = f"gs://{BUCKET}/uncommitted"
  for step, files in ((2, ("state/x", "commit_success.txt")), (4, ("state/x",))):
    for name in files:
      fileio.upload_bytes(f"{workdir}/checkpoints/{step}/{name}", b"{}")
  with ckpt_lib.Checkpointer(workdir, every_steps=2) as checkpointer:
    assert checkpointer.uncommitted() == [f"{workdir}/checkpoints/4"]
    assert checkpointer.latest_step() == 2


def test_a_work_directory_in_a_missing_bucket_is_named(gcs, tmp_path):
  del gcs
  from ppc_jax.seeds import seed_trainer  # pylint: disable=import-outside-toplevel
  workdir = "gs://never-created-bucket/run"
  missing = "the bucket gs://never-created-bucket does not exist"
  with pytest.raises(FileNotFoundError, match=f"^{workdir}/config.json: {missing}"):
    seed_trainer.train_and_evaluate(e2e.tiny_config(str(tmp_path)), workdir)
  writer = metrics_writer.MetricWriter(workdir, enabled=True, tensorboard=False)
  with pytest.raises(FileNotFoundError, match=f"^{workdir}/metrics.jsonl: {missing}"):
    writer.write_scalars(1, {"loss": 1.0})
  with pytest.raises(FileNotFoundError, match=f"^{workdir}/metrics.jsonl: {missing}"):
    writer.close()  # the row is still not on the bucket: said again, and the spool removed


def _run(cmd, env, log_path, timeout=e2e.PROCESS_TIMEOUT_S):
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(cmd, cwd=e2e.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    (code,) = e2e.wait_all([proc], [str(log_path)], timeout)
  finally:
    e2e.kill_all([proc])
  assert code == 0, e2e.tail(str(log_path))
  return e2e.read_text(str(log_path))


def test_train_interrupt_resume_infer_evaluate_on_a_bucket(gcs, reference, cache_dir, tmp_path):
  config = reference["config"].copy_and_resolve_references()
  data_dir = f"gs://{BUCKET}/e2e/VOC2012"
  _upload_tree(config.input.data_dir, data_dir)
  config.input.data_dir = data_dir
  workdir = f"gs://{BUCKET}/e2e/run"
  config_file = e2e.write_config_file(config, tmp_path / "tiny_config.py")
  env = e2e.subprocess_env(cache_dir, 8)
  env.update(gcs["env"])

  # Segment 1: SIGTERM before the first step; the checkpoint and metrics land on the bucket.
  log = str(tmp_path / "train1.log")
  code, text = e2e.train_until_sigterm(config_file, workdir, log, env)
  assert code == interrupt.EXIT_INTERRUPTED, e2e.tail(log)
  assert "stage-1 training interrupted at step 1 of 6; rerun to resume" in text
  assert e2e.checkpoint_steps(workdir) == [1]
  assert [r["step"] for r in e2e.metric_rows(workdir)] == [1]
  assert not os.path.exists(os.path.join(e2e.ROOT, "gs:"))  # nothing went to a local 'gs:' dir

  # Segment 2: a new process resumes from the bucket and runs to the end.
  _run([sys.executable, "-m", "ppc_jax.train", f"--config={config_file}", f"--workdir={workdir}"],
       env, tmp_path / "train2.log")
  assert e2e.checkpoint_steps(workdir) == [1, 2, 4, 6]
  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 4, 6]  # the downloaded rows, then appended ones
  assert any(n.startswith("events.out.tfevents") for n in fileio.listdir(f"{workdir}/tb"))
  assert json.loads(fileio.read_text(f"{workdir}/config.json"))["input"]["data_dir"] == data_dir

  # Exact resume: same programs, data order and step RNG as the uninterrupted local run.
  resumed = e2e.load_state(config, workdir)
  for key in ("params", "batch_stats", "opt_state"):
    assert e2e.max_abs_diff(resumed[key], reference["state"][key]) == 0.0, key
  full_rows = {r["step"]: r for r in e2e.metric_rows(reference["workdir"])}
  for row in rows[2:]:
    assert row["loss"] == full_rows[row["step"]]["loss"]

  # Inference from the bucket run into the bucket, then evaluation reading it there.
  out = f"{workdir}/infer_train"
  _run([sys.executable, "-m", "ppc_jax.seeds.infer", f"--config={config_file}",
        f"--workdir={workdir}", "--split=train"], env, tmp_path / "infer.log")
  ids = voc.split_ids(data_dir, "train")
  assert fileio.names_in(f"{out}/cams") == {i + ".npz" for i in ids}
  assert json.loads(fileio.read_text(f"{out}/summary.json"))["checkpoint_step"] == 6
  text = _run([sys.executable, "-m", "ppc_jax.evaluate", f"--voc_root={data_dir}",
               "--split=train", f"--cam_dir={out}/cams", f"--out_dir={workdir}/eval"],
              env, tmp_path / "evaluate.log")
  written = json.loads(fileio.read_text(f"{workdir}/eval/report.json"))

  # The same inference of the local reference run, in this process: the same CAMs, the same mIoU.
  local_out = str(tmp_path / "infer_local")
  infer.run_inference(reference["config"], reference["workdir"], split="train",
                      out_dir=local_out)
  for image_id in ids:
    a = cam_io.load_cam_dict(os.path.join(local_out, "cams", image_id + ".npz"))
    b = cam_io.load_cam_dict(f"{out}/cams/{image_id}.npz")
    assert sorted(a) == sorted(b), image_id
    for k in a:
      # Same compiled programs and inputs; only the process differs: bit-identical expected.
      np.testing.assert_array_equal(a[k], b[k], err_msg=image_id)
  local = evaluate.evaluate_cam_dir(reference["config"].input.data_dir, "train",
                                    os.path.join(local_out, "cams"), num_workers=1)
  assert written["miou"] == local["miou"], text
