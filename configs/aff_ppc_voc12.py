r"""Stage 2 of SEAM + PPC: AffinityNet on la/ha CRF labels, then the random walk (METHOD 4.3).

The pipeline after stage 1 (`configs/ppc_voc12.py`, its work directory runs/ppc_voc12):
  1. CAMs of train_aug (the AffinityNet training set) and of train (the evaluation split):
       python -m ppc_jax.seeds.infer --config=configs/ppc_voc12.py:data_dir=VOC \
           --workdir=runs/ppc_voc12 --split=train_aug
  2. la / ha CRF labels (alphas 4 and 24, SEAM's infer settings):
       python -m ppc_jax.refine.crf_labels --voc_root=VOC --split=train_aug \
           --cam_dir=runs/ppc_voc12/infer_train_aug/cams --out_dir=runs/ppc_voc12/crf
  3. AffinityNet (8 epochs of train_aug, batch 8, crop 448, lr 0.01, ImageNet ResNet38 init):
       python -m ppc_jax.train --config=configs/aff_ppc_voc12.py:data_dir=VOC --workdir=runs/aff \
           --config.init.mxnet_params=ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
           --config.refine.la_dir=runs/ppc_voc12/crf/crf_la \
           --config.refine.ha_dir=runs/ppc_voc12/crf/crf_ha
  4. Random walk of the train CAMs (beta 8, logt 6, background 0.27 as wseg's aff_infer.py),
     masks and their mIoU beside the seeds':
       python -m ppc_jax.refine.rw_infer --config=configs/aff_ppc_voc12.py:data_dir=VOC \
           --workdir=runs/aff --config.refine.cam_dir=runs/ppc_voc12/infer_train/cams

Expected (the reference's numbers, README wseg): seed 61.5 -> mask 69.2 mIoU on VOC train
("affinitynet train mIoU"). Not reproduced with ppc_jax yet (no accelerator run); the CPU-sized
measurement on the synthetic set is in docs/benchmarks.md ("Stages 2 and 3 on the demo set").

SEAM's own setting: `--config.refine.bg_mode=power` ((1 - max)^6 background) with logt 6; PSA:
logt 8 (`--config.refine.logt=8`). Momentum: the reference's 5e-4 ('reference');
`:momentum_mode=corrected` uses 0.9. Variants: `:runlocal`, `:batch=N`, `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  # Stage 2's schema; the `:runlocal` / `:batch=` / ... variants are applied last, below.
  config = config_lib.affinity_config(config_lib.parse_arg(None, **config_lib.VARIANT_DEFAULTS))

  # Data: train_aug with la / ha CRF labels (aff_train.py; METHOD 4.3, 11.9).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8
  config.input.crop_size = 448            # labels: the CRF scores avg-pooled 8x8 (56x56)
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # colour jitter, crop and flip; no random resize

  # Model: AffinityNet on the full ResNet38 (ImageNet weights through config.init).
  config.model.width_divisor = 1
  config.refine.radius = 5                # affinity pairs within radius 5 on the feature grid

  # Optimizer and schedule: PolyOptimizer as stage 1 (aff_train.py).
  config.optim.lr = 0.01                  # 10x on f8_3, f8_4, f8_5, f9
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.num_epochs = 8
  config.total_steps = -1                 # from the epochs: floor(10582 / 8) * 8 = 10,576

  # Inference: the random walk of the train CAMs (wseg aff_infer.py; METHOD 4.3, 11.10).
  config.infer.split = "train"            # 1,464 images with GT (train_aug: DeepLab's masks)
  config.refine.beta = 8.0                # T = column-normalised aff ** 8 ...
  config.refine.logt = 6                  # ... squared 6 times: T^64 (PSA: logt 8)
  config.refine.bg_mode = "constant"      # wseg aff_infer.py: the CAM's background is 0.27
  config.refine.bg_value = 0.27           # (SEAM: 'power', (1 - max)^6)
  return config_lib.with_variant(config, arg)
