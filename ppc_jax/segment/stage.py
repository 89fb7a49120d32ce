"""Stage 3 (segment: DeepLab on the pseudo-masks) as `ppc_jax.stages` declares it.

Its modules are imported when a function is called, so looking the stage up stays cheap.
"""

from ppc_jax import stages
from ppc_jax import weights


def import_torch(state_dict, template, config, path):
  from ppc_jax.segment import seg_trainer  # pylint: disable=import-outside-toplevel
  return seg_trainer.import_torch(state_dict, template, config, path)


def export_torch(variables, config, layout="auto"):
  """The reference DeepLab's state_dict (its only layout)."""
  del config
  if layout not in ("auto", "deeplab"):
    raise ValueError(f"layout {layout!r}: a DeepLab exports as 'deeplab' only")
  from ppc_jax.segment import seg_weights  # pylint: disable=import-outside-toplevel
  return seg_weights.to_deeplab_state_dict(variables), "deeplab"


def torch_layout(state_dict):
  keys = weights.normalise_keys(state_dict)
  return "deeplab" if any(k.startswith("backbone.") for k in keys) else "resnet101s"


def validate(config):
  from ppc_jax.segment import seg_trainer  # pylint: disable=import-outside-toplevel
  seg_trainer.validate(config)


def train(config, workdir):
  from ppc_jax.segment import seg_trainer  # pylint: disable=import-outside-toplevel
  return seg_trainer.train_segmentation(config, workdir)


def infer(config, workdir, **options):
  from ppc_jax.segment import seg_infer  # pylint: disable=import-outside-toplevel
  return seg_infer.run_segmentation(config, workdir, **options)


STAGE = stages.StageSpec(
    name="segment", description="stage 3 (segment: DeepLab on the pseudo-masks)",
    models=("deeplab",), train=train, infer=infer, import_torch=import_torch,
    export_torch=export_torch, torch_layout=torch_layout, validate=validate)
