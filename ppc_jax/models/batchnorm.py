"""torch.nn.BatchNorm2d in training mode, for the stages whose BN uses batch statistics.

The segmentation stage (METHOD 11.13) never calls `.train()`/`.eval()` before its training loop,
so torch runs every BN in training mode: each forward normalises with the batch's statistics and
updates the running ones. Flax's `nn.BatchNorm` differs from torch in two ways that matter for an
exact port: its running variance averages the *biased* batch variance (torch the unbiased one,
n/(n-1) larger), and its `momentum` is the weight of the old value (torch's the new one). This
module follows torch; its variables have `nn.BatchNorm`'s names (params 'scale' / 'bias',
batch_stats 'mean' / 'var'), so checkpoints and the torch converter treat both alike.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class TorchBatchNorm(nn.Module):
  """BatchNorm over [B, H, W, C] as torch's BatchNorm2d (affine, track_running_stats).

  Attributes:
    momentum: torch's momentum, the weight of the batch statistic in the running average
      (0.0003 in the reference's ResNet38 and DeepLab heads, 0.1 = torch's default).
    epsilon: added to the variance (torch 1e-5).
    dtype: compute dtype; statistics are always float32.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, use_batch_stats):
    """x: [B, H, W, C] -> [B, H, W, C].

    Args:
      x: the input.
      use_batch_stats: True (torch's training mode): normalise with the batch's mean and biased
        variance over (B, H, W) and update the running statistics (the 'batch_stats' collection
        must be mutable); False: normalise with the running statistics.
    """
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if use_batch_stats:
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
      n = x.shape[0] * x.shape[1] * x.shape[2]
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    y = (x.astype(jnp.float32) - mean) * mul + bias
    return y.astype(self.dtype)
