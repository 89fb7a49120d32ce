"""The train state every stage shares: init, the state dict, and the jitted, sharded step wrapper.

State is a plain dict
  {'step': int32[], 'params': tree, 'batch_stats': tree, 'opt_state': tree}
replicated on every device; batches are sharded on the mesh's 'data' axis. Each stage builds its
own pure step (`ppc_jax.seeds.step`, `ppc_jax.refine.aff_step`, `ppc_jax.segment.seg_step`) and
jits it with `jit_train_step`.
"""

import jax
import jax.numpy as jnp

from ppc_jax import sharding as shd


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
