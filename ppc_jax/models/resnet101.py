"""The segmentation stage's deep-stem dilated ResNet-101 (reference `segmentation/lib/net/backbone/
resnet.py`, the PyTorch-Encoding "resnet101s"; METHOD 11.11), output stride 8, in Flax Linen.

  stem   conv1_0 3x3/2 (3 -> 64), bn1_1, relu, conv1_3 3x3 (64 -> 64), bn1_4, relu,
         conv1_6 3x3 (64 -> 128); bn1, relu; max-pool 3x3/2 pad 1          -> stride 4
  layer1 3 bottlenecks, 64 -> 256                                           -> stride 4
  layer2 4 bottlenecks, 128 -> 512, stride 2                                -> stride 8
  layer3 23 bottlenecks, 256 -> 1024, stride 1, dilation 2 (first block 1)
  layer4 3 bottlenecks, 512 -> 2048, stride 1, dilation 4 (first block 2)
Bottleneck (v1.5: the stride sits in the 3x3): conv1 1x1, bn1, relu, conv2 3x3 (stride,
dilation = padding), bn2, relu, conv3 1x1 (x4), bn3; shortcut = downsample (1x1 conv with the
stride + BN) when the shape changes; relu(sum). No conv has a bias; BN momentum 0.1 (torch's).

Names: torch's with '.' between a container and its index replaced by '_' and the stem's and the
shortcut's BatchNorms prefixed so that every BN name starts with 'bn' (the converter's rule):
  torch conv1.0 / conv1.1 / conv1.3 / conv1.4 / conv1.6  ->  conv1_0 / bn1_1 / conv1_3 / bn1_4 / conv1_6
  torch layer3.7.conv2                                   ->  layer3_7/conv2
  torch layer2.0.downsample.0 / downsample.1             ->  layer2_0/downsample_0 / bn_downsample_1
(`ppc_jax.segment.seg_weights` maps the keys both ways).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppc_jax.models.resnet38 import _bn

# torch's init of this ResNet: normal(0, sqrt(2 / (k * k * out))), i.e. kaiming normal, fan_out.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_PLANES = (64, 128, 256, 512)
_EXPANSION = 4


def _conv(features, kernel, stride, dilation, name, dtype):
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=False, kernel_init=kaiming_fan_out, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class Bottleneck(nn.Module):
  """x: [B, H, W, Cin] -> [B, H/stride, W/stride, 4 * planes]."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  bn_mode: str = "batch"
  bn_momentum: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    bn = lambda name: _bn(name, self.dtype, self.bn_mode, self.bn_momentum, train)
    out = nn.relu(bn("bn1")(_conv(self.planes, 1, 1, 1, "conv1", self.dtype)(x)))
    out = nn.relu(bn("bn2")(_conv(self.planes, 3, self.stride, self.dilation, "conv2",
                                  self.dtype)(out)))
    out = bn("bn3")(_conv(self.planes * _EXPANSION, 1, 1, 1, "conv3", self.dtype)(out))
    if self.downsample:
      x = bn("bn_downsample_1")(_conv(self.planes * _EXPANSION, 1, self.stride, 1,
                                      "downsample_0", self.dtype)(x))
    return nn.relu(out + x)


def max_pool_3x3_s2(x):
  """torch MaxPool2d(3, stride=2, padding=1): -inf padding, floor output size."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet101(nn.Module):
  """Deep-stem dilated ResNet (101 with the default `layers`), output stride 8.

  Attributes:
    layers: bottlenecks per stage (reference (3, 4, 23, 3)); smaller for tests.
    width_divisor: divides every width (1 = the reference; must divide 64).
    bn_mode: 'batch' (the reference's segmentation training: batch statistics when train=True)
      or 'frozen'.
    bn_momentum: torch momentum of the backbone's running statistics (reference 0.1).
    dtype: compute dtype.
  """
  layers: Sequence[int] = (3, 4, 23, 3)
  width_divisor: int = 1
  bn_mode: str = "batch"
  bn_momentum: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    """x: [B, H, W, 3] -> {'layer4': [B, h, w, 2048 / width_divisor]}, h = ceil(H / 8) for
    inputs whose size is a multiple of 8 (torch's floor arithmetic of the strided stem)."""
    wd = self.width_divisor
    if wd < 1 or 64 % wd:
      raise ValueError(f"width_divisor must be a positive divisor of 64, got {wd}")
    if len(self.layers) != 4 or min(self.layers) < 1:
      raise ValueError(f"layers must be 4 positive ints, got {tuple(self.layers)}")
    dt = self.dtype
    bn = lambda name: _bn(name, dt, self.bn_mode, self.bn_momentum, train)
    x = nn.relu(bn("bn1_1")(_conv(64 // wd, 3, 2, 1, "conv1_0", dt)(x)))
    x = nn.relu(bn("bn1_4")(_conv(64 // wd, 3, 1, 1, "conv1_3", dt)(x)))
    x = _conv(128 // wd, 3, 1, 1, "conv1_6", dt)(x)
    x = max_pool_3x3_s2(nn.relu(bn("bn1")(x)))
    taps = {}
    inplanes = 128 // wd
    # (stride, dilation of the first block, dilation of the others) per stage.
    plan = ((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4))
    for stage, (n_blocks, planes, (stride, first_dil, dil)) in enumerate(
        zip(self.layers, _PLANES, plan), start=1):
      planes //= wd
      for i in range(n_blocks):
        down = i == 0 and (stride != 1 or inplanes != planes * _EXPANSION)
        x = Bottleneck(planes, stride=stride if i == 0 else 1,
                       dilation=first_dil if i == 0 else dil, downsample=down,
                       bn_mode=self.bn_mode, bn_momentum=self.bn_momentum, dtype=dt,
                       name=f"layer{stage}_{i}")(x, train=train)
        inplanes = planes * _EXPANSION
      taps[f"layer{stage}"] = x
    return taps
