r"""SEAM baseline (no contrast) on PASCAL VOC 2012 train_aug.

  python -m ppc_jax.train --config=configs/seam_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/seam_voc12
then `ppc_jax.seeds.infer` / `ppc_jax.evaluate` as in configs/ppc_voc12.py.

Expected (SEAM paper / PPC abstract): seed mIoU 55.4 on VOC train. SEAM's own script builds view 2
with scale factor 0.3 (134x134 from a 448 crop) and its ECR top-k from that size; this config
follows SEAM. `:view2_ppc` uses PPC's 128x128 view instead, for a like-for-like ablation.
Not yet reproduced with ppc_jax (no accelerator was available for the full schedule).
Momentum: 'reference' (5e-4, the original's effective value), explicit below.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, view2_ppc=False, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.base_config()
  config.loss = config_lib.loss_config("seam")
  config.model.proj_dim = None  # SEAM has no projection head
  config.input.view2_size = 128 if arg.view2_ppc else 134
  config.optim.momentum_mode = "reference"
  return config_lib.with_variant(config, arg)
