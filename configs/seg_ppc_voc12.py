r"""Stage 3 of SEAM + PPC: DeepLab-v1 on ResNet38, trained on the random-walk pseudo-masks.

Reference: wseg `segmentation/experiment/SEAM_deeplabv1_resnet38` (METHOD 4.3, 11.13-11.14).
After stage 2 (`configs/aff_ppc_voc12.py`), with the random walk run over train_aug:
  python -m ppc_jax.refine.rw_infer --config=configs/aff_ppc_voc12.py:data_dir=VOC \
      --workdir=runs/aff --config.refine.cam_dir=runs/ppc_voc12/infer_train_aug/cams \
      --config.infer.split=train_aug
  python -m ppc_jax.train --config=configs/seg_ppc_voc12.py:data_dir=VOC --workdir=runs/seg \
      --config.init.mxnet_params=ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
      --config.segment.mask_dir=runs/aff/rw_train_aug/masks
  python -m ppc_jax.segment.seg_infer --config=configs/seg_ppc_voc12.py:data_dir=VOC \
      --workdir=runs/seg
Or all stages in one command: `python -m ppc_jax.pipeline --config=configs/pipeline_ppc_voc12.py`.

Expected (the paper, with CRF): 67.7 mIoU on VOC val, 67.4 on test (DeepLab-v1, ResNet38). Not
reproduced with ppc_jax yet (no accelerator run).

Setting: batch 10, crop 448, random scale 0.5-1.5 (OpenCV bicubic), HSV jitter 10, flip; 20k steps;
SGD lr 1e-3 (x2 biases, x10 / x20 the head's weights / bias), momentum 0.9, weight decay 5e-4 on
weights, poly 0.9 over 20,001; BN with batch statistics, its scale and bias never updated
(`--config.optim.groups.frozen.frozen=False --config.optim.groups.frozen.lr_mult=1.0` trains
them); ResNet38 Dropout2d 0.3 / 0.5 and the head's 0.5
active. Test: logits averaged over scales 0.5-1.75 x flip, softmax, dense CRF
(`--config.segment.crf=False` skips it). Variants: `:runlocal`, `:batch=N`, `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  # Stage 3's schema with DeepLab-v1 on ResNet38; the variants are applied last, below.
  config = config_lib.segmentation_config(
      config_lib.parse_arg(None, **config_lib.VARIANT_DEFAULTS), backbone="resnet38", head="v1")

  # Data: the train_aug pseudo-masks (config.segment.mask_dir) and their augmentation
  # (wseg segmentation/experiment/SEAM_deeplabv1_resnet38/config.py).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 10
  config.input.crop_size = 448
  config.segment.scale_range = (0.5, 1.5)  # RandomScale, OpenCV bicubic
  config.segment.hsv = (10, 10, 10)       # RandomHSV
  config.input.hflip = True

  # Model: DeepLab-v1 (conv_fov head) on the full ResNet38, BN with batch statistics.
  config.model.width_divisor = 1
  config.model.bn_mode = "batch"          # train.py never calls .train(): batch statistics
  config.model.bn_momentum = 0.0003       # their running statistics (METHOD 11.13)

  # Optimizer and schedule: torch SGD, multipliers 1 / 2 / 10 / 20 (METHOD 11.13).
  config.optim.lr = 1e-3                  # x2 biases, x10 / x20 the head's weights / bias
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "corrected"  # real momentum 0.9 (torch.optim.SGD)
  config.optim.poly_power = 0.9
  config.optim.poly_max_step_offset = 1   # lr * (1 - t / (20000 + 1)) ** 0.9
  config.total_steps = 20000

  # Inference: val, logits averaged over scales x flip, softmax, dense CRF (METHOD 11.14).
  config.infer.split = "val"              # 1,449 images (test: the evaluation server)
  config.infer.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  config.infer.flip = True
  config.segment.crf = True               # TEST_CRF

  config_lib.with_variant(config, arg)
  if arg.runlocal:  # the smoke run's test sizes (with_variant makes the net and steps small)
    config.model.layers = (1, 1, 1, 1)
    config.infer.scales = (0.5, 1.0)
    config.segment.crf = False
  return config
