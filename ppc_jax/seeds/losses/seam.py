"""SEAM losses as pure jnp functions: cls, rvmin, max_norm, max_onehot, ER and ECR.

Every function follows the reference training loop of PPC on SEAM (wseg `contrast_train.py`, which
equals SEAM's `train_SEAM.py` except for the view-2 size); see METHOD.md sections 2.4 and 10. All
maps are NHWC with 21 channels, channel 0 = background. Image labels are `[B, 20]` multi-hot
without the background; where the reference multiplies by its `[N, 21, 1, 1]` label it prepends a
constant 1 for the background (`label_with_background`).

21 / 20 are VOC's counts; no function assumes them: the class count C comes from the inputs' last
axis (maps [..., C], labels [B, C - 1]), so any class list works.
"""

import jax
import jax.numpy as jnp

from ppc_jax.ops.resize import resize_bilinear

# The reference's epsilon of `max_norm` (tool/visualization.max_norm, e=1e-5).
_MAX_NORM_EPS = 1e-5


def label_with_background(labels):
  """Prepends the always-present background to image labels.

  Args:
    labels: [B, 20] multi-hot image labels (no background).

  Returns:
    [B, 21] float32: [1, y_1, ..., y_20] (the reference's `torch.cat((bg_score, label), 1)`).
  """
  labels = jnp.asarray(labels, jnp.float32)
  return jnp.concatenate([jnp.ones_like(labels[:, :1]), labels], axis=-1)


def multilabel_soft_margin(logits, labels):
  """torch `F.multilabel_soft_margin_loss` with reduction='mean'.

  Args:
    logits: [B, C] scores.
    labels: [B, C] targets in {0, 1} (soft targets work as in torch).

  Returns:
    scalar: mean over classes and batch of -[y log sigmoid(s) + (1 - y) log sigmoid(-s)].
    (The reference passes [N, 20, 1, 1] tensors, so torch's "class" dim is the trailing size-1
    dim; the loss is then the mean over all N * 20 entries, which is the same number.)
  """
  labels = jnp.asarray(labels, logits.dtype)
  per_entry = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  return jnp.mean(per_entry)


def classification_loss(cam, labels):
  """Multi-label classification loss of one view (METHOD 2.4 item 1).

  Args:
    cam: [B, H, W, 21] fc8 logits upsampled to the input size (SEAM pools the *upsampled*
      map, no ReLU), or at feature resolution [B, h, w, 21] (EPS pools the fc8 output itself).
    labels: [B, 20] multi-hot labels.

  Returns:
    scalar L_cls. Channel 0 (background) is dropped before the loss, so it is never supervised
    and gets no gradient.
  """
  scores = jnp.mean(cam, axis=(1, 2))  # GAP: F.adaptive_avg_pool2d(cam, (1, 1))
  return multilabel_soft_margin(scores[:, 1:], labels)


def adaptive_min_pooling_loss(cam_rv, labels):
  """The "rvmin" term of one view (METHOD 2.4 item 2).

  The reference calls `adaptive_min_pooling_loss((cam_rv * label)[:, 1:])`: the fg channels are
  multiplied by the labels, so absent classes read 0 (they are not removed). The per-pixel max over
  the 20 fg channels is therefore at least 0 whenever a class is absent; the final ReLU makes
  negative values irrelevant anyway.

  Args:
    cam_rv: [B, H, W, 21] PCM output upsampled to the input size (raw, not normalised).
    labels: [B, 20] multi-hot labels.

  Returns:
    scalar: sum over images of relu(the k = H*W // 4 smallest per-pixel fg maxima), / (k * B).
  """
  b, h, w, _ = cam_rv.shape
  k = (h * w) // 4
  if k < 1:
    raise ValueError(f"adaptive_min_pooling_loss needs H*W >= 4, got {h}x{w}")
  masked = cam_rv[..., 1:] * jnp.asarray(labels, cam_rv.dtype)[:, None, None, :]
  fg_max = jnp.max(masked, axis=-1).reshape(b, h * w)
  # The sum of the k smallest values does not depend on how ties are ordered. top_k, not a full
  # sort: faster with its gradient on XLA:CPU at these sizes (experiments/cpu_profile.py's sorts);
  # it yields them in ascending order, and a tie across the k-th place selects the lowest flat
  # indices, as the former stable `jnp.sort(fg_max)[:, :k]` did: the loss and gradient keep their
  # bits.
  smallest = -jax.lax.top_k(-fg_max, k)[0]
  return jnp.sum(jax.nn.relu(smallest)) / (k * b)


def max_norm(p, eps=_MAX_NORM_EPS):
  """`tool/visualization.max_norm`, torch 4-D branch, in NHWC.

  p = relu(p); then relu(p - min - eps) / (max - min + eps) with min/max per (image, channel) over
  space. Differentiable through min and max (the reference does not detach them).

  Args:
    p: [B, H, W, C] maps.
    eps: the reference's 1e-5.

  Returns:
    [B, H, W, C] maps in [0, 1).
  """
  p = jax.nn.relu(p)
  p_max = jnp.max(p, axis=(1, 2), keepdims=True)
  p_min = jnp.min(p, axis=(1, 2), keepdims=True)
  # Same evaluation order as torch: ((p - min) - eps) and ((max - min) + eps).
  return jax.nn.relu(p - p_min - eps) / (p_max - p_min + eps)


