"""Stage 0 (pretrain: image-classification pretraining of a backbone) as `ppc_jax.stages`
declares it.

Its modules are imported when a function is called, so looking the stage up stays cheap. No
reference network is trained in this stage, so it reads and writes no reference `.pth` layout: a
later stage takes the result with `config.init.backbone_workdir` (`ppc_jax.pretrained`).
"""

from ppc_jax import stages


def _no_reference_layout(*args, **kwargs):
  del args, kwargs
  raise ValueError("the 'pretrain' stage has no reference .pth layout; start the classifier "
                   "from scratch, or hand its backbone to a later stage with "
                   "config.init.backbone_workdir=<pretrain work directory>")


def train(config, workdir):
  from ppc_jax.pretrain import pretrain_trainer  # pylint: disable=import-outside-toplevel
  return pretrain_trainer.train_pretrain(config, workdir)


def infer(config, workdir, **options):
  """Top-1 of the trained classifier on a split (default config.infer.split)."""
  from ppc_jax.pretrain import pretrain_trainer  # pylint: disable=import-outside-toplevel
  return pretrain_trainer.evaluate_workdir(config, workdir, **options)


STAGE = stages.StageSpec(
    name="pretrain", description="stage 0 (pretrain: image classification of the backbone)",
    models=("classifier",), train=train, infer=infer, import_torch=_no_reference_layout,
    export_torch=_no_reference_layout, torch_layout=_no_reference_layout)
