r"""The CPU demo: SEAM+PPC on the built-in synthetic VOC-format set.

  make demo          (= python -m ppc_jax.demo --workdir=runs/demo --config=configs/demo.py)

Or step by step:
  python -m ppc_jax.data.synth --out runs/demo/data --num_train_aug 320 --num_train 80 \
      --min_size 128 --max_size 128
  python -m ppc_jax.train --config=configs/demo.py \
      --config.input.data_dir=runs/demo/data/VOCdevkit/VOC2012 --workdir=runs/demo/train
  python -m ppc_jax.infer --config=configs/demo.py \
      --config.input.data_dir=runs/demo/data/VOCdevkit/VOC2012 --workdir=runs/demo/train
  python -m ppc_jax.evaluate --voc_root=runs/demo/data/VOCdevkit/VOC2012 --split=train \
      --cam_dir=runs/demo/train/infer_train/cams --baselines

Expected: see the README's demo table (seed mIoU over the classes present in the synthetic GT,
measured on the project's 2-core CPU machine, against the all-background and painted-class
baselines of the same evaluator).

Deliberate differences from the paper setting, all for a from-scratch net on a CPU budget:
a 1/8-width, shallower ResNet38 with no ImageNet initialisation, 128-pixel crops with a 64-pixel
second view, and momentum 0.9 ('corrected') instead of the reference's effective 5e-4.
"""

import ml_collections

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="seam_ppc", steps=0, seed=0)
  config = config_lib.base_config()
  config.seed = arg.seed
  config.synth = ml_collections.ConfigDict(dict(
      num_train_aug=320, num_train=80, num_val=0, min_size=128, max_size=128,
      aspect_range=(0.75, 0.75),  # two image sizes (96x128, 128x96), like VOC's 375x500 mix
      max_objects=2, clutter=0.5, class_colours=True,  # the easier set: learnable in minutes
      seed=0))
  config.input.data_dir = ""  # set by the demo to the generated set
  config.input.split = "train_aug"
  config.input.batch_size = 8
  config.input.crop_size = 128
  config.input.view2_size = 64
  config.input.resize_long = (112, 160)

  config.model.width_divisor = 8
  config.model.stage_blocks = (1, 1, 2, 1)

  config.init.calibrate_bn_images = 32  # no ImageNet weights: start from normalised layers

  config.loss = config_lib.loss_config(arg.variant)
  config.optim.momentum_mode = "corrected"  # explicit: 0.9 (the reference's bug gives 5e-4)
  config.optim.lr = 0.01

  config.num_epochs = 8
  config.total_steps = arg.steps or 320
  config.log_every_steps = 20
  config.log_images_every_steps = 160
  config.ckpt_every_steps = 160

  config.infer.split = "train"
  config.infer.num_overlays = 16
  return config
