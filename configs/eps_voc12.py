r"""EPS on PASCAL VOC 2012 train_aug (Lee et al., CVPR'21; the base of the paper's best setting).

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
The loss, network heads and seed inference are the 'eps' preset (`config_lib.apply_method`); the
values that define the experiment are written out below.
Variants: `:runlocal`, `:batch=N`, `:data_dir=...`, `:momentum_mode=corrected`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, **config_lib.VARIANT_DEFAULTS)
  config = config_lib.seeds_config()
  # EPS's loss (cls + saliency, view 1, feature resolution); no PCM, no projection head, no
  # dropout on conv6; seeds from softmax(fc8) (cam_down), max-normalised; saliency maps read.
  config_lib.apply_method(config, "eps")

  # Data: halbielee/EPS train.py with PFAN saliency maps (METHOD 3.6).
  config.input.data_dir = "data/VOCdevkit/VOC2012"  # `:data_dir=PATH` points elsewhere
  config.input.split = "train_aug"        # 10,582 images
  config.input.batch_size = 8
  config.input.crop_size = 448            # RandomCrop(448), zero padding
  config.input.resize_long = (256, 512)   # halbielee/EPS's range (wseg@esp: 448..768)
  config.input.jitter = (0.3, 0.3, 0.3, 0.1)  # ColorJitter, on the image only
  config.input.view2_size = 128           # view 2 (EPS's loss reads view 1 only)

  # Model: the full ResNet38 (ImageNet weights through config.init) and fc8.
  config.model.width_divisor = 1

  # Loss: L = MLSM(GAP(fc8)) + the saliency loss (METHOD 3.6).
  config.loss.eps.weight = 1.0
  config.loss.eps.tau = 0.4               # overlap threshold of a valid class (the scripts' 0.4)
  config.loss.eps.lam = 0.5               # S_hat = lam * fg + (1 - lam) * bg (VOC)

  # Optimizer and schedule: --max_iters 10000 --iter_size 2 (METHOD 3.6, 11.6).
  config.optim.lr = 0.01                  # 10x on fc8
  config.optim.weight_decay = 5e-4
  config.optim.momentum_mode = "reference"  # the reference's effective momentum 5e-4
  config.optim.poly_power = 0.9
  config.optim.poly_max_step = 19830      # floor(10582 / 8) * 15: the LR freezes after it
  config.total_steps = 20000              # 10,000 iterations x iter_size 2, one SGD step each

  # Inference: EPS seeds on VOC train (infer.py; METHOD 4.2).
  config.infer.split = "train"            # 1,464 images with GT
  config.infer.scales = (0.5, 1.0, 1.5, 2.0)  # x flip, summed
  config.infer.flip = True
  config.infer.bg_threshold = 0.20        # EPS's script: --thr 0.20

  if arg.runlocal:
    config.optim.poly_max_step = 0        # the smoke run's few steps
  return config_lib.with_variant(config, arg)
