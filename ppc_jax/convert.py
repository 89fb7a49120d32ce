r"""Converts reference weights into a ppc_jax work directory, and exports one back.

  # MXNet ImageNet ResNet38 or a reference .pth -> a work directory holding a step-0 checkpoint
  python -m ppc_jax.convert ilsvrc-cls_rna-a1_cls1000_ep-0001.params runs/ppc \
      --config=configs/ppc_voc12.py [--md5=a1]
  python -m ppc_jax.convert resnet38_SEAM.pth runs/seam_released --config=configs/seam_voc12.py

  # a ppc_jax work directory -> a reference .pth (torch needed: pip install .[torch])
  python -m ppc_jax.convert runs/ppc ppc_final.pth --config=configs/ppc_voc12.py [--layout=seam]

  # AffinityNet (a config of stage 'affinity'): PSA's / wseg's resnet38_aff .pth <-> a work
  # directory that `ppc_jax.refine.rw_infer` reads
  python -m ppc_jax.convert res38_aff.pth runs/aff_released --config=configs/aff_ppc_voc12.py
  python -m ppc_jax.convert runs/aff aff_final.pth --config=configs/aff_ppc_voc12.py

  # DeepLab (a config of stage 'segment'): the ImageNet "resnet101s" / a reference DeepLab .pth
  # -> a work directory, and back (the segmentation reference's names, `segment.seg_weights`)
  python -m ppc_jax.convert resnet101s-03a0f310.pth runs/seg --config=configs/seg_eps_ppc_voc12.py
  python -m ppc_jax.convert runs/seg deeplab.pth --config=configs/seg_eps_ppc_voc12.py

Import (SRC a file): the model of --config is initialised exactly as `python -m ppc_jax.train`
would (config.seed), the file's weights are loaded over it (the trainer's own
`initial_state`, with config.init pointed at SRC), and the result is saved as the step-0
checkpoint of the work directory DST, optimizer state included. Then
  python -m ppc_jax.seeds.infer --config=C --workdir=DST     evaluates the weights as they are, and
  python -m ppc_jax.train --config=C --workdir=DST     trains from them (it resumes at step 0).
`.params` files are MXNet (`ppc_jax.mxnet_params`, the ImageNet backbone; heads keep their
initialisation); anything else is read as a `torch.save`d state_dict of one of the reference
layouts of `ppc_jax.layouts` (SEAM, PSA, PPC, EPS, EPS+PPC, AffinityNet, an ImageNet backbone;
`module.` prefixes stripped), detected from its keys or named with --layout. With --strict (the
default) the file and the model must hold the same variables (an ImageNet backbone excepted), so
a checkpoint never meets a config with other heads; the error names the model settings to use.
DST must not hold a checkpoint yet: nothing is overwritten.

Export (SRC a work directory): its latest checkpoint (or --step) is written as a `.pth` state_dict
in the reference layout --layout (default: the network the config's model and loss variant
correspond to, `layouts.for_model`), loadable with `load_state_dict(strict=True)`.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ppc_jax import fileio


def _define_flags():
  # Defined only when run as a command (as infer.py does): a module that defines absl flags at
  # import clashes with every other one that does (tests import several in one process).
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config whose model holds the weights.", lock_config=False)
  flags.DEFINE_string(
      "layout", "auto", "Reference layout (ppc_jax.layouts: backbone, psa, seam, ppc, eps, "
      "eps_ppc, aff) of a .pth SRC, or of the exported DST; 'auto' detects / follows the "
      "config.")
  flags.DEFINE_bool(
      "strict", True, "Import: the file and the model must hold the same variables; "
      "--nostrict loads what maps and keeps the rest at its initialisation.")
  flags.DEFINE_string(
      "md5", "", "Import of .params: the md5 the file must have ('a1' = Model A1's published "
      "one).")
  flags.DEFINE_integer("step", None, "Export: which checkpoint step (default latest).")
  flags.mark_flags_as_required(["config"])


def import_weights(config, src, dst, *, layout="auto", strict=True, md5=""):
  """Writes the step-0 checkpoint of work directory `dst` from the weights file `src`.

  Returns:
    the checkpoint's meta dict (source, format, layout).

  Raises:
    FileExistsError: `dst` already holds a checkpoint.
    FileNotFoundError, ValueError (untrusted.UntrustedFileError): naming `src` and the problem.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ppc_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from ppc_jax import stages, train_state, trainer, weights  # pylint: disable=g-import-not-at-top
  from ppc_jax import sharding as shd  # pylint: disable=g-import-not-at-top

  if not fileio.isfile(src):
    raise FileNotFoundError(f"{src}: no such file (expected a .params or .pth weights file)")
  stage = stages.of(config)
  is_mxnet = src.endswith(".params")
  config = config.copy_and_resolve_references()
  config.init.torch_checkpoint = "" if is_mxnet else src
  config.init.mxnet_params = src if is_mxnet else ""
  config.init.mxnet_md5 = md5 if is_mxnet else ""
  config.init.backbone_workdir = ""
  if not is_mxnet and md5:
    raise ValueError(f"--md5 checks .params files only; {src} is read as a torch file")
  if is_mxnet:
    layout = "backbone"
  elif layout == "auto":
    try:
      layout = stage.torch_layout(weights.load_torch_file(src))
    except ValueError as e:
      raise ValueError(f"{src}: {e}") from e
  config.init.layout = layout
  config.init.strict = strict

  checkpointer = ckpt_lib.Checkpointer(dst, every_steps=0, async_save=False)
  with checkpointer:
    if checkpointer.latest_step() is not None:
      raise FileExistsError(
          f"{checkpointer.directory} already holds step {checkpointer.latest_step()}; expected a "
          "new work directory (nothing is overwritten)")
    # As the trainers do: same seed split, model, optimizer state tree, pretrained loader.
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    recipe = train_state.build_recipe(config, 1)
    state = trainer.initial_state(config, recipe.model, recipe.tx, shd.make_mesh(1), init_rng)
    meta = dict(converted_from=os.path.basename(src), format="mxnet" if is_mxnet else "torch",
                layout=layout, strict=strict)
    checkpointer.save(0, state, meta)
  return meta


