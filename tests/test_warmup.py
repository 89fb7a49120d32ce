"""The CAM-only warm-up (`config.cam_warmup_steps`), run by the trainer itself.

* A warm-up step is a 'cam' variant step, and a later step a step of the configured variant, on
  the same state (bit for bit), under one optimizer and one poly LR schedule.
* `make demo`'s training (`ppc_jax.demo.run_demo`) and `python -m ppc_jax.train
  --config=configs/demo.py` (the same overrides) run the same schedule to the same parameters.
* A run stopped inside the warm-up, or exactly at its end, resumes to the uninterrupted
  parameters.
"""

import os
import signal

import jax
import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import interrupt
from ppc_jax import config_lib
from ppc_jax import demo
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.seeds import step as seed_step
from ppc_jax.seeds import seed_trainer
from ppc_jax.data import pipeline

# Shares the compiled programs (persistent cache) with the other end-to-end modules.
pytestmark = pytest.mark.xdist_group("train_e2e")

WARMUP = 3
CROP, VIEW2 = 48, 24
# The metrics of a CAM-only step, and the terms only the SEAM+PPC objective adds.
CAM_KEYS = {"loss", "loss_cls", "lr", "grad_norm"}
SEAM_PPC_ONLY = {"loss_rvmin", "loss_er", "loss_ecr", "loss_cross_prototype",
                 "loss_cross_label", "loss_intra", "loss_nce"}

# configs/demo.py shrunk to seconds, as command-line overrides: the same tiny run as
# tests/e2e_fixtures.tiny_config, with a 3-step warm-up in a 6-step run.
DEMO_OVERRIDES = (
    "--config.synth.num_train_aug=24", "--config.synth.num_train=8",
    "--config.synth.min_size=64", "--config.synth.max_size=64",
    "--config.input.crop_size=48", "--config.input.view2_size=24",
    "--config.input.resize_long=(48, 64)", "--config.input.num_parallel_calls=2",
    "--config.model.width_divisor=32", "--config.model.stage_blocks=(1, 1, 1, 1)",
    "--config.loss.ppc.topk_divisor=2", "--config.init.calibrate_bn_images=8",
    "--config.total_steps=6", f"--config.cam_warmup_steps={WARMUP}",
    "--config.ckpt_every_steps=2", "--config.ckpt_max_to_keep=10", "--config.log_every_steps=2",
    "--config.log_images_every_steps=0", "--config.progress_bar=False",
    "--config.infer.scales=(0.5, 1.0)",
    "--config.infer.num_overlays=2")
DEMO_CONFIG = os.path.join(e2e.ROOT, "configs", "demo.py")


# ------------------------------------------------------------------------------------------------
# The step switch.
# ------------------------------------------------------------------------------------------------


def _batch(n=8, seed=0):
  r = np.random.RandomState(seed)
  image1 = r.randn(n, CROP, CROP, 3).astype(np.float32)
  labels = (r.rand(n, 20) < 0.15).astype(np.float32)
  labels[np.arange(n), r.randint(0, 20, n)] = 1.0
  # View 2 needs only the right shape here: both programs see the same batch.
  image2 = image1[:, ::2, ::2]
  return {"image1": image1, "image2": np.ascontiguousarray(image2), "labels": labels}


