"""Stage 2: refining stage-1 CAMs into pseudo-masks (dense CRF, AffinityNet, random walk).

METHOD.md sections 4.1 (CRF settings), 4.3 ("Mask (after refinement)") and 11 items 8-10.
`stage` declares the stage to `ppc_jax.stages` (train, infer, CRF labels, reference files). In
pipeline order:

* `crf` / `crf_labels` (numpy + pydensecrf, host side): la / ha CRF score files (.npz) from the
  stage-1 cam files (`python -m ppc_jax.refine.crf_labels`), and the seed CRF;
* `affinity_labels` (numpy): the reference's pixel-pair geometry on the stride-8 grid, 8x8
  pooling of the la / ha score stacks, the label map and the bg / fg / neg pair labels that train
  AffinityNet (`ppc_jax.refine.affinity_loss`, `ppc_jax.refine.affinity_net`);
* `aff_trainer`: AffinityNet training as a `trainer.Stage` on the shared loop
  (`python -m ppc_jax.train` with a config of stage 'affinity');
* `random_walk` (jnp, per image): the dense affinity matrix of a trained AffinityNet, the
  transition matrix T = (column-normalised aff^beta)^(2^logt), and the propagation of the pooled
  CAM through T to a full-resolution label map; `rw_infer` runs it over a split, writes the
  pseudo-mask PNGs and scores them beside the seeds (`python -m ppc_jax.refine.rw_infer`).
"""
