"""Wide ResNet-38 ("Model A1" of Wu et al., *Wider or Deeper*) with output stride 8, in Flax Linen.

Block-for-block equal to the PyTorch port `network/resnet38d.py::Net` used by PSA, SEAM, PPC and
EPS (see the project's METHOD.md section 1.1), so that converted ImageNet / trained weights load
by renaming only:

* every conv has no bias; 3x3 convs pad symmetrically by their dilation (torch padding), never
  'SAME', which pads (0, 1) for stride 2 on even sizes;
* blocks are pre-activation (BN -> ReLU -> conv); the 1x1 shortcut conv `conv_branch1` exists when
  the block changes width or stride (always in the bottleneck blocks) and reads the BN-ReLU'd input,
  otherwise the shortcut is the raw input;
* BatchNorm is a frozen affine: running statistics are always used (the reference puts every BN in
  eval mode, also during training), they live in the 'batch_stats' collection. `bn_mode='batch'`
  is the segmentation stage's BN instead (METHOD 11.13): batch statistics when train=True, running
  statistics updated as torch does (`models.batchnorm.TorchBatchNorm`, momentum `bn_momentum`);
* Dropout2d (whole-channel dropout, mask [B, 1, 1, C], scale 1/(1-p)) inside b6 (p=0.3) and b7
  (p=0.5), active only when train=True, rng stream 'dropout'.

Module names equal the reference names (conv1a, b2, b2_1, ..., b7, bn7; inside blocks
bn_branch2a, conv_branch1, conv_branch2a, bn_branch2b1, conv_branch2b1, bn_branch2b2,
conv_branch2b2), which `ppc_jax.weights` relies on.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppc_jax.models.batchnorm import TorchBatchNorm
from ppc_jax.ops.winograd import conv3x3_winograd

# torch.nn.Conv2d's default init (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), ..),
# i.e. variance 1/(3 fan_in). The reference always loads ImageNet weights into the backbone, so
# this only shapes randomly initialised (test / demo) models, which then behave like a fresh torch
# model rather than exploding or vanishing differently.
torch_default_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Reference channel widths at width_divisor=1.
_STEM = 64
_STAGE_WIDTHS = {  # stage: (mid, out)
    2: (128, 128),
    3: (256, 256),
    4: (512, 512),
    5: (512, 1024),
}
_B6_OUT = 2048
_B7_OUT = 4096


CONV_ALGORITHMS = ("direct", "winograd", "auto")


def uses_winograd(algorithm, *, kernel, stride, in_channels, out_channels, min_channels, dtype,
                  train, backend=None):
  """Whether a convolution runs as Winograd F(2x2, 3x3) (`ops.winograd`) rather than XLA's own.

  'direct': never. 'winograd': every stride-1 3x3 conv with in and out channels >= min_channels.
  'auto': as 'winograd' where it is faster: forward-only passes (train=False: CAM inference, the
  random walk's features, segmentation) on the CPU backend in float32. Full-size inference is
  faster that way on the CPU, but the training step is slower and needs nearly twice the memory
  (the backward pass keeps each convolution's transformed input, 4x its size), so training keeps
  XLA's convolutions; on GPU / TPU the vendor libraries choose their
  own algorithm, and in bfloat16 the transforms' extra roundings would cost accuracy.

  Args:
    train: whether the model runs in training mode (the module's `train` argument).
    backend: the JAX backend name; None = `jax.default_backend()`.
  """
  if algorithm not in CONV_ALGORITHMS:
    raise ValueError(f"conv_algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")
  if algorithm == "direct":
    return False
  eligible = (kernel == 3 and stride == 1
              and min(in_channels, out_channels) >= min_channels)
  if algorithm == "winograd":
    return eligible
  backend = jax.default_backend() if backend is None else backend
  return eligible and not train and backend == "cpu" and jnp.dtype(dtype) == jnp.float32


class WinogradConv3x3(nn.Module):
  """A bias-free stride-1 3x3 conv padded by its dilation, by `ops.winograd.conv3x3_winograd`.

  Same parameter ('kernel', [3, 3, Cin, Cout], float32, the same initialiser) and the same function
  as the `nn.Conv` that `_conv` builds otherwise, so checkpoints and converted weights load into
  either; only the float rounding differs.
  """
  features: int
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [B, H, W, Cin] -> [B, H, W, features]."""
    kernel = self.param("kernel", torch_default_conv_init, (3, 3, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return conv3x3_winograd(x, kernel, self.dilation)


def _conv(features, kernel, stride, dilation, name, dtype, algorithm="direct",
          winograd_min_channels=256, train=False):
  """A bias-free conv with torch's symmetric padding (= dilation for 3x3, 0 for 1x1), as x -> y.

  `algorithm` (see `uses_winograd`) picks XLA's convolution or Winograd F(2x2, 3x3) per call,
  from the input's channel count and `train`.
  """

  def apply(x):
    if uses_winograd(algorithm, kernel=kernel, stride=stride, in_channels=x.shape[-1],
                     out_channels=features, min_channels=winograd_min_channels, dtype=dtype,
                     train=train):
      return WinogradConv3x3(features, dilation, dtype, name=name)(x)
    pad = dilation * (kernel // 2)
    return nn.Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        kernel_init=torch_default_conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name)(x)

  return apply


def _block_conv(block, features, kernel, stride, dilation, name, train):
  """`_conv` with the block's dtype and convolution algorithm."""
  return _conv(features, kernel, stride, dilation, name, block.dtype, block.conv_algorithm,
               block.winograd_min_channels, train)


BN_MODES = ("frozen", "batch")


def _bn(name, dtype, bn_mode="frozen", momentum=0.0003, train=False):
  """A BatchNorm2d as a function x -> y.

  'frozen': always the running statistics (flax's BatchNorm, torch's eps); 'batch': torch's
  training-mode BN when `train` (batch statistics, running ones updated with torch `momentum`),
  the running statistics otherwise.
  """
  if bn_mode == "frozen":
    return nn.BatchNorm(
        use_running_average=True, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name)
  if bn_mode != "batch":
    raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
  module = TorchBatchNorm(momentum=momentum, dtype=dtype, name=name)
  return lambda x: module(x, use_batch_stats=train)


def channel_dropout(x, rate, *, train):
  """torch.nn.Dropout2d for NHWC: drops whole channels per example, scales kept ones by 1/(1-p).

  Must be called inside a Linen module's compact method; uses the 'dropout' rng stream.

  Args:
    x: [B, H, W, C].
    rate: drop probability p.
    train: dropout is applied only when True.

  Returns:
    [B, H, W, C].
  """
  # broadcast_dims=(1, 2) makes the Bernoulli mask [B, 1, 1, C]: one draw per (example, channel).
  return nn.Dropout(rate=rate, broadcast_dims=(1, 2), deterministic=not train)(x)


class ResBlock(nn.Module):
  """Basic pre-activation block (two 3x3 convs), `resnet38d.ResBlock`.

  Attributes:
    mid_channels: width after conv_branch2a.
    out_channels: block output width.
    stride: stride of conv_branch2a and of the shortcut conv.
    first_dilation: dilation (= padding) of conv_branch2a; None means `dilation`.
    dilation: dilation (= padding) of conv_branch2b1.
    dtype: compute dtype.
  """
  mid_channels: int
  out_channels: int
  stride: int = 1
  first_dilation: Optional[int] = None
  dilation: int = 1
  bn_mode: str = "frozen"
  bn_momentum: float = 0.0003
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    """x: [B, H, W, Cin] -> (out [B, H/s, W/s, Cout], x_bn_relu [B, H, W, Cin])."""
    first_dilation = self.dilation if self.first_dilation is None else self.first_dilation
    same_shape = x.shape[-1] == self.out_channels and self.stride == 1
    bn = lambda name: _bn(name, self.dtype, self.bn_mode, self.bn_momentum, train)
    conv = lambda *args: _block_conv(self, *args, train=train)
    x_bn_relu = nn.relu(bn("bn_branch2a")(x))
    if same_shape:
      branch1 = x  # the raw input, not the BN-ReLU'd one
    else:
      branch1 = conv(self.out_channels, 1, self.stride, 1, "conv_branch1")(x_bn_relu)
    branch2 = conv(self.mid_channels, 3, self.stride, first_dilation, "conv_branch2a")(x_bn_relu)
    branch2 = nn.relu(bn("bn_branch2b1")(branch2))
    branch2 = conv(self.out_channels, 3, 1, self.dilation, "conv_branch2b1")(branch2)
    return branch1 + branch2, x_bn_relu


class ResBlockBot(nn.Module):
  """Bottleneck pre-activation block (1x1, 3x3, 1x1), `resnet38d.ResBlock_bot`.

  Attributes:
    out_channels: block output width; the inner widths are out/4 and out/2.
    stride: stride of conv_branch2a and of the shortcut conv.
    dilation: dilation (= padding) of the 3x3 conv_branch2b1.
    dropout: Dropout2d rate before conv_branch2b1 and before conv_branch2b2.
    dtype: compute dtype.
  """
  out_channels: int
  stride: int = 1
  dilation: int = 1
  dropout: float = 0.0
  bn_mode: str = "frozen"
  bn_momentum: float = 0.0003
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    """x: [B, H, W, Cin] -> (out [B, H/s, W/s, Cout], x_bn_relu [B, H, W, Cin])."""
    out = self.out_channels
    bn = lambda name: _bn(name, self.dtype, self.bn_mode, self.bn_momentum, train)
    conv = lambda *args: _block_conv(self, *args, train=train)
    x_bn_relu = nn.relu(bn("bn_branch2a")(x))
    # The reference applies conv_branch1 unconditionally here (both uses have in != out).
    branch1 = conv(out, 1, self.stride, 1, "conv_branch1")(x_bn_relu)
    branch2 = conv(out // 4, 1, self.stride, 1, "conv_branch2a")(x_bn_relu)
    branch2 = nn.relu(bn("bn_branch2b1")(branch2))
    branch2 = channel_dropout(branch2, self.dropout, train=train)
    branch2 = conv(out // 2, 3, 1, self.dilation, "conv_branch2b1")(branch2)
    branch2 = nn.relu(bn("bn_branch2b2")(branch2))
    branch2 = channel_dropout(branch2, self.dropout, train=train)
    branch2 = conv(out, 1, 1, 1, "conv_branch2b2")(branch2)
    return branch1 + branch2, x_bn_relu


class ResNet38(nn.Module):
  """ResNet38 backbone, output stride 8 (feature size ceil(n/8) per spatial axis).

  Attributes:
    width_divisor: every channel count is divided by it (1 = the reference model; must divide 64).
    stage_blocks: number of ResBlocks in stages 2..5, the first (strided / widening) one included;
      the reference is (3, 3, 6, 3). Names follow the reference: b{s}, b{s}_1, ..., b{s}_{n-1}.
    dropout_b6: Dropout2d rate inside b6 (reference 0.3).
    dropout_b7: Dropout2d rate inside b7 (reference 0.5).
    freeze_stem: stop gradients at the output of stage 2 (after b2_*). The reference freezes
      conv1a and b2* (and the input needs no gradient), so torch never runs their backward pass;
      with this flag XLA skips it too. Gradients w.r.t. conv1a/b2* params become zero, which is
      exact under the reference's frozen-parameter optimiser. Off by default so the module is a
      plain function of all its parameters.
    bn_mode: 'frozen' (stage 1 and 2: running statistics always) or 'batch' (segmentation:
      batch statistics when train=True, running statistics updated; needs
      mutable=['batch_stats']).
    bn_momentum: torch momentum of the running statistics in 'batch' mode (reference 0.0003).
    remat: recompute each block's activations in the backward pass instead of keeping them
      (`nn.remat` per block): less activation memory for one more forward of the backbone.
      Numerically the same function.
    conv_algorithm: 'direct' (XLA's convolutions), 'winograd' (stride-1 3x3 convs with at least
      `winograd_min_channels` in and out channels by Winograd F(2x2, 3x3), `ops.winograd`) or
      'auto' ('winograd' in forward-only passes on the CPU backend in float32, 'direct' in
      training and elsewhere); see `uses_winograd`.
      The same parameters either way; the results differ by float rounding only.
    winograd_min_channels: below this channel count the Winograd transforms cost more than they
      save on XLA:CPU (`experiments/winograd.py`).
    dtype: compute dtype of convs / BN (params stay float32).
  """
  width_divisor: int = 1
  stage_blocks: Sequence[int] = (3, 3, 6, 3)
  dropout_b6: float = 0.3
  dropout_b7: float = 0.5
  freeze_stem: bool = False
  bn_mode: str = "frozen"
  bn_momentum: float = 0.0003
  remat: bool = False
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    """Runs the backbone.

    Args:
      x: [B, H, W, 3] ImageNet-normalised RGB images.
      train: enables Dropout2d in b6/b7 (needs rngs={'dropout': key}); with bn_mode='batch' also
        batch-statistics BN. With bn_mode='frozen' BN is frozen either way.

    Returns:
      dict of taps, with h = ceil(H/8), w = ceil(W/8) and widths at width_divisor=1:
        conv3: [B, ceil(H/4), ceil(W/4), 256] b4's BN-ReLU'd input,
        conv4: [B, h, w, 512]  b5's BN-ReLU'd input,
        conv5: [B, h, w, 1024] b6's BN-ReLU'd input,
        conv6: [B, h, w, 4096] relu(bn7(b7 output)).
    """
    wd = self.width_divisor
    if wd < 1 or _STEM % wd:
      raise ValueError(f"width_divisor must be a positive divisor of {_STEM}, got {wd}")
    blocks = tuple(int(n) for n in self.stage_blocks)
    if len(blocks) != 4 or min(blocks) < 1:
      raise ValueError(f"stage_blocks must be 4 positive ints (stages 2..5), got {blocks}")
    dt = self.dtype
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
    norm = dict(bn_mode=self.bn_mode, bn_momentum=self.bn_momentum,
                conv_algorithm=self.conv_algorithm,
                winograd_min_channels=self.winograd_min_channels)
    # `train` is a Python bool (static): argument 2 of the block's __call__ (self, x, train).
    block_cls = nn.remat(ResBlock, static_argnums=(2,)) if self.remat else ResBlock
    bot_cls = nn.remat(ResBlockBot, static_argnums=(2,)) if self.remat else ResBlockBot

    x = _conv(_STEM // wd, 3, 1, 1, "conv1a", dt, self.conv_algorithm,
              self.winograd_min_channels, train)(x)

    taps = {}
    for stage, n_blocks in zip((2, 3, 4, 5), blocks):
      mid, out = (c // wd for c in _STAGE_WIDTHS[stage])
      for i in range(n_blocks):
        name = f"b{stage}" if i == 0 else f"b{stage}_{i}"
        if stage in (2, 3, 4):
          stride = 2 if i == 0 else 1
          block = block_cls(mid, out, stride=stride, dtype=dt, name=name, **norm)
        else:
          # b5 widens 512 -> 1024 with a dilation-1 first conv; b5_i use dilation 2 in both.
          block = block_cls(mid, out, stride=1, first_dilation=1 if i == 0 else 2, dilation=2,
                            dtype=dt, name=name, **norm)
        x, x_bn_relu = block(x, train)
        if i == 0 and stage == 4:
          taps["conv3"] = x_bn_relu
        if i == 0 and stage == 5:
          taps["conv4"] = x_bn_relu
      if stage == 2 and self.freeze_stem:
        x = jax.lax.stop_gradient(x)

    x, taps["conv5"] = bot_cls(_B6_OUT // wd, stride=1, dilation=4, dropout=self.dropout_b6,
                               dtype=dt, name="b6", **norm)(x, train)
    x, _ = bot_cls(_B7_OUT // wd, stride=1, dilation=4, dropout=self.dropout_b7,
                   dtype=dt, name="b7", **norm)(x, train)
    taps["conv6"] = nn.relu(_bn("bn7", dt, self.bn_mode, self.bn_momentum, train)(x))
    return taps
