"""Real multi-process training on localhost through launch/local_multiprocess.sh: two
`python -m ppc_jax.train --distributed` processes (jax.distributed, gloo CPU collectives), 4 CPU
devices each, form one 8-device global mesh.

They must reproduce the single-process 8-device run of test_end_to_end.py (same programs up to
the collectives' summation order), which shows per-process input shards, global arrays,
checkpoints saved by every process and metrics written by process 0 only. A SIGTERM that reaches
one process only must stop both at the same step with one shared checkpoint, from which a
single-process run resumes.

One launch only: process 1's compiled programs never come from the persistent cache (JAX keys
them per process and only process 0 writes entries), so every launch compiles from scratch.
"""

import glob
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import interrupt
from ppc_jax.seeds import seed_trainer

pytestmark = pytest.mark.xdist_group("train_e2e")  # see test_end_to_end.py

LAUNCHER = os.path.join(e2e.ROOT, "launch", "local_multiprocess.sh")
NUM_PROCESSES, LOCAL_DEVICES = 2, 4
# Tolerances, from what may legitimately differ. Both runs execute the same per-device programs
# on the same per-device inputs (one image per device) on the same machine (same XLA:CPU thread
# pool, so the same intra-op splits); only the cross-device all-reduces of the gradients, BN
# statistics and metrics add their 8 fp32 terms in another order (gloo's ring vs the in-process
# reduction). One such sum differs by at most a few ulps, ~1e-7 relative to its terms' scale; six
# SGD steps feed each difference back through the network. Measured here (bench machine,
# reduction order varied by running the same training on 1, 2, 4 and 8 devices of one process, and
# by this test, printed as `DEVIATIONS`): parameters <= 1.3e-5 absolute (the small PCM heads f8_3
# and f8_4, 10x LR), BN statistics <= 8e-7, every loss term <= 2.1e-6 absolute.
#  * Parameters: PARAM_ATOL = 2e-4, ~15x the largest difference seen.
#  * BN statistics (calibrated once, one all-reduce deep): BN_ATOL = 1e-5, >10x.
#  * Metrics: absolute, relative to the step's total loss (METRIC_TOL * |loss|, 1e-5 * ~2 =
#    2e-5, ~10x the largest difference seen). Not relative to each term: loss_er and loss_ecr are
#    means of |CAM_1 - CAM_2|, small differences of O(1) activations, so their rounding error scales
#    with the activations (i.e. with the loss), not with the term; a per-term rtol of 2e-5 failed
#    once at 2.03e-5 on loss_er (issue 8) while its absolute difference was 3e-7.
#  * The learning rate is a function of the step only: equal to 1e-6.
# These hold up to step 2, where the two-process run stops. The single-process continuation from
# its checkpoint (steps 3-6) starts from parameters that differ by that rounding (~1e-5), and the
# PPC terms are not continuous in the parameters: prototypes and hard pixels are top-K selections
# of CAM scores, so a near-tie that resolves the other way moves a prototype by the difference of
# two pixels' features, the contrast losses by O(1/K), and the next updates accordingly. On the
# AMD EPYC machine no selection flipped in the 30 documented runs; on an Intel Xeon (AVX-512)
# one did at step 3: loss_intra@4 differed by 1.1e-3 and loss_intra@6 by 6.7e-3 (total loss 2.0),
# the continuous SEAM terms by <= 7.8e-4 (loss_ecr@6), the parameters by 1.3e-4 at step 6. So
# after the resume:
#  * the continuous terms (loss_cls, loss_er, loss_ecr) within RESUMED_TOL * |loss|, 5e-3 * ~2 =
#    1e-2, ~13x the largest seen; the total and the contrast terms are not compared (a flip moves
#    them by a data-dependent amount that no rounding analysis bounds);
#  * parameters within RESUMED_PARAM_ATOL = 2e-3, ~15x the largest seen, BN statistics (not
#    trained after calibration) within BN_ATOL as before.
# A broken restore (state from another step, lost optimizer state, a data iterator at the wrong
# position) shows in loss_cls and the parameters well above these.
PARAM_ATOL = 2e-4
BN_ATOL = 1e-5
METRIC_TOL = 1e-5
METRIC_KEYS = ("loss", "loss_cls", "loss_er", "loss_ecr", "loss_intra", "lr")
RESUMED_TOL = 5e-3
RESUMED_PARAM_ATOL = 2e-3
CONTINUOUS_KEYS = ("loss_cls", "loss_er", "loss_ecr")


