"""AffinityNet: ResNet38 + PSA's affinity feature heads (Flax Linen).

Mirrors PSA / wseg `network/resnet38_aff.py::Net` (METHOD.md 4.3, "Mask (after refinement)"):

  f8_3     = elu(f8_3(conv4))                       512 -> 64,   1x1, no bias
  f8_4     = elu(f8_4(conv5))                       1024 -> 128, 1x1, no bias
  f8_5     = elu(f8_5(conv6))                       4096 -> 256, 1x1, no bias
  features = elu(f9([f8_3, f8_4, f8_5]))            448 -> 448,  1x1, no bias   [B, h, w, 448]

No stop_gradient anywhere (unlike SEAM's PCM heads): the affinity loss trains the backbone too.
No dropout on conv6 (only the backbone's own Dropout2d in b6 / b7, active when train=True).
The pair affinities exp(-mean_c |f_i - f_j|) are `ppc_jax.refine.affinity_loss.pair_affinity` (training)
and `ppc_jax.refine.random_walk.dense_affinity` (inference), not part of the module.

Training setup of the reference (`aff_train.py`, `resnet38d.Net.train`), for the optimizer:
* frozen, never updated: conv1a, b2, b2_1, b2_2 (`not_training`; they sit in the backbone group,
  built before the freeze, but have no gradient) and every BatchNorm (eval mode, so running
  statistics, and weight / bias frozen), as stage 1;
* new layers f8_3, f8_4, f8_5, f9 (`from_scratch_layers`): 10 x lr, weight decay 5e-4;
* the other backbone convs: lr, weight decay 5e-4. No layer has a bias. lr 0.01, batch 8,
  8 epochs, poly 0.9 (the same PolyOptimizer, momentum quirk included).
The AffinityNet configs' `config.optim.groups` say so (`config_lib.AFFINITY_FROZEN` /
`AFFINITY_NEW`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ppc_jax.models.resnet38 import ResNet38

# Head widths at width_divisor=1 (reference values); f9's width is their sum (448).
_F8_3 = 64     # conv4 (512) -> 64
_F8_4 = 128    # conv5 (1024) -> 128
_F8_5 = 256    # conv6 (4096) -> 256

# torch.nn.init.kaiming_normal_ defaults (fan_in, gain sqrt(2), untruncated normal) for f8_*, and
# torch.nn.init.xavier_uniform_(gain=4) (variance scale = gain^2 = 16) for f9.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
xavier_uniform_gain4 = nn.initializers.variance_scaling(16.0, "fan_avg", "uniform")



def _conv1x1(features, init, name, dtype):
  return nn.Conv(features, kernel_size=(1, 1), use_bias=False, kernel_init=init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class AffinityNet(nn.Module):
  """ResNet38 + f8_3 / f8_4 / f8_5 / f9 affinity feature heads.

  Attributes:
    width_divisor: divides the backbone widths and the head widths f8_3 / f8_4 / f8_5 (64 / 128 /
      256, floored at 1); f9 maps their concatenation to the same width (448 / width_divisor when
      it divides 64). At 1 every width is the reference one.
    stage_blocks: ResBlocks in backbone stages 2..5 (reference (3, 3, 6, 3)).
    dropout_b6, dropout_b7: Dropout2d rates inside the backbone's b6 / b7 (reference 0.3 / 0.5,
      active in the reference's training since only BN is put in eval mode).
    freeze_stem: see `ResNet38.freeze_stem` (skip the backward pass of the frozen conv1a / b2*).
    conv_algorithm, winograd_min_channels: see `ResNet38` (Winograd 3x3 convolutions).
    dtype: compute dtype of the backbone and f8_* heads (params stay float32). f9 and the output
      are float32: the features are differenced and exponentiated into affinities, and then
      raised to the 8th power by the random walk.
  """
  width_divisor: int = 1
  stage_blocks: Sequence[int] = (3, 3, 6, 3)
  dropout_b6: float = 0.3
  dropout_b7: float = 0.5
  freeze_stem: bool = False
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    """Affinity features of a batch.

    Args:
      x: [B, H, W, 3] ImageNet-normalised RGB (at inference the reference zero-pads the
        normalised image to a multiple of 8 first; see `refine.random_walk`).
      train: enables the backbone's Dropout2d (needs rngs={'dropout': key}). BN is frozen either
        way.

    Returns:
      dict with 'features': [B, h, w, F] float32, h = ceil(H/8), w = ceil(W/8),
      F = 448 / width_divisor (the f8_* widths' sum).
    """
    wd = self.width_divisor
    feats = ResNet38(
        width_divisor=wd, stage_blocks=tuple(self.stage_blocks), dropout_b6=self.dropout_b6,
        dropout_b7=self.dropout_b7, freeze_stem=self.freeze_stem,
        conv_algorithm=self.conv_algorithm, winograd_min_channels=self.winograd_min_channels,
        dtype=self.dtype, name="backbone")(x, train=train)
    heads = [
        nn.elu(_conv1x1(max(1, width // wd), kaiming_normal, name, self.dtype)(feats[tap]))
        for width, name, tap in ((_F8_3, "f8_3", "conv4"), (_F8_4, "f8_4", "conv5"),
                                 (_F8_5, "f8_5", "conv6"))]
    f = jnp.concatenate([h.astype(jnp.float32) for h in heads], axis=-1)
    out = nn.elu(_conv1x1(f.shape[-1], xavier_uniform_gain4, "f9", jnp.float32)(f))
    return {"features": out}
