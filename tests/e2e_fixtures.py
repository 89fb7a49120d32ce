"""Shared pieces of the end-to-end and multi-process tests: a tiny synthetic VOC set, a tiny
config, one uninterrupted reference run, and helpers to run `python -m ppc_jax.train` processes.

Compilation dominates these tests (above all the train step's and the parameter init's), so
everything built here is made once per test process and shared by both test modules (`_MEMO`),
and a persistent JAX compilation cache in the session's tmp dir lets repeated runs, in-process or
in subprocesses, load the compiled programs instead of recompiling them.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from ppc_jax import config_lib
from ppc_jax import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 24 train_aug images (8 of them also in `train`), two sizes only (48x64 and 64x48) so inference
# compiles few programs; four classes.
SYNTH = dict(num_train_aug=24, num_train=8, num_val=0, min_size=64, max_size=64,
             aspect_range=(0.75, 0.75), classes=("aeroplane", "bird", "car", "person"), seed=1)
NUM_STEPS = 6
# Every subprocess wait in the suite is bounded by this: a hung collective must fail the test, not
# the CI job. It is a hang guard, not a speed check, so it only has to clear a slow but healthy run
# (the slowest wait, the two-process run: two compiles, six steps, a checkpoint, on a heavily
# loaded 2-core machine) with room to spare; a hang still ends in 15 minutes.
PROCESS_TIMEOUT_S = 900
# What the trainer logs once its SIGTERM/SIGINT handler is in place (before the first step): a
# signal sent after this line deterministically stops the run at its first stop point.
HANDLERS_INSTALLED = "SIGTERM/SIGINT now save a checkpoint and stop"

_MEMO = {}


def _memo(key, make):
  if key not in _MEMO:
    _MEMO[key] = make()
  return _MEMO[key]


def _load_file(path, name):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------------------------
# Compilation cache, data, config.
# ------------------------------------------------------------------------------------------------


def compile_cache_dir(tmp_path_factory):
  """Turns on a persistent compilation cache (once per process) and returns its directory.

  Thresholds at 0 so every program is cached: the many small ones (orbax's array slicing,
  inference's per-size forwards) add up as much as the big train step.
  """
  def make():
    path = str(tmp_path_factory.mktemp("jax_compile_cache"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
  return _memo("compile_cache", make)


def synth_root(tmp_path_factory):
  """VOC2012 root of the tiny synthetic set (read-only by convention)."""
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  return _memo("synth_root", lambda: synth.generate(
      str(tmp_path_factory.mktemp("e2e_voc")), **SYNTH))


def tiny_config(data_dir):
  """configs/demo.py shrunk to seconds: 1/32 width, one block per stage, 48 px crops, 6 steps."""
  config = _load_file(os.path.join(ROOT, "configs", "demo.py"), "demo_config").get_config()
  config.input.data_dir = data_dir
  config.input.batch_size = 8           # one image per fake device
  config.input.crop_size = 48
  config.input.view2_size = 24
  config.input.resize_long = (48, 64)
  config.input.num_parallel_calls = 2   # two cores: AUTOTUNE would only add threads
  config.model.width_divisor = 32
  config.model.stage_blocks = (1, 1, 1, 1)
  # Feature maps are 6x6 (view 1) and 3x3 (view 2); K = h * w // 8 assumes 16x16 maps.
  config.loss.ppc.topk_divisor = 2
  config.init.calibrate_bn_images = 8
  config.total_steps = NUM_STEPS
  config.cam_warmup_steps = 0           # SEAM+PPC from step 0 (tests/test_warmup.py: the warm-up)
  config.ckpt_every_steps = 2
  config.ckpt_max_to_keep = 10          # keep every checkpoint: the tests list them
  config.log_every_steps = 2
  config.log_images_every_steps = NUM_STEPS  # one CAM overlay summary, at the end
  config.log_images_count = 2
  config.tensorboard = True
  config.progress_bar = False
  config.infer.scales = (0.5, 1.0)
  config.infer.num_overlays = 2
  return config


def tiny_pipeline_config():
  """configs/pipeline_demo.py shrunk to seconds (CAM-only seeds: one training program)."""
  config = _load_file(os.path.join(ROOT, "configs", "pipeline_demo.py"),
                      "pipeline_demo_config").get_config("variant=cam")
  config.synth.num_train_aug = 16
  config.synth.num_train = 8
  config.synth.num_val = 3
  config.synth.min_size = 40
  config.synth.max_size = 48
  config.progress_bar = False
  config.crf_processes = 1
  config.num_overlays = 2
  for stage in (config.seeds, config.affinity, config.segment):
    stage.model.width_divisor = 32
    stage.model.stage_blocks = (1, 1, 1, 1)
    stage.input.batch_size = 8   # one image per fake device
    stage.input.crop_size = 32
    stage.input.num_parallel_calls = 2
    stage.total_steps = 2
    stage.log_every_steps = 1
    stage.ckpt_every_steps = 1
    stage.ckpt_max_to_keep = 5
    stage.tensorboard = False
    stage.xla_cpu_flags = False
  config.seeds.input.view2_size = 16
  config.seeds.input.resize_long = (32, 48)
  config.seeds.init.calibrate_bn_images = 4
  config.seeds.log_images_every_steps = 0
  config.seeds.infer.scales = (1.0,)
  config.seeds.infer.num_overlays = 2
  config.segment.infer.scales = (1.0,)
  return config


def pipeline_reference(tmp_path_factory):
  """One uninterrupted in-process `run_pipeline` of `tiny_pipeline_config()` per test process,
  with the compilation cache on (its programs are then loaded, not compiled, by the pipeline
  tests' later runs and subprocesses). Returns dict(workdir, results); read-only by convention.

  The pipeline tests share it through their xdist group 'pipeline' (one worker builds it once).
  """
  def make():
    compile_cache_dir(tmp_path_factory)
    from ppc_jax import pipeline  # pylint: disable=import-outside-toplevel
    workdir = str(tmp_path_factory.mktemp("pipeline_reference") / "run")
    return dict(workdir=workdir, results=pipeline.run_pipeline(tiny_pipeline_config(), workdir))
  return _memo("pipeline_reference", make)


def write_config_file(config, path):
  """Writes a config file for `--config=path` that rebuilds exactly `config` (via JSON)."""
  text = (
      '"""Config written by tests/e2e_fixtures.py (a JSON copy of a test config)."""\n'
      "import json\n\nimport ml_collections\n\n\n"
      "def get_config():\n"
      f"  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


# ------------------------------------------------------------------------------------------------
# Reading a workdir.
# ------------------------------------------------------------------------------------------------


def read_files(directory):
  """{name: bytes} of every file in a directory (outputs compared byte for byte)."""
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


def checkpoint_steps(workdir):
  """Sorted steps of the committed checkpoints (orbax's temporary directories excluded)."""
  directory = fileio.join(workdir, "checkpoints")
  if not fileio.isdir(directory):
    return []
  return sorted(int(d) for d in fileio.listdir(directory) if d.isdigit())


def metric_rows(workdir):
  """The rows of `<workdir>/metrics.jsonl` (one dict per logged step)."""
  path = fileio.join(workdir, "metrics.jsonl")
  if not fileio.exists(path):
    return []
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


def stage_config_of(workdir):
  """The config a trainer saved in its work directory (config.json)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def load_state(config, workdir, step=None):
  """The train state saved at `step` (default latest), as host numpy arrays."""
  from ppc_jax import restore  # pylint: disable=import-outside-toplevel
  return jax.device_get(restore.restore_state(config, workdir, step=step)[1])


class MaxDiff(float):
  """A float (the largest |a - b|) whose repr names the leaf it came from, for failure messages."""

  def __new__(cls, value, where):
    obj = super().__new__(cls, value)
    obj.where = where
    return obj

  def __repr__(self):
    return f"{float(self)!r} (at {self.where})"


def max_abs_diff(a, b):
  """Largest |a - b| over two trees of the same structure, as a MaxDiff naming its leaf."""
  diffs = jax.tree_util.tree_leaves_with_path(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b))
  path, value = max(diffs, key=lambda kv: kv[1])
  return MaxDiff(value, jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------------
# The uninterrupted reference run (shared by test_end_to_end.py and test_multihost.py).
# ------------------------------------------------------------------------------------------------


def reference_run(tmp_path_factory):
  """Trains the tiny config for NUM_STEPS in this process (8 fake devices), once per process.

  Returns:
    dict(config, workdir, metrics (returned by the trainer), state (final, host arrays)).
  """
  def make():
    from ppc_jax.seeds import seed_trainer  # pylint: disable=import-outside-toplevel
    compile_cache_dir(tmp_path_factory)
    config = tiny_config(synth_root(tmp_path_factory))
    workdir = str(tmp_path_factory.mktemp("e2e_full"))
    metrics = seed_trainer.train_and_evaluate(config, workdir)
    return dict(config=config, workdir=workdir, metrics=metrics,
                state=load_state(config, workdir))
  return _memo("reference_run", make)


# ------------------------------------------------------------------------------------------------
# Subprocesses.
# ------------------------------------------------------------------------------------------------


def subprocess_env(cache_dir, local_devices):
  """Environment of a training subprocess: CPU, `local_devices` fake devices, the shared cache."""
  env = dict(os.environ)
  # conftest.py put its own 8-device flag into XLA_FLAGS; a subprocess gets its own count.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={local_devices}")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.update(
      XLA_FLAGS=" ".join(flags),
      JAX_PLATFORMS="cpu",
      CUDA_VISIBLE_DEVICES="",
      TF_CPP_MIN_LOG_LEVEL="2",
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
      PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p),
      PYTHONUNBUFFERED="1",
  )
  return env


def start_train(config_file, workdir, log_path, env, extra_flags=()):
  """Starts `python -m ppc_jax.train` with stdout + stderr going to `log_path`."""
  cmd = [sys.executable, "-m", "ppc_jax.train", f"--config={config_file}",
         f"--workdir={workdir}", *extra_flags]
  with open(log_path, "wb") as log:
    # A new session: on timeout the test kills the whole group, never a stray process.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def train_until_sigterm(config_file, workdir, log_path, env):
  """Starts `python -m ppc_jax.train`, sends SIGTERM as soon as its handler is in place (before
  the first step, so this is deterministic) and waits for it.

  Returns:
    (exit code, the process's log text).
  """
  proc = start_train(config_file, workdir, log_path, env)
  try:
    wait_for_text(log_path, HANDLERS_INSTALLED, proc)
    proc.send_signal(signal.SIGTERM)
    (code,) = wait_all([proc], [log_path])
  finally:
    kill_all([proc])
  return code, read_text(log_path)


def read_text(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def wait_for_text(log_path, text, proc, timeout=PROCESS_TIMEOUT_S):
  """Polls a process's log until `text` appears; fails if the process exits first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(log_path) and text in read_text(log_path):
      return
    if proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before logging {text!r}:\n"
                           f"{tail(log_path)}")
    time.sleep(0.05)
  raise AssertionError(f"no {text!r} in {log_path} after {timeout} s:\n{tail(log_path)}")


def wait_all(procs, log_paths, timeout=PROCESS_TIMEOUT_S):
  """Waits for every process (one shared deadline); kills all of them on timeout.

  Returns:
    the return codes.
  """
  deadline = time.monotonic() + timeout
  codes = []
  try:
    for proc in procs:
      codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    kill_all(procs)
    logs = "\n".join(f"--- {p}\n{tail(p)}" for p in log_paths)
    raise AssertionError(f"processes still running after {timeout} s; killed.\n{logs}") from None
  return codes


def kill_all(procs):
  """SIGKILLs each process's group (each was started in its own session)."""
  for proc in procs:
    if proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      proc.wait()


def tail(path, lines=40):
  """The last lines of a log, for failure messages."""
  try:
    return "\n".join(read_text(path).splitlines()[-lines:])
  except OSError as e:
    return f"(no log: {e})"


def free_port():
  """A TCP port that was free a moment ago (the coordinator binds it soon after)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def metric_deviations(rows, ref_rows, keys):
  """{'<key>@<step>': (|a - b|, |a - b| / |b|)} over rows matched by step, for reports."""
  ref = {r["step"]: r for r in ref_rows}
  out = {}
  for row in rows:
    for key in keys:
      a, b = row[key], ref[row["step"]][key]
      out[f"{key}@{row['step']}"] = (abs(a - b), abs(a - b) / abs(b) if b else float("inf"))
  return out


def report_deviations(name, deviations):
  """Prints one greppable `DEVIATIONS <name> <json>` line (pytest -rP shows it for passed tests):
  the repeated-run stability checks collect the observed spread against each tolerance from it."""
  print(f"DEVIATIONS {name} {json.dumps({k: v for k, v in deviations.items()}, default=float)}")


def parse_train_flags(argv):
  """The locked config that `python -m ppc_jax.train ...argv` builds (absl flags, in process)."""
  return config_lib.parse_config_flags(["train", *argv])
