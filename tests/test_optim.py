"""Optimizer: poly schedule, parameter groups, momentum modes, coupled decay, frozen leaves.

torch.optim.SGD (the reference's optimizer) is the oracle for the update rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from ppc_jax import config_lib
from ppc_jax import optim


def _params(rng=0):
  r = np.random.RandomState(rng)
  f = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
  return {
      "backbone": {
          "conv1a": {"kernel": f(3, 3, 3, 4)},
          "b2_1": {"conv_branch2a": {"kernel": f(3, 3, 4, 4)}},
          "b3": {"conv_branch2a": {"kernel": f(3, 3, 4, 8)},
                 "bn_branch2a": {"scale": f(4), "bias": f(4)}},
          "bn7": {"scale": f(8), "bias": f(8)},
      },
      "fc8": {"kernel": f(1, 1, 8, 21)},
      "f9": {"kernel": f(1, 1, 7, 6)},
      "fc_proj": {"kernel": f(1, 1, 8, 5)},
  }


def test_groups_follow_the_reference():
  params = _params()
  params["fc8"]["bias"] = jnp.zeros((21,))  # no reference head has one: checks the x20 group
  groups = optim.param_groups(params, config_lib.optim_config())
  assert groups["fc8"]["bias"] == optim.NEW_BIAS
  assert groups["backbone"]["conv1a"]["kernel"] == optim.FROZEN
  assert groups["backbone"]["b2_1"]["conv_branch2a"]["kernel"] == optim.FROZEN
  assert groups["backbone"]["b3"]["conv_branch2a"]["kernel"] == optim.BACKBONE
  assert groups["backbone"]["b3"]["bn_branch2a"]["scale"] == optim.FROZEN
  assert groups["backbone"]["bn7"]["bias"] == optim.FROZEN
  for head in ("fc8", "f9", "fc_proj"):
    assert groups[head]["kernel"] == optim.NEW


def test_poly_schedule_values():
  total, lr = 100, 0.01
  sched = optim.poly_schedule(lr, total, 0.9)
  for t in (0, 1, total // 2, total - 1):
    np.testing.assert_allclose(float(sched(t)), lr * (1 - t / total) ** 0.9, rtol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "corrected"])
def test_updates_match_torch_sgd(mode):
  """Three steps against torch SGD with the reference's parameter groups and momentum."""
  cfg = config_lib.optim_config(momentum_mode=mode)
  total = 10
  params = _params()
  tx, _, groups = optim.make_optimizer(cfg, total, params)
  opt_state = tx.init(params)

  flat, treedef = jax.tree_util.tree_flatten(params)
  labels = jax.tree.leaves(groups)
  torch_params = [torch.nn.Parameter(torch.tensor(np.asarray(p))) for p in flat]
  momentum = optim.MOMENTUM[mode]
  torch_groups = [
      {"params": [p for p, l in zip(torch_params, labels) if l == optim.BACKBONE],
       "lr": cfg.lr, "weight_decay": cfg.weight_decay},
      {"params": [p for p, l in zip(torch_params, labels) if l == optim.NEW],
       "lr": cfg.lr * 10.0, "weight_decay": cfg.weight_decay},
  ]
  torch_opt = torch.optim.SGD(torch_groups, lr=cfg.lr, momentum=momentum)
  initial = [p.detach().clone() for p in torch_params]

  rng = np.random.RandomState(1)
  for t in range(3):
    grads_np = [rng.randn(*p.shape).astype(np.float32) for p in flat]
    # PolyOptimizer.step: set the LR of every group for step t, then step.
    for g, mult in zip(torch_opt.param_groups, (1.0, 10.0)):
      g["lr"] = cfg.lr * mult * (1 - t / total) ** cfg.poly_power
    for p, g in zip(torch_params, grads_np):
      p.grad = torch.tensor(g)
    torch_opt.step()
    grads = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in grads_np])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

  for ours, theirs, lab, init in zip(jax.tree.leaves(params), torch_params, labels, initial):
    if lab == optim.FROZEN:
      np.testing.assert_array_equal(np.asarray(ours), init.numpy())
    else:
      np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_reference_momentum_is_effectively_plain_sgd():
  """One toy step shows momentum 5e-4 (the bug) vs 0.9, and coupled weight decay."""
  w = {"fc8": {"kernel": jnp.ones((1,))}}
  g = {"fc8": {"kernel": jnp.full((1,), 2.0)}}
  out = {}
  for mode in ("reference", "corrected"):
    cfg = config_lib.optim_config(momentum_mode=mode)
    tx, _, _ = optim.make_optimizer(cfg, 100, w)
    state = tx.init(w)
    p = w
    for _ in range(2):
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    out[mode] = float(p["fc8"]["kernel"][0])
  lr0, lr1 = 0.1, 0.1 * (1 - 1 / 100) ** 0.9
  # Hand-derived: step 0 buf = g + wd*w; step 1 buf = m*buf0 + g + wd*w1.
  for mode, m in (("reference", 5e-4), ("corrected", 0.9)):
    w0 = 1.0
    buf = 2.0 + 5e-4 * w0
    w1 = w0 - lr0 * buf
    buf = m * buf + 2.0 + 5e-4 * w1
    w2 = w1 - lr1 * buf
    np.testing.assert_allclose(out[mode], w2, rtol=1e-6)


