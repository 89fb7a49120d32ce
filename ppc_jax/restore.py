"""A trained run back from its work directory, for any stage: the model its config builds and the
state of its latest (or a given) checkpoint, on one device.

Inference of every stage (`seeds.infer`, `refine.rw_infer`, `segment.seg_infer`), the converter's
export and the stage-to-stage backbone hand-over (`pretrained.backbone_from_workdir`) read
runs through here. A checkpoint written by any topology (8 devices, several processes) restores.
"""

import jax

from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import train_state


def restore_state(config, workdir, step=None):
  """The train state saved in `<workdir>/checkpoints` at `step` (default latest), on one device.

  A checkpoint written by any topology (8 devices, several processes) restores here.

  Returns:
    (model, state): the model built from `config.model`, and the state dict
    ({'step', 'params', 'batch_stats', 'opt_state'}) as arrays on the first local device.
  """
  # The run length only shapes the LR schedule, not the state: 1 will do.
  recipe = train_state.build_recipe(config, 1)
  model = recipe.model
  abstract_state = ckpt_lib.abstract_like(
      recipe.abstract_state(), jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  with ckpt_lib.Checkpointer(workdir, every_steps=0) as checkpointer:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(
          f"no checkpoint in {checkpointer.directory}; train first (python -m ppc_jax.train)")
    state, _ = checkpointer.restore(abstract_state, step=step)
  return model, state


def restore_variables(config, workdir):
  """The trained model and its {'params', 'batch_stats'} from `<workdir>/checkpoints` (latest).

  Returns:
    (model, variables, step)
  """
  model, state = restore_state(config, workdir)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  return model, variables, int(state["step"])
