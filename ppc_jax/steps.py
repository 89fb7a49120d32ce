"""The training step: pure, jit-compiled, sharded over the device mesh.

State is a plain dict
  {'step': int32[], 'params': tree, 'batch_stats': tree (frozen BN stats), 'opt_state': tree}
replicated on every device; the batch is sharded on the 'data' axis. The step is global-view code:
PPC's prototypes are computed over the whole global batch exactly as the reference does under
DataParallel (XLA gathers the small [21, B*h*w] score maps and selected features).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax.losses import objective as objective_lib


def init_variables(model, rng, image_shape):
  """Model variables for a [1, H, W, 3] dummy input (`{'params', 'batch_stats'}`)."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return model.init({"params": rng, "dropout": rng}, x, train=False)


def create_state(variables, tx):
  """Train state dict from model variables and an optax transformation."""
  params = variables["params"]
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "batch_stats": variables.get("batch_stats", {}),
      "opt_state": tx.init(params),
  }


def make_train_step(model, tx, schedule, groups, loss_config):
  """Builds the (unjitted) step `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: a Flax module whose apply returns the output dict of docs/ARCHITECTURE.md.
    tx: optax transformation from `optim.make_optimizer`.
    schedule: base LR schedule (for the `lr` metric).
    groups: parameter-group labels from `optim.param_groups` (for the trainable gradient norm).
    loss_config: `config.loss`.

  Returns:
    train_step(state, batch, rng), where
      batch['image1']: [B, H, W, 3] view 1, batch['image2']: [B, h2, w2, 3] view 2,
      batch['labels']: [B, 20] multi-hot; rng is the run's base key: the step folds in its own
      step number, so a resumed run draws the same dropout masks and samples.
    metrics: dict of scalars: every loss term, `loss`, `lr`, `grad_norm`.
  """

  def train_step(state, batch, rng):
    step = state["step"]
    rng = jax.random.fold_in(rng, step)
    rng_view1, rng_view2, rng_loss = jax.random.split(rng, 3)

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state["batch_stats"]}
      out1 = model.apply(variables, batch["image1"], train=True, rngs={"dropout": rng_view1})
      out2 = model.apply(variables, batch["image2"], train=True, rngs={"dropout": rng_view2})
      return objective_lib.objective(out1, out2, batch["labels"], rng_loss, config=loss_config)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics)
    metrics["lr"] = schedule(step)
    metrics["grad_norm"] = optim.trainable_grad_norm(grads, groups)
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh):
  """jit with the batch sharded on 'data', state replicated and donated, metrics replicated."""
  repl = shd.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(repl, shd.batch_sharding(mesh), repl),
      out_shardings=(repl, repl),
      donate_argnums=(0,))


def make_eval_cam_fn(model):
  """`cam_fn(variables, images) -> outputs` in eval mode (dropout off), for logging CAM images."""

  @functools.partial(jax.jit)
  def cam_fn(variables, images):
    return model.apply(variables, images, train=False)

  return cam_fn
