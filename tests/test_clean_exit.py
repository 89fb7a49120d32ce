"""Every exit is clean: an error in `python -m ppc_jax.{train,infer,evaluate}` ends the process
with a non-zero status and the error (naming the bad file) in its output, and never hangs.

The hang this guards against (issue 8): train on a split with a half-truncated JPEG printed the
DataError and then hung at exit in some runs. The uncaught exception's traceback kept tf.data's
iterator alive until interpreter finalisation, where its destructor waits forever for host calls
that can no longer take the GIL (see ppc_jax/data/pipeline.py and ppc_jax/entry.py). It is a race
(hung only when a host call was in flight at finalisation), so the train command runs many times,
with its output piped as a user's `... | tee log` would, two at a time (more load, more races).
The bad JPEG is in the first batch, so each run fails right after start-up while the pipeline still
has decodes in flight (8 images per batch, 4 parallel calls, 2 batches prefetched).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import entry
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import train_state
from ppc_jax.data import pipeline
from ppc_jax.data import synth

TRAIN_RUNS = 10
PARALLEL = 2
# Large-ish images (decoding takes a while: more host calls in flight when the error comes).
SYNTH = dict(num_train_aug=16, num_train=4, num_val=0, min_size=320, max_size=480,
             classes=("aeroplane", "bird", "car", "person"), seed=3)


def _config(data_dir):
  config = e2e.tiny_config(data_dir)
  config.input.crop_size = 32
  config.input.view2_size = 16
  config.input.num_parallel_calls = 4
  config.init.calibrate_bn_images = 0  # the first image read is the training loop's
  config.total_steps = 2
  config.log_images_every_steps = 0
  config.infer.scales = (1.0,)
  return config


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
  """A synthetic VOC set whose first training batch holds a JPEG cut in half.

  Returns:
    dict(config, config_file, bad (the JPEG's file name), root).
  """
  tmp = tmp_path_factory.mktemp("clean_exit")
  root = synth.generate(str(tmp / "voc"), **SYNTH)
  config = _config(root)
  first = pipeline.make_train_iterator(config.input, start_step=0, process_index=0,
                                       process_count=1, with_index=True)
  try:
    batch = next(first)
  finally:
    first.close()
  bad_id = first.source.ids[int(batch["index"][0])]
  _truncate(os.path.join(root, "JPEGImages", bad_id + ".jpg"))
  # An inference split that reads the bad image first (no CAMs computed before the error).
  with open(os.path.join(root, "ImageSets", "Segmentation", "bad_first.txt"), "w") as f:
    f.write(f"{bad_id}\n{first.source.ids[int(batch['index'][1])]}\n")
  config_file = e2e.write_config_file(config, tmp / "config.py")
  return dict(config=config, config_file=config_file, bad=bad_id + ".jpg", root=root)


def _start(args, env):
  # Output piped (the hang was seen with piped output); a new session so a timeout kills the
  # whole group.
  return subprocess.Popen([sys.executable, "-m", *args], cwd=e2e.ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)


def _finish(proc, timeout):
  """(exit status, output); fails the test, after killing the group, if it runs past timeout."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    e2e.kill_all([proc])
    out, _ = proc.communicate()
    pytest.fail(f"still running after {timeout:.0f} s (hung at exit?); output tail:\n"
                + "\n".join(out.decode(errors="replace").splitlines()[-30:]))
  return proc.returncode, out.decode(errors="replace")


def _assert_failed_cleanly(code, out, bad_name):
  tail = "\n".join(out.splitlines()[-30:])
  assert code == 1, f"exit status {code}:\n{tail}"
  assert bad_name in out, tail
  assert "error: " in out, tail  # entry.py's one-line summary after the traceback
  # Exited by itself, not by entry.py's watchdog (which would also give status 1).
  assert entry.WATCHDOG_MARKER not in out, tail


def test_train_on_a_truncated_jpeg_always_exits(bad_set, cache_dir, tmp_path):
  env = e2e.subprocess_env(cache_dir, 8)
  args = ["ppc_jax.train", f"--config={bad_set['config_file']}"]

  # One run alone first: it fills the compilation cache, so the runs below load their programs.
  code, out = _finish(_start(args + [f"--workdir={tmp_path / 'run0'}"], env),
                      e2e.PROCESS_TIMEOUT_S)
  _assert_failed_cleanly(code, out, bad_set["bad"])
  assert "DataError" in out and "cannot decode image" in out, out[-2000:]

  # A hang never ends, so any finite bound catches it; the bound only has to clear a slow but
  # healthy run, whatever else the machine is doing: the suite's one hang guard. (A bound scaled
  # from the first run's time would break when the load rises between runs.)
  timeout = e2e.PROCESS_TIMEOUT_S
  for first in range(1, TRAIN_RUNS, PARALLEL):
    procs = [_start(args + [f"--workdir={tmp_path / f'run{i}'}"], env)
             for i in range(first, min(first + PARALLEL, TRAIN_RUNS))]
    for proc in procs:
      code, out = _finish(proc, timeout)
      _assert_failed_cleanly(code, out, bad_set["bad"])


def _write_init_checkpoint(config, workdir):
  """A checkpoint of the initial state (inference only needs one to restore; no training)."""
  model = models.build_model(config.model)
  shape = (config.input.crop_size, config.input.crop_size, 3)
  variables = train_state.init_variables(model, jax.random.PRNGKey(0), shape)
  tx, _, _ = optim.make_optimizer(config.optim, 1, variables["params"])
  with ckpt_lib.Checkpointer(workdir, every_steps=1) as checkpointer:
    checkpointer.save(1, train_state.create_state(variables, tx), meta={"num_steps": 1})


def test_infer_on_a_truncated_jpeg_exits(bad_set, cache_dir, tmp_path):
  workdir = str(tmp_path / "run")
  _write_init_checkpoint(bad_set["config"], workdir)
  proc = _start(["ppc_jax.seeds.infer", f"--config={bad_set['config_file']}", f"--workdir={workdir}",
                 "--split=bad_first"], e2e.subprocess_env(cache_dir, 1))
  code, out = _finish(proc, e2e.PROCESS_TIMEOUT_S)
  _assert_failed_cleanly(code, out, bad_set["bad"])


def test_evaluate_on_a_corrupt_cam_file_exits(bad_set, tmp_path):
  from ppc_jax.data import cam_io  # pylint: disable=import-outside-toplevel
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  root = bad_set["root"]
  with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt")) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  cam_dir = tmp_path / "cams"
  cam_dir.mkdir()
  for img_id in ids:
    gt = evaluate.load_gt(root, img_id)
    cams = np.zeros(gt.shape + (20,), np.float32)
    cam_io.save_cam_dict(str(cam_dir / f"{img_id}.npz"), cams, np.eye(20)[0])
  bad = f"{ids[-1]}.npz"
  (cam_dir / bad).write_bytes(np.random.RandomState(0).bytes(1000))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (e2e.ROOT, os.environ.get("PYTHONPATH", "")) if p))
  proc = _start(["ppc_jax.evaluate", f"--voc_root={root}", "--split=train",
                 f"--cam_dir={cam_dir}"], env)
  code, out = _finish(proc, e2e.PROCESS_TIMEOUT_S)
  _assert_failed_cleanly(code, out, bad)


_WATCHDOG_SCRIPT = """
import atexit, sys, threading
from ppc_jax import entry
def main(argv):
  if argv[1:] == ["hang"]:
    atexit.register(threading.Event().wait)  # an exit that never ends
  raise ValueError("boom: some.file")
entry.run(main)
"""


def test_exit_watchdog_bounds_a_hanging_exit(tmp_path):
  """The second line of defence: an exit that would hang ends with status 1 and every stack."""
  env = dict(os.environ, PPC_JAX_EXIT_GRACE_S="2", PYTHONPATH=e2e.ROOT)
  script = tmp_path / "script.py"
  script.write_text(_WATCHDOG_SCRIPT)
  for arg, hangs in (("ok", False), ("hang", True)):
    proc = subprocess.Popen([sys.executable, str(script), arg], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    code, out = _finish(proc, 60)
    assert code == 1, out
    assert "ValueError: boom: some.file" in out and "error: ValueError: boom: some.file" in out
    assert (entry.WATCHDOG_MARKER in out) == hangs, out
