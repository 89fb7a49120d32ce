r"""Stage 0: ImageNet classification pretraining of the deep-stem ResNet-101 (DeepLab's backbone
in the EPS-based runs, the "resnet101s" of the reference).

  tfds build imagenet2012 --data_dir=DATA --manual_dir=ARCHIVES --file_format=array_record
  python -m ppc_jax.train --config=configs/pretrain_imagenet_resnet101.py:batch=1024,bf16 \
      --workdir=runs/pretrain_r101 --config.pretrain.tfds_data_dir=DATA
  (DeepLab: configs/seg_eps_ppc_voc12.py with --config.init.backbone_workdir=runs/pretrain_r101)

Model: `models.ResNet101` as DeepLab builds it (deep stem 3x3 convs 64-64-128, layers
(3, 4, 23, 3), dilated layer3 / layer4: output stride 8, the parameters of a stride-32 network),
BatchNorm with batch statistics (momentum 0.1), global average pool, a 1000-way linear layer.
Data and recipe: configs/pretrain_imagenet_resnet38.py's (TFDS imagenet2012, random-resized
crop 224 + flip, SGD momentum 0.9, weight decay 1e-4 not on BN / biases, lr 0.1 x batch / 256,
5 warm-up epochs, cosine, 90 epochs; 224 / 256 central-crop evaluation).

Expected: not run with ppc_jax yet. References, one central 224 crop on the ILSVRC 2012
validation set: torchvision's ResNet-101 (plain 7x7 stem, its 90-epoch step recipe) 77.374 %
top-1 (torchvision/models/resnet.py, ResNet101_Weights.IMAGENET1K_V1); GluonCV's ResNet101_v1s,
the deep-stem architecture of the reference's "resnet101s" file (PyTorch-Encoding), 80.30 %
top-1 with GluonCV's own training recipe (timm's results table, docs/results.md,
gluon_resnet101_v1s). Time: projection pending a measured accelerator step.
"""

from ppc_jax import config_lib
from ppc_jax.pretrain import defaults


def get_config(arg=None):
  # batch: the global batch (lr follows it); bf16: bfloat16 backbone; data_dir / manual_dir: the
  # TFDS data directory and ImageNet's archives (for preparing it).
  arg = config_lib.parse_arg(arg, batch=256, bf16=False, data_dir="", manual_dir="")
  config = defaults.pretrain_config(backbone="resnet101", num_classes=1000, batch_size=arg.batch)
  config.model.layers = (3, 4, 23, 3)
  config.model.bn_momentum = 0.1
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
  config.input.num_parallel_calls = -1
  return config