def test_group_config_errors_name_the_field():
  cfg = config_lib.optim_config()
  cfg.group_order = ("frozen", "new", "backbone")  # new_bias and bias missing from the order
  with pytest.raises(ValueError, match="group_order"):
    optim.param_groups(_params(), cfg)
  cfg = config_lib.optim_config()
  cfg.groups.backbone.match = "^backbone/"  # no catch-all: fc_proj... still matches 'new'
  params = dict(_params(), extra={"kernel": jnp.ones((1,))})
  with pytest.raises(ValueError, match="parameter extra/kernel matches no group"):
    optim.param_groups(params, cfg)
  cfg.groups.new.match = "("
  with pytest.raises(ValueError, match="config.optim.groups.new.match"):
    optim.param_groups(params, cfg)


def test_bad_momentum_mode_names_the_field():
  cfg = config_lib.optim_config()
  cfg.momentum_mode = "nesterov"
  with pytest.raises(ValueError, match="momentum_mode"):
    optim.make_optimizer(cfg, 10, _params())


# VOC 2012 train_aug (the reference's training list for stages 1 and 2).
VOC_TRAIN_AUG = 10582


def _load_config(name):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _reference_schedule(base_lr, max_step, power, num_steps):
  """float64 PolyOptimizer: lr set as lr * (1 - t / M) ** p while t < M, then left as it was."""
  out = np.empty(num_steps, np.float64)
  lr = None
  for t in range(num_steps):
    if t < max_step:
      lr = base_lr * (1 - t / max_step) ** power
    out[t] = lr
  return out


def _stage_schedule(name):
  """(schedule, num_steps, base_lr, reference max_step) as the stage's trainer builds them."""
  from ppc_jax import trainer  # pylint: disable=import-outside-toplevel
  config = _load_config(name)
  num_steps = trainer.total_steps(config, VOC_TRAIN_AUG)
  params = {"any": {"kernel": jnp.zeros((1,))}}  # the schedule does not depend on the tree
  _, schedule, _ = optim.make_optimizer(config.optim, num_steps, params)
  # The segmentation reference's poly: (1 - t / (T + 1)) ** 0.9 over its T iterations.
  max_step = config.optim.poly_max_step or num_steps + (1 if config.stage == "segment" else 0)
  return schedule, num_steps, config.optim.lr, max_step, config.optim.poly_power


@pytest.mark.parametrize("name", ["ppc_voc12", "aff_ppc_voc12", "eps_ppc_voc12",
                                  "seg_eps_ppc_voc12"])
def test_full_schedule_matches_float64_reference(name):
  """Every step of the stage's full-length schedule, evaluated as the jitted step does.

  Tolerance 5e-7 relative: the step applies a float32 LR, so the best it can hold is the float64
  value rounded once (<= 2^-24 = 6e-8 relative); 5e-7 leaves a few ulps for that rounding and
  nothing for cancellation (float32 1 - t/M was up to 3.4e-4 off at t near M).
  """
  schedule, num_steps, lr, max_step, power = _stage_schedule(name)
  want = _reference_schedule(lr, max_step, power, num_steps)
  # lax.map: one scalar evaluation per step inside a jitted program, as the train step does.
  got = jax.jit(lambda ts: jax.lax.map(schedule, ts))(jnp.arange(num_steps, dtype=jnp.int32))
  got = np.asarray(got, np.float64)
  rel = np.abs(got - want) / want
  assert rel.max() <= 5e-7, (name, int(rel.argmax()), rel.max())
  if name == "eps_ppc_voc12":  # PolyOptimizer's frozen tail: 171 steps at (1/19830)^0.9 x lr
    assert max_step == 19830 and num_steps == 20000
    np.testing.assert_array_equal(got[max_step - 1:], got[max_step - 1])


def test_float32_formula_would_fail_the_bound():
  """The oracle catches the old float32 1 - t/M (so the test above can fail)."""
  max_step, t = 19830, np.arange(19830, dtype=np.float32)
  old = 0.01 * (np.float32(1) - t / np.float32(max_step)) ** np.float32(0.9)
  want = _reference_schedule(0.01, max_step, 0.9, max_step)
  assert (np.abs(old - want) / want).max() > 5e-7
