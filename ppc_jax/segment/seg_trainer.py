"""Stage 3 training: DeepLab on the pseudo-masks (reference `segmentation/experiment/*/train.py`).

`train_segmentation(config, workdir)` builds a `trainer.Stage` for the shared `trainer.run_loop`
(checkpoints, resume, signals, metrics, progress, NaN check are stage 1's); the step
(`seg_step`) is jitted with the batch sharded on the mesh's 'data' axis and the state replicated;
BN statistics are those of the global batch, as the reference's single-GPU batch of 10.

Initialisation (`ppc_jax.pretrained`, as every stage; this module supplies the DeepLab files'
import), one of:
  * `config.init.mxnet_params`: the MXNet ImageNet ResNet38 (SEAM-based runs, as the reference);
  * `config.init.torch_checkpoint`: the ImageNet "resnet101s" file (EPS-based runs; keys without
    'backbone.'), or a whole reference DeepLab state_dict (keys 'backbone.*', e.g. to evaluate or
    fine-tune a reference model);
  * `config.init.backbone_workdir`: the backbone (parameters and BN statistics) of a trained
    stage-1 or AffinityNet run with the same ResNet38 (the demo's stand-in for ImageNet);
  * none: the random initialisation.
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
from ppc_jax import weights
from ppc_jax.data import voc
from ppc_jax.segment import seg_data
from ppc_jax.segment import seg_step
from ppc_jax.segment import seg_weights


def import_torch(state_dict, template, config, path):
  """A DeepLab `.pth` as variables: a whole reference DeepLab state_dict (keys 'backbone.*', e.g.
  to evaluate or fine-tune a reference model), or the ImageNet "resnet101s" backbone file.

  Returns:
    (variables, layout): layout 'deeplab' or 'resnet101s'.
  """
  keys = set(weights.normalise_keys(state_dict))
  if any(k.startswith("backbone.") for k in keys):
    return seg_weights.from_deeplab_state_dict(state_dict, template=template,
                                               strict=bool(config.init.strict)), "deeplab"
  return seg_weights.from_resnet101_imagenet(state_dict, template=template, name=path), \
      "resnet101s"


def validate(config):
  """The MXNet file is a ResNet38: a ResNet-101 DeepLab cannot start from it."""
  if config.init.mxnet_params and config.model.backbone != "resnet38":
    raise ValueError(f"config.init.mxnet_params is the ImageNet ResNet38; config.model.backbone"
                     f" is {config.model.backbone!r}")


def train_segmentation(config, workdir):
  """Trains DeepLab per `config` (model 'deeplab', `config.segment`) in `workdir`.

  Returns:
    dict of the last logged metrics.
  """
  fileio.makedirs(workdir)
  mesh = shd.make_mesh(config.num_devices or None)
  shd.check_global_batch(config.input.batch_size, mesh)
  if jax.process_index() == 0:
    atomic_io.write_text(os.path.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))
  source = seg_data.seg_source(config)
  voc.check_model_classes(source.classes, config.model.num_classes)
  num_steps = trainer.total_steps(config, source.num_examples)
  stages.of(config)  # the model is DeepLab; the MXNet file only with a ResNet38
  recipe = train_state.build_recipe(config, num_steps)
  model, tx, schedule, groups = recipe.model, recipe.tx, recipe.schedule, recipe.groups
  logging.info("segmentation: %s-%s, %d training images with pseudo-masks from %s, %d steps",
               config.model.backbone, config.model.head, source.num_examples,
               config.segment.mask_dir, num_steps)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  step = train_state.jit_train_step(seg_step.make_seg_train_step(model, tx, schedule, groups), mesh)

  stage = trainer.Stage(
      name="DeepLab training",
      num_steps=num_steps,
      batch_size=config.input.batch_size,
      initial_state=lambda: trainer.initial_state(config, model, tx, mesh, init_rng),
      make_batches=lambda start: seg_data.make_seg_iterator(config, source, start_step=start),
      train_step=lambda _, state, batch, rng: step(state, batch, rng),
      rng=step_rng,
      meta={"num_steps": num_steps, "stage": "segment"})
  return trainer.run_loop(stage, config, workdir, mesh)
