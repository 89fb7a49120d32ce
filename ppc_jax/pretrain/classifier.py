"""The pretraining network: a backbone, global average pooling and one linear classifier.

  features = backbone(x)                  ResNet38 'conv6' [B, h, w, 4096 / wd] (relu(bn7(b7)))
                                          or ResNet-101 'layer4' [B, h, w, 2048 / wd]
  pooled   = mean over (h, w), float32    [B, C]
  logits   = fc(dropout(pooled))          [B, num_classes], float32

The backbone is the module the later stages build, under the same name ('backbone') and with
the same parameter tree, so its parameters and BN statistics hand over unchanged
(`config.init.backbone_workdir`). Both backbones keep their output stride 8 (dilated last
stages), as the later stages use them: the same parameters as a stride-32 classification
network, at a higher cost per image.

BatchNorm: `bn_mode='batch'` (pretraining from scratch) normalises with the batch's statistics
and updates the running ones (torch's training mode, momentum `bn_momentum`); the step applies
the model with `mutable=['batch_stats']`. 'frozen' keeps the running statistics (fine-tuning a
pretrained backbone).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ppc_jax.models.resnet101 import ResNet101
from ppc_jax.models.resnet38 import ResNet38

BACKBONES = ("resnet38", "resnet101")


class Classifier(nn.Module):
  """Backbone + global average pool + linear classifier.

  Attributes:
    num_classes: K, the classes of the data set (checked against it by the trainer).
    backbone: 'resnet38' (stage 1's, any width) or 'resnet101' (DeepLab's deep-stem ResNet-101).
    width_divisor: divides every backbone width (1 = the reference networks).
    stage_blocks: ResNet38's ResBlocks in stages 2..5 (reference (3, 3, 6, 3)).
    layers: ResNet-101's bottlenecks per stage (reference (3, 4, 23, 3)).
    dropout_b6, dropout_b7: ResNet38's Dropout2d rates inside b6 / b7.
    dropout: dropout on the pooled features before `fc` (0 = none).
    bn_mode: 'batch' (batch statistics in training) or 'frozen' (running statistics always).
    bn_momentum: torch momentum of the running statistics (0.1 = torch's default).
    remat: ResNet38 only: recompute each block in the backward pass (less memory).
    conv_algorithm, winograd_min_channels: ResNet38's 3x3 convolutions (see `ResNet38`).
    dtype: compute dtype of the backbone ('bfloat16' on accelerators); parameters, BN
      statistics, the pooled features and the logits stay float32.
  """
  num_classes: int = 1000
  backbone: str = "resnet38"
  width_divisor: int = 1
  stage_blocks: Sequence[int] = (3, 3, 6, 3)
  layers: Sequence[int] = (3, 4, 23, 3)
  dropout_b6: float = 0.0
  dropout_b7: float = 0.0
  dropout: float = 0.0
  bn_mode: str = "batch"
  bn_momentum: float = 0.1
  remat: bool = False
  conv_algorithm: str = "auto"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    """Classifies a batch.

    Args:
      x: [B, H, W, 3] ImageNet-normalised RGB images.
      train: dropout on, and with bn_mode='batch' batch-statistics BN (needs
        mutable=['batch_stats'] and rngs={'dropout': key}).

    Returns:
      {'logits': [B, num_classes] float32, 'features': [B, C] float32 pooled features}.
    """
    if self.backbone == "resnet38":
      taps = ResNet38(width_divisor=self.width_divisor, stage_blocks=self.stage_blocks,
                      dropout_b6=self.dropout_b6, dropout_b7=self.dropout_b7,
                      bn_mode=self.bn_mode, bn_momentum=self.bn_momentum, remat=self.remat,
                      conv_algorithm=self.conv_algorithm,
                      winograd_min_channels=self.winograd_min_channels, dtype=self.dtype,
                      name="backbone")(x, train=train)
      features = taps["conv6"]
    elif self.backbone == "resnet101":
      if self.conv_algorithm == "winograd":
        raise ValueError("model.conv_algorithm='winograd' applies to the resnet38 backbone only")
      features = ResNet101(layers=self.layers, width_divisor=self.width_divisor,
                           bn_mode=self.bn_mode, bn_momentum=self.bn_momentum, dtype=self.dtype,
                           name="backbone")(x, train=train)["layer4"]
    else:
      raise ValueError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
    # The mean over h * w positions in float32: in bfloat16 the sum of 784 positions (224 px at
    # stride 8) would lose the last bits of every feature.
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    # A small normal initialisation: the first steps' softmax starts near uniform (loss log K).
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                      bias_init=nn.initializers.zeros, dtype=jnp.float32,
                      param_dtype=jnp.float32, name="fc")(pooled)
    return {"logits": logits, "features": pooled}
