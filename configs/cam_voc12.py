r"""CAM-only baseline: ResNet38 + fc8 trained with the classification loss alone.

  python -m ppc_jax.train --config=configs/cam_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/cam_voc12

Both views are still computed (and averaged in the loss) so the three methods share one data path.
Its PCM layers receive no gradient (no rvmin/ECR), so inference reads the raw fc8 map (`cam`),
as PSA's CAM seeds.
Expected (PSA paper/repo): 47.7-48.0 seed mIoU on VOC train with ImageNet initialisation; not yet
reproduced with ppc_jax.

The loss, heads and seed inference are the 'cam' preset (`config_lib.apply_method`); data,
optimizer, schedule and inference are SEAM's (configs/seam_voc12.py with PPC's 128x128 view), so
that the CAM, SEAM and SEAM+PPC configs differ in the method only.
Momentum: 'reference' (5e-4), explicit below; `:momentum_mode=corrected` uses 0.9.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.seeds_config()
  # The classification loss alone; fc8's raw CAM (cam) as seeds; no projection head.
  config_lib.apply_method(config, "cam")

  # Data: the SEAM+PPC input (configs/ppc_voc12.py; METHOD 2.3, 2.6).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8
  config.input.crop_size = 448            # RandomCrop(448), zero padding
  config.input.resize_long = (448, 768)   # RandomResizeLong: long side in [448, 768], bicubic
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # ColorJitter: brightness, contrast, saturation, hue
  config.input.view2_size = 128           # view 2: bilinear 128x128 of view 1

  # Model: the full ResNet38 (ImageNet weights through config.init) and fc8.
  config.model.width_divisor = 1

  # Optimizer and schedule: SEAM's PolyOptimizer (METHOD 2.5).
  config.optim.lr = 0.01                  # 10x on the new layers
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.optim.poly_max_step = 0          # 0: the run's steps, floor(10582 / 8) * 8 = 10,576
  config.num_epochs = 8
  config.total_steps = -1                 # from the epochs

  # Inference: seeds on VOC train (METHOD 4.1, 4.3).
  config.infer.split = "train"            # 1,464 images with GT
  config.infer.scales = (0.5, 1.0, 1.5, 2.0)  # x flip, summed
  config.infer.flip = True
  config.infer.bg_threshold = 0.26        # the seed PNGs' background (the evaluation sweeps it)
  return config_lib.with_variant(config, arg)
