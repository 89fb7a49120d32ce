"""The pretraining steps, pure; jitted and sharded by the caller (`train_state.jit_train_step`).

Batch (global arrays, batch axis sharded on 'data'):
  image:  float32 [B, S, S, 3]  ImageNet-normalised crops
  label:  int32   [B]           class indices 0..K-1
  weight: float32 [B]           evaluation batches only: 1 for an example, 0 for padding

No data or TensorFlow import here.
"""

import jax
import jax.numpy as jnp
import optax

from ppc_jax import optim


def cross_entropy(logits, labels, label_smoothing=0.0):
  """Per-example softmax cross entropy -sum_k q_k log softmax(logits)_k.

  Args:
    logits: [B, K].
    labels: int [B].
    label_smoothing: eps; q = (1 - eps) onehot + eps / K (0 = the plain single-label loss).

  Returns:
    float32 [B].
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  q = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
  return -jnp.sum(q * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def make_train_step(model, tx, schedule, groups, label_smoothing=0.0):
  """The (unjitted) step `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: `Classifier` (output {'logits': [B, K], ...}).
    tx, schedule, groups: from `schedule.make_optimizer`.
    label_smoothing: see `cross_entropy`.

  Returns:
    train_step with batch {'image', 'label'}; the new state's BN running statistics are those
    the forward pass updated (global-batch statistics under sharding). metrics: loss (mean over
    the global batch), top1 (fraction of the batch's crops classified right, before the update),
    lr, grad_norm.
  """

  def train_step(state, batch, rng):
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    labels = batch["label"]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      out, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                 rngs={"dropout": rng})
      loss = jnp.mean(cross_entropy(out["logits"], labels, label_smoothing))
      return loss, (updates.get("batch_stats", state["batch_stats"]), out["logits"])

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        "top1": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
        "lr": schedule(step),
        "grad_norm": optim.trainable_grad_norm(grads, groups),
    }
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                     batch_stats=batch_stats)
    return new_state, metrics

  return train_step


def make_eval_step(model):
  """`eval_step(variables, batch) -> sums` on the running BN statistics, no dropout.

  Returns:
    eval_step with batch {'image', 'label', 'weight'}; sums over the global batch (padding
    weighs 0): {'correct', 'loss', 'count'} float32 scalars.
  """

  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)["logits"]
    weight = batch["weight"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"correct": jnp.sum(weight * correct),
            "loss": jnp.sum(weight * cross_entropy(logits, batch["label"])),
            "count": jnp.sum(weight)}

  return eval_step
