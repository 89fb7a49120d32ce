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
  groups = optim.param_groups(_params(), config_lib.optim_config())
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
  tx, _ = optim.make_optimizer(cfg, total, params)
  opt_state = tx.init(params)
  groups = optim.param_groups(params, cfg)

  flat, treedef = jax.tree_util.tree_flatten(params)
  labels = jax.tree.leaves(groups)
  torch_params = [torch.nn.Parameter(torch.tensor(np.asarray(p))) for p in flat]
  momentum = optim.MOMENTUM[mode]
  torch_groups = [
      {"params": [p for p, l in zip(torch_params, labels) if l == optim.BACKBONE],
       "lr": cfg.lr, "weight_decay": cfg.weight_decay},
      {"params": [p for p, l in zip(torch_params, labels) if l == optim.NEW],
       "lr": cfg.lr * cfg.new_layer_lr_mult, "weight_decay": cfg.weight_decay},
  ]
  torch_opt = torch.optim.SGD(torch_groups, lr=cfg.lr, momentum=momentum)
  initial = [p.detach().clone() for p in torch_params]

  rng = np.random.RandomState(1)
  for t in range(3):
    grads_np = [rng.randn(*p.shape).astype(np.float32) for p in flat]
    # PolyOptimizer.step: set the LR of every group for step t, then step.
    for g, mult in zip(torch_opt.param_groups, (1.0, cfg.new_layer_lr_mult)):
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
    tx, _ = optim.make_optimizer(cfg, 100, w)
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


def test_bad_momentum_mode_names_the_field():
  cfg = config_lib.optim_config()
  cfg.momentum_mode = "nesterov"
  with pytest.raises(ValueError, match="momentum_mode"):
    optim.make_optimizer(cfg, 10, _params())
