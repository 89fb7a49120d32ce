r"""SEAM + PPC end to end on VOC 2012: seeds -> AffinityNet refinement -> DeepLab-v1 (ResNet38).

  python -m ppc_jax.pipeline --config=configs/pipeline_ppc_voc12.py --workdir=runs/ppc_pipeline \
      --config.input.data_dir=VOC \
      --config.init_mxnet_params=ilsvrc-cls_rna-a1_cls1000_ep-0001.params

The stage configs are configs/ppc_voc12.py (`config.seeds`), configs/aff_ppc_voc12.py
(`config.affinity`) and configs/seg_ppc_voc12.py (`config.segment`); override any field of one with
`--config.seeds.optim.lr=...` etc. Each stage is skipped when complete; rerun to resume.

Expected (the paper / wseg README): seed 61.5 (train, best threshold), mask 69.2 (train, after
the random walk), segmentation 67.7 on val with CRF (67.4 on test, server). Not reproduced with
ppc_jax yet: no accelerator run of the full pipeline.
Variants: `:runlocal` (tiny widths and steps everywhere, for a smoke run), `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, data_dir="")
  stage_arg = "runlocal" if arg.runlocal else None
  config = config_lib.pipeline_config(
      name="SEAM + PPC (VOC 2012)",
      seeds=config_lib.load_sibling_config(__file__, "ppc_voc12", stage_arg),
      affinity=config_lib.load_sibling_config(__file__, "aff_ppc_voc12", stage_arg),
      segment=config_lib.load_sibling_config(__file__, "seg_ppc_voc12", stage_arg),
      refine="affinity",
      paper=dict(seed=61.5, mask=69.2, segment_val=67.7, segment_test=67.4),
      paper_source="wseg README (seed median of 3 runs, affinitynet train mIoU) and the PPC "
                   "paper (DeepLab-v1 ResNet38 with CRF)")
  # What ties the stages together (METHOD 4.3).
  config.refine_split = "train_aug"       # CAMs, CRF labels and random-walk masks DeepLab trains on
  config.eval_split = "train"             # seed and mask mIoU on VOC train (1,464 images)
  config.crf_alphas = (4, 24)             # la / ha CRF background powers (SEAM's infer_SEAM.py)
  if arg.data_dir:
    config.input.data_dir = arg.data_dir
  return config
