"""SeamNet: ResNet38 + SEAM's CAM head and PCM + PPC's projection head (Flax Linen).

Mirrors wseg@master `network/resnet38_contrast.py::Net` (METHOD.md sections 2.1, 2.2, 3.2):

  fea         = Dropout2d(0.5)(conv6)                  one mask, shared by fc8 and fc_proj
  cam_down    = fc8(fea)                               [B, h, w, 21], channel 0 = background
  proj        = relu(fc_proj(fea))                     [B, h, w, 128]
  cam_d_norm  = sg(WTA max-norm of relu(cam_down))     no labels used
  f           = [resize_ac(x, (h, w)), relu(f8_3(sg(conv4))), relu(f8_4(sg(conv5)))]   195 ch
  cam_rv_down = PCM(cam_d_norm, f9(f))                 [B, h, w, 21]
  cam, cam_rv = align-corners upsampling of cam_down, cam_rv_down to the input size

(sg = stop_gradient.) So a loss on cam_rv reaches only f9, f8_3 and f8_4.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppc_jax.models.resnet38 import ResNet38, channel_dropout
from ppc_jax.ops.resize import resize_bilinear

# Head widths at width_divisor=1 (reference values).
_F8_3 = 64     # conv4 (512) -> 64
_F8_4 = 128    # conv5 (1024) -> 128
_F9 = 192      # (3 + 64 + 128) -> 192

# torch.nn.init.xavier_uniform_ (gain 1) and with gain 4 (variance scale = gain^2 = 16).
_xavier_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_xavier_uniform_gain4 = nn.initializers.variance_scaling(16.0, "fan_avg", "uniform")
# torch.nn.init.kaiming_normal_ defaults: fan_in, gain sqrt(2), untruncated normal.
_kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# Additive epsilon of the reference, in every max / L2 / column normalisation of this module.
_EPS = 1e-5


def l2_norm(x, axis=-1, keepdims=True):
  """||x||_2 along `axis` with a zero (not NaN) gradient at the zero vector.

  A plain sqrt(sum(x^2)) has an infinite derivative at 0 and gives NaN gradients for all-zero
  pixels (torch's norm backward masks that case to 0; this matches it). The value is exact.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  pos = sq > 0
  # Double-where: the sqrt never sees 0, so its derivative is finite on both branches.
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def cam_d_norm(cam):
  """The no-grad, normalised CAM fed to PCM (reference `with torch.no_grad()` block).

  cam_d = relu(cam); per (image, class) divide relu(cam_d - 1e-5) by (max over pixels + 1e-5);
  background := 1 - max over foreground; foreground entries strictly below the per-pixel
  foreground max are zeroed (winner-take-all, ties kept). Image labels are not used.

  Args:
    cam: [B, h, w, C] fc8 logits, channel 0 = background.

  Returns:
    [B, h, w, C] float, with stop_gradient applied.
  """
  cam = jax.lax.stop_gradient(cam)
  cam_d = nn.relu(cam)
  cam_max = jnp.max(cam_d, axis=(1, 2), keepdims=True) + _EPS
  # XLA rewrites `x / broadcast(m)` into `x * broadcast(1 / m)`, which can be 1 ulp off. Each
  # channel reaches (m - 1e-5) / (m + 1e-5) ~ 1 - 2e-5/m at its own peak; for two classes peaking
  # at the same pixel these are often 1 ulp apart, so the rewrite can merge (or swap) them and
  # the winner-take-all below would differ from torch's true division. The barrier hides the
  # broadcast from that rewrite (cost: one [B, h, w, C] array).
  cam_max = jax.lax.optimization_barrier(jnp.broadcast_to(cam_max, cam_d.shape))
  norm = nn.relu(cam_d - _EPS) / cam_max
  fg = norm[..., 1:]
  fg_max = jnp.max(fg, axis=-1, keepdims=True)
  bg = 1.0 - fg_max
  fg = jnp.where(fg < fg_max, 0.0, fg)
  return jnp.concatenate([bg, fg], axis=-1)


def pcm(cam, g, *, precision=None):
  """Pixel correlation module (reference `Net.PCM`) after f9.

  g is L2-normalised per pixel (+1e-5), aff = relu(g^T g) over the h*w pixels of each image,
  every column j of aff is divided by (sum_i aff[i, j] + 1e-5), and
  out[c, j] = sum_i cam[c, i] aff[i, j].

  Args:
    cam: [B, h, w, C] map to propagate (cam_d_norm; the reference's resize to (h, w) is a no-op).
    g: [B, h, w, D] f9 output.
    precision: einsum precision (None = JAX's default matmul precision).

  Returns:
    [B, h, w, C] refined CAM (cam_rv_down).
  """
  b, h, w, c = cam.shape
  g = g.reshape(b, h * w, -1)
  g = g / (l2_norm(g, axis=-1) + _EPS)
  aff = nn.relu(jnp.einsum("bid,bjd->bij", g, g, precision=precision))
  # Column normalisation: the sum runs over i (torch dim=1).
  aff = aff / (jnp.sum(aff, axis=1, keepdims=True) + _EPS)
  out = jnp.einsum("bic,bij->bjc", cam.reshape(b, h * w, c).astype(aff.dtype), aff,
                   precision=precision)
  return out.reshape(b, h, w, c)


def _conv1x1(features, init, name, dtype):
  return nn.Conv(features, kernel_size=(1, 1), use_bias=False, kernel_init=init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class SeamNet(nn.Module):
  """ResNet38 + SEAM (fc8, PCM) + PPC projection head.

  Attributes:
    num_classes: CAM channels = the class list's count with background (21 for VOC's 20 classes;
      `config.model.num_classes`, checked against the data's class list), never scaled.
    width_divisor: divides the backbone widths; the head input widths follow. For small variants
      (width_divisor > 1) the PCM widths f8_3 / f8_4 / f9 (64 / 128 / 192) are divided too
      (floored at 1), keeping the reference ratios. At 1 every width is the reference one.
    stage_blocks: ResBlocks in backbone stages 2..5 (reference (3, 3, 6, 3)).
    proj_dim: fc_proj width (reference 128); taken literally, not divided by width_divisor, since
      it is an explicit hyper-parameter of the contrast loss. None removes the head (no 'proj').
    dropout_b6, dropout_b7: Dropout2d rates inside the backbone's b6 / b7.
    dropout_fea: Dropout2d rate on conv6, one mask shared by fc8 and fc_proj.
    freeze_stem: see `ResNet38.freeze_stem` (skip the backward pass of the frozen conv1a/b2*).
    pcm: False removes PCM (f8_3, f8_4, f9; no 'cam_rv' / 'cam_rv_down' outputs), as in the EPS
      network `resnet38_eps.Net` (then also dropout_fea=0 and proj_dim=None).
    remat: see `ResNet38.remat`.
    conv_algorithm, winograd_min_channels: see `ResNet38` (Winograd 3x3 convolutions).
    dtype: compute dtype (params stay float32). The cam_d_norm / PCM path runs in float32.
    pcm_precision: matmul precision of the PCM einsums (None = JAX default).
  """
  num_classes: int = 21
  width_divisor: int = 1
  stage_blocks: Sequence[int] = (3, 3, 6, 3)
  proj_dim: Optional[int] = 128
  dropout_b6: float = 0.3
  dropout_b7: float = 0.5
  dropout_fea: float = 0.5
  freeze_stem: bool = False
  pcm: bool = True
  remat: bool = False
  conv_algorithm: str = "direct"
  winograd_min_channels: int = 256
  dtype: Any = jnp.float32
  pcm_precision: Any = None

  @nn.compact
  def __call__(self, x, *, train=False, upsample=True):
    """Forward pass of one view.

    Args:
      x: [B, H, W, 3] ImageNet-normalised RGB.
      train: enables all Dropout2d layers (needs rngs={'dropout': key}). BN is frozen either way.
      upsample: also return 'cam' and 'cam_rv' at the input size (align_corners=True). False skips
        the two resizes (and omits those keys), e.g. for inference code that resizes by itself.

    Returns:
      dict with h = ceil(H/8), w = ceil(W/8):
        cam: [B, H, W, C] fc8 logits, upsampled (only if upsample),
        cam_rv: [B, H, W, C] PCM-refined CAM, upsampled (only if upsample and pcm),
        cam_down: [B, h, w, C] fc8 logits,
        cam_rv_down: [B, h, w, C] PCM output (only if pcm),
        proj: [B, h, w, proj_dim] post-ReLU projection (only if proj_dim is not None),
        features: {'conv3', 'conv4', 'conv5', 'conv6'} backbone taps.
    """
    wd = self.width_divisor
    in_h, in_w = x.shape[1], x.shape[2]
    feats = ResNet38(
        width_divisor=wd, stage_blocks=tuple(self.stage_blocks), dropout_b6=self.dropout_b6,
        dropout_b7=self.dropout_b7, freeze_stem=self.freeze_stem, remat=self.remat,
        conv_algorithm=self.conv_algorithm, winograd_min_channels=self.winograd_min_channels,
        dtype=self.dtype, name="backbone")(x, train=train)

    # One Dropout2d call, so fc8 and fc_proj see the same dropped channels (reference dropout7).
    fea = channel_dropout(feats["conv6"], self.dropout_fea, train=train)
    cam_down = _conv1x1(self.num_classes, _xavier_uniform, "fc8", self.dtype)(fea)
    cam_down = cam_down.astype(jnp.float32)
    out = {}
    if self.proj_dim is not None:
      proj = _conv1x1(self.proj_dim, _xavier_uniform, "fc_proj", self.dtype)(fea)
      out["proj"] = nn.relu(proj).astype(jnp.float32)

    out["cam_down"] = cam_down
    if upsample:
      out["cam"] = resize_bilinear(cam_down, (in_h, in_w), align_corners=True)
    if self.pcm:
      cam_rv_down = self._pcm_branch(x, cam_down, feats)
      out["cam_rv_down"] = cam_rv_down
      if upsample:
        out["cam_rv"] = resize_bilinear(cam_rv_down, (in_h, in_w), align_corners=True)
    out["features"] = feats
    return out

  def _pcm_branch(self, x, cam_down, feats):
    """cam_rv_down [B, h, w, C] from the fc8 logits, the input image and the backbone taps."""
    wd = self.width_divisor
    h, w = cam_down.shape[1], cam_down.shape[2]
    norm_cam = cam_d_norm(cam_down)
    # conv4 / conv5 are detached: PCM trains f8_3, f8_4, f9 only.
    f8_3 = nn.relu(_conv1x1(max(1, _F8_3 // wd), _kaiming_normal, "f8_3", self.dtype)(
        jax.lax.stop_gradient(feats["conv4"])))
    f8_4 = nn.relu(_conv1x1(max(1, _F8_4 // wd), _kaiming_normal, "f8_4", self.dtype)(
        jax.lax.stop_gradient(feats["conv5"])))
    x_s = resize_bilinear(x.astype(jnp.float32), (h, w), align_corners=True)
    f = jnp.concatenate(
        [x_s, f8_3.astype(jnp.float32), f8_4.astype(jnp.float32)], axis=-1)
    # f9 in float32: its output is L2-normalised and squared into an affinity, where low
    # precision hurts most; it is a tiny 1x1 conv.
    g = _conv1x1(max(1, _F9 // wd), _xavier_uniform_gain4, "f9", jnp.float32)(f)
    return pcm(norm_cam, g, precision=self.pcm_precision)
