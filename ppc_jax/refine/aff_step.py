"""The AffinityNet training step (stage 2): pure, jit-compiled by the caller, sharded like stage 1's.

State is stage 1's dict {'step', 'params', 'batch_stats', 'opt_state'} (replicated); the batch
{'image': [B, S, S, 3], 'aff_label': uint8 [B, S/8, S/8]} is sharded on the 'data' axis. The loss
sums run over the global batch, as the reference's over its DataParallel-gathered batch. No data
or TensorFlow import here: benchmarks and accelerator hosts use the step alone.
"""

import jax
import optax

from ppc_jax import optim
from ppc_jax.refine import affinity_loss as affinity


def make_aff_train_step(model, tx, schedule, groups, radius):
  """The (unjitted) step `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: `AffinityNet` (output {'features': [B, h, w, F]}).
    tx, schedule, groups: from `optim.make_optimizer` / `optim.param_groups`.
    radius: the pair radius (shrunk on small maps, `affinity_labels.effective_radius`).

  Returns:
    train_step with batch['image']: [B, S, S, 3], batch['aff_label']: uint8 [B, S/8, S/8];
    metrics: loss, bg_loss, fg_loss, neg_loss, the pair counts, lr, grad_norm.
  """

  def train_step(state, batch, rng):
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    labels = affinity.pair_labels_jnp(batch["aff_label"], radius)

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      out = model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
      features = out["features"]
      if features.shape[1:3] != batch["aff_label"].shape[1:3]:
        raise ValueError(f"features {features.shape} and labels {batch['aff_label'].shape} "
                         "are on different grids")
      aff = affinity.pair_affinity(features, radius)
      return affinity.affinity_loss(aff, labels["bg"], labels["fg"], labels["neg"])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics)
    metrics["lr"] = schedule(step)
    metrics["grad_norm"] = optim.trainable_grad_norm(grads, groups)
    return dict(state, step=step + 1, params=params, opt_state=opt_state), metrics

  return train_step
