"""Real SIGTERM / SIGINT to `python -m ppc_jax.pipeline` during every training and inference stage.

One work directory is interrupted once in each stage (a new process each time, alternating the
two signals), then run to the end; every output and the report must equal those of the
uninterrupted run (the in-process `pipeline_reference`, whose programs the processes here load
from the shared compilation cache), bit for bit. An interrupted run exits 75 with
"... interrupted at step s of T; rerun to resume" and leaves the stage without its completion
marker.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import e2e_fixtures as e2e
from ppc_jax import interrupt

pytestmark = pytest.mark.xdist_group("pipeline")  # shares pipeline_reference

# (stage, what its interruption message names). The signal goes out once the pipeline logs the
# stage's start; its own handler is in place from before the first stage, so none is lost.
INTERRUPTIONS = (
    ("seeds", "stage-1 training"),
    ("cams", "CAM inference"),
    ("crf", "CRF"),
    ("affinity", "AffinityNet training"),
    ("masks", "random walk"),
    ("segment", "DeepLab training"),
    ("segment_eval", "segmentation"),
)
TRAINING_STAGES = ("seeds", "affinity", "segment")
NUM_STEPS = 2  # e2e.tiny_pipeline_config's stages
# Outputs that legitimately differ between two runs: times, the run's own paths and history.
SKIP_DIRS = ("checkpoints", "tb", "pipeline")
SKIP_FILES = ("metrics.jsonl", "summary.json", "crf_summary.json", "config.json", "report.md",
              "report.json",
              ".ppc_jax_synthetic.json")


def _start(config_file, workdir, log_path, env):
  cmd = [sys.executable, "-m", "ppc_jax.pipeline", f"--config={config_file}",
         f"--workdir={workdir}"]
  with open(log_path, "wb") as log:
    return subprocess.Popen(cmd, cwd=e2e.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(config_file, workdir, log_path, env, stop=None):
  """Runs the pipeline; with stop=(line, signal), sends the signal once `line` is logged."""
  proc = _start(config_file, workdir, log_path, env)
  try:
    if stop is not None:
      e2e.wait_for_text(log_path, stop[0], proc)
      proc.send_signal(stop[1])
    (code,) = e2e.wait_all([proc], [log_path])
  finally:
    e2e.kill_all([proc])
  return code, e2e.read_text(log_path)


def _outputs(workdir):
  """{relative path: bytes} of every output file two equal runs must share."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
    for name in files:
      if name in SKIP_FILES or name.endswith(".log"):
        continue
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def _report(workdir):
  """report.json and report.md without times, the machine line and the run's own paths."""
  with open(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  report.pop("seconds"), report.pop("attempts")
  with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    text = f.read()
  text = text.split("## Time per stage")[0] + text.split("## CAM overlays")[-1]
  text = "\n".join(line for line in text.splitlines() if "**machine**" not in line)
  return json.loads(json.dumps(report).replace(workdir, "WORKDIR")), text.replace(
      workdir, "WORKDIR")


def _markers(workdir):
  state = os.path.join(workdir, "pipeline")
  return {f[:-len(".json")] for f in os.listdir(state)
          if f.endswith(".json") and not f.endswith(".attempts.json")}


def test_signals_in_every_stage_then_resume_equal_an_uninterrupted_run(pipeline_reference,
                                                                        cache_dir, tmp_path):
  config = e2e.tiny_pipeline_config()
  config_file = e2e.write_config_file(config, tmp_path / "pipeline_config.py")
  env = e2e.subprocess_env(cache_dir, 8)
  full = pipeline_reference["workdir"]

  run = str(tmp_path / "run")
  for k, (stage, what) in enumerate(INTERRUPTIONS):
    sig = (signal.SIGTERM, signal.SIGINT)[k % 2]
    log = str(tmp_path / f"run{k}_{stage}.log")
    code, text = _run(config_file, run, log, env, stop=(f"pipeline: {stage}\n", sig))
    assert code == interrupt.EXIT_INTERRUPTED, e2e.tail(log)
    if stage in TRAINING_STAGES:
      # Deterministic: the trainer's first stop point is after step 1 of 2.
      assert (f"interrupted: pipeline stage {stage}: {what} interrupted at step 1 of "
              f"{NUM_STEPS}; rerun to resume") in text, e2e.tail(log)
      assert stage not in _markers(run)
    else:
      # Stopped between two images, or (a fast stage) right after its last one: either way
      # nothing after it ran and the run says how to go on.
      assert (f"interrupted: pipeline stage {stage}: {what} interrupted at image" in text
              or f"interrupted: pipeline interrupted after stage {stage}; rerun to resume"
              in text), e2e.tail(log)
    later = {s for s, _ in INTERRUPTIONS[k + 1:]}
    assert not later & _markers(run), e2e.tail(log)

  code, text = _run(config_file, run, str(tmp_path / "final.log"), env)
  assert code == 0, e2e.tail(str(tmp_path / "final.log"))
  with open(os.path.join(run, "pipeline", "seeds.json"), encoding="utf-8") as f:
    assert json.load(f)["attempts"] == 2  # interrupted once, then finished

  assert _report(run) == _report(full)
  ours, theirs = _outputs(run), _outputs(full)
  assert sorted(ours) == sorted(theirs)
  different = [path for path in ours if ours[path] != theirs[path]]
  assert not different, different[:10]
  # The three trainers' final parameters, too.
  for stage in TRAINING_STAGES:
    stage_config = e2e.stage_config_of(os.path.join(full, stage))
    a = e2e.load_state(stage_config, os.path.join(run, stage))
    b = e2e.load_state(stage_config, os.path.join(full, stage))
    assert e2e.max_abs_diff(a["params"], b["params"]) == 0.0, stage
