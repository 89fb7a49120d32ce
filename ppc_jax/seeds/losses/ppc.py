"""PPC pixel-to-prototype contrast losses (METHOD.md section 3), with fixed shapes throughout.

The reference (wseg `contrast_train.py`, section "Contrastive Learning") builds pseudo-labels and
prototypes per view under `no_grad`, then computes three InfoNCE-style terms on the L2-normalised
projected features of both views on view 2's feature grid:
  * cross-prototype (own pseudo-label, the other view's prototypes),
  * cross-pseudo-label (the other view's pseudo-label, own prototypes),
  * intra-view with semi-hard prototype mining and hard pixel sampling.

Everything here is written for jit and sharding: no boolean indexing, no data-dependent shapes, no
Python loops over pixels or classes (per-class quantities are one-hot contractions or a single
lexicographic sort). Pixels are flattened image-major, M = B * h * w, exactly like the reference's
`permute(0, 2, 3, 1).reshape(-1, C)`; the prototypes are batch-global, i.e. the sort / top-k run
over the whole (global) batch as under the reference's DataParallel gather.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppc_jax.seeds.losses.seam import label_with_background
from ppc_jax.ops.resize import resize_bilinear

# Small matmuls of the losses run at full fp32 so GPUs do not silently use TF32 (the reference's
# torch matmuls are fp32).
_HIGHEST = jax.lax.Precision.HIGHEST
# The reference's epsilon of the min-max normalisation of the contrast CAM.
_NORM_EPS = 1e-5


def l2_normalize(x, axis=-1, eps=1e-12):
  """`F.normalize(x, p=2, dim=axis, eps=eps)`: x / max(||x||, eps), safe at zero vectors.

  sqrt(max(||x||^2, eps^2)) == max(||x||, eps), but the max is taken before the sqrt, so the sqrt
  is never evaluated at 0 and the gradient stays finite: a zero vector maps to 0 (forward) and
  receives gradient g / eps, as in torch (where clamp_min blocks the norm's gradient). A naive
  x / ||x|| would give NaN (METHOD 3.2).

  Args:
    x: [..., D] array.
    axis: the axis to normalise.
    eps: torch's default 1e-12.

  Returns:
    array of x's shape.
  """
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def contrast_cam(cam_rv_down, bg_threshold):
  """The normalised CAM behind pseudo-labels and prototypes (METHOD 3.3 steps 1-3).

  c = relu(cam); per (image, channel): entries < min + 1e-5 are set to 0, then
  (c - min - 1e-5) / (max - min + 1e-5) -- so the zeroed entries become
  -(min + 1e-5) / (max - min + 1e-5) (about -1 for a flat map), exactly as the reference. Then
  channel 0 := bg_threshold (a constant). All stop-gradient.

  Args:
    cam_rv_down: [B, h, w, 21] PCM output at (view 2's) feature resolution.
    bg_threshold: constant background score (reference 0.20).

  Returns:
    [B, h, w, 21] float32 normalised CAM, no gradient.
  """
  c = jax.nn.relu(jax.lax.stop_gradient(cam_rv_down).astype(jnp.float32))
  c_max = jnp.max(c, axis=(1, 2), keepdims=True)
  c_min = jnp.min(c, axis=(1, 2), keepdims=True)
  c = jnp.where(c < c_min + _NORM_EPS, jnp.zeros_like(c), c)
  norm = (c - c_min - _NORM_EPS) / (c_max - c_min + _NORM_EPS)
  bg = jnp.full_like(norm[..., :1], bg_threshold)
  return jnp.concatenate([bg, norm[..., 1:]], axis=-1)


def pseudo_labels(norm_cam, labels):
  """Per-pixel pseudo-labels argmax_c softmax(norm_cam * [1, labels])_c (METHOD 3.3 step 4).

  Absent classes are multiplied to 0 and the background is the constant bg_threshold > 0, so an
  absent class cannot win. The softmax is kept (as in the reference) although it is monotone: it
  only matters below float32 resolution (METHOD 10.5). Ties go to the lower channel index
  (jnp.argmax returns the first maximum, like torch).

  Args:
    norm_cam: [B, h, w, 21] from `contrast_cam`.
    labels: [B, 20] multi-hot labels.

  Returns:
    [B, h, w] int32 in [0, 21), no gradient.
  """
  label = label_with_background(labels)[:, None, None, :]
  scores = jax.nn.softmax(jax.lax.stop_gradient(norm_cam) * label, axis=-1)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def prototypes(norm_cam, feats, k):
  """Batch-global, confidence-weighted top-K prototypes (METHOD 3.3 step 5).

  For every class c (all 21, present or not: the CAM is NOT label-masked here), take the K largest
  values of norm_cam[..., c] over all M = B*h*w pixels of the batch, p_c = sum_k w_k v_k / sum_k w_k
  over the un-normalised features v, then L2-normalise. Stop-gradient.

  Tie-breaking: `jax.lax.top_k` returns tied values lowest flat index first (flat index =
  (b*h + i)*w + j). This matters for the background row, which is the constant bg_threshold, so its
  prototype is the plain mean of the features of the first K pixels of the batch (image 0's first
  rows). The reference's torch.topk picks an implementation-defined tied set instead; this is the
  documented ppc_jax choice (METHOD 3.3, parity hazard in section 8 row 9).

  Args:
    norm_cam: [B, h, w, C] from `contrast_cam`.
    feats: [B, h, w, D] projected features (post-ReLU, NOT normalised).
    k: K = h * w // topk_divisor (not scaled with B).

  Returns:
    [C, D] float32 L2-normalised prototypes, no gradient.
  """
  c = norm_cam.shape[-1]
  d = feats.shape[-1]
  scores = jax.lax.stop_gradient(norm_cam).reshape(-1, c).T  # [C, M]
  flat = jax.lax.stop_gradient(feats).astype(jnp.float32).reshape(-1, d)  # [M, D]
  top_values, top_indices = jax.lax.top_k(scores, k)  # [C, K]
  top_feats = jnp.take(flat, top_indices, axis=0)  # [C, K, D]
  weighted = jnp.einsum("ck,ckd->cd", top_values, top_feats, precision=_HIGHEST)
  # No guard on the weight sum: the reference divides as is (a zero sum is practically impossible:
  # each image contributes its own per-class maximum ~1 or the flat-map value ~ -1).
  protos = weighted / jnp.sum(top_values, axis=-1, keepdims=True)
  return l2_normalize(protos)


def _similarities(v, protos):
  """[M, D] x [C, D] -> [M, C] dot products v_i . p_c."""
  return jnp.einsum("md,cd->mc", v, protos, precision=_HIGHEST)


def _positive_similarity(v, y, protos):
  """[M] v_i . p_{y_i}, an elementwise product-sum like the reference's torch.sum(f * pos, -1)."""
  return jnp.sum(v * jnp.take(protos, y, axis=0), axis=-1)


def prototype_nce(v, y, protos, *, temperature=0.1):
  """mean_i F(v_i; y_i; P) with F = -log softmax_c(v_i . p_c / tau)[y_i] (METHOD 3.4 base term).

  The denominator runs over all C prototypes including the positive (plain softmax CE).

  Args:
    v: [M, D] L2-normalised features.
    y: [M] int labels in [0, C).
    protos: [C, D] L2-normalised prototypes.
    temperature: tau (reference 0.1, hard-coded there).

  Returns:
    scalar, mean over the M pixels.
  """
  logits = _similarities(v, protos) / temperature
  pos = _positive_similarity(v, y, protos) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - pos)


def cross_prototype_loss(v1, v2, y1, y2, protos1, protos2, *, temperature=0.1):
  """Cross-prototype contrast L^cp, averaged over the two views (reference `loss_cross_nce` / 0.1).

  (F(v1; y1; P2) + F(v2; y2; P1)) / 2: own pseudo-label, the other view's prototypes.

  Args:
    v1, v2: [M, D] normalised features of views 1 and 2 on the shared grid.
    y1, y2: [M] pseudo-labels.
    protos1, protos2: [C, D] prototypes.
    temperature: tau.

  Returns:
    scalar (unweighted).
  """
  return 0.5 * (prototype_nce(v1, y1, protos2, temperature=temperature)
                + prototype_nce(v2, y2, protos1, temperature=temperature))


def cross_pseudo_label_loss(v1, v2, y1, y2, protos1, protos2, *, temperature=0.1):
  """Cross pseudo-label contrast L^cc, averaged over views (reference `loss_cross_nce2` / 0.1).

  (F(v1; y2; P1) + F(v2; y1; P2)) / 2: the other view's pseudo-label, own prototypes.

  Args and Returns: as `cross_prototype_loss`.
  """
  return 0.5 * (prototype_nce(v1, y2, protos1, temperature=temperature)
                + prototype_nce(v2, y1, protos2, temperature=temperature))


def semi_hard_pixel_loss(v, y, protos, *, skip=3, top=13, temperature=0.1):
  """Per-pixel intra-view loss l_i with semi-hard prototype mining (METHOD 3.4, section 8 row 11).

  s_ic = v_i . p_c; the negatives are the prototypes at descending-similarity ranks
  skip+1..top (4-13). D_i = exp(s_{i,y_i}/tau) + sum_{mined} exp(s_ic/tau) and
  l_i = -log(exp(s_{i,y_i}/tau) / D_i). The mined set is not filtered: when the positive itself
  sits in ranks 4-13 it is counted twice in D_i, as in the reference. The ranking is gradient-free
  (it only selects), the similarities carry gradient to v.

  Args:
    v: [M, D] normalised features.
    y: [M] int pseudo-labels.
    protos: [C, D] normalised prototypes of the same view.
    skip: number of most similar prototypes dropped (3).
    top: number of most similar prototypes considered (13).
    temperature: tau.

  Returns:
    [M] per-pixel losses.
  """
  sims = _similarities(v, protos)
  mined = jax.lax.top_k(sims, top)[0][:, skip:]  # [M, top - skip]; values are tie-order free
  pos = _positive_similarity(v, y, protos)
  logits = jnp.concatenate([pos[:, None], mined], axis=-1) / temperature
  return jax.nn.logsumexp(logits, axis=-1) - pos / temperature


class PixelSelection(NamedTuple):
  """Hard pixel sampling result over M pixels (each pixel belongs to the class y_i).

  Attributes:
    random_mask: [M] bool, the random half R: per class, the floor(L/2) members with the smallest
      random keys.
    hard_mask: [M] bool, the hard half H: per class, the members at ascending-similarity ranks
      [int(upper*L) - floor(L/2), int(upper*L)).
    counts: [C] int32, L_c = number of pixels labelled c.
    weights: [M, C] float32, one_hot(y) * (random_mask + hard_mask): how often each pixel enters
      its class's R ++ H (0, 1 or 2 -- a pixel may be in both halves, as in the reference).
  """
  random_mask: jax.Array
  hard_mask: jax.Array
  counts: jax.Array
  weights: jax.Array


def _rank_within_class(y, key, counts):
  """Rank of each pixel among the pixels of its own class, ordered by key ascending.

  One lexicographic sort by (class, key, index) for all classes at once: ties in `key` go to the
  lower pixel index (like a stable sort of the class's members in pixel order).
  """
  m = y.shape[0]
  iota = jnp.arange(m, dtype=jnp.int32)
  sorted_y, _, perm = jax.lax.sort((y, key, iota), num_keys=3)
  class_start = jnp.cumsum(counts) - counts
  rank_sorted = iota - class_start[sorted_y]
  return jnp.zeros((m,), jnp.int32).at[perm].set(rank_sorted)


def select_pixels(y, sim, random_keys, *, num_classes, upper=0.6):
  """Hard pixel sampling selection for every class at once (METHOD 3.4; section 8 row 12).

  For each class c with L = |{i: y_i = c}| >= 2:
    * R: floor(L/2) members chosen at random. The randomness is an input: R is the set of the
      floor(L/2) members with the smallest `random_keys` (ties to the lower pixel index). With
      i.i.d. keys (e.g. a random permutation) this is a uniform subset without replacement, i.e.
      distributed like the reference's `random.sample(range(L), L // 2)`; a check can feed keys
      that encode any given subsets.
    * H: members sorted by `sim` ascending (least similar first; ties to the lower pixel index),
      sorted positions [int(upper*L) - floor(L/2), int(upper*L)), i.e. the reference's
      `topk(sim, k=int(L*0.6), largest=False)[int(L*0.6) - L//2:]`.
  Classes with L < 2 select nothing. int(upper*L) is evaluated with Python float64 arithmetic for
  every possible L (a static lookup table), so it matches the reference's `int(len_class * 0.6)`.

  Args:
    y: [M] int pseudo-labels in [0, num_classes).
    sim: [M] similarity sigma_i = (v_i . p_{y_i} + 1) / 2 (used for ordering only, no gradient).
    random_keys: [M] numeric keys (ints or floats) defining the random half.
    num_classes: C, the CAM channels (background included; 21 for VOC).
    upper: the 0.6 of the reference; must lie in [0.5, 1] so that H has floor(L/2) members.

  Returns:
    PixelSelection.
  """
  if not 0.5 <= upper <= 1.0:
    raise ValueError(f"hard_pixel_upper must be in [0.5, 1] (reference 0.6), got {upper}")
  m = y.shape[0]
  y = y.astype(jnp.int32)
  one_hot = jax.nn.one_hot(y, num_classes, dtype=jnp.int32)  # [M, C]
  counts = jnp.sum(one_hot, axis=0)  # [C]
  half = counts // 2
  upper_table = jnp.asarray(np.array([int(n * upper) for n in range(m + 1)], np.int32))
  hard_hi = upper_table[counts]
  hard_lo = hard_hi - half
  eligible = (counts >= 2)[y]

  rank_random = _rank_within_class(y, jax.lax.stop_gradient(random_keys), counts)
  rank_sim = _rank_within_class(y, jax.lax.stop_gradient(sim), counts)
  random_mask = eligible & (rank_random < half[y])
  hard_mask = eligible & (rank_sim >= hard_lo[y]) & (rank_sim < hard_hi[y])
  per_pixel = random_mask.astype(jnp.float32) + hard_mask.astype(jnp.float32)
  weights = one_hot.astype(jnp.float32) * per_pixel[:, None]
  return PixelSelection(random_mask, hard_mask, counts, weights)


def intra_view_loss(v, y, protos, random_keys, *, temperature=0.1, skip=3, top=13, upper=0.6):
  """Intra-view contrast of one view (METHOD 3.4, reference `loss_intra_nce1`).

  loss_c = mean of l_i over R_c ++ H_c (2 floor(L_c/2) entries) for classes with L_c >= 2, 0 for
  classes with L_c < 2; the result is sum_c loss_c / C with C = #{c: L_c >= 1}: singleton classes
  count in C although they add nothing (the reference increments C before its `len < 2` check).
  Guarded to 0 when C = 0 (only possible for M = 0).

  Args:
    v: [M, D] normalised features.
    y: [M] int pseudo-labels.
    protos: [C, D] normalised prototypes of the same view.
    random_keys: [M] keys of the random half (see `select_pixels`).
    temperature, skip, top: see `semi_hard_pixel_loss`.
    upper: see `select_pixels`.

  Returns:
    scalar.
  """
  ell = semi_hard_pixel_loss(v, y, protos, skip=skip, top=top, temperature=temperature)
  sim = (_positive_similarity(v, y, protos) + 1.0) / 2.0
  # C = the prototypes' class count (the CAM channels), so no class count is assumed here.
  sel = select_pixels(y, sim, random_keys, num_classes=protos.shape[0], upper=upper)
  class_sums = jnp.einsum("mc,m->c", sel.weights, ell, precision=_HIGHEST)
  denom = 2 * (sel.counts // 2)
  class_loss = jnp.where(sel.counts >= 2, class_sums / jnp.maximum(denom, 1), 0.0)
  num_present = jnp.sum(sel.counts >= 1)
  return jnp.sum(class_loss) / jnp.maximum(num_present, 1)


def contrast_diagnostics(v, y, protos):
  """Whether the contrast can work (no gradient; logged, never optimised).

  When every projected pixel and prototype point the same way, each F term sits at its chance
  value log C whatever the labels; these statistics show that collapse before the losses do.

  Args:
    v: [M, D] L2-normalised pixel features; y: [M] pseudo-labels; protos: [C, D] prototypes.

  Returns:
    dict of float32 scalars / arrays:
      sim_pos: mean over pixels of v_i . p_{y_i} (own prototype),
      sim_spread: mean over pixels of max_c v_i . p_c - min_c v_i . p_c (0 = the pixel cannot
        tell prototypes apart),
      proto_sim: mean cosine between distinct prototypes (1 = all prototypes alike),
      coverage: [C] fraction of the pixels whose pseudo-label is c.
  """
  v, protos = jax.lax.stop_gradient(v), jax.lax.stop_gradient(protos)
  c = protos.shape[0]
  sims = _similarities(v, protos)
  gram = jnp.einsum("cd,ed->ce", protos, protos, precision=_HIGHEST)
  off_diagonal = (jnp.sum(gram) - jnp.trace(gram)) / max(c * (c - 1), 1)
  return {
      "sim_pos": jnp.mean(_positive_similarity(v, y, protos)),
      "sim_spread": jnp.mean(jnp.max(sims, axis=-1) - jnp.min(sims, axis=-1)),
      "proto_sim": off_diagonal,
      "coverage": jnp.mean(jax.nn.one_hot(y, c, dtype=jnp.float32), axis=0),
  }


def sampling_keys(rng, num_pixels):
  """The random keys of the hard pixel sampling of both views: [2, M] int32 permutations."""
  rng1, rng2 = jax.random.split(rng)
  return jnp.stack([jax.random.permutation(rng1, num_pixels),
                    jax.random.permutation(rng2, num_pixels)]).astype(jnp.int32)


def ppc_losses(cam_rv_down1, cam_rv_down2, proj1, proj2, labels, rng, *, config):
  """All PPC contrast terms of a step (METHOD 3.2-3.4).

  View 1's feature-resolution maps (e.g. 56x56) are resized to view 2's feature size (16x16) with
  align_corners=True: proj1 WITH gradient, cam_rv_down1 without (it is stop-gradient like all of
  3.3). Pseudo-labels and prototypes are built per view; features are L2-normalised after the
  prototypes. Gradient reaches proj1 (through the resize) and proj2 only.

  Args:
    cam_rv_down1: [B, h1, w1, C] view-1 PCM output at view-1 feature resolution (C = classes
      with background: 21 for VOC; taken from this axis, never assumed).
    cam_rv_down2: [B, h, w, C] view-2 PCM output.
    proj1: [B, h1', w1', D] view-1 projected features (post-ReLU), any size.
    proj2: [B, h, w, D] view-2 projected features.
    labels: [B, C - 1] multi-hot labels.
    rng: PRNG key for the random half of hard pixel sampling.
    config: the `ppc` ConfigDict of `config_lib.loss_config()` (`config.loss.ppc`): temperature,
      bg_threshold, topk_divisor, *_weight, mining_skip, mining_top, hard_pixel_upper.

  Returns:
    dict of scalars: 'cross_prototype', 'cross_label', 'intra' (each the unweighted mean over the
    two views) and 'total' = the weighted sum (reference `loss_nce`); 'diagnostics': the two
    views' mean of `contrast_diagnostics` (no gradient).
  """
  cfg = config
  b, h, w, d = proj2.shape
  if cam_rv_down2.shape[:3] != (b, h, w):
    raise ValueError(f"cam_rv_down2 {cam_rv_down2.shape} and proj2 {proj2.shape} disagree")
  if labels.shape[-1] + 1 != cam_rv_down2.shape[-1]:
    raise ValueError(f"labels {labels.shape} need CAMs with {labels.shape[-1] + 1} channels "
                     f"(background + one per class), got cam_rv_down2 {cam_rv_down2.shape}")
  num_classes = cam_rv_down2.shape[-1]
  # The mined negatives are prototype ranks skip+1..top of C prototypes: the reference's 4..13
  # of VOC's 21 need C >= 13. Fewer classes need a smaller window, chosen, never clipped silently.
  if not 0 <= cfg.mining_skip < cfg.mining_top <= num_classes:
    raise ValueError(
        f"config.loss.ppc.mining_skip={cfg.mining_skip}, mining_top={cfg.mining_top}: semi-hard "
        f"mining keeps prototype ranks mining_skip+1..mining_top of the {num_classes} classes "
        f"(config.model.num_classes); need 0 <= mining_skip < mining_top <= {num_classes}")
  m = b * h * w
  k = (h * w) // cfg.topk_divisor
  if k < 1:
    raise ValueError(f"prototype K = {h}*{w} // {cfg.topk_divisor} is 0")

  proj1 = resize_bilinear(proj1.astype(jnp.float32), (h, w), align_corners=True)
  proj2 = proj2.astype(jnp.float32)
  cam1 = resize_bilinear(jax.lax.stop_gradient(cam_rv_down1).astype(jnp.float32), (h, w),
                         align_corners=True)
  norm1 = contrast_cam(cam1, cfg.bg_threshold)
  norm2 = contrast_cam(cam_rv_down2, cfg.bg_threshold)
  y1 = pseudo_labels(norm1, labels).reshape(m)
  y2 = pseudo_labels(norm2, labels).reshape(m)
  protos1 = prototypes(norm1, proj1, k)
  protos2 = prototypes(norm2, proj2, k)
  v1 = l2_normalize(proj1.reshape(m, d))
  v2 = l2_normalize(proj2.reshape(m, d))

  tau = cfg.temperature
  cross_proto = cross_prototype_loss(v1, v2, y1, y2, protos1, protos2, temperature=tau)
  cross_label = cross_pseudo_label_loss(v1, v2, y1, y2, protos1, protos2, temperature=tau)
  keys = sampling_keys(rng, m)
  intra_kw = dict(temperature=tau, skip=cfg.mining_skip, top=cfg.mining_top,
                  upper=cfg.hard_pixel_upper)
  intra = 0.5 * (intra_view_loss(v1, y1, protos1, keys[0], **intra_kw)
                 + intra_view_loss(v2, y2, protos2, keys[1], **intra_kw))
  total = (cfg.cross_prototype_weight * cross_proto + cfg.cross_label_weight * cross_label
           + cfg.intra_weight * intra)
  diag = jax.tree.map(lambda a, b: 0.5 * (a + b), contrast_diagnostics(v1, y1, protos1),
                      contrast_diagnostics(v2, y2, protos2))
  return {"cross_prototype": cross_proto, "cross_label": cross_label, "intra": intra,
          "total": total, "diagnostics": diag}
