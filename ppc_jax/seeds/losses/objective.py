"""The per-variant training objective of one step (METHOD 2.4 item 7 and 3.4).

`objective(out1, out2, labels, rng, *, config)` takes the two views' model output dicts
(docs/ARCHITECTURE.md) and returns the scalar to differentiate plus a flat dict of metrics.

Variants (`config.variant`):
  * 'cam': L = (L_cls,1 + L_cls,2) / 2. A plain CAM classifier; both views are still forwarded by
    the train step, so the classification loss is averaged over them like in SEAM.
  * 'seam': L = (L_cls,1 + L_cls,2)/2 + w_rvmin (L_rvmin,1 + L_rvmin,2)/2 + w_er L_ER
    + w_ecr L_ECR, all weights 1 in the reference.
  * 'seam_ppc': 'seam' + the PPC contrast total (0.1-weighted view means of L^cp, L^cc, L^intra).
  * 'eps' (halbielee/EPS `train_eps`, METHOD 3.6): view 1 only, at feature resolution:
    L = L_cls(GAP(cam_down1)) + w_sal L_sal(cam_down1, S). View 2 is not used (XLA drops it).
  * 'eps_ppc' (wseg@esp `train_contrast`): everything at feature resolution (nothing upsampled):
    L = [cls(cam_down1) + cls(cam_down2)]/2 + [rvmin(cam_rv_down1) + rvmin(cam_rv_down2)]/2
      + w_sal {[sal(cam_down1, S) + sal(cam_down2, S2)]/2 + [sal(cam_rv_down1, S)
      + sal(cam_rv_down2, S2)]/2} + ER + ECR (on the feature maps, view 1 resized to view 2's,
      `loss.max_onehot_bug` in the ECR targets) + the PPC contrast total (`loss.ppc`: K = hw // 16
      and background 0.10 in the esp config). S2 = bilinear(S, view-2 size, align_corners=True).
    The esp code resizes view 1 to a hard-coded 16x16 inside its contrast loss; here view 1 goes
    to view 2's feature size, which is 16x16 at the reference's 128 px view 2.

With a contrast ('seam_ppc', 'eps_ppc') the metrics also hold `contrast/*`: whether the contrast
can work at all (`contrast_metrics`; chance for each contrast loss is log C, 3.04 for VOC).

Metrics hold the terms the variant computes, unweighted: loss_cls, and for 'seam'/'seam_ppc'
loss_rvmin, loss_er, loss_ecr; for 'seam_ppc' also loss_cross_prototype, loss_cross_label,
loss_intra (view means, before the 0.1 weights) and loss_nce (their weighted sum, the reference's
`loss_nce`); for 'eps' / 'eps_ppc' loss_sal (the reference's `loss_sal`: for 'eps_ppc' the sum of
its two view means) and, for 'eps_ppc', loss_rvmin, loss_er, loss_ecr and the contrast terms;
always `loss`, the total. Note the reference logs `loss_cls` with rvmin folded in
(cls + rvmin); here they are separate, and the reference's logged `loss_cross_nce`,
`loss_cross_nce2`, `loss_intra_nce` are 0.1 x loss_cross_prototype, loss_cross_label, loss_intra.
"""

import jax.numpy as jnp

from ppc_jax.seeds.losses import eps as eps_lib
from ppc_jax.seeds.losses import ppc as ppc_lib
from ppc_jax.seeds.losses import seam as seam_lib
from ppc_jax.ops.resize import resize_bilinear

VARIANTS = ("cam", "seam", "seam_ppc", "eps", "eps_ppc")


def contrast_metrics(diagnostics):
  """Flat metric names of `ppc.contrast_diagnostics` (view means): contrast/sim_pos,
  contrast/sim_spread, contrast/proto_sim and contrast/coverage_cNN per class index NN."""
  out = {f"contrast/{k}": v for k, v in diagnostics.items() if k != "coverage"}
  for c in range(diagnostics["coverage"].shape[0]):
    out[f"contrast/coverage_c{c:02d}"] = diagnostics["coverage"][c]
  return out