def _start_launcher(args, out_path, env, cwd):
  with open(out_path, "wb") as out:
    return subprocess.Popen(["bash", LAUNCHER, *map(str, args)], cwd=str(cwd), env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_processes_match_one_and_stop_together(reference, cache_dir, tmp_path):
  config = reference["config"]
  config_file = e2e.write_config_file(config, tmp_path / "tiny_config.py")
  workdir = str(tmp_path / "mp")
  process_logs = [f"{workdir}.process{i}.log" for i in range(NUM_PROCESSES)]
  launcher_out = str(tmp_path / "launcher.out")
  env = dict(e2e.subprocess_env(cache_dir, LOCAL_DEVICES), PY=sys.executable,
             PORT=str(e2e.free_port()))

  # SIGTERM to process 1 only, once its handler is installed (before step 1: deterministic).
  # Process 0 never sees a signal; both must agree at the first stop point (the step-2 log and
  # checkpoint), save there and exit with the interrupted status (75), as does the launcher.
  launcher = _start_launcher([NUM_PROCESSES, config_file, workdir], launcher_out, env, tmp_path)
  try:
    e2e.wait_for_text(launcher_out, "process 1: pid", launcher)
    pid1 = int(re.search(r"process 1: pid (\d+)", e2e.read_text(launcher_out)).group(1))
    e2e.wait_for_text(process_logs[1], e2e.HANDLERS_INSTALLED, launcher)
    os.kill(pid1, signal.SIGTERM)
    (code,) = e2e.wait_all([launcher], [launcher_out] + process_logs)
  finally:
    e2e.kill_all([launcher])
  texts = [e2e.read_text(p) for p in process_logs]
  assert code == interrupt.EXIT_INTERRUPTED, "\n".join(
      e2e.tail(p) for p in [launcher_out] + process_logs)
  for i, text in enumerate(texts):
    assert f"process {i} of 2, {LOCAL_DEVICES} local / 8 global devices" in text
    assert "per process 4, per device 1" in text
    assert "stage-1 training interrupted at step 2 of 6; rerun to resume" in text
    assert "final metrics" not in text  # not complete
  assert "signal 15 received" in texts[1] and "signal 15 received" not in texts[0]
  assert e2e.checkpoint_steps(workdir) == [2]
  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [2]  # one row: process 0 writes alone
  assert len(glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))) == 1

  # The state at step 2 equals the single-process run's step-2 checkpoint.
  ref_rows = e2e.metric_rows(reference["workdir"])
  state2 = e2e.load_state(config, workdir)
  ref2 = e2e.load_state(config, reference["workdir"], step=2)
  assert int(state2["step"]) == 2
  e2e.report_deviations("multihost", {
      "params@2": e2e.max_abs_diff(state2["params"], ref2["params"]),
      "batch_stats@2": e2e.max_abs_diff(state2["batch_stats"], ref2["batch_stats"]),
      **e2e.metric_deviations(e2e.metric_rows(workdir), ref_rows, METRIC_KEYS)})
  assert e2e.max_abs_diff(state2["params"], ref2["params"]) < PARAM_ATOL
  (row2,) = e2e.metric_rows(workdir)
  (ref_row2,) = [r for r in ref_rows if r["step"] == 2]
  np.testing.assert_allclose(row2["lr"], ref_row2["lr"], rtol=1e-6)
  for key in METRIC_KEYS:
    if key != "lr":
      np.testing.assert_allclose(row2[key], ref_row2[key], rtol=0,
                                 atol=METRIC_TOL * abs(ref_row2["loss"]), err_msg=(2, key))
  # BN calibration ran on the two processes' shards of the first batch: global-batch statistics.
  assert e2e.max_abs_diff(state2["batch_stats"], ref2["batch_stats"]) < BN_ATOL

  # A single-process run (this one, 8 devices) resumes the multi-process checkpoint to the end.
  metrics = seed_trainer.train_and_evaluate(config, workdir)
  assert metrics["step"] == 6 and e2e.checkpoint_steps(workdir) == [2, 4, 6]
  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [2, 4, 6]
  final = e2e.load_state(config, workdir)
  e2e.report_deviations("multihost_resumed", {
      "params@6": e2e.max_abs_diff(final["params"], reference["state"]["params"]),
      "batch_stats@6": e2e.max_abs_diff(final["batch_stats"], reference["state"]["batch_stats"]),
      **e2e.metric_deviations(rows, ref_rows, METRIC_KEYS)})
  assert [r["step"] for r in ref_rows] == [2, 4, 6]
  for row, ref in zip(rows[1:], ref_rows[1:]):
    np.testing.assert_allclose(row["lr"], ref["lr"], rtol=1e-6, err_msg=row["step"])
    for key in CONTINUOUS_KEYS:
      np.testing.assert_allclose(row[key], ref[key], rtol=0, atol=RESUMED_TOL * abs(ref["loss"]),
                                 err_msg=(row["step"], key))
  assert e2e.max_abs_diff(final["params"], reference["state"]["params"]) < RESUMED_PARAM_ATOL
  assert e2e.max_abs_diff(final["batch_stats"], reference["state"]["batch_stats"]) < BN_ATOL


