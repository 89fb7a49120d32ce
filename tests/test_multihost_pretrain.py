"""Stage 0 (pretraining) on real multi-process training on localhost, as test_multihost.py runs
stage 1: launch/local_multiprocess.sh starts two `python -m ppc_jax.train --distributed`
processes (jax.distributed, gloo CPU collectives), 4 CPU devices each, one 8-device global mesh.

The run must equal the single-process 8-device run of the same command (same per-device programs
on the same per-device inputs, up to the collectives' summation order): per-process shards of the
training and evaluation batches, global-batch BN statistics, checkpoints saved by every process,
the periodic evaluations summed over both processes, metrics and the final eval_<split>.json
written by process 0 only.
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax.data import synth_classes

pytestmark = pytest.mark.xdist_group("pretrain_multihost")

LAUNCHER = os.path.join(e2e.ROOT, "launch", "local_multiprocess.sh")
NUM_PROCESSES, LOCAL_DEVICES = 2, 4
NUM_CLASSES, NUM_STEPS = 6, 4
# test_pretrain.py's TINY: configs/pretrain_demo.py at 1/32 width, one block per stage, 32 px
# crops, one image per device, an evaluation (12 validation images, batches of 8: the second one
# padded) after steps 2 and 4, checkpoints at 2 and 4.
TINY = ["--config.model.width_divisor=32", "--config.model.stage_blocks=(1, 1, 1, 1)",
        f"--config.model.num_classes={NUM_CLASSES}", "--config.input.batch_size=8",
        "--config.input.crop_size=32", "--config.input.num_parallel_calls=2",
        "--config.pretrain.eval_size=32", "--config.pretrain.eval_batch_size=8",
        "--config.pretrain.eval_every_steps=2", "--config.infer.max_images=12",
        "--config.log_every_steps=1", "--config.ckpt_every_steps=2",
        "--config.ckpt_max_to_keep=5", "--config.progress_bar=False"]
# Tolerances. Both runs execute the same per-device programs on the same per-device inputs (one
# training crop, one evaluation image per device) with the same XLA:CPU settings; only the
# cross-device all-reduces (gradients, BN batch statistics, the loss / top-1 means, the
# evaluation sums) add their 8 fp32 terms in another order (gloo's ring across the two processes
# vs the in-process reduction). One such sum differs by a few ulps of its terms' scale (~1e-7
# relative); four SGD steps (lr up to 0.05) feed each difference back through the network, as
# tests/test_pretrain.py's sharded-vs-one-device step measures: parameters to ~1 ulp of their
# own scale (~1e-7 for the BN scales near 1). Measured here (printed as `DEVIATIONS`, 3 runs):
# parameters <= 1.2e-7 absolute (1 ulp of a BN scale near 1), BN running statistics <= 6e-8,
# training losses <= 2.4e-7 absolute (2 ulps of ~1.8), evaluation losses <= 1.6e-7.
#  * PARAM_ATOL = 2e-6 for parameters and BN running statistics: >= 16x those.
#  * LOSS_ATOL = 4e-6 for the training and evaluation losses (~1.8: ~30 ulps): >= 16x.
#  * top-1 (training and evaluation) and the learning rate: equal. A top-1 changes only when the
#    top two logits of an image are within the ~1e-7 rounding difference, and the learning rate
#    is a function of the step alone.
# A wrong shard (a process reading the other's images, or the same ones), per-process BN
# statistics or an evaluation summed over one process only would move the losses by differences
# between images, not by rounding (the step-1 losses of different random batches of
# test_pretrain.py's tiny step differ by 8e-3 and more).
PARAM_ATOL = 2e-6
LOSS_ATOL = 4e-6


def _start_launcher(args, out_path, env, cwd):
  with open(out_path, "wb") as out:
    return subprocess.Popen(["bash", LAUNCHER, *map(str, args)], cwd=str(cwd), env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _rows(workdir):
  rows = e2e.metric_rows(workdir)
  return ([r for r in rows if "loss" in r], [r for r in rows if "eval_top1" in r])


def test_two_processes_pretrain_as_one(cache_dir, tmp_path):
  pretext = synth_classes.generate(str(tmp_path / "pretext"), num_train=4, num_val=2,
                                   min_size=24, max_size=32, num_classes=NUM_CLASSES, seed=3)
  config_arg = (f"{os.path.join(e2e.ROOT, 'configs', 'pretrain_demo.py')}:"
                f"steps={NUM_STEPS},data_dir={pretext}")
  single, multi = str(tmp_path / "single"), str(tmp_path / "mp")
  single_log = str(tmp_path / "single.log")
  launcher_out = str(tmp_path / "launcher.out")
  process_logs = [f"{multi}.process{i}.log" for i in range(NUM_PROCESSES)]

  # The two runs at once (independent: the two-process run's programs never come from the
  # persistent cache, see test_multihost.py).
  procs = []
  try:
    procs.append(e2e.start_train(config_arg, single, single_log,
                                 e2e.subprocess_env(cache_dir, 8), extra_flags=TINY))
    procs.append(_start_launcher(
        [NUM_PROCESSES, config_arg, multi, *TINY], launcher_out,
        dict(e2e.subprocess_env(cache_dir, LOCAL_DEVICES), PY=sys.executable,
             PORT=str(e2e.free_port())), tmp_path))
    codes = e2e.wait_all(procs, [single_log, launcher_out] + process_logs)
  finally:
    e2e.kill_all(procs)
  assert codes[0] == 0, e2e.tail(single_log)
  assert codes[1] == 0, "\n".join(e2e.tail(p) for p in [launcher_out] + process_logs)
  for i, path in enumerate(process_logs):
    text = e2e.read_text(path)
    assert f"process {i} of 2, {LOCAL_DEVICES} local / 8 global devices" in text
    assert "final metrics" in text

  # Both processes saved each checkpoint (one shared directory); process 0 alone wrote metrics,
  # TensorBoard events and the final evaluation: each row once, the single run's events files
  # (a writer per segment and per evaluation) all from process 0, one eval file.
  assert e2e.checkpoint_steps(multi) == e2e.checkpoint_steps(single) == [2, 4]
  pid0 = re.search(r"process 0: pid (\d+)", e2e.read_text(launcher_out)).group(1)
  events = glob.glob(os.path.join(multi, "tb", "events.out.tfevents.*"))
  assert len(events) == len(glob.glob(os.path.join(single, "tb", "events.out.tfevents.*")))
  assert all(f".{pid0}." in os.path.basename(p) for p in events), (pid0, events)
  train_rows, eval_rows = _rows(multi)
  ref_train_rows, ref_eval_rows = _rows(single)
  assert [r["step"] for r in train_rows] == [r["step"] for r in ref_train_rows] == [1, 2, 3, 4]
  assert [r["step"] for r in eval_rows] == [r["step"] for r in ref_eval_rows] == [2, 4]
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(multi, "eval_*"))) == [
      "eval_val.json"]
  with open(os.path.join(multi, "eval_val.json"), encoding="utf-8") as f:
    final = json.load(f)
  assert final["step"] == NUM_STEPS and final["split"] == "val"
  assert final["eval_images"] == 12  # each validation image once over the two processes
  assert final["eval_top1"] == eval_rows[-1]["eval_top1"]
  assert final["eval_loss"] == eval_rows[-1]["eval_loss"]

  config = e2e.parse_train_flags([f"--config={config_arg}", *TINY])
  deviations = {}
  for step in (2, 4):
    state = e2e.load_state(config, multi, step=step)
    ref = e2e.load_state(config, single, step=step)
    assert int(state["step"]) == step
    deviations[f"params@{step}"] = e2e.max_abs_diff(state["params"], ref["params"])
    deviations[f"batch_stats@{step}"] = e2e.max_abs_diff(state["batch_stats"],
                                                         ref["batch_stats"])
  deviations.update(e2e.metric_deviations(train_rows, ref_train_rows, ("loss", "top1", "lr")))
  deviations.update(e2e.metric_deviations(eval_rows, ref_eval_rows, ("eval_loss", "eval_top1")))
  e2e.report_deviations("multihost_pretrain", deviations)
  for key, value in deviations.items():
    if key.startswith(("params", "batch_stats")):
      assert value < PARAM_ATOL, (key, value)
  for row, ref in zip(train_rows, ref_train_rows):
    assert row["top1"] == ref["top1"], row["step"]
    np.testing.assert_allclose(row["lr"], ref["lr"], rtol=1e-6, err_msg=row["step"])
    np.testing.assert_allclose(row["loss"], ref["loss"], rtol=0, atol=LOSS_ATOL,
                               err_msg=row["step"])
  for row, ref in zip(eval_rows, ref_eval_rows):
    assert row["eval_top1"] == ref["eval_top1"] and row["eval_images"] == ref["eval_images"]
    np.testing.assert_allclose(row["eval_loss"], ref["eval_loss"], rtol=0, atol=LOSS_ATOL,
                               err_msg=row["step"])