def test_warmup_steps_are_cam_steps_then_the_variant(tmp_path_factory):
  e2e.compile_cache_dir(tmp_path_factory)
  model_cfg = config_lib.model_config(width_divisor=32)  # with the PPC projection head
  model_cfg.stage_blocks = (1, 1, 1, 1)
  model = models.build_model(model_cfg)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (CROP, CROP, 3)))
  optim_cfg = config_lib.optim_config(momentum_mode="corrected")
  num_steps = 4
  tx, schedule, groups = optim.make_optimizer(optim_cfg, num_steps, variables["params"])
  loss_cfg = config_lib.loss_config("seam_ppc")
  loss_cfg.ppc.topk_divisor = 2  # 3x3 feature maps
  mesh = shd.make_mesh()
  warm = seed_step.WarmupTrainStep(model, tx, schedule, groups, loss_cfg, mesh, cam_warmup_steps=2)
  assert [warm.variant(s) for s in range(num_steps)] == ["cam", "cam", "seam_ppc", "seam_ppc"]
  # The references: a plain 'cam' run's step and a plain SEAM+PPC run's step (same model,
  # optimizer and schedule), built independently of the warm-up code.
  cam_step = train_state.jit_train_step(
      seed_step.make_train_step(model, tx, schedule, groups, config_lib.loss_config("cam")), mesh)
  full_step = train_state.jit_train_step(
      seed_step.make_train_step(model, tx, schedule, groups, loss_cfg), mesh)

  repl, rows = shd.replicated(mesh), shd.batch_sharding(mesh)
  rng = jax.device_put(jax.random.PRNGKey(5), repl)
  state = jax.device_get(train_state.create_state(variables, tx))
  with jax.set_mesh(mesh):
    for step in range(num_steps):
      batch = shd.to_global(_batch(seed=step), rows)
      reference = cam_step if step < 2 else full_step
      # Each program donates its state: give each its own device copy of the host state.
      got_state, got = jax.device_get(warm(step, jax.device_put(state, repl), batch, rng))
      want_state, want = jax.device_get(reference(jax.device_put(state, repl), batch, rng))
      # The same program on the same inputs: bit-identical.
      assert e2e.max_abs_diff(got_state, want_state) == 0.0, step
      assert got == want, step
      if step < 2:
        assert set(got) == CAM_KEYS, step
      else:
        assert SEAM_PPC_ONLY | CAM_KEYS <= set(got), step
      # One poly schedule over all the steps, warm-up included (float32 schedule arithmetic).
      lr = optim_cfg.lr * (1 - step / num_steps) ** optim_cfg.poly_power
      np.testing.assert_allclose(got["lr"], lr, rtol=1e-6)
      state = got_state
  assert int(state["step"]) == num_steps


def test_warmup_steps_are_checked():
  config = config_lib.seeds_config()
  config.cam_warmup_steps = 10
  with pytest.raises(ValueError, match=r"config\.cam_warmup_steps=10 leaves no step of the "
                     r"'seam_ppc' objective: the run has 10 steps"):
    seed_trainer.warmup_steps(config, 10)
  assert seed_trainer.warmup_steps(config, 11) == 10
  config.loss.variant = "cam"  # every step is CAM-only: nothing to warm up, nothing to check
  assert seed_trainer.warmup_steps(config, 10) == 0
  config.cam_warmup_steps = -1
  with pytest.raises(ValueError, match=r"config\.cam_warmup_steps=-1"):
    seed_trainer.warmup_steps(config, 10)


# ------------------------------------------------------------------------------------------------
# The demo, the train entry point and resuming, on the same tiny run.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """`ppc_jax.demo.run_demo` on configs/demo.py with DEMO_OVERRIDES (data, train, infer, eval)."""
  e2e.compile_cache_dir(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp("demo"))
  config = e2e.parse_train_flags([f"--config={DEMO_CONFIG}", *DEMO_OVERRIDES])
  report = demo.run_demo(config, workdir)
  voc_root = os.path.join(workdir, "data", "VOCdevkit", "VOC2012")
  train_dir = os.path.join(workdir, "train")
  return dict(config=config, report=report, voc_root=voc_root, train_dir=train_dir,
              rows=e2e.metric_rows(train_dir), state=e2e.load_state(config, train_dir))


