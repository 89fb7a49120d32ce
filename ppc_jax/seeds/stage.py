"""Stage 1 (seeds: CAM / SEAM / SEAM+PPC / EPS / EPS+PPC) as `ppc_jax.stages` declares it.

Its modules are imported when a function is called, so looking the stage up stays cheap.
"""

from ppc_jax import layouts
from ppc_jax import stages
from ppc_jax import weights


def export_torch(variables, config, layout="auto"):
  """The model as the reference network `layout` ('auto': the one the config corresponds to)."""
  if layout == "auto":
    layout = layouts.for_model(config.model, config.loss.variant)
  return weights.to_reference_state_dict(variables, layout), layout


def train(config, workdir):
  from ppc_jax.seeds import seed_trainer  # pylint: disable=import-outside-toplevel
  return seed_trainer.train_and_evaluate(config, workdir)


def infer(config, workdir, **options):
  from ppc_jax.seeds import infer as cam_infer  # pylint: disable=import-outside-toplevel
  return cam_infer.run_inference(config, workdir, **options)


STAGE = stages.StageSpec(
    name="seeds", description="stage 1 (seeds: CAMs of a classification network)",
    models=("seam_net",), train=train, infer=infer, import_torch=weights.import_reference,
    export_torch=export_torch, torch_layout=weights.detect_layout)
