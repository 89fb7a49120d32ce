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
  return config_lib.segmentation_config(arg, backbone="resnet101", head=arg.head)
