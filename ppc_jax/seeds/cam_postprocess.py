"""CAM post-processing for seed inference: multi-scale merge, normalisation, seeds, images.

The numeric part follows the reference SEAM / PPC inference (wseg `contrast_infer.py`, METHOD 4.1):

  1. every scaled input (scales [0.5, 1, 1.5, 2], each followed by its horizontal flip) gives the
     PCM-refined CAM `cam_rv` at the input's size (already upsampled, align_corners=True, by the
     model);
  2. foreground channels 1..F (F = 20 for VOC; any class count works) are bilinearly resized to
     the original (H, W) with align_corners=False, multiplied by the image-level labels, flipped
     back for flipped inputs, and SUMMED (not averaged) over all inputs;
  3. negatives are clipped, and each class is min-max normalised over the image;
  4. seeds are argmax([bg = t, cams]); the cam_dict files are written by `ppc_jax.data.cam_io`.

Steps 2-4 (numeric) are jnp and jit-friendly: shapes are static, and one call of `merge_scale`
handles all inputs of one scale (e.g. the [2, Hs, Ws, F + 1] original + flipped pair), adding
into a running sum, so an inference loop never needs a Python loop per input.

The rest (palette PNGs, CAM overlays) is host-side numpy / PIL.
"""

import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from ppc_jax import atomic_io
from ppc_jax.data.cam_io import LABEL_PRESENT_EPS
from ppc_jax.data import voc_meta
from ppc_jax.ops.resize import resize_bilinear
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
  """F foreground classes: labels [F], cams [N, Hs, Ws, F + 1] (channel 0 = background)."""
  if labels.ndim != 1:
    raise ValueError(f"labels must be a [F] multi-hot vector, got shape {labels.shape}")
  if cams.ndim != 4 or cams.shape[-1] != labels.shape[0] + 1:
    raise ValueError(f"cams must be [N, Hs, Ws, {labels.shape[0] + 1}] (channel 0 = background, "
                     f"one per class of the [{labels.shape[0]}] labels), got shape {cams.shape}")


