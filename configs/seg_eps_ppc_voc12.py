r"""Stage 3 of EPS + PPC: DeepLab on the deep-stem dilated ResNet-101 ("resnet101s").

Reference: wseg `segmentation/experiment/EPS_deeplabv2_resnet101` (default, `:head=v2`) and
`EPS_deeplabv1_resnet101` (`:head=v1`); METHOD 11.11-11.14. EPS+PPC refines nothing: the
pseudo-masks are the seed PNGs of train_aug at background 0.22 (`configs/masks_eps_ppc_voc12.py`),
or their CRF'd version (the reference's `crf_5_8_png`).
  python -m ppc_jax.train --config=configs/seg_eps_ppc_voc12.py:data_dir=VOC --workdir=runs/seg \
      --config.init.torch_checkpoint=resnet101s-03a0f310.pth \
      --config.segment.mask_dir=runs/eps_ppc/infer_train_aug/seeds
  python -m ppc_jax.segment.seg_infer --config=configs/seg_eps_ppc_voc12.py:data_dir=VOC \
      --workdir=runs/seg

Expected (the paper, with CRF): 72.6 val / 73.6 test mIoU with the v2 head, 72.3 / 73.5 with v1.
Not reproduced with ppc_jax yet (no accelerator run).

The released "deeplabv2" cannot be constructed (METHOD 11.12); `models.DeepLab(head='v2')` is what
it evidently builds: the backbone as in deeplabv1.py (dilated, deep stem, ImageNet "resnet101s"),
ASPP at dilations 6 / 12 / 18 / 24 with an image-pooling branch, concat, 1x1 fuse, BN, ReLU,
dropout, dropout, classifier. Training and test settings as `configs/seg_ppc_voc12.py`; the
backbone's BN momentum is 0.1, the head's 0.0003. torchvision's resnet101 does not fit this
backbone (64-channel stem): loading it fails with the mismatched keys named.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, head="v2", **config_lib.VARIANT_DEFAULTS)
  if arg.head not in ("v1", "v2"):
    raise ValueError(f"seg_eps_ppc_voc12: head={arg.head!r}; expected 'v1' or 'v2'")
  # Stage 3's schema with DeepLab-v2 (ASPP) or -v1 on the deep-stem ResNet-101; the variants are
  # applied last, below.
  config = config_lib.segmentation_config(
      config_lib.parse_arg(None, **config_lib.VARIANT_DEFAULTS), backbone="resnet101",
      head=arg.head)

  # Data: the train_aug seed PNGs (config.segment.mask_dir) and their augmentation
  # (wseg segmentation/experiment/EPS_deeplabv2_resnet101/config.py).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 10
  config.input.crop_size = 448
  config.segment.scale_range = (0.5, 1.5)  # RandomScale, OpenCV bicubic
  config.segment.hsv = (10, 10, 10)       # RandomHSV
  config.input.hflip = True

  # Model: the dilated deep-stem ResNet-101 ("resnet101s" ImageNet weights), BN with batch
  # statistics.
  config.model.layers = (3, 4, 23, 3)
  config.model.bn_mode = "batch"          # train.py never calls .train(): batch statistics
  config.model.backbone_bn_momentum = 0.1  # their running statistics: the backbone's ...
  config.model.bn_momentum = 0.0003       # ... and the head's (METHOD 11.13)

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
