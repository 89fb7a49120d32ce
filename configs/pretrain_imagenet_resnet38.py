r"""Stage 0: ImageNet classification pretraining of the full ResNet38 (stage 1's backbone).

  tfds build imagenet2012 --data_dir=DATA --manual_dir=ARCHIVES --file_format=array_record
  python -m ppc_jax.train --config=configs/pretrain_imagenet_resnet38.py:batch=1024,bf16 \
      --workdir=runs/pretrain_r38 --config.pretrain.tfds_data_dir=DATA
  python -m ppc_jax.pretrain.evaluate --config=configs/pretrain_imagenet_resnet38.py \
      --workdir=runs/pretrain_r38 --config.pretrain.tfds_data_dir=DATA      (top-1 again)
  (a later stage: --config.init.backbone_workdir=runs/pretrain_r38)

Model: ResNet38 (width_divisor 1, stage_blocks (3, 3, 6, 3)) as the later stages build it (output
stride 8: the same parameters as a stride-32 classification network, more work per image),
BatchNorm with batch statistics (torch momentum 0.1), global average pool, a 1000-way linear
layer. Data: TFDS `imagenet2012` (array_record; a gs:// data_dir is copied to a local cache),
random-resized crop 224 (8-100 % of the area, aspect 3/4-4/3) + flip; evaluation on the 50,000
validation images, central 224 crop of the short side resized to 256 (eval_crop_fraction 0.875).
Recipe: SGD, momentum 0.9, weight decay 1e-4 (not on BN / biases), lr 0.1 x batch / 256
(`:batch=`), 5 warm-up epochs then cosine, 90 epochs; `:bf16` computes the backbone in bfloat16.

Expected: not run with ppc_jax yet. The original ResNet38 ("Model A1" of Wu, Shen and van den
Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition", arXiv:1611.10080)
reached 19.54 % top-1 error (80.46 % top-1, 4.75 % top-5) on the ILSVRC 2012 validation set with
one central crop at test scale 320 (github.com/itijyou/ademxapp, README and iclass/ilsvrc.py:
short side 320, central 320 x 320 crop; Model A1 was initialised from Model A, 19.20 %, and tuned
for further epochs; trained with random-sized crops, colour jitter and lighting noise, Nesterov
SGD, momentum 0.9, weight decay 1e-4). That protocol is
`--config.pretrain.eval_size=320 --config.pretrain.eval_crop_fraction=1.0`; the default above is
the 224 / 256 single crop, for which the paper gives no number. Time: projection pending a
measured accelerator step (no accelerator was available when this config was written; the
demo's CPU measurement is in docs/pretrain.md).
"""

from ppc_jax import config_lib
from ppc_jax.pretrain import defaults


def get_config(arg=None):
  # batch: the global batch (lr follows it); bf16: bfloat16 backbone; data_dir / manual_dir: the
  # TFDS data directory and ImageNet's archives (for preparing it).
  arg = config_lib.parse_arg(arg, batch=256, bf16=False, data_dir="", manual_dir="")
  config = defaults.pretrain_config(backbone="resnet38", num_classes=1000, batch_size=arg.batch)
  config.model.stage_blocks = (3, 3, 6, 3)
  config.model.dropout_b6 = 0.0
  config.model.dropout_b7 = 0.0
  config.model.dtype = "bfloat16" if arg.bf16 else "float32"
  config.pretrain.source = "tfds"
  config.pretrain.tfds_name = "imagenet2012"
  config.pretrain.tfds_data_dir = arg.data_dir
  config.pretrain.tfds_manual_dir = arg.manual_dir
  config.input.split = "train"
  config.infer.split = "validation"
  config.pretrain.eval_batch_size = arg.batch
  config.pretrain.eval_every_steps = 5 * (1281167 // arg.batch)  # every 5 epochs
  config.pretrain.schedule = "cosine"
  config.pretrain.warmup_epochs = 5.0
  config.num_epochs = 90
  config.input.num_parallel_calls = -1   # AUTOTUNE: decoding ImageNet JPEGs needs the host
  return config
