"""The jitted train step: sharded == single device, frozen parameters fixed, variants by config."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppc_jax import config_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax.seeds import step as seed_step

CROP, VIEW2 = 48, 24


def _tiny_setup(variant="seam_ppc", num_steps=10, **model_overrides):
  model_cfg = config_lib.model_config(width_divisor=32)
  model_cfg.stage_blocks = (1, 1, 1, 1)
  model_cfg.update(model_overrides)
  model = models.build_model(model_cfg)
  # Host copies: the jitted step donates its state, which must not alias these arrays.
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (CROP, CROP, 3)))
  optim_cfg = config_lib.optim_config()
  tx, schedule, groups = optim.make_optimizer(optim_cfg, num_steps, variables["params"])
  loss_cfg = config_lib.loss_config(variant)
  # K = h*w // 8 of the reference assumes 16x16 maps; these tiny maps are 3x3.
  loss_cfg.ppc.topk_divisor = 2
  step = seed_step.make_train_step(model, tx, schedule, groups, loss_cfg)
  return variables, tx, step


def _batch(n=8, seed=0):
  r = np.random.RandomState(seed)
  image1 = r.randn(n, CROP, CROP, 3).astype(np.float32)
  labels = (r.rand(n, 20) < 0.15).astype(np.float32)
  labels[np.arange(n), r.randint(0, 20, n)] = 1.0
  from ppc_jax.ops.resize import resize_bilinear
  image2 = np.asarray(resize_bilinear(jnp.asarray(image1), (VIEW2, VIEW2), align_corners=True))
  return {"image1": image1, "image2": image2, "labels": labels}


def _run(step_fn, state, batch, rng, steps_count=2):
  metrics = None
  for _ in range(steps_count):
    state, metrics = step_fn(state, batch, rng)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def ppc_setup():
  """One tiny SEAM+PPC setup and its 8-device jitted step, compiled once for this module."""
  variables, tx, step = _tiny_setup()
  mesh8 = shd.make_mesh()
  return variables, tx, step, mesh8, train_state.jit_train_step(step, mesh8)


def test_sharded_step_equals_single_device(ppc_setup):
  _assert_sharded_equals_single_device(*ppc_setup)


def test_sharded_winograd_step_equals_single_device():
  """The same with every stride-1 3x3 conv by Winograd F(2x2, 3x3) (ops.winograd): the CPU's
  default for the full-width model ('auto'), forced here at the tiny width."""
  variables, tx, step = _tiny_setup(conv_algorithm="winograd", winograd_min_channels=1)
  mesh8 = shd.make_mesh()
  _assert_sharded_equals_single_device(variables, tx, step, mesh8,
                                       train_state.jit_train_step(step, mesh8))


def _compiled(step, mesh, host_state, batch, rng):
  """The jitted step on `mesh`, lowered from the arguments' shapes and compiled."""
  with jax.set_mesh(mesh):
    return train_state.jit_train_step(step, mesh).lower(host_state, batch, rng).compile()


def _assert_sharded_equals_single_device(variables, tx, step, mesh8, step8):
  assert jax.device_count() == 8
  batch = _batch()
  rng = jax.random.PRNGKey(3)

  # The one-device program compiles in a thread while the 8-device one compiles and runs here
  # (XLA compiles outside the GIL; compilation is most of this test's time).
  mesh1 = shd.make_mesh(1)
  host_state = jax.device_get(train_state.create_state(variables, tx))
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    step1 = pool.submit(_compiled, step, mesh1, host_state, batch, rng)
    state8 = jax.device_put(host_state, shd.replicated(mesh8))
    with jax.set_mesh(mesh8):
      out8 = _run(step8, state8, shd.to_global(batch, shd.batch_sharding(mesh8)), rng)
    step1 = step1.result()

  state1 = jax.device_put(host_state, shd.replicated(mesh1))
  with jax.set_mesh(mesh1):
    out1 = _run(step1, state1, shd.to_global(batch, shd.batch_sharding(mesh1)), rng)

  # Tolerances: both programs compute the same math; what may differ is the order of the fp32
  # sums over the batch (one device sums 8 images, eight devices sum one each and all-reduce),
  # ~1e-7 relative per sum, fed through two SGD steps. Measured with this setup (3 batches and
  # keys, 1 vs 2, 4 and 8 devices): metrics <= 2.7e-7 relative (4.8e-7 absolute), parameters
  # <= 3e-8 absolute. The bounds are >= 30x those; the absolute parts cover near-zero values.
  for k in out1[1]:
    np.testing.assert_allclose(out8[1][k], out1[1][k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(out8[0]["params"]), jax.tree.leaves(out1[0]["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_metrics_and_frozen_parameters(ppc_setup):
  variables, tx, _, mesh, step8 = ppc_setup
  state0 = jax.device_get(train_state.create_state(variables, tx))
  state = jax.device_put(state0, shd.replicated(mesh))
  with jax.set_mesh(mesh):
    new_state, metrics = _run(step8, state,
                              shd.to_global(_batch(), shd.batch_sharding(mesh)),
                              jax.random.PRNGKey(1), steps_count=1)
  for key in ("loss", "loss_cls", "loss_rvmin", "loss_er", "loss_ecr", "loss_cross_prototype",
              "loss_cross_label", "loss_intra", "lr", "grad_norm"):
    assert key in metrics and np.isfinite(metrics[key]), key
  assert int(new_state["step"]) == 1
  np.testing.assert_allclose(metrics["lr"], 0.01, rtol=1e-6)  # lr at t=0

  groups = optim.param_groups(state0["params"], config_lib.optim_config())
  moved = {optim.FROZEN: [], optim.BACKBONE: [], optim.NEW: []}
  for (path, before), after, group in zip(
      jax.tree_util.tree_leaves_with_path(state0["params"]),
      jax.tree.leaves(new_state["params"]), jax.tree.leaves(groups)):
    moved[group].append((optim.path_str(path), not np.array_equal(before, after)))
  assert moved[optim.FROZEN] and not any(m for _, m in moved[optim.FROZEN]), moved[optim.FROZEN]
  assert all(m for _, m in moved[optim.NEW]), moved[optim.NEW]
  assert any(m for _, m in moved[optim.BACKBONE])
  # BN running statistics never change.
  for a, b in zip(jax.tree.leaves(state0["batch_stats"]),
                  jax.tree.leaves(new_state["batch_stats"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant,present,absent", [
    ("cam", ["loss_cls"], ["loss_er", "loss_intra"]),
    ("seam", ["loss_cls", "loss_er", "loss_ecr", "loss_rvmin"], ["loss_intra"]),
])
def test_loss_variant_is_chosen_by_config(variant, present, absent):
  variables, tx, step = _tiny_setup(variant)
  state = train_state.create_state(variables, tx)
  _, metrics = jax.jit(step)(state, jax.tree.map(jnp.asarray, _batch(2)), jax.random.PRNGKey(0))
  for k in present:
    assert k in metrics
  for k in absent:
    assert k not in metrics or float(metrics[k]) == 0.0
