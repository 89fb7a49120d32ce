"""End to end on a tiny synthetic VOC set: train, interrupt (a real SIGTERM to a real
`python -m ppc_jax.train` process), resume to the uninterrupted parameters, infer, evaluate; and
the non-finite-loss stop.

One uninterrupted 6-step run in this process is the reference (shared with test_multihost.py);
the other runs load its compiled programs from the persistent compilation cache.
"""

import json
import os
import signal

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import e2e_fixtures as e2e
from ppc_jax import interrupt
from ppc_jax.data import cam_io
from ppc_jax import evaluate
from ppc_jax.seeds import infer
from ppc_jax import report
from ppc_jax import trainer
from ppc_jax.seeds import seed_trainer
from ppc_jax.data import pipeline
from ppc_jax.data import voc

# Keeps this module and test_multihost.py on one worker under `pytest -n 2 --dist loadgroup`,
# so the reference run and the compiled programs are made once.
pytestmark = pytest.mark.xdist_group("train_e2e")


def test_uninterrupted_run_writes_checkpoints_metrics_and_summaries(reference):
  workdir = reference["workdir"]
  assert e2e.checkpoint_steps(workdir) == [2, 4, 6]
  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [2, 4, 6]
  for row in rows:
    for key in ("loss", "loss_cls", "loss_er", "loss_ecr", "loss_intra", "lr", "grad_norm",
                "images_per_sec"):
      assert np.isfinite(row[key]), (key, row)
    assert 0.0 <= row["input_wait_fraction"] <= 1.0, row
  # Poly decay of the base LR, as logged at the last step of each window: lr * (1 - t/T)^0.9.
  config = reference["config"]
  for row in rows:
    expected = config.optim.lr * (1 - (row["step"] - 1) / e2e.NUM_STEPS) ** config.optim.poly_power
    np.testing.assert_allclose(row["lr"], expected, rtol=1e-5)
  assert reference["metrics"]["step"] == 6
  assert reference["metrics"]["loss"] == pytest.approx(rows[-1]["loss"])
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["total_steps"] == e2e.NUM_STEPS

  # TensorBoard: the scalars of every log step and the CAM overlay of the last step.
  tags = {}
  for name in os.listdir(os.path.join(workdir, "tb")):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, "tb", name)):
      for value in event.summary.value:
        tags.setdefault(value.tag, set()).add(event.step)
  assert tags["train/loss"] == {2, 4, 6}
  assert tags["cam_overlay"] == {6}

  # The state: step counter, finite parameters, calibrated (not identity) BN statistics.
  state = reference["state"]
  assert int(state["step"]) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  bn7 = state["batch_stats"]["backbone"]["bn7"]
  assert not np.allclose(bn7["var"], 1.0) and not np.allclose(bn7["mean"], 0.0)


def test_sigterm_then_resume_reaches_the_uninterrupted_parameters(reference, cache_dir, tmp_path):
  config = reference["config"]
  workdir = str(tmp_path / "run")
  config_file = e2e.write_config_file(config, tmp_path / "tiny_config.py")
  log = str(tmp_path / "train.log")

  # Segment 1, a real process: SIGTERM as soon as the trainer's handler is in place (before the
  # first step, so this is deterministic). It must finish the current step, save and exit with
  # the interrupted status: the run is not complete.
  code, text = e2e.train_until_sigterm(config_file, workdir, log, e2e.subprocess_env(cache_dir, 8))
  assert code == interrupt.EXIT_INTERRUPTED, e2e.tail(log)
  assert "signal 15 received: stopping at the next safe point" in text
  assert ("interrupted: stage-1 training interrupted at step 1 of 6; rerun to resume"
          in text), e2e.tail(log)
  assert e2e.checkpoint_steps(workdir) == [1]
  assert [r["step"] for r in e2e.metric_rows(workdir)] == [1]

  # Segment 2, in this process: resumes at step 1 (mid-epoch: 3 steps per epoch) and runs to 6.
  metrics = seed_trainer.train_and_evaluate(config, workdir)
  assert metrics["step"] == 6
  assert e2e.checkpoint_steps(workdir) == [1, 2, 4, 6]
  rows = e2e.metric_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 4, 6]  # both segments, appended

  # Same programs, same data order, same step RNG: bit-identical to the uninterrupted run.
  resumed = e2e.load_state(config, workdir)
  full = reference["state"]
  for key in ("params", "batch_stats", "opt_state"):
    assert e2e.max_abs_diff(resumed[key], full[key]) == 0.0, key
  full_rows = {r["step"]: r for r in e2e.metric_rows(reference["workdir"])}
  for row in rows[2:]:  # windows (2, 4] and (4, 6] lie within segment 2 entirely
    assert row["loss"] == full_rows[row["step"]]["loss"]


