"""Stage 1: the classification network whose CAMs are the seeds (CAM / SEAM / PPC / EPS).

  seam_net        SeamNet: ResNet38 + fc8 + PCM + projection head (EPS's network without PCM)
  losses/         SEAM terms, PPC contrast, EPS saliency loss, the per-variant objective
  step            the pure train step (two views), the CAM-only warm-up programs
  stage           the stage as `ppc_jax.stages` knows it (train, infer, reference files)
  seed_trainer    the stage on the shared loop (`python -m ppc_jax.train`, config.stage='seeds')
  bn_calibration  frozen-BN statistics from training crops (runs without ImageNet weights)
  infer           multi-scale CAM inference over a split (`python -m ppc_jax.seeds.infer`)
  cam_postprocess multi-scale merge, normalisation, seed PNGs, overlays (files: data/cam_io)
"""
