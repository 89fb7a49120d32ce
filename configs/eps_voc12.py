r"""EPS on PASCAL VOC 2012 train_aug (Lee et al., CVPR'21; the baseline of the paper's best setting).

Train (20,000 SGD steps of global batch 8, crop 448 from images resized to a long side of
256..512, saliency maps read with the images):
  python -m ppc_jax.convert ilsvrc-cls_rna-a1_cls1000_ep-0001.params runs/eps_voc12 --md5=a1 \
      --config=configs/eps_voc12.py:data_dir=PATH/VOCdevkit/VOC2012
  python -m ppc_jax.train --config=configs/eps_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/eps_voc12
Seeds (EPS inference: softmax of the raw fc8 output, max-normalised, background 0.20) and their
mIoU on VOC train (1,464 images):
  python -m ppc_jax.seeds.infer --config=configs/eps_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/eps_voc12
  python -m ppc_jax.evaluate --voc_root=PATH/VOCdevkit/VOC2012 --split=train \
      --cam_dir=runs/eps_voc12/infer_train/cams --out_dir=runs/eps_voc12/eval_train

The network is EPS's `resnet38_eps.Net`: ResNet38 + fc8 (21 outputs), no dropout on conv6, no
PCM, no projection head. Its background is fc8's LAST row; ppc_jax keeps it at row 0 (the
converter moves it, `ppc_jax/layouts.py`). Loss (halbielee/EPS `train_eps`, METHOD 3.6): on view 1
only, at feature resolution, L = MLSM(GAP(fc8)) + saliency loss (saliency resized with torch's
legacy nearest rule, rounded overlap / (sum + 1e-4 per pixel) > tau = 0.4, lambda = 0.5, MSE).
Saliency: SALImages/<id>.png (PFAN maps), RGB mean / 255, resized / flipped / cropped with the
image. Schedule: --max_iters 10000 --iter_size 2 = 20,000 steps of batch 8, lr 0.01 (10x on fc8),
wd 5e-4, the reference's momentum 5e-4; poly max_step = floor(10582 / 8) * 15 = 19,830, after
which the LR stays at its last value (not 0).

Expected (reference): EPS seed / pseudo-mask mIoU 69.22 on VOC train with its released
checkpoint (EPS README; the esp branch script evaluates at threshold 0.20); segmentation 70.9 val /
70.8 test (paper, with DeepLab). Not yet reproduced with ppc_jax (no accelerator was available).
The resize range (256, 512) is halbielee/EPS's; wseg@esp's EPS+PPC uses (448, 768).
Variants: `:runlocal`, `:batch=N`, `:data_dir=...`, `:momentum_mode=corrected`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.eps_config(arg, "eps")
  config.model.pcm = False
  config.model.proj_dim = None
  config.input.resize_long = (256, 512) if not arg.runlocal else config.input.resize_long
  config.infer.bg_threshold = 0.20      # EPS's script: --thr 0.20
  return config
