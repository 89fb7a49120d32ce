r"""Stage 0 at the demo's CPU size: the demo's ResNet38 pretrained on the synthetic pretext set.

  python -m ppc_jax.data.synth_classes --out runs/pretrain_demo/data
  python -m ppc_jax.train --config=configs/pretrain_demo.py --workdir=runs/pretrain_demo/train
  (stage 1 from it: python -m ppc_jax.train --config=configs/demo.py ... \
      --config.init.backbone_workdir=runs/pretrain_demo/train --config.init.calibrate_bn_images=0)

The backbone is configs/demo.py's (width_divisor 8, stage_blocks (1, 1, 2, 1), no dropout), so
its parameters and BN statistics hand over to the demo's stage 1 unchanged. Data: the 48 classes
of `ppc_jax.data.synth_classes` (class folders, 80 training and 20 validation images of 64-96 px
per class), 64 px random-resized crops of 25-100 % of the image (the scale-defined classes stay
apart) + flip; evaluation on val, central crop 0.875 of the short side resized to 64, every
300 steps and at the end. Recipe: SGD momentum 0.9, weight decay 1e-4 (not on BN / biases),
batch 32, lr 0.05 (0.4 x batch / 256: a small BN network from scratch takes a higher rate than
ImageNet's 0.1), 1 warm-up epoch then cosine, 1,200 steps (10 epochs of 3,840 images).

Expected (docs/pretrain.md; 2-core AMD EPYC, seeds 0-2): validation top-1 69-74 % (chance 1/48 =
2.1 %) in 3-5 minutes.
"""

from ppc_jax import config_lib
from ppc_jax.pretrain import defaults


def get_config(arg=None):
  # steps: total steps (0 = 1,200); data_dir: the class-folder set; seed: init and data order.
  arg = config_lib.parse_arg(arg, steps=0, data_dir="runs/pretrain_demo/data", seed=0)
  config = defaults.pretrain_config(backbone="resnet38", num_classes=48, batch_size=32,
                                    crop_size=64, width_divisor=8)
  config.seed = arg.seed
  config.input.seed = arg.seed
  config.model.stage_blocks = (1, 1, 2, 1)   # configs/demo.py's backbone
  config.pretrain.source = "folders"
  config.pretrain.folder_dir = arg.data_dir
  config.input.split = "train"
  config.infer.split = "val"
  config.pretrain.area_range = (0.25, 1.0)
  config.pretrain.eval_size = 64
  config.pretrain.eval_batch_size = 64
  config.pretrain.eval_every_steps = 300
  config.pretrain.schedule = "cosine"
  config.pretrain.warmup_epochs = 1.0
  config.optim.lr = 0.4 * config.input.batch_size / 256
  config.total_steps = arg.steps or 1200
  config.log_every_steps = 20
  config.ckpt_every_steps = 300
  # JAX's own XLA:CPU settings, as the demo (small convolutions).
  config.xla_cpu_flags = False
  return config
