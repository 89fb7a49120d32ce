"""Stage 2: refining stage-1 CAMs into pseudo masks (dense CRF, AffinityNet, random walk)."""
