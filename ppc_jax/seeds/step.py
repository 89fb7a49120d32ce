"""Stage 1's training step: pure, jit-compiled, sharded over the device mesh.

The state is `ppc_jax.train_state`'s dict (frozen BN statistics in 'batch_stats'), replicated on
every device; the batch is sharded on the 'data' axis. The step is global-view code: PPC's
prototypes are computed over the whole global batch exactly as the reference does under
DataParallel (XLA gathers the small [21, B*h*w] score maps and selected features).
"""

import copy
import functools

import jax
import optax

from ppc_jax import optim
from ppc_jax import train_state
from ppc_jax.seeds.losses import objective as objective_lib


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
      batch['labels']: [B, 20] multi-hot, batch['saliency'] (EPS variants): [B, H, W] in
      [0, 1]; rng is the run's base key: the step folds in its own
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
      return objective_lib.objective(out1, out2, batch["labels"], rng_loss, config=loss_config,
                                     saliency=batch.get("saliency"))

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics)
    metrics["lr"] = schedule(step)
    metrics["grad_norm"] = optim.trainable_grad_norm(grads, groups)
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def cam_only_loss_config(loss_config):
  """A copy of `loss_config` with variant 'cam': the objective of the CAM-only warm-up steps."""
  cam = copy.deepcopy(loss_config)
  cam.variant = "cam"
  return cam


class WarmupTrainStep:
  """The jitted step of every global step: CAM-only before `cam_warmup_steps`, then `loss_config`.

  Two programs over one state: the model, the optimizer and its poly LR schedule are shared, so
  the optimizer state (its step count included) runs on unchanged across the boundary and the
  schedule spans the whole run. The host knows the index of the step it runs, so it picks the
  program (no traced switch, and each program computes only its own objective): a run resumed at
  any step, inside the warm-up or after it, runs exactly what an uninterrupted run runs there.

  Call: `train_step(step, state, batch, rng) -> (state, metrics)`, where `step` is the global
  index of the step about to run (a host int, equal to `state['step']`); the rest as for
  `make_train_step`. The metrics of a CAM-only step are those of variant 'cam'.
  """

  def __init__(self, model, tx, schedule, groups, loss_config, mesh, *, cam_warmup_steps=0):
    """Builds (and lazily compiles) the programs.

    Args:
      model, tx, schedule, groups: as for `make_train_step`.
      loss_config: `config.loss` (the objective after the warm-up).
      mesh: the device mesh (`jit_train_step`).
      cam_warmup_steps: steps [0, N) train the 'cam' objective; 0 (or a 'cam' loss_config)
        means none.
    """
    if cam_warmup_steps < 0:
      raise ValueError(f"cam_warmup_steps must be >= 0, got {cam_warmup_steps}")
    self.variant_after = loss_config.variant
    self.warmup = 0 if loss_config.variant == "cam" else int(cam_warmup_steps)
    self._main = train_state.jit_train_step(make_train_step(model, tx, schedule, groups, loss_config), mesh)
    self._cam = self._main
    if self.warmup:
      self._cam = train_state.jit_train_step(
          make_train_step(model, tx, schedule, groups, cam_only_loss_config(loss_config)), mesh)

  def variant(self, step):
    """The loss variant of global step index `step`."""
    return "cam" if step < self.warmup else self.variant_after

  def __call__(self, step, state, batch, rng):
    fn = self._cam if step < self.warmup else self._main
    return fn(state, batch, rng)


def make_eval_cam_fn(model):
  """`cam_fn(variables, images) -> outputs` in eval mode (dropout off), for logging CAM images."""

  @functools.partial(jax.jit)
  def cam_fn(variables, images):
    return model.apply(variables, images, train=False)

  return cam_fn
