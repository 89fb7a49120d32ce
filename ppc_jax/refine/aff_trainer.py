"""Stage 2 training: AffinityNet on la/ha CRF labels (reference `aff_train.py`, METHOD 4.3, 11.9).

`train_affinity(config, workdir)` builds a `trainer.Stage` and hands it to the shared
`trainer.run_loop`, so checkpoints, resume, signals, metrics (JSONL + TensorBoard), progress and the
NaN check are stage 1's. The step is jitted with the batch sharded on the mesh's 'data' axis and
the state replicated, like stage 1's; the loss sums run over the global batch, as the reference's
over its DataParallel-gathered batch.

Batch: `ppc_jax.refine.aff_data` ({'image': [B, S, S, 3], 'aff_label': uint8 [B, S/8, S/8]}); the
step is `ppc_jax.refine.aff_step` (pair labels derived from `aff_label` on the device).

Initialisation: `config.init` (`ppc_jax.pretrained`, as every stage): the MXNet ImageNet
ResNet38, a reference .pth, or `config.init.backbone_workdir`, the backbone (parameters and frozen
BN statistics) of a trained stage-1 run; the heads f8_3 .. f9 keep their initialisation.
"""

import os

from absl import logging
import jax

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import sharding as shd
from ppc_jax import stages
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.refine import aff_data
from ppc_jax.data import sources
from ppc_jax.refine import aff_step


def train_affinity(config, workdir):
  """Trains AffinityNet per `config` (model name 'affinity_net', `config.refine`) in `workdir`.

  Returns:
    dict of the last logged metrics.
  """
  stages.of(config)  # the model is AffinityNet
  fileio.makedirs(workdir)
  mesh = shd.make_mesh(config.num_devices or None)
  shd.check_global_batch(config.input.batch_size, mesh)
  if jax.process_index() == 0:
    atomic_io.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  voc_source = sources.train_source(config.input)
  source = aff_data.AffSource(voc_source, config.refine.la_dir, config.refine.ha_dir,
                              crf_format=config.refine.crf_format)
  num_steps = trainer.total_steps(config, source.num_examples)
  logging.info("AffinityNet: %d training images, %d steps, radius %d", source.num_examples,
               num_steps, config.refine.radius)

  recipe = train_state.build_recipe(config, num_steps)
  model, tx, schedule, groups = recipe.model, recipe.tx, recipe.schedule, recipe.groups
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  step = train_state.jit_train_step(
      aff_step.make_aff_train_step(model, tx, schedule, groups, int(config.refine.radius)), mesh)

  stage = trainer.Stage(
      name="AffinityNet training",
      num_steps=num_steps,
      batch_size=config.input.batch_size,
      initial_state=lambda: trainer.initial_state(config, model, tx, mesh, init_rng),
      make_batches=lambda start: aff_data.make_aff_iterator(
          config.input, source, start_step=start),
      train_step=lambda _, state, batch, rng: step(state, batch, rng),
      rng=step_rng,
      meta={"num_steps": num_steps, "stage": "affinity"})
  return trainer.run_loop(stage, config, workdir, mesh)
