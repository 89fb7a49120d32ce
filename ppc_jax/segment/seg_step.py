"""The segmentation train step (stage 3), pure; jitted and sharded by the caller.

Its optimizer is every stage's (`optim.make_optimizer`): the reference's four groups (METHOD
11.13; weights lr x 1 with decay, biases x 2, the head's weights x 10 and biases x 20, every BN
scale and bias frozen since the reference collects only nn.Conv2d parameters), momentum 0.9 and
lr_t = lr (1 - t / (T + 1)) ** 0.9 (`config.optim.poly_max_step_offset = 1`). Training the BN
scale and bias (lr x 1, no decay), a departure off in every reference config, is
`--config.optim.groups.frozen.frozen=False --config.optim.groups.frozen.lr_mult=1.0`.

No data or TensorFlow import here: benchmarks and accelerator hosts use the step alone.
"""

import jax
import jax.numpy as jnp
import optax

from ppc_jax import optim
from ppc_jax.segment import seg_loss

def make_seg_train_step(model, tx, schedule, groups):
  """The (unjitted) step `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: `models.DeepLab` (output {'logits': [B, H, W, C], ...}).
    tx, schedule, groups: from `optim.make_optimizer`.

  Returns:
    train_step with batch['image']: [B, S, S, 3], batch['mask']: uint8 [B, S, S] (255 ignored);
    the BN running statistics of the new state are the ones the forward pass updated (torch's
    training-mode BN over the global batch). metrics: loss, pixel_acc (against the pseudo-masks,
    labelled pixels), labelled (fraction of labelled pixels), lr, grad_norm.
  """

  def train_step(state, batch, rng):
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    mask = batch["mask"]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      out, updates = model.apply(variables, batch["image"], train=True,
                                 mutable=["batch_stats"], rngs={"dropout": rng})
      loss, num_valid = seg_loss.cross_entropy_ignore(out["logits"], mask)
      return loss, (updates.get("batch_stats", state["batch_stats"]), out["logits"], num_valid)

    (loss, (batch_stats, logits, num_valid)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    valid = mask != seg_loss.IGNORE_INDEX
    correct = jnp.sum((jnp.argmax(logits, -1) == mask.astype(jnp.int32)) & valid)
    metrics = {
        "loss": loss,
        "pixel_acc": correct / jnp.maximum(num_valid, 1),
        "labelled": num_valid / mask.size,
        "lr": schedule(step),
        "grad_norm": optim.trainable_grad_norm(grads, groups),
    }
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                     batch_stats=batch_stats)
    return new_state, metrics

  return train_step
