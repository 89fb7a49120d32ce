"""The pretraining optimizer: `config.optim.groups` with SGD + momentum under a warm-up and a
cosine or step schedule (the ImageNet recipes), built like every stage's (`ppc_jax.optim`).

Per trainable group, as `optim.make_optimizer`: g + wd * w (coupled L2, groups with `decay`)
-> momentum trace (torch SGD, dampening 0) -> scale by -lr_mult * lr(t); frozen groups get zero
updates. Only the schedule differs (`optim` has the stages' poly decay), so the optimizer state
has the same structure as `optim.make_optimizer`'s, and `restore.restore_state` (which builds the
shared recipe) restores a pretraining checkpoint as it restores any other.

Schedules (t = 0-based step, T = the run's steps, W = warm-up steps):
  warm-up   lr_t = lr * (t + 1) / W  for t < W  (Goyal et al. 2017's gradual warm-up)
  'cosine'  lr_t = lr * (1 + cos(pi * (t - W) / (T - W))) / 2 after it
  'step'    lr_t = lr * factor ** (number of boundaries <= t), boundaries at `step_epochs`
  'poly'    lr_t = lr * (1 - (t - W) / (T - W)) ** optim.poly_power
"""

import math

import jax.numpy as jnp
import optax

from ppc_jax import optim

SCHEDULES = ("cosine", "step", "poly")


def lr_schedule(config, num_steps, steps_per_epoch):
  """The base LR `t -> lr_t` of `config.pretrain.schedule` (see the module docstring).

  Args:
    config: the experiment config (optim.lr, optim.poly_power; pretrain.schedule,
      warmup_epochs, step_epochs, step_factor).
    num_steps: T, the run's length.
    steps_per_epoch: converts the epoch fields into steps.

  Returns:
    (schedule, warmup_steps, boundaries): the function of the int step and the step numbers used.
  """
  pcfg = config.pretrain
  kind = pcfg.schedule
  if kind not in SCHEDULES:
    raise ValueError(f"config.pretrain.schedule must be one of {SCHEDULES}, got {kind!r}")
  base = float(config.optim.lr)
  total = int(num_steps)
  warmup = min(int(round(float(pcfg.warmup_epochs) * steps_per_epoch)), total - 1)
  warmup = max(warmup, 0)
  boundaries = tuple(int(round(float(e) * steps_per_epoch)) for e in pcfg.step_epochs)
  factor = float(pcfg.step_factor)
  power = float(config.optim.poly_power)
  span = float(max(total - warmup, 1))

  def schedule(t):
    t = jnp.asarray(t, jnp.int32)
    tf = t.astype(jnp.float32)
    after = jnp.clip(tf - warmup, 0.0, span)
    if kind == "cosine":
      lr = 0.5 * base * (1.0 + jnp.cos(math.pi * after / span))
    elif kind == "poly":
      lr = base * (1.0 - after / span) ** power
    else:
      passed = sum((t >= b).astype(jnp.int32) for b in boundaries) if boundaries else 0
      lr = base * jnp.power(jnp.float32(factor), jnp.asarray(passed, jnp.float32))
    if warmup > 0:
      lr = jnp.where(t < warmup, base * (tf + 1.0) / warmup, lr)
    return jnp.asarray(lr, jnp.float32)

  return schedule, warmup, boundaries


def make_optimizer(config, num_steps, steps_per_epoch, params):
  """The optax transformation of the pretraining run.

  Args:
    config: the experiment config (`config.optim`: lr, weight_decay, momentum_mode, groups,
      group_order; `config.pretrain`'s schedule fields).
    num_steps: T.
    steps_per_epoch: floor(train examples / global batch).
    params: the parameter tree (structure and names only).

  Returns:
    (tx, schedule, groups) as `optim.make_optimizer` returns them.
  """
  if num_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {num_steps}")
  schedule, _, _ = lr_schedule(config, num_steps, steps_per_epoch)
  groups = optim.param_groups(params, config.optim)  # validates the groups, names the misfits
  momentum = optim.momentum_value(config.optim)
  decay = float(config.optim.weight_decay)

  def sgd(spec):
    mult = float(spec["lr_mult"])
    parts = [optax.add_decayed_weights(decay)] if spec["decay"] else []
    return optax.chain(*parts, optax.trace(decay=momentum, nesterov=False),
                       optax.scale_by_schedule(lambda t: -mult * schedule(t)))

  transforms = {}
  for name in config.optim.group_order:
    spec = config.optim.groups[name]
    if not spec["frozen"]:
      transforms[name] = sgd(spec)
  transforms[optim.FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, groups), schedule, groups
