"""Stage 2 (affinity: CRF labels, AffinityNet, random walk) as `ppc_jax.stages` declares it.

Its modules are imported when a function is called, so looking the stage up stays cheap.
"""

from ppc_jax import stages
from ppc_jax import weights


def export_torch(variables, config, layout="auto"):
  del config
  layout = "aff" if layout == "auto" else layout
  return weights.to_reference_state_dict(variables, layout), layout


def train(config, workdir):
  from ppc_jax.refine import aff_trainer  # pylint: disable=import-outside-toplevel
  return aff_trainer.train_affinity(config, workdir)


def infer(config, workdir, **options):
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel
  return rw_infer.run_random_walk(config, workdir, **options)


def labels(cam_dir, data_dir, split, out_dir, **options):
  from ppc_jax.refine import crf_labels  # pylint: disable=import-outside-toplevel
  return crf_labels.run(cam_dir, data_dir, split, out_dir, **options)


STAGE = stages.StageSpec(
    name="affinity", description="stage 2 (affinity: AffinityNet and the random walk)",
    models=("affinity_net",), train=train, infer=infer, import_torch=weights.import_reference,
    export_torch=export_torch, torch_layout=weights.detect_layout, labels=labels)
