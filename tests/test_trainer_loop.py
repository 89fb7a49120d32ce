"""The shared training loop's own bookkeeping (`trainer.run_loop`), on a toy stage.

The real stages' runs (checkpoints, resume, signals, metrics) are tested end to end in
test_end_to_end.py, test_refine_stage.py and test_multihost.py; here a stage whose step is a
single add keeps the loop's timing metrics checkable without a model.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ppc_jax import sharding as shd
from ppc_jax import trainer

BATCH = 8  # one image per fake CPU device
SLEEP_S = 0.05


def _loop_config():
  return ml_collections.ConfigDict(dict(
      log_every_steps=2, ckpt_every_steps=100, ckpt_max_to_keep=1, tensorboard=False,
      progress_bar=False, log_images_every_steps=0))


def _toy_stage(mesh, num_steps, sleep_s):
  """A stage whose state is a running sum of its batches; every batch arrives `sleep_s` late."""

  def initial_state():
    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((4,), jnp.float32)}
    return jax.device_put(state, shd.replicated(mesh))

  def make_batches(start):
    rng = np.random.RandomState(start)
    while True:
      time.sleep(sleep_s)
      yield {"x": rng.rand(BATCH, 4).astype(np.float32)}

  @jax.jit
  def step_fn(state, batch):
    w = state["w"] + jnp.mean(batch["x"], axis=0)
    return {"step": state["step"] + 1, "w": w}, {"loss": jnp.sum(w)}

  return trainer.Stage(
      num_steps=num_steps, batch_size=BATCH, initial_state=initial_state,
      make_batches=make_batches, train_step=lambda step, state, batch, rng: step_fn(state, batch),
      rng=jax.random.PRNGKey(0))


def test_input_wait_fraction_counts_the_time_spent_waiting_for_batches(tmp_path):
  mesh = shd.make_mesh()
  num_steps = 4
  trainer.run_loop(_toy_stage(mesh, num_steps, SLEEP_S), _loop_config(), str(tmp_path), mesh)
  with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    assert 0.0 < row["input_wait_fraction"] <= 1.0, row
    # The loop's window time, recovered from its images/s; the fraction times it is the window's
    # measured wait, which brackets two sleeps of SLEEP_S (time.sleep sleeps at least that long).
    # No timing is asserted: the inequality holds however slow the machine. 1e-9: the float
    # round trip through images_per_sec and the fraction (a few ulps).
    window_s = 2 * BATCH / row["images_per_sec"]
    assert row["input_wait_fraction"] * window_s >= 2 * SLEEP_S * (1 - 1e-9), row
