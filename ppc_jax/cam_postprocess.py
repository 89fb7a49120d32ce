"""CAM post-processing for seed inference: multi-scale merge, normalisation, seeds, cam_dict I/O.

The numeric part follows the reference SEAM / PPC inference (wseg `contrast_infer.py`, METHOD 4.1):

  1. every scaled input (scales [0.5, 1, 1.5, 2], each followed by its horizontal flip) gives the
     PCM-refined CAM `cam_rv` at the input's size (already upsampled, align_corners=True, by the
     model);
  2. foreground channels 1..20 are bilinearly resized to the original (H, W) with
     align_corners=False, multiplied by the image-level labels, flipped back for flipped inputs,
     and SUMMED (not averaged) over all inputs;
  3. negatives are clipped, and each class is min-max normalised over the image;
  4. the cam_dict {class_idx (0..19): float32 [H, W]} of the present classes is saved with
     `np.save`, and seeds are argmax([bg = t, cams]).

Steps 2-4 (numeric) are jnp and jit-friendly: shapes are static, and one call of `merge_scale`
handles all inputs of one scale (e.g. the [2, Hs, Ws, 21] original + flipped pair), adding into a
running sum, so an inference loop never needs a Python loop per input. For bucketed (padded)
inputs, `merge_scale_matrices` takes the resize as per-input interpolation matrices built on the
host by `resize_matrices`, so one compiled function serves every image of a bucket.

The rest (cam_dict files, palette PNGs, CAM overlays) is host-side numpy / PIL.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ppc_jax import atomic_io
from ppc_jax import untrusted
from ppc_jax.data import voc_meta
from ppc_jax.ops.resize import interpolation_matrix, resize_bilinear

NUM_FG = voc_meta.NUM_FG_CLASSES  # 20; CAM channel 0 is background, cam_dict keys are 0..19.
# The reference keeps class j when label[j] > 1e-5 (labels are 0/1 floats from cls_labels.npy).
LABEL_PRESENT_EPS = 1e-5
# The +1e-5 of the reference min-max normalisation (both in the offset and the denominator).
NORM_EPS = 1e-5


# ------------------------------------------------------------------------------------------------
# Multi-scale merge (jnp).
# ------------------------------------------------------------------------------------------------


def default_flipped(num_inputs, start_index=0):
  """The reference flip pattern: inputs come as [s0, s0f, s1, s1f, ...], so odd ones are flipped.

  Args:
    num_inputs: number of inputs in this group.
    start_index: global index of the group's first input in the [s0, s0f, s1, s1f, ...] order.

  Returns:
    np.ndarray bool [num_inputs].
  """
  return (np.arange(start_index, start_index + num_inputs) % 2) == 1


def _check_cams(cams, labels):
  if cams.ndim != 4 or cams.shape[-1] != NUM_FG + 1:
    raise ValueError(f"cams must be [N, Hs, Ws, {NUM_FG + 1}] (channel 0 = background), "
                     f"got shape {cams.shape}")
  if labels.shape != (NUM_FG,):
    raise ValueError(f"labels must be a [{NUM_FG}] multi-hot vector, got shape {labels.shape}")


def merge_scale(cams, labels, orig_size, *, flipped=None, sum_cam=None):
  """Adds the foreground CAMs of a group of same-size inputs to the running multi-scale sum.

  For each input n: `resize(cams[n, ..., 1:], orig_size, align_corners=False) * labels`, flipped
  back along W when `flipped[n]`; the group's inputs are summed and added to `sum_cam`.

  Args:
    cams: [N, Hs, Ws, 21] PCM-refined CAMs (`cam_rv`) of N inputs of one scale, at that scale's
      input size (e.g. N = 2: the scaled image and its horizontal flip).
    labels: [20] image-level multi-hot labels (no background).
    orig_size: (H, W) of the original image, static Python ints.
    flipped: [N] bools, True for inputs that were horizontally flipped. Static (tuple / numpy) or
      a traced array. Default: `default_flipped(N)`, i.e. the reference (orig, flip) pairs.
    sum_cam: optional [H, W, 20] running sum to add into; None starts from zero.

  Returns:
    [H, W, 20] float32 running sum.
  """
  cams = jnp.asarray(cams, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  _check_cams(cams, labels)
  n = cams.shape[0]
  if flipped is None:
    flipped = default_flipped(n)
  fg = resize_bilinear(cams[..., 1:], tuple(int(s) for s in orig_size), align_corners=False)
  fg = fg * labels  # broadcast over [N, H, W, 20]
  # Un-flip after the resize, as the reference does (np.flip on the original-size CAM).
  flipped = jnp.asarray(flipped, bool).reshape(n, 1, 1, 1)
  fg = jnp.where(flipped, fg[:, :, ::-1, :], fg)
  total = jnp.sum(fg, axis=0)
  return total if sum_cam is None else sum_cam + total


def merge_multiscale(cams, labels, orig_size, *, flipped=None):
  """Sums the label-masked, un-flipped, original-size foreground CAMs of all inputs.

  Args:
    cams: a sequence of per-scale groups, each [N_i, Hs_i, Ws_i, 21] (a group is inputs of one
      size: either single inputs [1, ...] in the order [s0, s0f, s1, s1f, ...], or pairs
      [2, ...] = (scaled, flipped) per scale).
    labels: [20] image-level multi-hot labels.
    orig_size: (H, W) of the original image, static Python ints.
    flipped: optional sequence of [N_i] bools per group. Default: inputs at odd positions of the
      concatenated order are flipped (the reference [s0, s0f, s1, s1f, ...] order).

  Returns:
    [H, W, 20] float32 `sum_cam` (a sum over inputs, not a mean).
  """
  if len(cams) == 0:
    raise ValueError("merge_multiscale needs at least one input")
  if flipped is not None and len(flipped) != len(cams):
    raise ValueError(f"flipped has {len(flipped)} groups but cams has {len(cams)}")
  sum_cam = None
  start = 0
  for i, group in enumerate(cams):
    flips = default_flipped(group.shape[0], start) if flipped is None else flipped[i]
    sum_cam = merge_scale(group, labels, orig_size, flipped=flips, sum_cam=sum_cam)
    start += group.shape[0]
  return sum_cam


def resize_matrices(in_size, out_size, *, flipped=False, in_padded=None, out_padded=None):
  """Host-side interpolation matrices for `merge_scale_matrices` (crop + resize + un-flip).

  Row d of the H matrix gives output row d as a weighted sum of input rows (torch bilinear,
  align_corners=False), restricted to the valid `in_size` part of a padded input; rows beyond the
  valid `out_size` are zero. With `flipped`, the W matrix's valid rows are reversed, which is the
  same as flipping the resized CAM back along W inside the valid width.

  Args:
    in_size: valid (h, w) of the CAM (the scaled input's size, before any bucket padding).
    out_size: (H, W) of the original image.
    flipped: whether this input was horizontally flipped.
    in_padded: (h_pad, w_pad) of the padded CAM array; default `in_size`.
    out_padded: (H_pad, W_pad) of the padded output array; default `out_size`.

  Returns:
    (a_h [H_pad, h_pad], a_w [W_pad, w_pad]) float32 numpy arrays.
  """
  in_padded = tuple(in_size) if in_padded is None else tuple(in_padded)
  out_padded = tuple(out_size) if out_padded is None else tuple(out_padded)
  mats = []
  for axis in range(2):
    n_in, n_out = int(in_size[axis]), int(out_size[axis])
    p_in, p_out = int(in_padded[axis]), int(out_padded[axis])
    if p_in < n_in or p_out < n_out:
      raise ValueError(f"padded sizes {in_padded}/{out_padded} smaller than valid sizes "
                       f"{in_size}/{out_size}")
    m = np.zeros((p_out, p_in), np.float32)
    core = interpolation_matrix(n_in, n_out, False)
    if axis == 1 and flipped:
      core = core[::-1]
    m[:n_out, :n_in] = core
    mats.append(m)
  return mats[0], mats[1]


def merge_scale_matrices(cams, labels, a_h, a_w, *, sum_cam=None,
                         precision=jax.lax.Precision.HIGHEST):
  """`merge_scale` with the resize (and un-flip) given as per-input matrices.

  Lets padded / bucketed inputs of different valid sizes share one compiled function: the valid
  sizes live in the matrices (data), not in the shapes. Entries outside the valid output are 0.

  Args:
    cams: [N, h_pad, w_pad, 21] CAMs.
    labels: [20] multi-hot labels.
    a_h: [N, H_pad, h_pad] or [H_pad, h_pad] row-interpolation matrices (`resize_matrices`).
    a_w: [N, W_pad, w_pad] or [W_pad, w_pad] column-interpolation matrices (flip folded in).
    sum_cam: optional [H_pad, W_pad, 20] running sum.
    precision: matmul precision (HIGHEST: no TF32 / bf16 passes on accelerators).

  Returns:
    [H_pad, W_pad, 20] float32 running sum.
  """
  cams = jnp.asarray(cams, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  _check_cams(cams, labels)
  n = cams.shape[0]
  a_h = jnp.broadcast_to(jnp.asarray(a_h, jnp.float32), (n,) + tuple(np.shape(a_h)[-2:]))
  a_w = jnp.broadcast_to(jnp.asarray(a_w, jnp.float32), (n,) + tuple(np.shape(a_w)[-2:]))
  fg = cams[..., 1:]
  fg = jnp.einsum("noh,nhwc->nowc", a_h, fg, precision=precision)
  fg = jnp.einsum("npw,nowc->nopc", a_w, fg, precision=precision)
  total = jnp.sum(fg * labels, axis=0)
  return total if sum_cam is None else sum_cam + total


# ------------------------------------------------------------------------------------------------
# Normalisation and seeds (jnp).
# ------------------------------------------------------------------------------------------------


def normalize_cam(sum_cam, valid=None):
  """The reference per-class min-max normalisation of the summed CAM.

  Exactly (float32, per class c over the image):
    x = max(sum_cam, 0); lo = min(x); hi = max(x)
    x[x < lo + 1e-5] = 0
    norm = (x - lo - 1e-5) / (hi - lo + 1e-5)
  Note the zeroing happens before the formula is applied to every pixel, so zeroed pixels end
  up slightly negative (-(lo + 1e-5) / (hi - lo + 1e-5)), and an absent class (all zeros) becomes
  -1 everywhere; both are below any threshold t >= 0, as in the reference.

  Args:
    sum_cam: [H, W, 20] summed foreground CAMs.
    valid: optional [H, W] bool mask of real (unpadded) pixels; min / max are taken over it and
      the output is 0 outside it. None: every pixel is valid.

  Returns:
    [H, W, 20] float32 normalised CAM.
  """
  x = jnp.maximum(jnp.asarray(sum_cam, jnp.float32), 0.0)
  if valid is None:
    lo = jnp.min(x, axis=(0, 1), keepdims=True)
    hi = jnp.max(x, axis=(0, 1), keepdims=True)
  else:
    v = jnp.asarray(valid, bool)[..., None]
    lo = jnp.min(jnp.where(v, x, jnp.inf), axis=(0, 1), keepdims=True)
    hi = jnp.max(jnp.where(v, x, -jnp.inf), axis=(0, 1), keepdims=True)
  x = jnp.where(x < lo + NORM_EPS, 0.0, x)
  norm = (x - lo - NORM_EPS) / (hi - lo + NORM_EPS)
  if valid is not None:
    norm = jnp.where(v, norm, 0.0)
  return norm


def seed_from_cams(norm_cam, labels, bg_threshold):
  """Seed label map: argmax over [background = t, normalised CAMs of the present classes].

  Ties go to the lower index (background first), like np.argmax in the reference. Absent classes
  are excluded (-inf); in the reference they are -1 (infer) or 0 (eval), which never beat a
  threshold t >= 0 either.

  Args:
    norm_cam: [H, W, 20] normalised CAMs.
    labels: [20] multi-hot labels (class j present when labels[j] > 1e-5).
    bg_threshold: background score t (scalar, may be traced).

  Returns:
    [H, W] int32 VOC label map with values 0..20.
  """
  norm_cam = jnp.asarray(norm_cam, jnp.float32)
  present = jnp.asarray(labels, jnp.float32) > LABEL_PRESENT_EPS
  fg = jnp.where(present, norm_cam, -jnp.inf)
  bg = jnp.full(norm_cam.shape[:2] + (1,), bg_threshold, jnp.float32)
  return jnp.argmax(jnp.concatenate([bg, fg], axis=-1), axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# cam_dict files (numpy).
# ------------------------------------------------------------------------------------------------


def make_cam_dict(norm_cam, labels):
  """{class_idx (0..19): float32 [H, W]} for the present classes (label > 1e-5), as the reference.

  Args:
    norm_cam: [H, W, 20] normalised CAMs (numpy or jax).
    labels: [20] multi-hot labels.

  Returns:
    dict with Python int keys in increasing order and C-contiguous float32 [H, W] values.
  """
  norm_cam = np.asarray(norm_cam, np.float32)
  labels = np.asarray(labels, np.float32).reshape(-1)
  if norm_cam.ndim != 3 or norm_cam.shape[-1] != NUM_FG:
    raise ValueError(f"norm_cam must be [H, W, {NUM_FG}], got shape {norm_cam.shape}")
  if labels.shape != (NUM_FG,):
    raise ValueError(f"labels must be [{NUM_FG}], got shape {labels.shape}")
  return {int(j): np.ascontiguousarray(norm_cam[..., j])
          for j in range(NUM_FG) if labels[j] > LABEL_PRESENT_EPS}


def save_cam_dict(path, norm_cam, labels):
  """Saves the reference cam_dict (`np.save` of a pickled dict) atomically.

  Readable by the reference `eval.py` (`np.load(path, allow_pickle=True).item()`).

  Args:
    path: output file; '.npy' is appended when missing (like np.save).
    norm_cam: [H, W, 20] normalised CAMs.
    labels: [20] multi-hot labels; only present classes are stored.

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith(".npy"):
    path += ".npy"
  cam_dict = make_cam_dict(norm_cam, labels)
  # np.save to a file object writes exactly the bytes np.save(path) would (no '.npy' appended).
  atomic_io.atomic_write(path, lambda f: np.save(f, cam_dict, allow_pickle=True), ".npy")
  return path


def load_cam_dict(path):
  """Loads and validates a cam_dict file.

  Args:
    path: a '.npy' file written by `save_cam_dict` or the reference inference.

  Returns:
    dict {int class_idx in 0..19: float32 [H, W]} (all maps the same shape; may be empty).

  The pickle inside is read by `ppc_jax.untrusted` (dicts, numbers and numpy arrays only), so a
  crafted file is refused instead of running code.

  Raises:
    FileNotFoundError: the file does not exist (named).
    ValueError: (`untrusted.UntrustedFileError`, `UnsafeFileError` for a refused global) not a
      readable pickled dict of int -> numeric arrays, keys outside 0..19, or maps that are not
      equal-shape 2-D arrays; always naming the file.
  """
  path = os.fspath(path)
  cam_dict = untrusted.load_npy_dict(path, key_types=(int, np.integer), what="cam file",
                                     expected="np.save of a dict {class_idx: float32[H, W]}")
  out = {}
  shape = None
  for key, value in cam_dict.items():
    if (not isinstance(key, (int, np.integer)) or isinstance(key, bool)
        or not 0 <= int(key) < NUM_FG):
      raise ValueError(f"{path}: unknown class index {key!r} in cam dict (keys must be ints "
                       f"0..{NUM_FG - 1}; all keys: {sorted(map(repr, cam_dict))})")
    value = np.asarray(value, np.float32)
    if value.ndim != 2:
      raise ValueError(f"{path}: class {key} map must be [H, W], got shape {value.shape}")
    if shape is not None and value.shape != shape:
      raise ValueError(f"{path}: class maps have different shapes {shape} and {value.shape}")
    shape = value.shape
    out[int(key)] = value
  return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# Images (numpy / PIL / matplotlib).
# ------------------------------------------------------------------------------------------------


def label_png_image(label_map):
  """A VOC palette ('P' mode) PIL image of a label map (values 0..20, 255 = void)."""
  label_map = np.asarray(label_map)
  if label_map.ndim != 2:
    raise ValueError(f"label_map must be [H, W], got shape {label_map.shape}")
  if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
    raise ValueError(f"label_map values must be in 0..255, got "
                     f"{label_map.min()}..{label_map.max()}")
  img = Image.fromarray(label_map.astype(np.uint8), mode="P")
  img.putpalette(voc_meta.palette_bytes())
  return img


def save_label_png(path, label_map):
  """Writes a label map as a VOC palette PNG (indices stay readable with np.array(Image.open)).

  Args:
    path: output '.png' path.
    label_map: [H, W] ints, 0..20 and optionally 255 (void).
  """
  img = label_png_image(label_map)
  atomic_io.atomic_write(os.fspath(path), lambda f: img.save(f, format="PNG"), ".png")


def cam_overlay(image_uint8, norm_cam, labels, *, alpha=0.5, cmap="jet"):
  """A heat-map overlay of the CAM on the image, for eyeballing seeds.

  The heat is the per-pixel max over the present classes of the normalised CAM, clipped to
  [0, 1], coloured with a matplotlib colour map and alpha-blended with the image.

  Args:
    image_uint8: [H, W, 3] uint8 RGB image.
    norm_cam: [H, W, 20] normalised CAMs.
    labels: [20] multi-hot labels.
    alpha: weight of the heat map in the blend.
    cmap: matplotlib colour map name.

  Returns:
    [H, W, 3] uint8 RGB.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  image = np.asarray(image_uint8)
  norm_cam = np.asarray(norm_cam, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
  if norm_cam.shape != image.shape[:2] + (NUM_FG,):
    raise ValueError(f"norm_cam shape {norm_cam.shape} does not match image shape {image.shape} "
                     f"(expected {image.shape[:2] + (NUM_FG,)})")
  present = np.asarray(labels, np.float32).reshape(-1) > LABEL_PRESENT_EPS
  if present.any():
    heat = np.clip(norm_cam[..., present].max(axis=-1), 0.0, 1.0)
  else:
    heat = np.zeros(image.shape[:2], np.float32)
  colour = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
  out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)