def test_demo_runs_the_warmup_under_one_schedule(demo_run):
  config, rows = demo_run["config"], demo_run["rows"]
  # Log steps every 2 steps, plus the last warm-up step (no window mixes the two objectives).
  assert [r["step"] for r in rows] == [2, 3, 4, 6]
  for row in rows:
    keys = set(row) - {"step", *trainer.TIMING_KEYS}
    if row["step"] <= WARMUP:
      assert keys == CAM_KEYS, row
    else:
      assert SEAM_PPC_ONLY | CAM_KEYS <= keys, row
    # The LR of the window's last step, on one poly curve over all 6 steps (the former two-call
    # warm-up had its own 3-step curve, which ends near 0 at step 3).
    lr = config.optim.lr * (1 - (row["step"] - 1) / 6) ** config.optim.poly_power
    np.testing.assert_allclose(row["lr"], lr, rtol=1e-5)
  assert int(demo_run["state"]["step"]) == 6
  assert "6 steps: 3 CAM-only, then 3 seam_ppc" in demo_run["report"]["facts"]["train"]


def test_train_entry_point_equals_the_demo_training(demo_run, cache_dir, tmp_path):
  """`python -m ppc_jax.train --config=configs/demo.py` (a real process) == the demo's training."""
  workdir = str(tmp_path / "train")
  log = str(tmp_path / "train.log")
  argv = [*DEMO_OVERRIDES, f"--config.input.data_dir={demo_run['voc_root']}"]
  proc = e2e.start_train(DEMO_CONFIG, workdir, log, e2e.subprocess_env(cache_dir, 8), argv)
  try:
    (code,) = e2e.wait_all([proc], [log])
  finally:
    e2e.kill_all([proc])
  assert code == 0, e2e.tail(log)
  assert "CAM-only warm-up: steps [0, 3) train 'cam', steps [3, 6) 'seam_ppc'" in e2e.read_text(
      log)
  # Same programs, data and keys on the same 8 devices: the same numbers, bit for bit.
  def untimed(rows):
    return [{k: v for k, v in r.items() if k not in trainer.TIMING_KEYS} for r in rows]
  assert untimed(e2e.metric_rows(workdir)) == untimed(demo_run["rows"])
  state = e2e.load_state(demo_run["config"], workdir)
  for key in ("params", "batch_stats", "opt_state"):
    assert e2e.max_abs_diff(state[key], demo_run["state"][key]) == 0.0, key


@pytest.mark.parametrize("stop_at", [1, WARMUP], ids=["inside_warmup", "at_boundary"])
def test_resume_across_the_warmup_boundary(demo_run, tmp_path, monkeypatch, stop_at):
  """Stopped (SIGTERM) after step `stop_at`, then resumed: the uninterrupted parameters."""
  config = demo_run["config"]
  workdir = str(tmp_path / "run")
  real_iterator = pipeline.make_train_iterator
  sent = []

  class SignalAt:
    """The real batches; SIGTERM to this process as the batch of step index stop_at - 1 is
    read: the trainer finishes that step, saves at step `stop_at` and raises Interrupted. (For stop_at=1
    the signal comes during BN calibration, which reads step 0's batch first: same stop.)"""

    def __init__(self, inner):
      self._inner = inner

    def __next__(self):
      if not sent and self._inner.step == stop_at - 1:
        sent.append(True)
        signal.raise_signal(signal.SIGTERM)
      return next(self._inner)

    def close(self):
      self._inner.close()

  with monkeypatch.context() as patch:
    patch.setattr(pipeline, "make_train_iterator",
                  lambda *a, **k: SignalAt(real_iterator(*a, **k)))
    with pytest.raises(interrupt.Interrupted, match=f"at step {stop_at} of 6; rerun to resume"):
      seed_trainer.train_and_evaluate(config, workdir)
  assert sent and e2e.checkpoint_steps(workdir)[-1] == stop_at
  metrics = seed_trainer.train_and_evaluate(config, workdir)  # resumes, crosses or starts at step 3
  assert metrics["step"] == 6
  resumed = e2e.load_state(config, workdir)
  for key in ("params", "batch_stats", "opt_state"):
    assert e2e.max_abs_diff(resumed[key], demo_run["state"][key]) == 0.0, key
