"""The train state every stage shares: init, the state dict, and the jitted, sharded step wrapper.

State is a plain dict
  {'step': int32[], 'params': tree, 'batch_stats': tree, 'opt_state': tree}
replicated on every device; batches are sharded on the mesh's 'data' axis. Each stage builds its
own pure step (`ppc_jax.seeds.step`, `ppc_jax.refine.aff_step`, `ppc_jax.segment.seg_step`) and
jits it with `jit_train_step`.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ppc_jax import models
from ppc_jax import optim
from ppc_jax import sharding as shd


@dataclasses.dataclass
class Recipe:
  """What every stage trains and restores: its model, optimizer and abstract variables.

  Attributes:
    model: the Linen module of `config.model`.
    tx: the optax transformation of `config.optim` (`optim.make_optimizer`).
    schedule: `t -> lr_t`, the base LR.
    groups: the parameter-group label tree.
    abstract_variables: {'params', 'batch_stats'} of jax.ShapeDtypeStruct.
  """
  model: Any
  tx: Any
  schedule: Callable[[Any], Any]
  groups: Any
  abstract_variables: Any

  def abstract_state(self):
    """The train state's shapes (`create_state`), e.g. the restore target of a checkpoint."""
    return jax.eval_shape(lambda v: create_state(v, self.tx), self.abstract_variables)


def build_recipe(config, num_steps):
  """Model + optimizer + abstract variables of an experiment config with a run of `num_steps`.

  The one place this is built: every trainer, the restore of any stage and the converter use it.
  """
  model = models.build_model(config.model)
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  abstract = jax.eval_shape(lambda r: init_variables(model, r, image_shape),
                            jax.random.PRNGKey(0))
  tx, schedule, groups = optim.make_optimizer(config.optim, num_steps, abstract["params"])
  return Recipe(model, tx, schedule, groups, abstract)


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


def jit_train_step(train_step, mesh):
  """jit with the batch sharded on 'data', state replicated and donated, metrics replicated."""
  repl = shd.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(repl, shd.batch_sharding(mesh), repl),
      out_shardings=(repl, repl),
      donate_argnums=(0,))
