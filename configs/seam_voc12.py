r"""SEAM baseline (no contrast) on PASCAL VOC 2012 train_aug.

  python -m ppc_jax.train --config=configs/seam_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/seam_voc12
then `ppc_jax.seeds.infer` / `ppc_jax.evaluate` as in configs/ppc_voc12.py.

Expected (SEAM paper / PPC abstract): seed mIoU 55.4 on VOC train. SEAM's own script builds view 2
with scale factor 0.3 (134x134 from a 448 crop) and its ECR top-k from that size; this config
follows SEAM. `:view2_ppc` uses PPC's 128x128 view instead, for a like-for-like ablation.
Not yet reproduced with ppc_jax (no accelerator was available for the full schedule).

Reference: SEAM train_SEAM.py / infer_SEAM.py (METHOD 2); the loss, heads and seed inference are
the 'seam' preset (`config_lib.apply_method`), the experiment's values are written out below.
Momentum: 'reference' (5e-4, the original's effective value); `:momentum_mode=corrected` = 0.9.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, view2_ppc=False, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.seeds_config()
  # SEAM's losses (cls, rvmin, ER, ECR); PCM-refined CAMs (cam_rv) as seeds; no projection head.
  config_lib.apply_method(config, "seam")

  # Data: two views of each crop (train_SEAM.py; METHOD 2.3, 2.6).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8             # train_SEAM.py's default
  config.input.crop_size = 448            # RandomCrop(448), zero padding
  config.input.resize_long = (448, 768)   # RandomResizeLong: long side in [448, 768], bicubic
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # ColorJitter: brightness, contrast, saturation, hue
  # View 2: SEAM's scale factor 0.3 gives 134x134 from 448 (`:view2_ppc`: PPC's 128x128).
  config.input.view2_size = 128 if arg.view2_ppc else 134

  # Model: the full ResNet38 (ImageNet weights through config.init), fc8 and PCM.
  config.model.width_divisor = 1

  # Loss: L_cls + rvmin + ER + ECR, all weight 1 (METHOD 2.4).
  config.loss.rvmin_weight = 1.0
  config.loss.er_weight = 1.0
  config.loss.ecr_weight = 1.0
  config.loss.ecr_topk_frac = 0.2         # ECR's top 20 %: k = int(21 * 134 * 134 * 0.2)

  # Optimizer and schedule: SEAM's PolyOptimizer (METHOD 2.5).
  config.optim.lr = 0.01                  # 10x on the new layers (fc8, PCM)
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.optim.poly_max_step = 0          # 0: the run's steps, floor(10582 / 8) * 8 = 10,576
  config.num_epochs = 8
  config.total_steps = -1                 # from the epochs

  # Inference: seeds on VOC train (infer_SEAM.py; METHOD 4.1, 4.3).
  config.infer.split = "train"            # 1,464 images with GT
  config.infer.scales = (0.5, 1.0, 1.5, 2.0)  # x flip, summed
  config.infer.flip = True
  config.infer.bg_threshold = 0.26        # the seed PNGs' background (the evaluation sweeps it)
  return config_lib.with_variant(config, arg)
