"""Data-dependent initialisation of the frozen BatchNorm statistics, for runs without ImageNet weights.

The reference always starts from ImageNet-trained ResNet38 weights and freezes every BatchNorm at
their running statistics. A from-scratch run (the CPU demo, ablations on synthetic data) has no
such statistics: with mean 0 / variance 1 the "normalisation" is the identity and a deep
pre-activation net with frozen BN trains poorly. This module sets each BN's statistics to the
batch statistics of real training images, as they would be seen by that layer with all earlier
layers already calibrated, so every layer starts normalised. The statistics stay frozen afterwards
(the method is unchanged); only their starting value differs from the identity.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def _bn_in_batch_mode(next_fun, args, kwargs, context):
  """Interceptor: BatchNorm calls normalise with the batch statistics and update the running ones.

  The layers are built with use_running_average=True (frozen BN), and Flax refuses the flag at call
  time when the constructor set it, so the attribute is flipped on the bound layer for this one
  call and restored afterwards.
  """
  module = context.module
  if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
    return next_fun(*args, **kwargs)
  previous = module.use_running_average
  object.__setattr__(module, "use_running_average", False)
  try:
    return next_fun(*args, **kwargs)
  finally:
    object.__setattr__(module, "use_running_average", previous)


def calibrate_batch_stats(model, variables, images):
  """Returns `variables` with every BN's {'mean', 'var'} replaced by statistics of `images`.

  One forward pass in which each BatchNorm normalises with its input's batch statistics, so layer
  l's statistics are measured on the output of the already-normalised layers before it; in eval
  mode afterwards, the network reproduces that forward pass exactly on these images.

  Args:
    model: the Flax module (e.g. SeamNet); called with train=False (no dropout).
    variables: {'params', 'batch_stats'} with the initial statistics (mean 0, var 1 as created).
    images: [N, H, W, 3] normalised training images (the more, the better the estimate).

  Returns:
    variables with new 'batch_stats'.
  """
  with nn.intercept_methods(_bn_in_batch_mode):
    _, updates = model.apply(variables, images, train=False, mutable=["batch_stats"])
  # Flax updates running = m * running + (1 - m) * batch; recover `batch` from the known old value.
  m = nn.BatchNorm.momentum  # the layers keep Flax's default momentum (0.99)
  batch_stats = jax.tree.map(lambda old, new: (new - m * old) / (1.0 - m),
                             variables["batch_stats"], updates["batch_stats"])
  return dict(variables, batch_stats=batch_stats)


def jit_calibrate(model, sharding=None):
  """jit of `calibrate_batch_stats` with images sharded on the batch axis when a sharding is given."""
  fn = lambda variables, images: calibrate_batch_stats(model, variables, images)
  if sharding is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=(None, sharding))
