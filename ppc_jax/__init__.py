"""ppc_jax: Pixel-to-Prototype Contrast (CVPR'22) on SEAM and EPS, in JAX/Flax.

Three stages on shared parts (docs/ARCHITECTURE.md):
  data/ models/ ops/   shared input, backbones + registry, jnp ops
  seeds/    stage 1: classification network, SEAM / PPC / EPS losses, step, CAM inference
  refine/   stage 2: CRF labels, AffinityNet, random walk -> pseudo-masks
  segment/  stage 3: DeepLab on the pseudo-masks, multi-scale inference, VOC-server PNGs
  trainer.py, train_state.py, checkpoint.py, optim.py, sharding.py   the one training loop
  evaluate.py, report.py   mIoU (numpy only) and reports
  train.py, pipeline.py, demo.py   entry points: one stage, all stages, the synthetic demo
"""

__version__ = "0.1.0"
