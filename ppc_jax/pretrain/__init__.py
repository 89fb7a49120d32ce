"""STAGE 0 (pretrain): image-classification pretraining of the backbones the later stages use.

  classifier.py  `Classifier`: ResNet38 (any width) or the deep-stem ResNet-101, global average
                 pool, one linear layer -> {'logits': [B, K]}
  data.py        the training / evaluation input: a TFDS image-classification set (array_record,
                 random access) or a directory of class folders, read through the shared data
                 order (`ppc_jax.data.pipeline.index_stream`: exact resume, per-process rows)
  schedule.py    the optimizer: `config.optim.groups` with SGD + momentum, linear warm-up and a
                 cosine or step schedule
  step.py        the pure train step (softmax cross entropy, top-1) and the evaluation step
  pretrain_trainer.py  `train_pretrain(config, workdir)` on `trainer.run_loop`, periodic / final
                 evaluation; `evaluate_workdir`, the stage's inference (top-1 of a split)
  defaults.py    config pieces of the pretrain configs (configs/pretrain_*.py)
  stage.py       the stage as `ppc_jax.stages` declares it

A later stage starts from the result with `config.init.backbone_workdir=<this run's workdir>`
(`ppc_jax.pretrained`): the classifier's backbone is named 'backbone', as in SeamNet,
AffinityNet and DeepLab.
"""

from ppc_jax import models

# The model registry names each network by 'module:Class'; registered here as well, so that a
# checkout whose `models.MODELS` lacks the entry still resolves it once this package is imported
# (`stages.get('pretrain')` and `pretrained.backbone_from_workdir` import it).
models.MODELS.setdefault("classifier", "ppc_jax.pretrain.classifier:Classifier")
