"""SGD with poly decay and parameter groups given as config data: the optimizer of every stage.

The reference codes build one torch SGD per stage from the same four groups
(`tool/torchutils.PolyOptimizer` in stages 1 and 2, the segmentation `train.py` in stage 3):
  backbone weights lr x 1 (weight decay), backbone biases lr x 2 (no decay),
  new-layer weights lr x 10 (decay), new-layer biases lr x 20 (no decay),
and leaves some parameters out (never updated): conv1a, b2* and every BatchNorm in stages 1-2,
every BatchNorm in stage 3. Here `config.optim.groups` names the groups
({name: {match, lr_mult, decay, frozen}}) and `config.optim.group_order` the order in which
their regexes are tried against each parameter's '/'-joined path (`path_str`); the first match
wins and every parameter must match one. `lr_groups(frozen=..., new=...)` writes the reference's
groups for a stage's regexes. lr_t = lr * (1 - t / M) ** power for the 0-based step t, with
M = poly_max_step, or the run's length + poly_max_step_offset (stage 3's T + 1).

Momentum: `PolyOptimizer.__init__` passes weight_decay positionally into SGD's momentum slot, so the
reference runs stages 1-2 with momentum = 5e-4 (a known bug, SEAM#21 / psa#28).
`momentum_mode='reference'` reproduces it; `'corrected'` uses 0.9 (stage 3's reference is right:
its configs say 'corrected'). Every config states its choice explicitly.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

MOMENTUM = {"reference": 5e-4, "corrected": 0.9}

# The label of every parameter in a frozen group (its updates are zero, its gradient unused).
FROZEN = "(frozen)"
GROUP_FIELDS = ("match", "lr_mult", "decay", "frozen")
# The names `lr_groups` gives the reference's groups.
BACKBONE, BIAS, NEW, NEW_BIAS = "backbone", "bias", "new", "new_bias"


def lr_groups(*, frozen, new):
  """The reference's groups (see the module docstring) for a stage's regexes.

  Args:
    frozen: regex of the parameters never updated.
    new: regex of the new layers (lr x 10 / x 20).

  Returns:
    (groups dict for `config.optim.groups`, group_order tuple).
  """
  groups = {
      "frozen": dict(match=frozen, lr_mult=0.0, decay=False, frozen=True),
      # A bias of a new layer: the lookahead asks for the '/bias' ending, `new` for the layer.
      NEW_BIAS: dict(match=f"(?=.*/bias$)(?:{new})", lr_mult=20.0, decay=False, frozen=False),
      NEW: dict(match=new, lr_mult=10.0, decay=True, frozen=False),
      BIAS: dict(match=r"/bias$", lr_mult=2.0, decay=False, frozen=False),
      BACKBONE: dict(match="", lr_mult=1.0, decay=True, frozen=False),
  }
  return groups, ("frozen", NEW_BIAS, NEW, BIAS, BACKBONE)


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


def _group_specs(optim_config):
  """[(name, compiled regex, spec)] in `group_order`; errors name the config field."""
  groups, order = optim_config.groups, tuple(optim_config.group_order)
  names = set(groups.keys()) if hasattr(groups, "keys") else set()
  if set(order) != names or len(order) != len(names):
    raise ValueError(f"config.optim.group_order {order} must name each group of "
                     f"config.optim.groups {sorted(names)} exactly once")
  specs = []
  for name in order:
    spec = groups[name]
    missing = [f for f in GROUP_FIELDS if f not in spec]
    if missing:
      raise ValueError(f"config.optim.groups.{name} lacks {missing}; a group has {GROUP_FIELDS}")
    try:
      regex = re.compile(spec["match"])
    except re.error as e:
      raise ValueError(f"config.optim.groups.{name}.match={spec['match']!r}: {e}") from None
    specs.append((name, regex, spec))
  return specs


def param_groups(params, optim_config):
  """Labels every parameter leaf with its group's name (FROZEN for a frozen group).

  Args:
    params: the Flax 'params' tree.
    optim_config: `config.optim` (its `groups` and `group_order`).

  Returns:
    A tree of the same structure as `params` holding group names.

  Raises:
    ValueError: a parameter that no group matches (naming it), a malformed group.
  """
  specs = _group_specs(optim_config)

  def label(path, _):
    name = path_str(path)
    for group, regex, spec in specs:
      if regex.search(name):
        return FROZEN if spec["frozen"] else group
    raise ValueError(f"parameter {name} matches no group of config.optim.groups (tried "
                     f"{[g for g, _, _ in specs]}); end config.optim.group_order with a "
                     "catch-all group (match '')")

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

  Per trainable group: g + wd * w (coupled L2, groups with decay only) -> momentum trace (torch
  SGD, dampening 0, the first step's buffer is the gradient) -> scale by -lr_mult * lr(t). Frozen
  leaves get zero updates and their gradients are never used, so XLA drops them from the
  backward pass.

  Args:
    optim_config: `config.optim` (lr, poly_power, poly_max_step, poly_max_step_offset,
      weight_decay, momentum_mode, groups, group_order).
    total_steps: the run's length T; the poly schedule's M is poly_max_step when > 0, else
      T + poly_max_step_offset.
    params: the parameter tree (only its structure and names are used).

  Returns:
    (tx, schedule, groups): the optax GradientTransformation, the base LR schedule `t -> lr_t`
    and the label tree of `param_groups`.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  momentum = momentum_value(optim_config)
  max_step = optim_config.poly_max_step or total_steps + optim_config.poly_max_step_offset
  if max_step <= 0:
    raise ValueError(f"config.optim.poly_max_step must be positive or 0 (= total steps), got "
                     f"{optim_config.poly_max_step}")
  schedule = poly_schedule(optim_config.lr, max_step, optim_config.poly_power)
  groups = param_groups(params, optim_config)

  def sgd(spec):
    mult = float(spec["lr_mult"])
    parts = [optax.add_decayed_weights(optim_config.weight_decay)] if spec["decay"] else []
    return optax.chain(*parts, optax.trace(decay=momentum, nesterov=False),
                       optax.scale_by_schedule(lambda t: -mult * schedule(t)))

  transforms = {name: sgd(spec) for name, _, spec in _group_specs(optim_config)
                if not spec["frozen"]}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, groups), schedule, groups


def trainable_grad_norm(grads, groups):
  """Global L2 norm over trainable leaves only (frozen gradients stay dead code)."""
  leaves = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(groups)) if lab != FROZEN]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