def test_inference_and_evaluation_outputs(reference, tmp_path):
  config = reference["config"]
  voc_root = config.input.data_dir
  out_dir = str(tmp_path / "infer")
  summary = infer.run_inference(config, reference["workdir"], split="train", out_dir=out_dir)
  source = voc.VOCSource(voc_root, "train")
  assert summary["num_images"] == summary["computed"] == len(source.ids) == 8
  assert summary["checkpoint_step"] == 6 and summary["scales"] == [0.5, 1.0]
  with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["num_images"] == 8

  for i, image_id in enumerate(source.ids):
    present = np.flatnonzero(source.labels[i] > 1e-5)
    with Image.open(source.image_paths[i]) as im:
      size = (im.height, im.width)
    cams = cam_io.load_cam_dict(os.path.join(out_dir, "cams", image_id + ".npz"))
    assert sorted(cams) == present.tolist(), image_id
    for cam in cams.values():
      # The reference's per-class min-max normalisation: at most 1 (pixels cut to zero end up
      # negative, see cam_postprocess.normalize_cam).
      assert cam.shape == size and np.isfinite(cam).all() and cam.max() <= 1.0 + 1e-6
    with Image.open(os.path.join(out_dir, "seeds", image_id + ".png")) as seed_png:
      assert seed_png.mode == "P"
      seed = np.array(seed_png)
    assert seed.shape == size
    assert set(np.unique(seed)) <= {0} | set(present + 1), image_id
  assert len(os.listdir(os.path.join(out_dir, "overlays"))) == config.infer.num_overlays

  # The 60-threshold sweep, the baselines and the report.
  cam_dir = os.path.join(out_dir, "cams")
  result = evaluate.evaluate_cam_dir(voc_root, "train", cam_dir, num_workers=1)
  baselines = evaluate.evaluate_baselines(voc_root, "train", num_workers=1)
  assert result["num_images"] == 8 and len(result["miou_curve"]) == 60
  for r in [result, *baselines.values()]:
    assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["miou_gt_classes"] <= 1.0
    # Background and every class of the image-level labels (made from these masks).
    assert r["num_gt_classes"] == 1 + int(np.any(source.labels > 1e-5, axis=0).sum())
  paths = report.write_report(str(tmp_path / "eval"), result, split="train", cam_dir=cam_dir,
                              baselines=baselines)
  with open(paths["json"], encoding="utf-8") as f:
    written = json.load(f)
  assert written["miou"] == result["miou"] and set(written["baselines"]) == set(baselines)
  assert os.path.getsize(paths["curve"]) > 0

  # The seed PNGs are the cams at the configured background score: the PNG evaluation and the
  # cam file evaluation at that one threshold must count the same pixels.
  t = config.infer.bg_threshold
  at_t = evaluate.evaluate_cam_dir(voc_root, "train", cam_dir, thresholds=(t,), num_workers=1)
  seeds = evaluate.evaluate_cam_dir(voc_root, "train", os.path.join(out_dir, "seeds"),
                                    input_type="png", num_workers=1)
  assert seeds["confusion"] == at_t["confusion"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(reference, tmp_path,
                                                                  monkeypatch):
  config = reference["config"]
  workdir = str(tmp_path / "run")
  real_iterator = pipeline.make_train_iterator

  class Poisoned:
    """The real batches, with view 1 set to +inf from global step index 2 (step 3) on: a
    corrupted input whose loss is NaN, one step after the step-2 checkpoint."""

    def __init__(self, inner):
      self._inner = inner

    def __next__(self):
      index = self._inner.step  # global step index of the batch about to be read
      batch = next(self._inner)
      if index >= 2:
        batch = dict(batch, image1=np.full_like(batch["image1"], np.inf))
      return batch

    def close(self):
      self._inner.close()

  monkeypatch.setattr(pipeline, "make_train_iterator",
                      lambda *a, **k: Poisoned(real_iterator(*a, **k)))
  handler_before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(trainer.NonFiniteLossError) as error:
    seed_trainer.train_and_evaluate(config, workdir)
  message = str(error.value)
  # Detected at the first log step after the bad step (4); names the metrics and the checkpoint.
  assert "at step 4" in message and "'loss'" in message, message
  assert "last good checkpoint (step 2)" in message, message
  assert os.path.join(workdir, "checkpoints") in message, message
  assert e2e.checkpoint_steps(workdir) == [2]
  assert [r["step"] for r in e2e.metric_rows(workdir)] == [2]
  assert signal.getsignal(signal.SIGTERM) == handler_before  # the trainer's handler is gone
  # The kept checkpoint is the good one: steps 1-2 saw clean data, as in the reference run.
  kept = e2e.load_state(config, workdir, step=2)
  good = e2e.load_state(config, reference["workdir"], step=2)
  assert e2e.max_abs_diff(kept["params"], good["params"]) == 0.0


def test_stop_flag_signal_semantics():
  """SIGTERM / SIGINT set the flag; repeats are harmless except a second SIGINT, which hands
  the signal back to the previous handler at once (Ctrl-C twice). Nested installs share one flag
  and the outermost gives the handlers back."""
  seen = []
  original = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  # A known previous SIGINT handler, whatever the test runner installed.
  signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
  previous_sigint = signal.getsignal(signal.SIGINT)
  try:
    with interrupt.handling_signals("outer"):
      handler = signal.getsignal(signal.SIGTERM)
      assert handler not in (original[signal.SIGTERM], previous_sigint)
      with interrupt.handling_signals("inner"):
        assert signal.getsignal(signal.SIGTERM) == handler  # one handler, nested
        signal.raise_signal(signal.SIGTERM)
        assert interrupt.requested() and not seen
        with pytest.raises(interrupt.Interrupted, match="inner work interrupted at image 3 of 9"):
          interrupt.check("inner work", 3, 9, unit="image")
      assert interrupt.requested()  # the outer block still sees the stop
      signal.raise_signal(signal.SIGTERM)  # e.g. a launcher passing a stop on
      signal.raise_signal(signal.SIGINT)   # the first Ctrl-C: still a clean stop
      assert interrupt.requested() and not seen
      signal.raise_signal(signal.SIGINT)   # the second: the previous handler, now
      assert seen == [signal.SIGINT]
      assert signal.getsignal(signal.SIGTERM) == original[signal.SIGTERM]  # given back
    assert not interrupt.requested()  # the outermost block resets the flag
    interrupt.check("nothing")  # no stop requested: no error
  finally:
    for sig, handler in original.items():
      signal.signal(sig, handler)
