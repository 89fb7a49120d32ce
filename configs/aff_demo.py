r"""Stage 2 at the demo's CPU size: AffinityNet on the synthetic set, from a demo stage-1 run.

  python experiments/refine_demo.py --seeds 0,1,2      (stage 1, CAMs, CRF labels, this training,
                                                  random walk, mask vs seed mIoU; see its doc)
Or by hand, after `make demo` (runs/demo):
  python -m ppc_jax.seeds.infer --config=configs/demo.py \
      --config.input.data_dir=runs/demo/data/VOCdevkit/VOC2012 --workdir=runs/demo/train \
      --split=train_aug
  python -m ppc_jax.refine.crf_labels --voc_root=runs/demo/data/VOCdevkit/VOC2012 \
      --split=train_aug --cam_dir=runs/demo/train/infer_train_aug/cams --out_dir=runs/demo/crf
  python -m ppc_jax.train --config=configs/aff_demo.py --workdir=runs/demo/aff \
      --config.input.data_dir=runs/demo/data/VOCdevkit/VOC2012 \
      --config.init.backbone_workdir=runs/demo/train \
      --config.refine.la_dir=runs/demo/crf/crf_la --config.refine.ha_dir=runs/demo/crf/crf_ha
  python -m ppc_jax.refine.rw_infer --config=configs/aff_demo.py --workdir=runs/demo/aff \
      --config.input.data_dir=runs/demo/data/VOCdevkit/VOC2012 \
      --config.refine.cam_dir=runs/demo/infer_train/cams

Expected: docs/benchmarks.md, "Stages 2 and 3 on the demo set" (mask mIoU after the random walk
beside the seeds it started from); not a paper number.

Differences from configs/aff_ppc_voc12.py, for the CPU budget: the demo's 1/8-width,
(1, 1, 2, 1)-block backbone, started from the stage-1 run's backbone (it plays the part of the
ImageNet weights), 128-pixel crops (16x16 label maps), no dropout, momentum 0.9, 240 steps (6
epochs of 320 images). The random walk keeps the reference's beta 8, logt 6 and the 0.27
background.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.affinity_config(arg)
  config.model.width_divisor = 8
  config.model.stage_blocks = (1, 1, 2, 1)
  config.model.dropout_b6 = 0.0
  config.model.dropout_b7 = 0.0
  config.input.batch_size = 8
  config.input.crop_size = 128
  config.optim.momentum_mode = "corrected"  # explicit: 0.9, as the demo's stage 1
  config.xla_cpu_flags = False              # as the demo (small convolutions)
  config.total_steps = 240
  config.log_every_steps = 20
  config.ckpt_every_steps = 120
  config.refine.bg_mode = "constant"
  config.refine.bg_value = 0.27
  config.infer.split = "train"
  return config
