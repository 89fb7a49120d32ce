"""Stage 3 training: DeepLab on the pseudo-masks (reference `segmentation/experiment/*/train.py`).

`train_segmentation(config, workdir)` builds a `trainer.Stage` for the shared `trainer.run_loop`
(checkpoints, resume, signals, metrics, progress, NaN check are stage 1's); the step
(`seg_step`) is jitted with the batch sharded on the mesh's 'data' axis and the state replicated;
BN statistics are those of the global batch, as the reference's single-GPU batch of 10.

Initialisation, one of:
  * `config.init.mxnet_params`: the MXNet ImageNet ResNet38 (SEAM-based runs, as the reference);
  * `config.init.torch_checkpoint`: the ImageNet "resnet101s" file (EPS-based runs; keys without
    'backbone.'), or a whole reference DeepLab state_dict (keys 'backbone.*', e.g. to evaluate or
    fine-tune a reference model);
  * `config.segment.stage1_workdir`: the backbone (parameters and BN statistics) of a trained
    stage-1 or AffinityNet run with the same ResNet38 (the demo's stand-in for ImageNet);
  * none: the random initialisation.
"""

import os

from absl import logging
import jax

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import models
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax import weights
from ppc_jax.data import voc
from ppc_jax.segment import deeplab
from ppc_jax.segment import seg_data
from ppc_jax.segment import seg_step
from ppc_jax.segment import seg_weights


def build(config, num_steps):
  """(model, tx, schedule, groups, abstract variables) of a segmentation config."""
  if config.model.name != "deeplab":
    raise ValueError(f"config.model.name={config.model.name!r}: the segment stage trains "
                     "'deeplab'")
  model = models.build_model(config.model)
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  abstract = jax.eval_shape(lambda r: train_state.init_variables(model, r, image_shape),
                            jax.random.PRNGKey(0))
  groups = seg_step.param_groups(abstract["params"], deeplab.NEW_LAYERS, deeplab.FROZEN_PARAMS,
                                 train_bn=bool(config.segment.train_bn))
  tx, schedule = seg_step.make_optimizer(config.optim, groups, num_steps)
  return model, tx, schedule, groups, abstract


def pretrained_variables(config, template):
  """Variables from config.init's file (see the module docstring), or None."""
  if config.init.mxnet_params and config.init.torch_checkpoint:
    raise ValueError("config.init.torch_checkpoint and config.init.mxnet_params are both set; "
                     "expected at most one source of pretrained weights")
  if config.init.mxnet_params:
    if config.model.backbone != "resnet38":
      raise ValueError(f"config.init.mxnet_params is the ImageNet ResNet38; config.model.backbone"
                       f" is {config.model.backbone!r}")
    md5 = config.init.mxnet_md5
    from ppc_jax import mxnet_params
    md5 = mxnet_params.RESNET38_A1_MD5 if md5 == "a1" else (md5 or None)
    return weights.from_mxnet_file(config.init.mxnet_params, template=template, md5=md5)
  path = config.init.torch_checkpoint
  if not path:
    return None
  state_dict = weights.load_torch_file(path)
  keys = set(weights.normalise_keys(state_dict))
  if any(k.startswith("backbone.") for k in keys):
    try:
      return seg_weights.from_deeplab_state_dict(state_dict, template=template,
                                                 strict=bool(config.init.strict))
    except ValueError as e:
      raise ValueError(f"config.init.torch_checkpoint {path}: {e}") from None
  return seg_weights.from_resnet101_imagenet(state_dict, template=template, name=path)


def initial_state(config, model, tx, mesh, init_rng):
  """The step-0 state: initialised, then the backbone (and heads) from the module docstring's
  sources; replicated on `mesh`."""
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  repl = shd.replicated(mesh)
  variables = jax.jit(lambda r: train_state.init_variables(model, r, image_shape),
                      out_shardings=repl)(init_rng)
  loaded = pretrained_variables(config, jax.device_get(variables))
  if loaded is not None:
    variables = jax.device_put(loaded, repl)
  state = jax.jit(lambda v: train_state.create_state(v, tx), out_shardings=repl)(variables)
  if config.segment.stage1_workdir:
    if loaded is not None:
      raise ValueError("config.segment.stage1_workdir and config.init's file are both set; "
                       "expected one source of the backbone")
    from ppc_jax.refine import aff_trainer  # pylint: disable=import-outside-toplevel
    state = aff_trainer.backbone_from_stage1(state, config.segment.stage1_workdir, mesh)
    state = dict(state, opt_state=jax.jit(tx.init, out_shardings=repl)(state["params"]))
  return state


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
  model, tx, schedule, groups, _ = build(config, num_steps)
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
      initial_state=lambda: initial_state(config, model, tx, mesh, init_rng),
      make_batches=lambda start: seg_data.make_seg_iterator(config, source, start_step=start),
      train_step=lambda _, state, batch, rng: step(state, batch, rng),
      rng=step_rng,
      meta={"num_steps": num_steps, "stage": "segment"})
  return trainer.run_loop(stage, config, workdir, mesh)