# A stand-in for python: process 1 fails after a moment, the others run until told to stop and
# then "save" (log) and exit 0.
# A stand-in for `python -m ppc_jax.train`: it marks itself ready in $READY_DIR once its SIGTERM
# handler is installed (the trainer installs its own before step 1). A stop request that arrives
# before that kills a process unsaved, in the real trainer too, so the tests send theirs (and the
# failing process 1 fails) only when every other process is ready: under load, starting N shells
# can take seconds, and a fixed sleep made the tests flaky.
_FAKE_PYTHON = """#!/usr/bin/env bash
for a in "$@"; do case $a in --process_id=*) id=${a#*=};; --num_processes=*) n=${a#*=};; esac; done
trap 'echo "process $id: stop requested, saving"; kill $! 2>/dev/null; exit 0' TERM
if [ "$id" = 1 ] && [ -n "${FAIL_ONE:-}" ]; then
  for t in $(seq 600); do [ "$(ls "$READY_DIR" | wc -l)" -ge $((n - 1)) ] && break; sleep 0.1; done
  echo "process 1 failed"; exit 3
fi
touch "$READY_DIR/$id"; echo "process $id: ready"
sleep 60 & wait $!
"""


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / "fake_python"
  path.write_text(_FAKE_PYTHON)
  path.chmod(0o755)
  (tmp_path / "ready").mkdir()
  return str(path)


def test_launcher_stops_the_others_when_one_process_fails(fake_python, tmp_path):
  workdir = str(tmp_path / "run")
  out = str(tmp_path / "launcher.out")
  env = dict(os.environ, PY=fake_python, FAIL_ONE="1", GRACE="10",
             READY_DIR=str(tmp_path / "ready"))
  launcher = _start_launcher([3, "config.py", workdir], out, env, tmp_path)
  try:
    (code,) = e2e.wait_all([launcher], [out])
  finally:
    e2e.kill_all([launcher])
  assert code == 1 and "a process failed; stopping the others" in e2e.read_text(out)
  assert "process 1 failed" in e2e.read_text(f"{workdir}.process1.log")
  for i in (0, 2):  # would otherwise wait for process 1 in a collective forever
    assert "stop requested, saving" in e2e.read_text(f"{workdir}.process{i}.log")


def test_launcher_passes_a_stop_request_on_to_every_process(fake_python, tmp_path):
  workdir = str(tmp_path / "run")
  out = str(tmp_path / "launcher.out")
  env = dict(os.environ, PY=fake_python, GRACE="10", READY_DIR=str(tmp_path / "ready"))
  launcher = _start_launcher([2, "config.py", workdir], out, env, tmp_path)
  try:
    for i in range(2):  # both handlers installed
      e2e.wait_for_text(f"{workdir}.process{i}.log", f"process {i}: ready", launcher)
    launcher.send_signal(signal.SIGTERM)
    (code,) = e2e.wait_all([launcher], [out])
  finally:
    e2e.kill_all([launcher])
  assert code == 130 and "stop requested" in e2e.read_text(out)
  for i in range(2):
    assert "stop requested, saving" in e2e.read_text(f"{workdir}.process{i}.log")
