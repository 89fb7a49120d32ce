r"""EPS + PPC on PASCAL VOC 2012 train_aug: the paper's best setting (wseg branch `esp`).

Train (20,000 SGD steps of global batch 8, crop 448 from images resized to a long side of
448..768, view 2 at 128x128, saliency read with the images):
  python -m ppc_jax.convert ilsvrc-cls_rna-a1_cls1000_ep-0001.params runs/eps_ppc_voc12 --md5=a1 \
      --config=configs/eps_ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012
  python -m ppc_jax.train --config=configs/eps_ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/eps_ppc_voc12
  python -m ppc_jax.seeds.infer --config=configs/eps_ppc_voc12.py:data_dir=PATH/VOCdevkit/VOC2012 \
      --workdir=runs/eps_ppc_voc12
  python -m ppc_jax.evaluate --voc_root=PATH/VOCdevkit/VOC2012 --split=train \
      --cam_dir=runs/eps_ppc_voc12/infer_train/cams --out_dir=runs/eps_ppc_voc12/eval_train

This is EPS plus ALL of SEAM's machinery plus PPC (METHOD 3.6, 11.1-11.7): the network is
wseg@esp's `resnet38_contrast.Net` (fc8 with 21 outputs, proj_fc 128, PCM; no dropout on conv6;
background LAST in its checkpoints, row 0 in ppc_jax). Every loss runs at feature resolution
(56x56 and 16x16; nothing is upsampled):
  cls:  [MLSM(GAP(fc8_1)) + MLSM(GAP(fc8_2))]/2 + [rvmin(cam_rv_1) + rvmin(cam_rv_2)]/2
  sal:  [EPS(fc8_1, S) + EPS(fc8_2, S2)]/2 + [EPS(cam_rv_1, S) + EPS(cam_rv_2, S2)]/2 (tau 0.4,
        lambda 0.5; S2 = bilinear(S, 128, align_corners=True))
  ER, ECR: view 1 resized to 16x16; ECR k = int(21 * 16 * 16 * 0.2) = 1075; its max_onehot targets
        carry the branch's channel-order bug (config.loss.max_onehot_bug=True, the default here for
        exactness: aeroplane is never zeroed and the background competes; False fixes it)
  PPC:  0.1-weighted cross-prototype, cross-label and intra terms with K = h*w // 16 = 16 and a
        constant background score of 0.10.
Schedule: 20,000 steps of batch 8 (--max_iters 10000 --iter_size 2), lr 0.01 (10x on fc8,
proj_fc, f8_3, f8_4, f9), wd 5e-4, momentum 5e-4 (the reference's bug); poly max_step 19,830,
after which the LR stays at (1/19830)^0.9 x lr for the last 171 steps.
Seeds: EPS inference (raw fc8 output, no PCM; softmax, max-normalised), background 0.22 (the
esp script's --thr 0.22).

Expected (reference, wseg README): seed 70.5 mIoU on VOC train; segmentation 72.3 val / 73.5 test
(DeepLab-v1) and 72.6 / 73.6 (v2), with CRF. Not yet reproduced with ppc_jax (no accelerator).
Variants: `:runlocal`, `:batch=N`, `:data_dir=...`, `:momentum_mode=corrected`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.eps_config(arg, "eps_ppc")
  config.loss.max_onehot_bug = True
  config.loss.ppc.topk_divisor = 16     # K = h * w // 16 = 16 on the 16x16 map
  config.loss.ppc.bg_threshold = 0.10
  config.infer.bg_threshold = 0.22      # esp script_contrast.sh: --thr 0.22
  return config