def objective(out1, out2, labels, rng, *, config, saliency=None):
  """Total loss and metrics of one training step.

  Args:
    out1: view-1 model outputs: 'cam', 'cam_rv' [B, H, W, C]; 'cam_rv_down' [B, h1, w1, C];
      'proj' [B, h1, w1, D] (the last two only for 'seam_ppc', 'cam_rv' not for 'cam'). C = the
      class list's count with background (21 for VOC).
    out2: view-2 model outputs, same keys, at view 2's sizes (e.g. 128x128 / 16x16).
    labels: [B, C - 1] multi-hot labels.
    rng: PRNG key (hard pixel sampling of 'seam_ppc'; unused otherwise).
    config: `config_lib.loss_config()` ConfigDict (variant, weights, ecr_topk_frac, ppc, eps).
    saliency: [B, H, W] view-1 saliency in [0, 1] (batch 'saliency'); needed by the EPS variants.

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
  if variant in ("eps", "eps_ppc"):
    if saliency is None:
      raise ValueError(f"loss variant {variant!r} needs saliency maps: set "
                       "config.input.with_saliency=True (SALImages/<id>.png in the data)")
    return _eps_objective(out1, out2, labels, rng, saliency, config=config)

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
    metrics.update(contrast_metrics(contrast["diagnostics"]))
    total = total + contrast["total"]

  metrics["loss"] = total
  return total, metrics


def _eps_objective(out1, out2, labels, rng, saliency, *, config):
  """The 'eps' and 'eps_ppc' objectives (module docstring); same returns as `objective`."""
  ecfg = config.eps

  def sal(cam, s):
    return eps_lib.saliency_loss(cam, s, labels, tau=ecfg.tau, lam=ecfg.lam)[0]

  if config.variant == "eps":
    loss_cls = seam_lib.classification_loss(out1["cam_down"], labels)
    loss_sal = sal(out1["cam_down"], saliency)
    total = loss_cls + ecfg.weight * loss_sal
    return total, {"loss_cls": loss_cls, "loss_sal": loss_sal, "loss": total}

  for key in ("cam_rv_down", "proj"):
    if key not in out1:
      raise ValueError(f"loss variant 'eps_ppc' needs the model output {key!r}: "
                       "config.model.pcm=True and config.model.proj_dim set")
  view2_size = out2["cam"].shape[1:3]
  saliency2 = resize_bilinear(jnp.asarray(saliency, jnp.float32)[..., None], view2_size,
                              align_corners=True)[..., 0]
  loss_cls = 0.5 * (seam_lib.classification_loss(out1["cam_down"], labels)
                    + seam_lib.classification_loss(out2["cam_down"], labels))
  loss_rvmin = 0.5 * (seam_lib.adaptive_min_pooling_loss(out1["cam_rv_down"], labels)
                      + seam_lib.adaptive_min_pooling_loss(out2["cam_rv_down"], labels))
  loss_sal = (0.5 * (sal(out1["cam_down"], saliency) + sal(out2["cam_down"], saliency2))
              + 0.5 * (sal(out1["cam_rv_down"], saliency) + sal(out2["cam_rv_down"], saliency2)))
  loss_er, loss_ecr = seam_lib.er_ecr_losses(
      out1["cam_down"], out1["cam_rv_down"], out2["cam_down"], out2["cam_rv_down"], labels,
      topk_frac=config.ecr_topk_frac, max_onehot_bug=config.max_onehot_bug)
  contrast = ppc_lib.ppc_losses(out1["cam_rv_down"], out2["cam_rv_down"], out1["proj"],
                                out2["proj"], labels, rng, config=config.ppc)
  total = (loss_cls + config.rvmin_weight * loss_rvmin + ecfg.weight * loss_sal
           + contrast["total"] + config.er_weight * loss_er + config.ecr_weight * loss_ecr)
  return total, {
      "loss_cls": loss_cls, "loss_rvmin": loss_rvmin, "loss_sal": loss_sal, "loss_er": loss_er,
      "loss_ecr": loss_ecr, "loss_cross_prototype": contrast["cross_prototype"],
      "loss_cross_label": contrast["cross_label"], "loss_intra": contrast["intra"],
      "loss_nce": contrast["total"], "loss": total, **contrast_metrics(contrast["diagnostics"])}
