r"""CAM-only baseline: ResNet38 + fc8 trained with the classification loss alone.

  python -m ppc_jax.train --config=configs/cam_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/cam_voc12

Both views are still computed (and averaged in the loss) so the three methods share one data path.
Its PCM layers receive no gradient (no rvmin/ECR), so inference reads the raw fc8 map (`cam`),
as PSA's CAM seeds.
Expected (PSA paper/repo): 47.7-48.0 seed mIoU on VOC train with ImageNet initialisation; not yet
reproduced with ppc_jax.
Momentum: 'reference' (5e-4), explicit below.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.base_config()
  config.loss = config_lib.loss_config("cam")
  config.model.proj_dim = None
  config.infer.cam_key = "cam"
  config.optim.momentum_mode = "reference"
  return config_lib.with_variant(config, arg)
