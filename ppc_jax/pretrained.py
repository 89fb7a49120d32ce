"""Pretrained weights of any stage's model from `config.init`: one loader for every stage.

  config.init.mxnet_params      the MXNet ImageNet ResNet38 (.params, read without mxnet): the
                                backbone; the heads keep their initialisation
  config.init.torch_checkpoint  a reference `.pth`, read by the stage's own import
                                (`stages.StageSpec.import_torch`: the reference layouts of that stage)
  config.init.backbone_workdir  a trained ppc_jax run of any stage whose backbone (ResNet38, or
                                the deep-stem ResNet-101 of DeepLab) has the same structure (its
                                config.json and latest checkpoint): its backbone parameters and
                                BN statistics. The 'pretrain' stage's classification run (stage
                                0, ppc_jax/pretrain/) stands in for ImageNet weights this way,
                                as a stage-1 run does in the demo

At most one of them. Variables are host numpy trees {'params', 'batch_stats'}.
"""

import json
import os

from absl import logging
import ml_collections

from ppc_jax import fileio
from ppc_jax import mxnet_params
from ppc_jax import weights


def sources(init_config):
  """The config.init fields that name a file or run, as {field: value}."""
  return {k: init_config[k] for k in ("mxnet_params", "torch_checkpoint", "backbone_workdir")
          if init_config[k]}


def load(config, template, import_torch):
  """The variables `config.init` names, over `template`; None when it names none.

  Args:
    config: the experiment config (its `init`).
    template: the model's initialised variables (numpy); what a source lacks keeps these.
    import_torch: the stage's `stages.StageSpec.import_torch`.

  Raises:
    ValueError: two sources at once, or a file / run that does not fit the model (naming it).
  """
  given = sources(config.init)
  if len(given) > 1:
    raise ValueError(f"config.init sets {given}; expected at most one source of pretrained "
                     "weights")
  if config.init.mxnet_params:
    params_file = config.init.mxnet_params
    md5 = config.init.mxnet_md5
    md5 = mxnet_params.RESNET38_A1_MD5 if md5 == "a1" else (md5 or None)
    logging.info("initialising the backbone from %s (md5 check: %s)", params_file, md5 or "off")
    return weights.from_mxnet_file(params_file, template=template, md5=md5)
  if config.init.torch_checkpoint:
    torch_file = config.init.torch_checkpoint
    state_dict = weights.load_torch_file(torch_file)
    try:
      variables, layout = import_torch(state_dict, template, config, torch_file)
    except ValueError as e:
      raise ValueError(f"config.init.torch_checkpoint {torch_file}: {e}") from e
    logging.info("initialised from %s (%s layout, strict=%s)", torch_file, layout,
                 config.init.strict)
    return variables
  if config.init.backbone_workdir:
    return backbone_from_workdir(template, config.init.backbone_workdir)
  return None


def load_run_config(workdir):
  """The experiment config a ppc_jax run saved in `<workdir>/config.json`."""
  path = os.path.join(workdir, "config.json")
  try:
    with fileio.open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f"config.init.backbone_workdir: cannot read {path} ({e}); expected the "
                     "work directory of a ppc_jax run (python -m ppc_jax.train)") from None


def backbone_from_workdir(template, workdir):
  """`template` with its 'backbone' parameters and BN statistics taken from a trained run.

  Raises:
    ValueError naming the work directory when the backbones differ in structure or shape.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import restore  # pylint: disable=import-outside-toplevel
  from ppc_jax import stages  # pylint: disable=import-outside-toplevel
  run_config = load_run_config(workdir)
  # The run's stage package: a model that a stage package registers (the pretrain stage's
  # classifier) then resolves when the run's model is rebuilt.
  stages.get(run_config.stage)
  _, variables, step = restore.restore_variables(run_config, workdir)
  variables = jax.device_get(variables)
  out = {}
  for col in ("params", "batch_stats"):
    ours, theirs = template[col].get("backbone"), variables[col].get("backbone")
    if ours is None or theirs is None:
      raise ValueError(f"config.init.backbone_workdir={workdir}: no 'backbone' in the {col} of "
                       "one of the two models")
    difference = _first_difference(ours, theirs)
    if difference:
      raise ValueError(
          f"config.init.backbone_workdir={workdir}: its backbone ({run_config.model.name}, "
          f"width_divisor {run_config.model.width_divisor}) differs from config.model's: "
          f"{col} {difference}; use the same backbone, width_divisor and blocks per stage "
          "(ResNet38: stage_blocks, ResNet-101: layers)")
    out[col] = dict(template[col], backbone=theirs)
  logging.info("backbone from the %s run %s (step %d)", run_config.stage, workdir, step)
  return out


def _first_difference(ours, theirs):
  """'' when two variable trees have the same structure, shapes and dtypes; else the first
  difference, e.g. "backbone/b4_1/conv_branch2a/kernel: (3, 3, 64, 64) float32 here, absent
  there"."""
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import optim  # pylint: disable=import-outside-toplevel

  def flat(tree):
    return {optim.path_str(path): (tuple(x.shape), str(x.dtype))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}

  a, b = flat(ours), flat(theirs)
  for name in sorted(set(a) | set(b)):
    if a.get(name) != b.get(name):
      here = "absent" if name not in a else f"{a[name][0]} {a[name][1]}"
      there = "absent" if name not in b else f"{b[name][0]} {b[name][1]}"
      return f"backbone/{name}: {here} here, {there} there"
  return ""
