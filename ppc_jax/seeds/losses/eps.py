"""EPS's saliency loss (Lee et al., CVPR'21; `eps.py::get_eps_loss`, identical in halbielee/EPS and
wseg@esp), as pure jnp functions. METHOD.md 3.6 and 11.1-11.3.

ppc_jax keeps the background at channel 0 (EPS's networks keep it last; `ppc_jax.layouts` moves
the fc8 row on conversion), so "the background channel" below is channel 0 and the foreground
classes are channels 1..C-1 in EPS's order.
"""

import jax
import jax.numpy as jnp
import numpy as np

# `(torch.round(p) + 1e-04).sum()`: the reference adds this to every pixel of the denominator.
_OVERLAP_EPS = 1e-4


def legacy_nearest_indices(in_size, out_size):
  """Source indices of torch's legacy `F.interpolate(mode='nearest')` along one axis.

  src = min(floor(dst * (in / out)), in - 1), the scale and the product in float32 as in ATen's
  `nearest_idx` (identity when the sizes are equal). Downsampling 448 -> 56 takes pixel 8 * dst,
  the top-left of each block (`jax.image.resize(..., 'nearest')` samples block centres).

  Returns:
    int numpy array [out_size].
  """
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def legacy_nearest_resize(x, size):
  """[B, H, W] -> [B, h, w] with torch's legacy nearest rule (`legacy_nearest_indices`)."""
  rows = legacy_nearest_indices(x.shape[1], size[0])
  cols = legacy_nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


def saliency_loss(cam, saliency, labels, *, tau=0.4, lam=0.5):
  """EPS's pseudo-pixel loss between a CAM and a saliency map.

  With p = softmax(cam) over all C channels and S the saliency resized to the CAM's size by
  `legacy_nearest_resize`:
    overlap_c = sum(round(p_c) * round(S)) / sum(round(p_c) + 1e-4)       (p detached; c fg)
    valid_c   = overlap_c > tau
    fg_map    = sum of p_c over present, valid classes
    bg_map    = 1 - (p_bg + sum of p_c over present, invalid classes)
    S_hat     = lam * fg_map + (1 - lam) * bg_map
    loss      = mean((S_hat - S)^2) over all pixels and images.
  Rounding is half-to-even, as torch.round. Gradient flows through p into `cam` (not through the
  valid / invalid choice, and not into the saliency).

  Args:
    cam: [B, h, w, C] logits (fc8, or PCM's cam_rv), channel 0 = background.
    saliency: [B, H, W] saliency in [0, 1] (view size).
    labels: [B, C - 1] multi-hot image labels.
    tau: overlap threshold (0.4 in the reference's scripts; its argparse default is 0.5).
    lam: blend between the foreground and background maps (0.5 VOC, 0.9 COCO).

  Returns:
    (loss scalar, dict of intermediates: 'overlap' [B, C-1], 'valid' [B, C-1] bool, 'fg_map',
    'bg_map', 'pred', 'saliency' [B, h, w]).
  """
  b, h, w, c = cam.shape
  if labels.shape != (b, c - 1):
    raise ValueError(f"labels {labels.shape} need CAMs with {labels.shape[-1] + 1} channels "
                     f"(background + one per class), got cam {cam.shape}")
  s = legacy_nearest_resize(jnp.asarray(saliency, jnp.float32), (h, w))
  p = jax.nn.softmax(cam.astype(jnp.float32), axis=-1)
  fg = p[..., 1:]
  rounded = jnp.round(jax.lax.stop_gradient(fg))
  overlap = (jnp.sum(rounded * jnp.round(s)[..., None], axis=(1, 2))
             / jnp.sum(rounded + _OVERLAP_EPS, axis=(1, 2)))
  valid = overlap > tau
  present = jnp.asarray(labels) > 0
  fg_sel = (present & valid).astype(p.dtype)[:, None, None, :]
  bg_sel = (present & ~valid).astype(p.dtype)[:, None, None, :]
  fg_map = jnp.sum(fg * fg_sel, axis=-1)
  bg_map = 1.0 - (p[..., 0] + jnp.sum(fg * bg_sel, axis=-1))
  pred = lam * fg_map + (1.0 - lam) * bg_map
  loss = jnp.mean(jnp.square(pred - s))
  return loss, dict(overlap=overlap, valid=valid, fg_map=fg_map, bg_map=bg_map, pred=pred,
                    saliency=s)
