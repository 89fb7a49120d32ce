"""The segmentation train step and optimizer (stage 3), pure; jitted and sharded by the caller.

Optimizer (reference `segmentation/experiment/*/train.py`, METHOD 11.13): torch SGD with four
parameter groups, momentum 0.9, coupled weight decay 5e-4 on weights only:
  weight      backbone conv weights                 lr x 1,  weight decay
  bias        backbone conv biases (there are none) lr x 2,  no decay
  new_weight  the head's conv weights (NEW_LAYERS)  lr x 10, weight decay
  new_bias    the head's conv biases (cls_conv)     lr x 20, no decay
  frozen      every BatchNorm scale and bias        never updated (the reference collects only
                                                    nn.Conv2d parameters)
and lr_t = lr (1 - t / (T + 1)) ** 0.9 for the 0-based step t of T (`optim.poly_schedule` with
max_step T + 1). `config.segment.train_bn=True` puts the BN scale and bias in a group 'bn' (lr x 1,
no decay) instead: a documented departure, off in every reference config.

No data or TensorFlow import here: benchmarks and accelerator hosts use the step alone.
"""

import re

import jax
import jax.numpy as jnp
import optax

from ppc_jax import optim
from ppc_jax.segment import seg_loss

WEIGHT, BIAS, NEW_WEIGHT, NEW_BIAS, BN, FROZEN = (
    "weight", "bias", "new_weight", "new_bias", "bn", "frozen")
LR_MULT = {WEIGHT: 1.0, BIAS: 2.0, NEW_WEIGHT: 10.0, NEW_BIAS: 20.0, BN: 1.0}
DECAYED = (WEIGHT, NEW_WEIGHT)


def param_groups(params, new_layers, bn_params, *, train_bn=False):
  """Labels every parameter leaf with its group (see the module docstring).

  Args:
    params: the Flax 'params' tree.
    new_layers: regex of the head's layers over '/'-joined paths (`models.deeplab.NEW_LAYERS`).
    bn_params: regex of the BatchNorm parameters (`models.deeplab.FROZEN_PARAMS`).
    train_bn: BN parameters go to 'bn' instead of 'frozen'.
  """
  new = re.compile(new_layers)
  bn = re.compile(bn_params)

  def label(path, _):
    name = optim.path_str(path)
    if bn.search(name):
      return BN if train_bn else FROZEN
    is_bias = name.endswith("/bias")
    if new.search(name):
      return NEW_BIAS if is_bias else NEW_WEIGHT
    return BIAS if is_bias else WEIGHT

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim_config, groups, num_steps):
  """(tx, schedule) of the segmentation SGD.

  Args:
    optim_config: `config.optim` (lr, poly_power, weight_decay, momentum_mode, poly_max_step:
      0 = the reference's T + 1).
    groups: `param_groups(...)`.
    num_steps: T, the run's length.
  """
  if num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  momentum = optim.momentum_value(optim_config)
  max_step = int(optim_config.poly_max_step) or num_steps + 1
  schedule = optim.poly_schedule(optim_config.lr, max_step, optim_config.poly_power)

  def sgd(group):
    mult = LR_MULT[group]
    parts = [optax.add_decayed_weights(optim_config.weight_decay)] if group in DECAYED else []
    return optax.chain(*parts, optax.trace(decay=momentum, nesterov=False),
                       optax.scale_by_schedule(lambda t: -mult * schedule(t)))

  transforms = {g: sgd(g) for g in LR_MULT}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, groups), schedule


def make_seg_train_step(model, tx, schedule, groups):
  """The (unjitted) step `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: `models.DeepLab` (output {'logits': [B, H, W, C], ...}).
    tx, schedule, groups: from `make_optimizer` / `param_groups`.

  Returns:
    train_step with batch['image']: [B, S, S, 3], batch['mask']: uint8 [B, S, S] (255 ignored);
    the BN running statistics of the new state are the ones the forward pass updated (torch's
    training-mode BN over the global batch). metrics: loss, pixel_acc (against the pseudo-masks,
    labelled pixels), labelled (fraction of labelled pixels), lr, grad_norm.
  """

  def train_step(state, batch, rng):
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    mask = batch["mask"]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      out, updates = model.apply(variables, batch["image"], train=True,
                                 mutable=["batch_stats"], rngs={"dropout": rng})
      loss, num_valid = seg_loss.cross_entropy_ignore(out["logits"], mask)
      return loss, (updates.get("batch_stats", state["batch_stats"]), out["logits"], num_valid)

    (loss, (batch_stats, logits, num_valid)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    valid = mask != seg_loss.IGNORE_INDEX
    correct = jnp.sum((jnp.argmax(logits, -1) == mask.astype(jnp.int32)) & valid)
    metrics = {
        "loss": loss,
        "pixel_acc": correct / jnp.maximum(num_valid, 1),
        "labelled": num_valid / mask.size,
        "lr": schedule(step),
        "grad_norm": optim.trainable_grad_norm(grads, groups),
    }
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                     batch_stats=batch_stats)
    return new_state, metrics

  return train_step
