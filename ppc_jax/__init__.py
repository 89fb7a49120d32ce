"""ppc_jax: Pixel-to-Prototype Contrast (CVPR'22) on SEAM, in JAX/Flax.

Architecture, following the data flow:
  data/     VOC directory reader, synthetic VOC generator, tf.data pipelines
  ops/      numerical helpers shared by model, losses and data (resizes)
  models/   ResNet38 backbone, SEAM heads + PCM + PPC projection (Flax Linen)
  losses/   SEAM losses (cls, rvmin, ER, ECR) and PPC contrast losses
  optim.py  SGD with poly decay, parameter groups, frozen layers
  steps.py  the pure, jitted, sharded train step
  trainer.py / train.py   the training loop (orbax, metrics) and its entry point
  infer.py  multi-scale CAM inference; evaluate.py  seed mIoU and threshold sweep (numpy only);
            report.py  report files
"""

__version__ = "0.1.0"
