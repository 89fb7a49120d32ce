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


# Attributes of a bound BatchNorm changed for the calibration call: batch statistics instead of the
# running ones; momentum 0 so the stored running statistics become exactly the batch statistics
# (recovering them from a 0.99-momentum update divides float32 rounding by 0.01); the two-pass
# variance E[(x - mean)^2] instead of E[x^2] - mean^2, which cancels when |mean| >> std.
_CALIBRATION_ATTRS = dict(use_running_average=False, momentum=0.0, use_fast_variance=False)


def _bn_in_batch_mode(next_fun, args, kwargs, context):
  """Interceptor: BatchNorm calls normalise with the batch statistics and store them.

  The layers are built with use_running_average=True (frozen BN), and Flax refuses the flag at call
  time when the constructor set it, so the attributes are set on the bound layer for this one
  call and restored afterwards.
  """
  module = context.module
  if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
    return next_fun(*args, **kwargs)
  previous = {k: getattr(module, k) for k in _CALIBRATION_ATTRS}
  for k, v in _CALIBRATION_ATTRS.items():
    object.__setattr__(module, k, v)
  try:
    return next_fun(*args, **kwargs)
  finally:
    for k, v in previous.items():
      object.__setattr__(module, k, v)


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
  # With momentum 0, Flax's update `m * running + (1 - m) * batch` stores the batch statistics.
  return dict(variables, batch_stats=updates["batch_stats"])


def jit_calibrate(model, sharding=None):
  """jit of `calibrate_batch_stats` with images sharded on the batch axis when a sharding is given."""
  fn = lambda variables, images: calibrate_batch_stats(model, variables, images)
  if sharding is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=(None, sharding))
