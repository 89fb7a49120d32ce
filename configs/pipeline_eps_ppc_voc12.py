r"""EPS + PPC end to end on VOC 2012: seeds (EPS+PPC, saliency) -> seed PNGs as pseudo-masks ->
DeepLab on the deep-stem ResNet-101 (v2 head by default).

  python -m ppc_jax.pipeline --config=configs/pipeline_eps_ppc_voc12.py \
      --workdir=runs/eps_pipeline --config.input.data_dir=VOC \
      --config.init_mxnet_params=ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
      --config.segment.init.torch_checkpoint=resnet101s-03a0f310.pth

Stage configs: configs/eps_ppc_voc12.py (`config.seeds`), configs/aff_ppc_voc12.py
(`config.affinity`: unused by refine='seeds', kept for its fields) and configs/seg_eps_ppc_voc12.py
(`config.segment`; `:head=v1` there for DeepLab-v1).
EPS+PPC refines nothing: the pseudo-masks are the train_aug seed PNGs at background 0.22.

Expected (wseg README / the paper): seed 70.5 (train); segmentation 72.6 on val with CRF (73.6 on
test, server). Not reproduced with ppc_jax yet: no accelerator run of the full pipeline.
Variants: `:runlocal`, `:data_dir=...`.
"""

from ppc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, data_dir="")
  stage_arg = "runlocal" if arg.runlocal else None
  config = config_lib.pipeline_config(
      name="EPS + PPC (VOC 2012)",
      seeds=config_lib.load_sibling_config(__file__, "eps_ppc_voc12", stage_arg),
      affinity=config_lib.load_sibling_config(__file__, "aff_ppc_voc12", stage_arg),
      segment=config_lib.load_sibling_config(__file__, "seg_eps_ppc_voc12", stage_arg),
      refine="seeds",
      paper=dict(seed=70.5, mask=70.5, segment_val=72.6, segment_test=73.6),
      paper_source="wseg README (EPS+PPC seeds = pseudo-masks at background 0.22; DeepLab-v2 "
                   "ResNet-101 with CRF)")
  # What ties the stages together (METHOD 4.2, 4.4).
  config.refine_split = "train_aug"       # its seed PNGs are the masks DeepLab trains on
  config.eval_split = "train"             # seed (= mask) mIoU on VOC train (1,464 images)
  if arg.data_dir:
    config.input.data_dir = arg.data_dir
  return config
