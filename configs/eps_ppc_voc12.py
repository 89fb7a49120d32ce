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
The loss, network heads and seed inference are the 'eps_ppc' preset (`config_lib.apply_method`);
the values that define the experiment are written out below.
Variants: `:runlocal`, `:batch=N`, `:data_dir=...`, `:momentum_mode=corrected`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.seeds_config()
  # EPS's saliency loss + SEAM's losses + PPC, all at feature resolution; PCM, the projection
  # head, no dropout on conv6; seeds from softmax(fc8) (cam_down); saliency maps read.
  config_lib.apply_method(config, "eps_ppc")

  # Data: wseg@esp contrast_train.py with PFAN saliency maps (METHOD 3.6).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8
  config.input.crop_size = 448            # RandomCrop(448), zero padding
  config.input.resize_long = (448, 768)   # the esp branch's range (halbielee/EPS: 256..512)
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # ColorJitter, on the image only
  config.input.view2_size = 128           # view 2: bilinear 128x128 of view 1 (16x16 features)

  # Model: the full ResNet38 (ImageNet weights through config.init), fc8, PCM, projection head.
  config.model.width_divisor = 1

  # Loss: cls + rvmin + saliency + ER + ECR + PPC (train_contrast; METHOD 3.6, 11.1-11.5).
  config.loss.eps.weight = 1.0
  config.loss.eps.tau = 0.4               # overlap threshold of a valid class (the script's 0.4)
  config.loss.eps.lam = 0.5               # S_hat = lam * fg + (1 - lam) * bg (VOC)
  config.loss.rvmin_weight = 1.0
  config.loss.er_weight = 1.0
  config.loss.ecr_weight = 1.0
  config.loss.ecr_topk_frac = 0.2         # k = int(21 * 16 * 16 * 0.2) = 1075
  config.loss.max_onehot_bug = True       # the branch's ECR targets, for exactness (METHOD 11.5)
  config.loss.ppc.temperature = 0.1       # tau
  config.loss.ppc.bg_threshold = 0.10     # get_contrast_loss(.., bg_thres=0.10)
  config.loss.ppc.topk_divisor = 16       # K = h * w // 16 = 16 on the 16x16 map
  config.loss.ppc.cross_prototype_weight = 0.1  # gamma = 0.10 on each term
  config.loss.ppc.cross_label_weight = 0.1
  config.loss.ppc.intra_weight = 0.1
  config.loss.ppc.mining_skip = 3         # semi-hard mining: prototype ranks 4-13
  config.loss.ppc.mining_top = 13
  config.loss.ppc.hard_pixel_upper = 0.6
  config.cam_warmup_steps = 0             # every loss is on from step 0

  # Optimizer and schedule: --max_iters 10000 --iter_size 2 (METHOD 3.6, 11.6).
  config.optim.lr = 0.01                  # 10x on fc8, proj_fc, f8_3, f8_4, f9
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.optim.poly_max_step = 19830      # floor(10582 / 8) * 15: the LR freezes after it
  config.total_steps = 20000              # 10,000 iterations x iter_size 2, one SGD step each

  # Inference: EPS seeds on VOC train (contrast_infer.py; METHOD 4.2).
  config.infer.split = "train"            # 1,464 images with GT
  config.infer.scales = (0.5, 1.0, 1.5, 2.0)  # x flip, summed
  config.infer.flip = True
  config.infer.bg_threshold = 0.22        # esp script_contrast.sh: --thr 0.22

  if arg.runlocal:
    config.optim.poly_max_step = 0        # the smoke run's few steps
  return config_lib.with_variant(config, arg)
