"""DeepLab for stage 3 (segmentation on the pseudo-masks), as wseg's `segmentation/lib/net`.

  DeepLabV1 ('deeplab_v1', reference `deeplabv1.py`), on `features` = ResNet38's conv6 (4096) or
  ResNet-101's layer4 (2048):
    conv_fov 3x3 dilation 12 (-> 512, no bias), bn_fov, relu, conv_fov2 1x1 (512, no bias),
    bn_fov2, relu, Dropout(0.5), cls_conv 1x1 (-> C, with bias)
  DeepLabV2 ('deeplab_v2', reference `deeplabv2.py` + `operators/ASPP.py`): the released class
    cannot be constructed (METHOD 11.12: it reads self.cfg before setting it and passes `os=` to
    a backbone that takes none); this is what it evidently builds, with the backbone built as in
    deeplabv1.py:
    aspp: four 3x3 branches at dilations 6 / 12 / 18 / 24 (conv no bias, BN, relu; 256 each) and
    an image-pooling branch (global mean, 1x1 conv, BN, relu, broadcast back), concatenated,
    conv_cat 1x1 (1280 -> 256, no bias), BN, relu, Dropout(0.5); then Dropout(0.5), cls_conv 1x1
  logits: bilinear (align_corners=True) to the input size, as the reference's forward.

BatchNorm (METHOD 11.13): the reference never switches its modules out of training mode, so every
BN (backbone and head) normalises with batch statistics and updates its running statistics
(momentum 0.0003 for ResNet38 and the heads, 0.1 for the ResNet-101 backbone); their scale and
bias are in no optimizer group (never updated). Test time is `.eval()`: running statistics, no
dropout. The optimizer groups are the segmentation configs' `config.optim.groups`
(`config_lib.SEGMENT_FROZEN` / `SEGMENT_NEW`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ppc_jax.models.resnet101 import ResNet101
from ppc_jax.models.resnet38 import ResNet38
from ppc_jax.models.resnet38 import _bn
from ppc_jax.ops import resize

# nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu') on the new convs' weights; the
# cls_conv bias keeps torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


BACKBONES = ("resnet38", "resnet101")
HEADS = ("v1", "v2")


def _torch_bias_init(fan_in):
  bound = 1.0 / float(fan_in) ** 0.5
  return lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(
      key, shape, dtype) - bound


def _conv(features, kernel, dilation, name, dtype, *, bias=False, fan_in=None):
  pad = dilation * (kernel // 2)
  kwargs = {}
  if bias:
    kwargs["bias_init"] = _torch_bias_init(fan_in)
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=bias, kernel_init=kaiming_fan_out,
                 dtype=dtype, param_dtype=jnp.float32, name=name, **kwargs)


class ASPP(nn.Module):
  """The reference's ASPP with image pooling: [B, h, w, Cin] -> [B, h, w, dim_out]."""
  dim_out: int = 256
  rates: Sequence[int] = (6, 12, 18, 24)
  dropout: float = 0.5
  bn_mode: str = "batch"
  bn_momentum: float = 0.0003
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    bn = lambda name: _bn(name, self.dtype, self.bn_mode, self.bn_momentum, train)
    branches = []
    for i, rate in enumerate(self.rates, start=1):
      y = _conv(self.dim_out, 3, rate, f"branch{i}_0", self.dtype)(x)
      branches.append(nn.relu(bn(f"bn_branch{i}_1")(y)))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = nn.relu(bn("bn_branch5")(_conv(self.dim_out, 1, 1, "branch5_conv", self.dtype)(
        pooled)))
    # align_corners bilinear from 1x1 is a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.dim_out,)))
    y = _conv(self.dim_out, 1, 1, "conv_cat_0", self.dtype)(jnp.concatenate(branches, -1))
    y = nn.relu(bn("bn_conv_cat_1")(y))
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class DeepLab(nn.Module):
  """Backbone + DeepLab head.

  Attributes:
    num_classes: C (background + foreground classes).
    backbone: 'resnet38' (SEAM-based runs) or 'resnet101' (deep stem, EPS-based runs).
    head: 'v1' (conv_fov / conv_fov2) or 'v2' (ASPP with image pooling).
    width_divisor: divides the backbone's and the head's widths (1 = the reference).
    stage_blocks: ResNet38's blocks per stage 2..5 (reference (3, 3, 6, 3)).
    layers: ResNet-101's bottlenecks per stage (reference (3, 4, 23, 3)).
    dropout_b6, dropout_b7: ResNet38's Dropout2d rates (active in the reference's training).
    head_dropout: the head's Dropout rate (0.5; v2 has two: ASPP's conv_cat and the classifier's).
    bn_mode: 'batch' (the reference) or 'frozen' (running statistics throughout).
    bn_momentum: torch momentum of ResNet38's and the head's BN (0.0003).
    backbone_bn_momentum: ResNet-101's (0.1).
    conv_algorithm, winograd_min_channels: the ResNet38 backbone's convolution algorithm (see
      `ResNet38`); ResNet-101 and the head always use XLA's convolutions.
    dtype: compute dtype.
  """
  num_classes: int = 21
  backbone: str = "resnet38"
  head: str = "v1"
  width_divisor: int = 1
  stage_blocks: Sequence[int] = (3, 3, 6, 3)
  layers: Sequence[int] = (3, 4, 23, 3)
  dropout_b6: float = 0.3
  dropout_b7: float = 0.5
  head_dropout: float = 0.5
  bn_mode: str = "batch"
  bn_momentum: float = 0.0003
  backbone_bn_momentum: float = 0.1
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    """x: [B, H, W, 3] -> {'logits': [B, H, W, C], 'logits_down': [B, h, w, C]} (h = H / 8)."""
    if self.backbone not in BACKBONES:
      raise ValueError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
    if self.head not in HEADS:
      raise ValueError(f"model.head must be one of {HEADS}, got {self.head!r}")
    if self.backbone == "resnet38":
      features = ResNet38(width_divisor=self.width_divisor, stage_blocks=self.stage_blocks,
                          dropout_b6=self.dropout_b6, dropout_b7=self.dropout_b7,
                          bn_mode=self.bn_mode, bn_momentum=self.bn_momentum,
                          conv_algorithm=self.conv_algorithm,
                          winograd_min_channels=self.winograd_min_channels, dtype=self.dtype,
                          name="backbone")(x, train=train)["conv6"]
    else:
      if self.conv_algorithm == "winograd":
        raise ValueError("model.conv_algorithm='winograd' applies to the resnet38 backbone only; "
                         "use 'auto' or 'direct' with backbone='resnet101'")
      features = ResNet101(layers=self.layers, width_divisor=self.width_divisor,
                           bn_mode=self.bn_mode, bn_momentum=self.backbone_bn_momentum,
                           dtype=self.dtype, name="backbone")(x, train=train)["layer4"]
    wd = self.width_divisor
    if self.head == "v1":
      bn = lambda name: _bn(name, self.dtype, self.bn_mode, self.bn_momentum, train)
      y = nn.relu(bn("bn_fov")(_conv(512 // wd, 3, 12, "conv_fov", self.dtype)(features)))
      y = nn.relu(bn("bn_fov2")(_conv(512 // wd, 1, 1, "conv_fov2", self.dtype)(y)))
      width = 512 // wd
    else:
      y = ASPP(dim_out=256 // wd, dropout=self.head_dropout, bn_mode=self.bn_mode, bn_momentum=self.bn_momentum, dtype=self.dtype,
               name="aspp")(features, train=train)
      width = 256 // wd
    y = nn.Dropout(self.head_dropout, deterministic=not train)(y)
    logits_down = _conv(self.num_classes, 1, 1, "cls_conv", self.dtype, bias=True,
                        fan_in=width)(y).astype(jnp.float32)
    logits = resize.resize_bilinear(logits_down, x.shape[1:3], align_corners=True)
    return {"logits": logits, "logits_down": logits_down}
