"""Stage 2 training: AffinityNet on la/ha CRF labels (reference `aff_train.py`, METHOD 4.3, 11.9).

`train_affinity(config, workdir)` builds a `trainer.Stage` and hands it to the shared
`trainer.run_loop`, so checkpoints, resume, signals, metrics (JSONL + TensorBoard), progress and the
NaN check are stage 1's. The step is jitted with the batch sharded on the mesh's 'data' axis and
the state replicated, like stage 1's; the loss sums run over the global batch, as the reference's
over its DataParallel-gathered batch.

Batch: `ppc_jax.refine.aff_data` ({'image': [B, S, S, 3], 'aff_label': uint8 [B, S/8, S/8]}); the
step is `ppc_jax.refine.aff_step` (pair labels derived from `aff_label` on the device).

Initialisation: `config.init` (the MXNet ImageNet ResNet38 or a reference .pth, as stage 1), or
`config.refine.stage1_workdir`: the backbone (parameters and frozen BN statistics) of a trained
stage-1 run; the heads f8_3 .. f9 keep their initialisation.
"""

import json
import os

from absl import logging
import jax
import ml_collections

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import models
from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.refine import aff_data
from ppc_jax.data import pipeline
from ppc_jax.refine import aff_step


def load_stage1_config(workdir):
  """The experiment config a stage-1 run saved in `<workdir>/config.json`."""
  path = os.path.join(workdir, "config.json")
  try:
    with fileio.open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f"config.refine.stage1_workdir: cannot read {path} ({e}); expected the work "
                     "directory of a stage-1 run (python -m ppc_jax.train)") from None


def backbone_from_stage1(state, workdir, mesh):
  """`state` with its backbone parameters and BN statistics replaced by a stage-1 run's.

  Raises:
    ValueError naming the work directory when the backbones differ in structure or shape.
  """
  # the one restore path for trained runs of any stage
  from ppc_jax import restore  # pylint: disable=import-outside-toplevel
  config1 = load_stage1_config(workdir)
  _, variables, step = restore.restore_variables(config1, workdir)
  out = dict(state)
  for col in ("params", "batch_stats"):
    ours, theirs = state[col].get("backbone"), variables[col].get("backbone")
    if ours is None or theirs is None:
      raise ValueError(f"config.refine.stage1_workdir={workdir}: no 'backbone' in the {col} of "
                       "one of the two models")
    s_ours = jax.tree.map(lambda x: (x.shape, x.dtype), ours)
    s_theirs = jax.tree.map(lambda x: (x.shape, x.dtype), theirs)
    if s_ours != s_theirs:
      raise ValueError(
          f"config.refine.stage1_workdir={workdir}: its backbone ({config1.model.name}, "
          f"width_divisor {config1.model.width_divisor}, stage_blocks "
          f"{tuple(config1.model.stage_blocks)}) differs from config.model's; use the same "
          "width_divisor and stage_blocks")
    out[col] = dict(state[col], backbone=jax.device_put(theirs, shd.replicated(mesh)))
  logging.info("ResNet38 backbone from the stage-1 run %s (step %d)", workdir, step)
  return out


def train_affinity(config, workdir):
  """Trains AffinityNet per `config` (model name 'affinity_net', `config.refine`) in `workdir`.

  Returns:
    dict of the last logged metrics.
  """
  if config.model.name != "affinity_net":
    raise ValueError(f"config.model.name={config.model.name!r}: the affinity stage trains "
                     "'affinity_net'")
  fileio.makedirs(workdir)
  mesh = shd.make_mesh(config.num_devices or None)
  shd.check_global_batch(config.input.batch_size, mesh)
  if jax.process_index() == 0:
    atomic_io.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  voc_source = pipeline.train_source(config.input)
  source = aff_data.AffSource(voc_source, config.refine.la_dir, config.refine.ha_dir)
  num_steps = trainer.total_steps(config, source.num_examples)
  logging.info("AffinityNet: %d training images, %d steps, radius %d", source.num_examples,
               num_steps, config.refine.radius)

  model = models.build_model(config.model)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  abstract_vars = jax.eval_shape(lambda r: train_state.init_variables(model, r, image_shape), init_rng)
  tx, schedule = optim.make_optimizer(config.optim, num_steps, abstract_vars["params"])
  groups = optim.param_groups(abstract_vars["params"], config.optim)
  step = train_state.jit_train_step(
      aff_step.make_aff_train_step(model, tx, schedule, groups, int(config.refine.radius)), mesh)

  def initial_state():
    state = trainer.initial_state(config, model, tx, mesh, init_rng)
    if config.refine.stage1_workdir:
      state = backbone_from_stage1(state, config.refine.stage1_workdir, mesh)
      # Fresh optimizer state for the new parameters (the momentum trace starts at zero).
      state = dict(state, opt_state=jax.jit(tx.init, out_shardings=shd.replicated(mesh))(
          state["params"]))
    return state

  stage = trainer.Stage(
      name="AffinityNet training",
      num_steps=num_steps,
      batch_size=config.input.batch_size,
      initial_state=initial_state,
      make_batches=lambda start: aff_data.make_aff_iterator(
          config.input, source, start_step=start),
      train_step=lambda _, state, batch, rng: step(state, batch, rng),
      rng=step_rng,
      meta={"num_steps": num_steps, "stage": "affinity"})
  return trainer.run_loop(stage, config, workdir, mesh)
