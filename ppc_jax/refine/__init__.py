"""Stage 2: AffinityNet + random-walk refinement of CAM seeds (PSA, as run by SEAM / PPC).

METHOD.md section 4.3 ("Mask (after refinement)") and section 11 items 8-10. The stage has two
halves:

* `affinity_labels` (numpy, host side): the reference's pixel-pair geometry on the stride-8 grid,
  8x8 pooling of the la / ha CRF score stacks, the label map and the bg / fg / neg pair labels
  that train AffinityNet (`ppc_jax.losses.affinity`, `ppc_jax.models.affinity_net`);
* `random_walk` (jnp, per image): the dense affinity matrix of a trained AffinityNet, the
  transition matrix T = (column-normalised aff^beta)^(2^logt), and the propagation of the pooled
  CAM through T to a full-resolution label map.

Every function works on one image (the pair labels, pair affinities and loss on a batch), so the
integrator can vmap / shard as it needs.
"""