def export_weights(config, src, dst, *, layout="auto", step=None):
  """Writes the checkpoint of work directory `src` as a reference `.pth` state_dict `dst`.

  Returns:
    dict(layout, step, keys).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ppc_jax import restore, stages, weights  # pylint: disable=g-import-not-at-top

  stage = stages.of(config)
  _, state = restore.restore_state(config, src, step=step)
  variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
  state_dict, layout = stage.export_torch(variables, config, layout)
  weights.save_torch_file(state_dict, dst)
  return dict(layout=layout, step=int(state["step"]), keys=len(state_dict))


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ppc_jax.convert SRC DST --config=CONFIG "
                         f"(got arguments {argv[1:]})")
  src, dst = argv[1], argv[2]
  f = flags.FLAGS
  from ppc_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup_host(f.config)
  if fileio.isdir(src):
    if not fileio.isdir(os.path.join(src, "checkpoints")):
      raise app.UsageError(f"{src} is a directory without checkpoints/; expected a ppc_jax work "
                           "directory (export) or a weights file (import)")
    result = export_weights(f.config, src, dst, layout=f.layout, step=f.step)
    logging.info("exported %s step %d to %s (%s layout)", src, result["step"], dst,
                 result["layout"])
  else:
    if f.step is not None:
      raise app.UsageError("--step selects the checkpoint of an export; SRC is a file (import)")
    result = import_weights(f.config, src, dst, layout=f.layout, strict=f.strict, md5=f.md5)
    logging.info("wrote the step-0 checkpoint of %s from %s", dst, src)
  print(json.dumps(result, indent=2))


def cli():
  """The console script `ppc-convert` (pyproject.toml): `python -m ppc_jax.convert`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
