"""The per-variant training objective of one step (METHOD 2.4 item 7 and 3.4).

`objective(out1, out2, labels, rng, *, config)` takes the two views' model output dicts
(docs/ARCHITECTURE.md) and returns the scalar to differentiate plus a flat dict of metrics.

Variants (`config.variant`):
  * 'cam': L = (L_cls,1 + L_cls,2) / 2. A plain CAM classifier; both views are still forwarded by
    the train step, so the classification loss is averaged over them like in SEAM.
  * 'seam': L = (L_cls,1 + L_cls,2)/2 + w_rvmin (L_rvmin,1 + L_rvmin,2)/2 + w_er L_ER
    + w_ecr L_ECR, all weights 1 in the reference.
  * 'seam_ppc': 'seam' + the PPC contrast total (0.1-weighted view means of L^cp, L^cc, L^intra).

Metrics hold the terms the variant computes, unweighted: loss_cls, and for 'seam'/'seam_ppc'
loss_rvmin, loss_er, loss_ecr; for 'seam_ppc' also loss_cross_prototype, loss_cross_label,
loss_intra (view means, before the 0.1 weights) and loss_nce (their weighted sum, the reference's
`loss_nce`); always `loss`, the total. Note the reference logs `loss_cls` with rvmin folded in
(cls + rvmin); here they are separate, and the reference's logged `loss_cross_nce`,
`loss_cross_nce2`, `loss_intra_nce` are 0.1 x loss_cross_prototype, loss_cross_label, loss_intra.
"""

from ppc_jax.losses import ppc as ppc_lib
from ppc_jax.losses import seam as seam_lib

VARIANTS = ("cam", "seam", "seam_ppc")


def objective(out1, out2, labels, rng, *, config):
  """Total loss and metrics of one training step.

  Args:
    out1: view-1 model outputs: 'cam', 'cam_rv' [B, H, W, C]; 'cam_rv_down' [B, h1, w1, C];
      'proj' [B, h1, w1, D] (the last two only for 'seam_ppc', 'cam_rv' not for 'cam'). C = the
      class list's count with background (21 for VOC).
    out2: view-2 model outputs, same keys, at view 2's sizes (e.g. 128x128 / 16x16).
    labels: [B, C - 1] multi-hot labels.
    rng: PRNG key (hard pixel sampling of 'seam_ppc'; unused otherwise).
    config: `config_lib.loss_config()` ConfigDict (variant, weights, ecr_topk_frac, ppc).

  Returns:
    (loss, metrics): loss a float32 scalar; metrics a flat dict of float32 scalars (see module
    docstring).

  Raises:
    ValueError: unknown variant, or labels that do not fit the CAM channels (at trace time).
  """
  variant = config.variant
  if variant not in VARIANTS:
    raise ValueError(f"unknown loss variant {variant!r}; expected one of {VARIANTS}")
  if labels.shape[-1] + 1 != out1["cam"].shape[-1]:
    raise ValueError(f"labels {labels.shape} need CAMs with {labels.shape[-1] + 1} channels "
                     f"(background + one per class), got cam {out1['cam'].shape}: "
                     "config.model.num_classes must be the class list's count + 1")

  loss_cls = 0.5 * (seam_lib.classification_loss(out1["cam"], labels)
                    + seam_lib.classification_loss(out2["cam"], labels))
  metrics = {"loss_cls": loss_cls}
  total = loss_cls

  if variant in ("seam", "seam_ppc"):
    loss_rvmin = 0.5 * (seam_lib.adaptive_min_pooling_loss(out1["cam_rv"], labels)
                        + seam_lib.adaptive_min_pooling_loss(out2["cam_rv"], labels))
    loss_er, loss_ecr = seam_lib.er_ecr_losses(
        out1["cam"], out1["cam_rv"], out2["cam"], out2["cam_rv"], labels,
        topk_frac=config.ecr_topk_frac)
    metrics.update(loss_rvmin=loss_rvmin, loss_er=loss_er, loss_ecr=loss_ecr)
    total = (total + config.rvmin_weight * loss_rvmin + config.er_weight * loss_er
             + config.ecr_weight * loss_ecr)

  if variant == "seam_ppc":
    contrast = ppc_lib.ppc_losses(out1["cam_rv_down"], out2["cam_rv_down"], out1["proj"],
                                  out2["proj"], labels, rng, config=config.ppc)
    metrics.update(loss_cross_prototype=contrast["cross_prototype"],
                   loss_cross_label=contrast["cross_label"],
                   loss_intra=contrast["intra"],
                   loss_nce=contrast["total"])
    total = total + contrast["total"]

  metrics["loss"] = total
  return total, metrics