def merge_scale(cams, labels, orig_size, *, flipped=None, sum_cam=None):
  """Adds the foreground CAMs of a group of same-size inputs to the running multi-scale sum.

  For each input n: `resize(cams[n, ..., 1:], orig_size, align_corners=False) * labels`, flipped
  back along W when `flipped[n]`; the group's inputs are summed and added to `sum_cam`.

  Args:
    cams: [N, Hs, Ws, F + 1] PCM-refined CAMs (`cam_rv`) of N inputs of one scale, at that scale's
      input size (e.g. N = 2: the scaled image and its horizontal flip).
    labels: [F] image-level multi-hot labels (no background).
    orig_size: (H, W) of the original image, static Python ints.
    flipped: [N] bools, True for inputs that were horizontally flipped. Static (tuple / numpy) or
      a traced array. Default: `default_flipped(N)`, i.e. the reference (orig, flip) pairs.
    sum_cam: optional [H, W, F] running sum to add into; None starts from zero.

  Returns:
    [H, W, F] float32 running sum.
  """
  cams = jnp.asarray(cams, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  _check_cams(cams, labels)
  n = cams.shape[0]
  if flipped is None:
    flipped = default_flipped(n)
  fg = resize_bilinear(cams[..., 1:], tuple(int(s) for s in orig_size), align_corners=False)
  fg = fg * labels  # broadcast over [N, H, W, F]
  # Un-flip after the resize, as the reference does (np.flip on the original-size CAM).
  flipped = jnp.asarray(flipped, bool).reshape(n, 1, 1, 1)
  fg = jnp.where(flipped, fg[:, :, ::-1, :], fg)
  total = jnp.sum(fg, axis=0)
  return total if sum_cam is None else sum_cam + total


# ------------------------------------------------------------------------------------------------
# Normalisation and seeds (jnp).
# ------------------------------------------------------------------------------------------------


def normalize_cam(sum_cam):
  """The reference per-class min-max normalisation of the summed CAM.

  Exactly (float32, per class c over the image):
    x = max(sum_cam, 0); lo = min(x); hi = max(x)
    x[x < lo + 1e-5] = 0
    norm = (x - lo - 1e-5) / (hi - lo + 1e-5)
  Note the zeroing happens before the formula is applied to every pixel, so zeroed pixels end
  up slightly negative (-(lo + 1e-5) / (hi - lo + 1e-5)), and an absent class (all zeros) becomes
  -1 everywhere; both are below any threshold t >= 0, as in the reference.

  Args:
    sum_cam: [H, W, F] summed foreground CAMs.

  Returns:
    [H, W, F] float32 normalised CAM.
  """
  x = jnp.maximum(jnp.asarray(sum_cam, jnp.float32), 0.0)
  lo = jnp.min(x, axis=(0, 1), keepdims=True)
  hi = jnp.max(x, axis=(0, 1), keepdims=True)
  x = jnp.where(x < lo + NORM_EPS, 0.0, x)
  return (x - lo - NORM_EPS) / (hi - lo + NORM_EPS)


def max_normalize_cam(sum_cam):
  """EPS's per-class max normalisation of the summed CAM (METHOD 4.2).

  norm = sum_cam / (max over the image + 1e-5) per class; absent classes (all zero) stay 0.

  Args:
    sum_cam: [H, W, F] summed foreground probabilities.

  Returns:
    [H, W, F] float32.
  """
  x = jnp.asarray(sum_cam, jnp.float32)
  return x / (jnp.max(x, axis=(0, 1), keepdims=True) + NORM_EPS)


def seed_from_cams(norm_cam, labels, bg_threshold):
  """Seed label map: argmax over [background = t, normalised CAMs of the present classes].

  Ties go to the lower index (background first), like np.argmax in the reference. Absent classes
  are excluded (-inf); in the reference they are -1 (infer) or 0 (eval), which never beat a
  threshold t >= 0 either.

  Args:
    norm_cam: [H, W, F] normalised CAMs.
    labels: [F] multi-hot labels (class j present when labels[j] > 1e-5).
    bg_threshold: background score t (scalar, may be traced).

  Returns:
    [H, W] int32 label map with values 0..F.
  """
  norm_cam = jnp.asarray(norm_cam, jnp.float32)
  present = jnp.asarray(labels, jnp.float32) > LABEL_PRESENT_EPS
  fg = jnp.where(present, norm_cam, -jnp.inf)
  bg = jnp.full(norm_cam.shape[:2] + (1,), bg_threshold, jnp.float32)
  return jnp.argmax(jnp.concatenate([bg, fg], axis=-1), axis=-1).astype(jnp.int32)


def seed_from_cams_host(norm_cam, labels, bg_threshold):
  """`seed_from_cams` in numpy, for the host side of inference: the same label map (the same
  comparisons, ties to the lower index), without dispatching JAX ops (and compiling them per
  image size) beside the device's computation.

  Args:
    norm_cam: [H, W, F] normalised CAMs (numpy).
    labels: [F] multi-hot labels.
    bg_threshold: background score t (a Python or numpy scalar).

  Returns:
    [H, W] int32 label map with values 0..F.
  """
  norm_cam = np.asarray(norm_cam, np.float32)
  present = np.asarray(labels, np.float32) > LABEL_PRESENT_EPS
  fg = np.where(present, norm_cam, np.float32(-np.inf))
  bg = np.full(norm_cam.shape[:2] + (1,), bg_threshold, np.float32)
  return np.argmax(np.concatenate([bg, fg], axis=-1), axis=-1).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Images (numpy / PIL / matplotlib).
# ------------------------------------------------------------------------------------------------


def label_png_image(label_map):
  """A VOC palette ('P' mode) PIL image of a label map (values 0..F, 255 = void).

  The VOC colour map is defined for every index, so any class list gets distinct colours.
  """
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
    label_map: [H, W] ints, 0..F and optionally 255 (void).
  """
  img = label_png_image(label_map)
  atomic_io.atomic_write(os.fspath(path), lambda f: img.save(f, format="PNG"), ".png")


def cam_overlay(image_uint8, norm_cam, labels, *, alpha=0.5, cmap="jet"):
  """A heat-map overlay of the CAM on the image, for eyeballing seeds.

  The heat is the per-pixel max over the present classes of the normalised CAM, clipped to
  [0, 1], coloured with a matplotlib colour map and alpha-blended with the image.

  Args:
    image_uint8: [H, W, 3] uint8 RGB image.
    norm_cam: [H, W, F] normalised CAMs.
    labels: [F] multi-hot labels.
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
  present = np.asarray(labels, np.float32).reshape(-1) > LABEL_PRESENT_EPS
  if norm_cam.shape != image.shape[:2] + present.shape:
    raise ValueError(f"norm_cam shape {norm_cam.shape} does not match image shape {image.shape} "
                     f"and {present.size} labels (expected {image.shape[:2] + present.shape})")
  if present.any():
    heat = np.clip(norm_cam[..., present].max(axis=-1), 0.0, 1.0)
  else:
    heat = np.zeros(image.shape[:2], np.float32)
  colour = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
  out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)
