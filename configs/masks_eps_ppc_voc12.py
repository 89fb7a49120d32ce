r"""Stage 2 of EPS + PPC: the pseudo-masks are the seeds themselves (no AffinityNet, no CRF).

EPS trains its segmentation model on the seed PNGs of train_aug at a fixed background score (EPS
README: no CRF, no random walk), and the `esp` branch's script_contrast.sh does the same for
EPS + PPC at --thr 0.22 (METHOD 4.2). This config is `configs/eps_ppc_voc12.py` with the
inference split set to train_aug, so that, after stage 1 (`configs/eps_ppc_voc12.py`, work
directory runs/eps_ppc_voc12):
  1. pseudo-masks of train_aug (EPS inference: raw fc8, softmax, max-normalised, 4 scales x flip;
     <out_dir>/seeds/<id>.png at background 0.22, the VOC-palette masks DeepLab trains on):
       python -m ppc_jax.seeds.infer --config=configs/masks_eps_ppc_voc12.py:data_dir=VOC \
           --workdir=runs/eps_ppc_voc12
  2. optional, the esp script's CRF score files (`--crf ... --crf_t 5 --crf_alpha 8`: softmax CRF
     of bg = (1 - max)^8 and the CAMs, 5 mean-field iterations; crf_a8/<id>.npz, or the reference's
     pickled .npy dicts with --score_format=reference_npy; its own pseudo-masks do not use them):
       python -m ppc_jax.refine.crf_labels --voc_root=VOC --split=train_aug \
           --cam_dir=runs/eps_ppc_voc12/infer_train_aug/cams --out_dir=runs/eps_ppc_voc12/crf \
           --alphas=8 --iterations=5
  3. their quality on train (the 1,464 images with GT), as the reference's evaluate_png.py:
       python -m ppc_jax.seeds.infer --config=configs/masks_eps_ppc_voc12.py:data_dir=VOC \
           --workdir=runs/eps_ppc_voc12 --split=train
       python -m ppc_jax.evaluate --voc_root=VOC --split=train --type=png \
           --cam_dir=runs/eps_ppc_voc12/infer_train/seeds --out_dir=runs/eps_ppc_voc12/eval_masks

Expected (reference, wseg README; METHOD 4.4): pseudo-mask = seed mIoU 70.5 on VOC train at
background 0.22 (EPS alone: 69.22 at 0.20 with its released checkpoint); DeepLab trained on the
train_aug masks: 72.3 val / 73.5 test (v1) and 72.6 / 73.6 (v2), with CRF. Not yet reproduced
with ppc_jax (no accelerator). Variants as configs/eps_ppc_voc12.py: `:runlocal`, `:batch=N`,
`:data_dir=...`, `:momentum_mode=corrected`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  # Stage 1's EPS+PPC config (its work directory holds the trained network), variants included.
  config = config_lib.load_sibling_config(__file__, "eps_ppc_voc12", arg)
  # Inference: the pseudo-masks of the set DeepLab trains on, at the seeds' background.
  config.infer.split = "train_aug"        # 10,582 images
  config.infer.bg_threshold = 0.22        # esp script_contrast.sh: --thr 0.22
  return config
