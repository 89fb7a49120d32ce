"""A trained run back from its work directory, for any stage: the model its config builds and the
state of its latest (or a given) checkpoint, on one device.

Inference of every stage (`seeds.infer`, `refine.rw_infer`, `segment.seg_infer`), the converter's
export and the stage-to-stage backbone hand-over (`refine.aff_trainer.backbone_from_stage1`) read
runs through here. A checkpoint written by any topology (8 devices, several processes) restores.
"""

import jax

from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import train_state


def restore_state(config, workdir, step=None):
  """The train state saved in `<workdir>/checkpoints` at `step` (default latest), on one device.

  A checkpoint written by any topology (8 devices, several processes) restores here.

  Returns:
    (model, state): the model built from `config.model`, and the state dict
    ({'step', 'params', 'batch_stats', 'opt_state'}) as arrays on the first local device.
  """
  model = models.build_model(config.model)
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  abstract_vars = jax.eval_shape(
      lambda r: train_state.init_variables(model, r, image_shape), jax.random.PRNGKey(0))
  # The optimizer only shapes the restore target: its state tree depends on the parameter tree.
  if config.stage == "segment":
    from ppc_jax.segment import seg_trainer  # pylint: disable=import-outside-toplevel
    _, tx, _, _, _ = seg_trainer.build(config, 1)
  else:
    tx, _ = optim.make_optimizer(config.optim, 1, abstract_vars["params"])
  abstract_state = ckpt_lib.abstract_like(
      jax.eval_shape(lambda v: train_state.create_state(v, tx), abstract_vars),
      jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
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
