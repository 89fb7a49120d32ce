"""SGD with poly decay and SEAM's parameter groups, as optax transformations.

The reference (`tool/torchutils.PolyOptimizer`) builds
  * backbone conv weights: lr, coupled weight decay 5e-4,
  * new-layer weights (fc8, f8_3, f8_4, f9, fc_proj): 10 x lr, weight decay 5e-4,
  * conv1a, b2, b2_1, b2_2 and every BatchNorm: never updated (no decay either),
and steps with lr_t = lr * (1 - t / T) ** 0.9 for the 0-based step t.

Momentum: `PolyOptimizer.__init__` passes weight_decay positionally into SGD's momentum slot, so the
reference runs with momentum = 5e-4 (a known bug, SEAM#21 / psa#28). `momentum_mode='reference'`
reproduces it; `'corrected'` uses 0.9. Every config states its choice explicitly.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

MOMENTUM = {"reference": 5e-4, "corrected": 0.9}

BACKBONE, NEW, FROZEN = "backbone", "new", "frozen"


def path_str(path):
  """'/'-joined names of a jax tree path, e.g. 'backbone/b4_3/conv_branch2a/kernel'."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def param_groups(params, optim_config):
  """Labels every parameter leaf with its group: 'backbone', 'new' or 'frozen'.

  Args:
    params: the Flax 'params' tree.
    optim_config: ConfigDict with regexes `frozen` and `new_layers` over '/'-joined paths.

  Returns:
    A tree of the same structure as `params` holding group names.
  """
  frozen = re.compile(optim_config.frozen)
  new = re.compile(optim_config.new_layers)

  def label(path, _):
    name = path_str(path)
    if frozen.search(name):
      return FROZEN
    if new.search(name):
      return NEW
    return BACKBONE

  return jax.tree_util.tree_map_with_path(label, params)


def poly_table(base_lr, max_step, power):
  """[M] float32: lr_t = base_lr * (1 - t / M) ** power for t = 0..M-1, evaluated in float64.

  The reference's formula in its own precision (PolyOptimizer computes it in Python floats),
  rounded once to float32: every entry is within 2^-24 (6e-8) relative of the reference's value.
  """
  t = np.arange(int(max_step), dtype=np.float64)
  return (float(base_lr) * (1.0 - t / float(max_step)) ** float(power)).astype(np.float32)


def poly_schedule(base_lr, max_step, power):
  """lr_t = base_lr * (1 - min(t, M - 1) / M) ** power for the 0-based step t, M = max_step.

  The reference's PolyOptimizer sets the LR only while its step counter is below max_step and
  keeps the last value after that (METHOD 11.6): with M = the run's length this is the plain poly
  decay; with M shorter than the run (EPS+PPC: M = 19,830 of 20,000 steps) the LR stays at
  base_lr * (1 / M) ** power for the remaining steps instead of reaching 0.

  The values are a float64 table looked up by step (`poly_table`, 4 bytes a step in the
  program): computed in float32, 1 - t / M cancels near the end of the schedule, and even the
  exact quotient (M - t) / M leaves the float32 power up to ~3e-7 relative off.
  """
  max_step = int(max_step)
  if max_step <= 0:
    raise ValueError(f"the poly schedule's max_step must be positive, got {max_step}")
  table = poly_table(base_lr, max_step, power)

  def schedule(t):
    index = jnp.clip(jnp.asarray(t, jnp.int32), 0, max_step - 1)
    return jnp.asarray(table)[index]

  return schedule


def momentum_value(optim_config):
  mode = optim_config.momentum_mode
  if mode not in MOMENTUM:
    raise ValueError(
        f"config.optim.momentum_mode must be one of {sorted(MOMENTUM)}, got {mode!r}")
  return MOMENTUM[mode]


def make_optimizer(optim_config, total_steps, params):
  """Builds the optax transformation and the base-LR schedule.

  Per trainable group: g + wd * w (coupled L2) -> momentum trace (torch SGD, dampening 0, the first
  step's buffer is the gradient) -> scale by -lr_group(t). Frozen leaves get zero updates and their
  gradients are never used, so XLA drops them from the backward pass.

  Args:
    optim_config: `config.optim` (see `ppc_jax.config_lib.optim_config`).
    total_steps: the run's length: the poly schedule's M unless optim_config.poly_max_step > 0.
    params: the parameter tree (only its structure and names are used).

  Returns:
    (tx, schedule): the optax GradientTransformation and the backbone LR schedule `t -> lr_t`.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  momentum = momentum_value(optim_config)
  max_step = optim_config.poly_max_step or total_steps
  if max_step <= 0:
    raise ValueError(f"config.optim.poly_max_step must be positive or 0 (= total steps), got "
                     f"{optim_config.poly_max_step}")
  schedule = poly_schedule(optim_config.lr, max_step, optim_config.poly_power)

  def sgd(lr_mult):
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_schedule(lambda t: -lr_mult * schedule(t)),
    )

  tx = optax.multi_transform(
      {BACKBONE: sgd(1.0), NEW: sgd(optim_config.new_layer_lr_mult),
       FROZEN: optax.set_to_zero()},
      param_groups(params, optim_config))
  return tx, schedule


def trainable_grad_norm(grads, groups):
  """Global L2 norm over trainable leaves only (frozen gradients stay dead code)."""
  leaves = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(groups)) if lab != FROZEN]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
