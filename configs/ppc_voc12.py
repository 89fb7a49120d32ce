r"""SEAM + PPC on PASCAL VOC 2012 train_aug (the paper's SEAM-based setting).

Train (8 epochs of 10,582 images, global batch 8, crop 448, view 2 at 128x128):
  python -m ppc_jax.train --config=configs/ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/ppc_voc12
Seeds and their mIoU on VOC train (1,464 images), threshold sweep 0.00..0.59:
  python -m ppc_jax.seeds.infer --config=configs/ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/ppc_voc12
  python -m ppc_jax.evaluate --voc_root=PATH/VOCdevkit/VOC2012 --split=train \
      --cam_dir=runs/ppc_voc12/infer_train/cams --out_dir=runs/ppc_voc12/eval_train

Expected (paper, median of 3 runs, ImageNet-initialised ResNet38 via --config.init.torch_checkpoint):
seed mIoU 61.5 on train at the best threshold (about 0.27); SEAM alone gives 55.4. Not yet
reproduced with ppc_jax: no accelerator was available to run the 10,576-step schedule.

Momentum: the reference trains with SGD momentum 5e-4 (a known bug); this config keeps that
('reference'). `:momentum_mode=corrected` uses 0.9.
Variants: `:runlocal` (a tiny smoke run), `:batch=9` (the authors' 3-GPU script), `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.base_config()
  config.loss = config_lib.loss_config("seam_ppc")
  config.optim.momentum_mode = "reference"  # explicit: the reference's effective momentum 5e-4
  return config_lib.with_variant(config, arg)
