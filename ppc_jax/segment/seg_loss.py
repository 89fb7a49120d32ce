"""Stage 3 loss: torch's `nn.CrossEntropyLoss(ignore_index=255)` (mean over labelled pixels)."""

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255


def cross_entropy_ignore(logits, labels, ignore_index=IGNORE_INDEX):
  """Mean cross entropy over the pixels whose label is not `ignore_index`.

  Args:
    logits: [B, H, W, C] float.
    labels: [B, H, W] integer class indices in 0..C-1, or `ignore_index`.
    ignore_index: the void label (255 in VOC and in the pseudo-masks' padding).

  Returns:
    (loss, num_valid): scalar float32 mean over valid pixels of -log softmax(logits)[label], and
    their count. With no valid pixel torch returns nan; here the loss is 0 (the batch then
    contributes no gradient), so one empty crop cannot end a run with a NaN.
  """
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  num_valid = jnp.sum(valid)
  total = -jnp.sum(jnp.where(valid, picked, 0.0))
  return total / jnp.maximum(num_valid, 1).astype(jnp.float32), num_valid
