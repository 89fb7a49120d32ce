"""AffinityNet pair affinities and training loss (PSA `aff_train.py`, as run by wseg / SEAM).

METHOD.md 4.3 and 11.8-11.9. The pair geometry (offsets, from / to windows, radius shrink) is
`ppc_jax.refine.affinity_labels.pair_geometry`; the bg / fg / neg labels come from
`affinity_labels.pair_labels` and share its [D, P] layout.
"""

import jax
import jax.numpy as jnp

from ppc_jax.refine.affinity_labels import IGNORE
from ppc_jax.refine.affinity_labels import pair_geometry

# The reference's additive epsilon inside both logs and on the three pair counts.
_EPS = 1e-5


def _crop(x, window):
  """x [B, h, w, C] restricted to ((r0, r1), (c0, c1))."""
  (r0, r1), (c0, c1) = window
  return x[:, r0:r1, c0:c1]


def pair_affinity(features, radius=5):
  """exp(-mean_c |f_from - f_to|) for every reference pair (resnet38_aff.Net.forward).

  Static slices instead of the reference's index_select: the to pixels of one offset form the
  from window shifted by (dy, dx), so each offset is one fused slice-subtract-reduce and the
  gradient is a pad rather than a scatter-add. The channel mean is taken per offset, so no
  [B, D, P, C] array is ever built (the reference materialises it; 1.2 GB at batch 8, 56^2, 448).

  Args:
    features: [B, h, w, C] AffinityNet features (any float dtype; computed in float32).
    radius: requested radius (shrink rule of `affinity_labels.effective_radius` applied).

  Returns:
    [B, D, P] float32 affinities in (0, 1], D offsets by P from pixels (row-major), the layout of
    `affinity_labels.pair_labels`.
  """
  if features.ndim != 4:
    raise ValueError(f"pair_affinity expects [B, h, w, C], got shape {features.shape}")
  b, h, w, _ = features.shape
  geom = pair_geometry(h, w, radius)
  if not geom.num_offsets:
    return jnp.zeros((b, 0, geom.num_from), jnp.float32)
  features = features.astype(jnp.float32)
  f_from = _crop(features, geom.from_window)
  affs = [jnp.exp(-jnp.mean(jnp.abs(_crop(features, wnd) - f_from), axis=-1)).reshape(b, -1)
          for wnd in geom.to_windows]
  return jnp.stack(affs, axis=1)


def affinity_loss(aff, bg, fg, neg):
  """bg_loss / 4 + fg_loss / 4 + neg_loss / 2, exactly as `aff_train.py`.

    bg_loss  = sum(-bg  * log(aff + 1e-5))     / (sum(bg)  + 1e-5)
    fg_loss  = sum(-fg  * log(aff + 1e-5))     / (sum(fg)  + 1e-5)
    neg_loss = sum(-neg * log(1 + 1e-5 - aff)) / (sum(neg) + 1e-5)

  The sums run over the whole batch jointly (one mean over all pairs of all images, not a mean of
  per-image means): the reference sums the [B, D, P] label tensors of the full (DataParallel-
  gathered) batch. Under jit with a sharded batch the sums are global as well. A kind with no
  pairs contributes 0.

  Args:
    aff: [B, D, P] pair affinities (`pair_affinity`).
    bg, fg, neg: [B, D, P] float pair indicators (`affinity_labels.pair_labels`, stacked). They
      are constants: no gradient flows into them.

  Returns:
    (loss scalar, metrics dict of scalars: 'loss', 'bg_loss', 'fg_loss', 'neg_loss', and the raw
    pair counts 'bg_count', 'fg_count', 'neg_count' (without the 1e-5)).
  """
  aff = aff.astype(jnp.float32)
  bg, fg, neg = (jax.lax.stop_gradient(jnp.asarray(x, jnp.float32)) for x in (bg, fg, neg))
  bg_count, fg_count, neg_count = jnp.sum(bg), jnp.sum(fg), jnp.sum(neg)
  log_pos = jnp.log(aff + _EPS)
  # 1 + 1e-5 is rounded to float32 before the subtraction, as torch's python-scalar operand.
  log_neg = jnp.log(1.0 + _EPS - aff)
  bg_loss = jnp.sum(-bg * log_pos) / (bg_count + _EPS)
  fg_loss = jnp.sum(-fg * log_pos) / (fg_count + _EPS)
  neg_loss = jnp.sum(-neg * log_neg) / (neg_count + _EPS)
  loss = bg_loss / 4 + fg_loss / 4 + neg_loss / 2
  metrics = {
      "loss": loss, "bg_loss": bg_loss, "fg_loss": fg_loss, "neg_loss": neg_loss,
      "bg_count": bg_count, "fg_count": fg_count, "neg_count": neg_count,
  }
  return loss, metrics


def pair_labels_jnp(label_maps, radius=5):
  """`affinity_labels.pair_labels` for a batch, in jnp (inside the jitted step).

  The host ships only the [B, h, w] label maps; the [B, D, P] indicators are built on the device
  with the same static windows as `pair_affinity`.

  Args:
    label_maps: [B, h, w] integer labels (uint8 from `aff_data`), 255 = ignore.
    radius: requested radius (shrink rule applied).

  Returns:
    dict 'bg', 'fg', 'neg': float32 [B, D, P] (see `affinity_labels.pair_labels`).
  """
  if label_maps.ndim != 3:
    raise ValueError(f"pair_labels_jnp expects [B, h, w], got shape {label_maps.shape}")
  b, h, w = label_maps.shape
  geom = pair_geometry(h, w, radius)
  labels = jnp.asarray(label_maps).astype(jnp.int32)[..., None]
  lab_from = _crop(labels, geom.from_window).reshape(b, 1, -1)
  if geom.num_offsets:
    lab_to = jnp.stack([_crop(labels, wnd).reshape(b, -1) for wnd in geom.to_windows], axis=1)
  else:
    lab_to = jnp.zeros((b, 0, lab_from.shape[-1]), jnp.int32)
  same = lab_from == lab_to
  valid = (lab_from < IGNORE) & (lab_to < IGNORE)
  return {
      "bg": (same & (lab_from == 0)).astype(jnp.float32),
      "fg": (same & (lab_from != 0) & valid).astype(jnp.float32),
      "neg": (~same & valid).astype(jnp.float32),
  }