def max_onehot(x, *, esp_order_bug=False):
  """The reference `max_onehot`: channel 0 as is, fg entries kept only where equal to the fg max.

  Ties are all kept (the reference zeroes entries `!= max`).

  With esp_order_bug: wseg@esp's copy, written for background-first maps, runs on its
  background-LAST maps (METHOD 11.5): it leaves its channel 0 (the first class) as is and takes
  the winner over every other channel, background included. In ppc_jax's order (background 0)
  that is: channel 1 unchanged; channels 0 and 2..C-1 zero except where equal to their max.

  Args:
    x: [B, H, W, 21] maps.
    esp_order_bug: reproduce the `esp` branch's effect (see above).

  Returns:
    [B, H, W, 21]: channel 0 unchanged; channels 1..20 zero except where equal to the per-pixel
    max over channels 1..20 (or the esp variant).
  """
  if esp_order_bug:
    competing = jnp.concatenate([x[..., :1], x[..., 2:]], axis=-1)
    top = jnp.max(competing, axis=-1, keepdims=True)
    competing = jnp.where(competing == top, competing, jnp.zeros_like(competing))
    return jnp.concatenate([competing[..., :1], x[..., 1:2], competing[..., 1:]], axis=-1)
  fg = x[..., 1:]
  fg_max = jnp.max(fg, axis=-1, keepdims=True)
  fg = jnp.where(fg == fg_max, fg, jnp.zeros_like(fg))
  return jnp.concatenate([x[..., :1], fg], axis=-1)


def _with_background_from_fg(x):
  """Overwrites channel 0 with 1 - max over channels 1..20 (METHOD 2.4 item 5)."""
  bg = 1.0 - jnp.max(x[..., 1:], axis=-1, keepdims=True)
  return jnp.concatenate([bg, x[..., 1:]], axis=-1)


def _topk_mean(err, k):
  """Mean of the k largest entries of each image's flattened error map, over B * k values."""
  b = err.shape[0]
  flat = err.reshape(b, -1)
  # torch.topk's value set (tie-independent, so the same sum); a full sort is slower. Kept
  # bit-identical to the former `jnp.sort(flat)[:, -k:]`: the values are summed in ascending
  # order, and a tie across the k-th place gives the gradient to the highest flat indices, as the
  # stable sort did (top_k prefers the lowest, hence the reversed input). Ties of nonzero errors
  # do occur in training: with the other choice the demo's run ends on other numbers.
  largest = jax.lax.top_k(flat[:, ::-1], k)[0][:, ::-1]
  return jnp.sum(largest) / (b * k)


def er_ecr_losses(cam1, cam_rv1, cam2, cam_rv2, labels, *, topk_frac=0.2, max_onehot_bug=False):
  """Equivariant regularisation (ER) and equivariant cross regularisation (ECR).

  METHOD 2.4 items 3-6 and 10.1-10.2, step by step:
    * max_norm each map at its own resolution (it does not commute with resizing), then resize
      view 1's maps to view 2's size (bilinear, align_corners=True), then multiply every map by
      [1, labels] (so absent classes become exactly 0, background kept).
    * ER = mean |cam1n - cam2n| over the 20 fg channels (both sides carry gradient).
    * Then channel 0 of cam1n and cam2n (NOT of the cam_rv maps, 10.2) := 1 - fg max.
    * ECR: targets max_onehot(stop_gradient(cam2n)) for cam_rv1n and max_onehot(
      stop_gradient(cam1n)) for cam_rv2n; the absolute error of each direction is flattened per
      image over all 21 channels and the k = int(21 * h2 * w2 * topk_frac) largest are averaged
      (10.1: with few classes k exceeds the non-zero entries, so this is a scaled sum; kept
      literal). ECR is the SUM of the two directions, not the mean.

  Args:
    cam1: [B, H1, W1, 21] view-1 fc8 logits at view-1 input size.
    cam_rv1: [B, H1, W1, 21] view-1 PCM output at view-1 input size.
    cam2: [B, H2, W2, 21] view-2 fc8 logits at view-2 input size.
    cam_rv2: [B, H2, W2, 21] view-2 PCM output.
    labels: [B, 20] multi-hot labels.
    topk_frac: fraction of the 21 * H2 * W2 entries averaged by ECR (reference 0.2).
    max_onehot_bug: the ECR targets use `max_onehot(..., esp_order_bug=True)` (wseg@esp; its
      EPS+PPC calls this function on feature-resolution maps, 56x56 and 16x16).

  Returns:
    (er, ecr) scalars. ER's gradient reaches cam1 and cam2 only; ECR's reaches cam_rv1 and cam_rv2
    only (its targets are stop-gradient).
  """
  _, h2, w2, c = cam2.shape
  # Python float arithmetic as in the reference: int(21 * hs * ws * 0.2).
  k = int(c * h2 * w2 * topk_frac)
  if k < 1:
    raise ValueError(f"ECR top-k is empty: int({c} * {h2} * {w2} * {topk_frac}) = {k}")
  label = label_with_background(labels).astype(cam2.dtype)[:, None, None, :]

  def to_view2(x):
    return resize_bilinear(max_norm(x), (h2, w2), align_corners=True)

  cam1n = to_view2(cam1) * label
  cam_rv1n = to_view2(cam_rv1) * label
  cam2n = max_norm(cam2) * label
  cam_rv2n = max_norm(cam_rv2) * label

  er = jnp.mean(jnp.abs(cam1n[..., 1:] - cam2n[..., 1:]))

  cam1n = _with_background_from_fg(cam1n)
  cam2n = _with_background_from_fg(cam2n)
  target_for_rv1 = max_onehot(jax.lax.stop_gradient(cam2n), esp_order_bug=max_onehot_bug)
  target_for_rv2 = max_onehot(jax.lax.stop_gradient(cam1n), esp_order_bug=max_onehot_bug)
  ecr1 = _topk_mean(jnp.abs(target_for_rv1 - cam_rv1n), k)
  ecr2 = _topk_mean(jnp.abs(target_for_rv2 - cam_rv2n), k)
  return er, ecr1 + ecr2
