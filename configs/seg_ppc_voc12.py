r"""Stage 3 of SEAM + PPC: DeepLab-v1 on ResNet38, trained on the random-walk pseudo-masks.

Reference: wseg `segmentation/experiment/SEAM_deeplabv1_resnet38` (METHOD 4.3, 11.13-11.14).
After stage 2 (`configs/aff_ppc_voc12.py`), with the random walk run over train_aug:
  python -m ppc_jax.refine.rw_infer --config=configs/aff_ppc_voc12.py:data_dir=VOC \
      --workdir=runs/aff --config.refine.cam_dir=runs/ppc_voc12/infer_train_aug/cams \
      --config.refine.split=train_aug
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
  return config_lib.segmentation_config(arg, backbone="resnet38", head="v1")
