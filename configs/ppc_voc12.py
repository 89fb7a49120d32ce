r"""SEAM + PPC on PASCAL VOC 2012 train_aug (the paper's SEAM-based setting).

Train (8 epochs of 10,582 images, global batch 8, crop 448, view 2 at 128x128):
  python -m ppc_jax.train --config=configs/ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/ppc_voc12
Seeds and their mIoU on VOC train (1,464 images), threshold sweep 0.00..0.59:
  python -m ppc_jax.seeds.infer --config=configs/ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/ppc_voc12
  python -m ppc_jax.evaluate --voc_root=PATH/VOCdevkit/VOC2012 --split=train \
      --cam_dir=runs/ppc_voc12/infer_train/cams --out_dir=runs/ppc_voc12/eval_train

Expected (paper, median of 3 runs, ImageNet-initialised ResNet38 via config.init: the MXNet
weights or --config.init.torch_checkpoint): seed mIoU 61.5 on train at the best threshold (about
0.27); SEAM alone gives 55.4. Not yet reproduced with ppc_jax: no accelerator was available to run
the 10,576-step schedule.

Reference: wseg (master) contrast_train.py / contrast_infer.py; METHOD 2-4. The method's loss,
heads and seed inference are the 'seam_ppc' preset (`config_lib.apply_method`); the values that
define the experiment are written out below.
Momentum: the reference trains with SGD momentum 5e-4 (a known bug); this config keeps that
('reference'). `:momentum_mode=corrected` uses 0.9.
Variants: `:runlocal` (a tiny smoke run), `:batch=9` (the authors' 3-GPU script), `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.seeds_config()
  # SEAM's losses (cls, rvmin, ER, ECR) + PPC's contrast; PCM-refined CAMs (cam_rv) as seeds;
  # the 128-d projection head.
  config_lib.apply_method(config, "seam_ppc")

  # Data: two views of each crop (contrast_train.py; METHOD 2.3, 2.6).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8             # contrast_train.py's default (its script: 9 on 3 GPUs)
  config.input.crop_size = 448            # RandomCrop(448), zero padding
  config.input.resize_long = (448, 768)   # RandomResizeLong: long side in [448, 768], bicubic
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # ColorJitter: brightness, contrast, saturation, hue
  config.input.view2_size = 128           # view 2: bilinear 128x128 of view 1 (16x16 features)

  # Model: the full ResNet38 (ImageNet weights through config.init), fc8, PCM, projection head.
  config.model.width_divisor = 1

  # Loss: L_cls + rvmin + ER + ECR (all weight 1, SEAM) + PPC's three 0.1-weighted terms.
  config.loss.rvmin_weight = 1.0
  config.loss.er_weight = 1.0
  config.loss.ecr_weight = 1.0
  config.loss.ecr_topk_frac = 0.2         # ECR's top 20 %: k = int(21 * 128 * 128 * 0.2)
  config.loss.ppc.temperature = 0.1       # tau, hard-coded in contrast_train.py
  config.loss.ppc.bg_threshold = 0.20     # constant background of the pseudo-labels (METHOD 3.3)
  config.loss.ppc.topk_divisor = 8        # prototypes from the top K = h * w // 8 = 32 pixels
  config.loss.ppc.cross_prototype_weight = 0.1  # L^cp
  config.loss.ppc.cross_label_weight = 0.1      # L^cc
  config.loss.ppc.intra_weight = 0.1            # L^intra
  config.loss.ppc.mining_skip = 3         # semi-hard mining: prototype ranks 4-13 (METHOD 3.4)
  config.loss.ppc.mining_top = 13
  config.loss.ppc.hard_pixel_upper = 0.6  # hard pixels below the 60 % similarity rank
  config.cam_warmup_steps = 0             # the contrast is on from step 0 (no warm-up)

  # Optimizer and schedule: SEAM's PolyOptimizer (METHOD 2.5).
  config.optim.lr = 0.01                  # 10x on the new layers (fc8, PCM, fc_proj)
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.optim.poly_max_step = 0          # 0: the run's steps, floor(10582 / 8) * 8 = 10,576
  config.num_epochs = 8
  config.total_steps = -1                 # from the epochs

  # Inference: seeds on VOC train (contrast_infer.py; METHOD 4.1, 4.3).
  config.infer.split = "train"            # 1,464 images with GT
  config.infer.scales = (0.5, 1.0, 1.5, 2.0)  # x flip, summed
  config.infer.flip = True
  config.infer.bg_threshold = 0.26        # the seed PNGs' background (the evaluation sweeps it)
  return config_lib.with_variant(config, arg)
