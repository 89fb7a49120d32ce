"""Stage 3: DeepLab trained on the pseudo-masks, its multi-scale inference and evaluation.

  seg_weights  reference DeepLab / ImageNet ResNet-101 state dicts <-> Flax variables
  seg_data     tf.data input: image + pseudo-mask PNG, the reference's weak augmentation
  seg_step     the pure train step (cross entropy with ignore, batch-statistics BN, 4 LR groups)
  stage        the stage as `ppc_jax.stages` knows it (train, infer, reference files)
  seg_trainer  the stage on the shared loop (`python -m ppc_jax.train`, config.stage='segment')
  seg_infer    multi-scale + flip logits, optional dense CRF, palette PNGs, confusion-matrix mIoU
"""
