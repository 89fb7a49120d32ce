"""Random-walk refinement of a CAM with AffinityNet features (PSA / SEAM / wseg `aff_infer.py`).

METHOD.md 4.3 and 11.10. Per image, with stride 8 and N = h * w feature pixels:

  1. the image is zero-padded (after normalisation) to a multiple of 8 and run through
     AffinityNet: features [h, w, F], h = ceil(H/8) (`pad_to_multiple`, the integrator's job);
  2. A = the dense symmetric [N, N] matrix of the reference's pair affinities plus a unit
     diagonal, zero for every other entry (`dense_affinity`);
  3. T = (A^beta / column sums)^(2^logt), beta = 8, logt = 6 in SEAM / wseg (8 in PSA)
     (`transition_matrix`);
  4. the CAM input [H, W, F] gets a background channel (constant 0.27 in wseg; (1 - max)^6 in
     SEAM) *before* it is zero-padded to the padded size, then 8x8 average pooled: [h, w, C]
     (`rw_input_cam`);
  5. cam_rw[:, j] = sum_i cam[:, i] T[i, j] (`random_walk`);
  6. bilinear (align_corners=False) upsampling to the padded size, crop to [H, W], argmax over
     the C channels (`refine_to_mask`). No normalisation anywhere; `--alpha` of wseg is unused.

All functions work on one image (vmap over a batch of equal-size images if needed); matmuls run at
HIGHEST precision by default since T is a 64th power (TF32 / bf16 passes would compound).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ppc_jax.refine.affinity_loss import pair_affinity
from ppc_jax.ops.resize import resize_bilinear
from ppc_jax.refine.affinity_labels import pair_indices

STRIDE = 8
BG_MODES = ("constant", "power")


def pad_to_multiple(x, stride=STRIDE):
  """Zero-pads the two spatial axes of [..., H, W, C] at the bottom / right to multiples of stride.

  The reference pads the normalised image (`F.pad`, zeros) before AffinityNet and the CAM (after
  its background channel is set) before pooling.

  Args:
    x: [..., H, W, C] array.
    stride: the multiple.

  Returns:
    [..., ceil(H/stride)*stride, ceil(W/stride)*stride, C], same dtype.
  """
  hh, ww = x.shape[-3], x.shape[-2]
  ph, pw = -hh % stride, -ww % stride
  pads = [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
  return jnp.pad(x, pads)


def dense_affinity(features, radius=5):
  """Dense [N, N] affinity matrix of one image (`resnet38_aff.Net.forward(x, to_dense=True)`).

  A[i, j] = A[j, i] = exp(-mean_c |f_i - f_j|) for every reference pair (i, j) (see
  `affinity_labels`: half-plane offsets inside the shrunk radius, from pixel inside the from
  window), A[i, i] = 1, and every other entry 0 -- including within-radius pairs whose from
  pixel lies in the bottom / side margins, which the reference never compares.

  Args:
    features: [h, w, F] AffinityNet features of one (padded) image.
    radius: requested radius (shrink rule applied).

  Returns:
    [N, N] float32, N = h * w, row-major pixel order.
  """
  if features.ndim != 3:
    raise ValueError(f"dense_affinity expects [h, w, F], got shape {features.shape}")
  h, w, _ = features.shape
  n = h * w
  aff = pair_affinity(features[None], radius)[0].reshape(-1)  # [D * P], offset-major
  ind_from, ind_to = pair_indices(h, w, radius)
  rows = np.broadcast_to(ind_from[None, :], ind_to.shape).reshape(-1)
  cols = ind_to.reshape(-1)
  # Each unordered pair appears once and never on the diagonal, so plain sets (no duplicates)
  # equal the reference's sparse-to-dense sum.
  mat = jnp.eye(n, dtype=jnp.float32)
  return mat.at[rows, cols].set(aff).at[cols, rows].set(aff)


def transition_matrix(aff, beta=8, logt=6, *, precision=jax.lax.Precision.HIGHEST):
  """T = (A^beta / column sums)^(2^logt) (elementwise power, then matrix squarings).

  Args:
    aff: [N, N] dense affinity (`dense_affinity`); its unit diagonal keeps column sums >= 1.
    beta: elementwise exponent (8).
    logt: number of squarings (6: T^64 in SEAM / wseg; PSA uses 8).
    precision: matmul precision of the squarings.

  Returns:
    [N, N] float32; each column of the first factor sums to 1 (the reference's
    `aff / sum(aff, dim=0)`), so T maps a column distribution to a column distribution.
  """
  a = jnp.asarray(aff, jnp.float32) ** beta
  t = a / jnp.sum(a, axis=0, keepdims=True)
  for _ in range(int(logt)):
    t = jnp.matmul(t, t, precision=precision)
  return t


def _block_mean(x, stride):
  """[H, W, C] with H, W multiples of stride -> [H/stride, W/stride, C] block means."""
  hh, ww, c = x.shape
  return x.reshape(hh // stride, stride, ww // stride, stride, c).mean(axis=(1, 3))


def rw_input_cam(cam_fg, *, bg_mode="constant", bg_value=0.27, alpha=6.0, stride=STRIDE):
  """The pooled [h, w, C] CAM that the random walk propagates, background at channel 0.

  Args:
    cam_fg: [H, W, F] normalised foreground CAMs at the original image size, zeros for absent
      classes (the reference fills the cam_dict's present classes into a zero array).
    bg_mode: 'constant' (wseg `aff_infer.py`: bg = bg_value everywhere) or 'power' (SEAM
      `infer_aff.py`: bg = (1 - max_c cam_fg)^alpha).
    bg_value: the constant background (0.27).
    alpha: the background power (6).
    stride: pooling block (8).

  Returns:
    [ceil(H/stride), ceil(W/stride), F + 1] float32. The background is set before the zero
    padding, so padded pixels have every channel 0 and border blocks average over them.
  """
  if cam_fg.ndim != 3:
    raise ValueError(f"rw_input_cam expects [H, W, F], got shape {cam_fg.shape}")
  if bg_mode not in BG_MODES:
    raise ValueError(f"bg_mode must be one of {BG_MODES}, got {bg_mode!r}")
  cam_fg = jnp.asarray(cam_fg, jnp.float32)
  if bg_mode == "constant":
    bg = jnp.full(cam_fg.shape[:2] + (1,), bg_value, jnp.float32)
  else:
    # An integral alpha as a Python int: an exact integer power (torch / numpy pow agree to
    # 1 ulp), and well defined should 1 - max dip below 0.
    power = int(alpha) if float(alpha).is_integer() else float(alpha)
    base = 1.0 - (jnp.max(cam_fg, axis=-1, keepdims=True) if cam_fg.shape[-1] else
                  jnp.zeros(cam_fg.shape[:2] + (1,), jnp.float32))
    bg = base ** power
  cam = jnp.concatenate([bg, cam_fg], axis=-1)
  return _block_mean(pad_to_multiple(cam, stride), stride)


def random_walk(cam_pooled, trans, *, precision=jax.lax.Precision.HIGHEST):
  """Propagates the pooled CAM through T: out[j, c] = sum_i cam[i, c] T[i, j].

  Args:
    cam_pooled: [h, w, C] (`rw_input_cam`).
    trans: [N, N] transition matrix, N = h * w (`transition_matrix`).
    precision: matmul precision.

  Returns:
    [h, w, C] float32.
  """
  h, w, c = cam_pooled.shape
  if trans.shape != (h * w, h * w):
    raise ValueError(f"transition matrix {trans.shape} does not fit a {h}x{w} map")
  out = jnp.einsum("ic,ij->jc", cam_pooled.reshape(h * w, c).astype(jnp.float32), trans,
                   precision=precision)
  return out.reshape(h, w, c)


def refine_to_mask(cam_rw, image_size, stride=STRIDE):
  """Upsample (bilinear, align_corners=False) to the padded size, crop, argmax.

  Args:
    cam_rw: [h, w, C] random-walk output (`random_walk`).
    image_size: (H, W) of the original image; h must be ceil(H/stride), w ceil(W/stride).
    stride: the feature stride (8): the padded size is (h * stride, w * stride).

  Returns:
    int32 [H, W] labels: the argmax channel (0 = background, k = foreground channel k of the
    CAM input), lowest channel on ties.
  """
  h, w, _ = cam_rw.shape
  hh, ww = (int(s) for s in image_size)
  if (h, w) != (-(-hh // stride), -(-ww // stride)):
    raise ValueError(f"a {h}x{w} map does not belong to a {hh}x{ww} image at stride {stride}")
  up = resize_bilinear(cam_rw[None], (h * stride, w * stride), align_corners=False)[0]
  return jnp.argmax(up[:hh, :ww], axis=-1).astype(jnp.int32)


def random_walk_mask(features, cam_fg, *, radius=5, beta=8, logt=6, bg_mode="constant",
                     bg_value=0.27, alpha=6.0, stride=STRIDE,
                     precision=jax.lax.Precision.HIGHEST):
  """Steps 2-6 for one image: AffinityNet features + CAM -> refined label map.

  Args:
    features: [h, w, F_aff] AffinityNet features of the zero-padded image.
    cam_fg: [H, W, F] normalised foreground CAMs at the original size (see `rw_input_cam`).
    radius, beta, logt: affinity radius (5), power (8) and log2 of the walk length (6).
    bg_mode, bg_value, alpha: background of the walk's input (see `rw_input_cam`).
    stride: feature stride (8).
    precision: matmul precision.

  Returns:
    int32 [H, W] labels, 0 = background, k = class channel k (1..F).
  """
  cam = rw_input_cam(cam_fg, bg_mode=bg_mode, bg_value=bg_value, alpha=alpha, stride=stride)
  if cam.shape[:2] != features.shape[:2]:
    raise ValueError(f"features {features.shape[:2]} and pooled CAM {cam.shape[:2]} differ: "
                     f"the features must come from the image zero-padded to a multiple of "
                     f"{stride}")
  trans = transition_matrix(dense_affinity(features, radius), beta, logt, precision=precision)
  return refine_to_mask(random_walk(cam, trans, precision=precision), cam_fg.shape[:2], stride)
