"""Losses: SEAM terms (seam.py), PPC contrast (ppc.py) and the per-variant objective.

`ppc_jax.seeds.losses.objective` is the *module* (steps.py does
`from ppc_jax.seeds.losses import objective as objective_lib; objective_lib.objective(...)`), so the
function is not re-exported under the same name here; it is `objective.objective`.
"""

from ppc_jax.seeds.losses import objective
from ppc_jax.seeds.losses import ppc
from ppc_jax.seeds.losses import seam
from ppc_jax.seeds.losses.objective import VARIANTS
from ppc_jax.seeds.losses.ppc import PixelSelection
from ppc_jax.seeds.losses.ppc import contrast_cam
from ppc_jax.seeds.losses.ppc import cross_prototype_loss
from ppc_jax.seeds.losses.ppc import cross_pseudo_label_loss
from ppc_jax.seeds.losses.ppc import intra_view_loss
from ppc_jax.seeds.losses.ppc import l2_normalize
from ppc_jax.seeds.losses.ppc import ppc_losses
from ppc_jax.seeds.losses.ppc import prototype_nce
from ppc_jax.seeds.losses.ppc import prototypes
from ppc_jax.seeds.losses.ppc import pseudo_labels
from ppc_jax.seeds.losses.ppc import sampling_keys
from ppc_jax.seeds.losses.ppc import select_pixels
from ppc_jax.seeds.losses.ppc import semi_hard_pixel_loss
from ppc_jax.seeds.losses.seam import adaptive_min_pooling_loss
from ppc_jax.seeds.losses.seam import classification_loss
from ppc_jax.seeds.losses.seam import er_ecr_losses
from ppc_jax.seeds.losses.seam import label_with_background
from ppc_jax.seeds.losses.seam import max_norm
from ppc_jax.seeds.losses.seam import max_onehot
from ppc_jax.seeds.losses.seam import multilabel_soft_margin
