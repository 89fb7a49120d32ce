"""Dense CRF of the reference's refinement stage, on the host (numpy + pydensecrf).

The fully connected CRF of Krähenbühl & Koltun with mean-field inference, through pydensecrf (the
binding the reference calls; pinned as `pydensecrf2` in requirements.txt). Three uses in the
reference (METHOD 4.1, 4.3 and 11 item 9):

  * `crf_from_softmax`: SEAM / PSA `tool/imutils.py::crf_inference`. Unary -log(clip(p, 1e-5, 1))
    of the class scores as given (never renormalised), Gaussian kernel sxy 3 / compat 3, bilateral
    sxy 80 / srgb 13 / compat 10, 10 iterations; returns the mean-field marginals Q.
  * `la_ha_scores`: the la / ha CRF score dicts that SEAM's infer_SEAM.py and PSA's infer_cls.py
    write (`_crf_with_alpha`), AffinityNet's training labels. bg = (1 - max over the present
    classes)^alpha, stacked [bg, present classes in increasing key order], `crf_from_softmax`, and
    saved as {0: bg marginal, k + 1: marginal of class k} (`save_scores`: an npz cam file,
    or the reference's pickled .npy on request), k the cam_dict key (label index
    0..F-1), so key c is mask value / CAM channel c. alpha: 4 (la) and 24 (ha) in SEAM, 4 and 32
    in PSA; the EPS `esp` branch also varies the iteration count.
  * `crf_from_labels`: the seed CRF of wseg contrast_infer.py (`_crf`, `_crf_inference`). A hard
    label map (`seed_from_cam_dict`: argmax of [bg 0.26, CAMs]) as
    unary_from_labels(gt_prob=0.7, zero_unsure=False) over all C = F + 1 classes, Gaussian 3 / 3,
    bilateral sxy 50 / srgb 5 / compat 10, 10 iterations, argmax.

Conventions: images are [H, W, 3] uint8 RGB (NHWC without the batch axis); score maps are
[H, W, C] float32 with channel 0 = background. pydensecrf needs a C-contiguous [C, H*W] float32
unary and a C-contiguous uint8 image; the functions here make both. Its Potts kernels use the
symmetric normalisation n_i = 1 / sqrt(sum_j k_ij) (self term included) and approximate the
Gaussian filtering with a permutohedral lattice; tests/test_refine_crf.py re-derives the mean
field exactly and measures that approximation.

numpy only (no JAX): the refinement workers are plain processes.
"""

import os

import numpy as np

from ppc_jax.data import cam_io

# The reference's settings (METHOD 4.1).
ITERATIONS = 10
SOFTMAX_CRF = dict(gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10)
LABEL_CRF = dict(gauss_sxy=3, gauss_compat=3, bi_sxy=50, bi_srgb=5, bi_compat=10)
GT_PROB = 0.7
SEED_BG_THRESHOLD = 0.26
LA_ALPHA, HA_ALPHA = 4, 24  # SEAM's crf_alpha (PSA: 4 and 32)


def _densecrf():
  """(pydensecrf.densecrf, pydensecrf.utils), or an ImportError that says how to install them."""
  try:
    import pydensecrf.densecrf as dcrf  # pylint: disable=g-import-not-at-top
    from pydensecrf import utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "pydensecrf is not installed: pip install pydensecrf2==1.1 (pinned in requirements.txt; "
        "pip builds it from source and needs a C++ compiler)") from e
  return dcrf, utils


def _where(name):
  return name or "image"


def _check_image(image, name):
  """The image as a C-contiguous, writable uint8 [H, W, 3] array, or a ValueError naming it.

  Writable: pydensecrf takes the image as a typed memoryview, which refuses read-only buffers
  ("buffer source array is read-only"), and `np.asarray(PIL image)` is read-only.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f"{_where(name)}: image must be [H, W, 3] RGB, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise ValueError(f"{_where(name)}: image must be uint8 RGB (0..255), got {image.dtype}")
  if not (image.flags.c_contiguous and image.flags.writeable):
    image = np.array(image, order="C")  # a copy
  return image


def _check_iterations(iterations, name):
  if int(iterations) != iterations or iterations < 0:
    raise ValueError(f"{_where(name)}: iterations must be an integer >= 0, got {iterations!r}")
  return int(iterations)


def _add_pairwise(crf, image, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat):
  """The reference's two Potts kernels: Gaussian (position) and bilateral (position + colour)."""
  crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
  crf.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=image, compat=bi_compat)


def crf_from_softmax(image, probs, *, iterations=ITERATIONS, gauss_sxy=3, gauss_compat=3,
                     bi_sxy=80, bi_srgb=13, bi_compat=10, name=None):
  """Dense CRF on class scores: the reference's `imutils.crf_inference`.

  Args:
    image: uint8 [H, W, 3] RGB.
    probs: float [H, W, C] class scores in [0, 1] (background first where it applies). They are
      clipped to [1e-5, 1] and their -log is the unary (pydensecrf's `unary_from_softmax`); they
      need not sum to 1. +-inf is clipped like any value, as in the reference (its float32
      la / ha background (1 - max)^alpha overflows to inf where a min-max normalised CAM is far
      below 0; `la_ha_scores`); NaN is refused.
    iterations: mean-field iterations.
    gauss_sxy, gauss_compat: Gaussian kernel std (pixels) and Potts weight.
    bi_sxy, bi_srgb, bi_compat: bilateral kernel stds (pixels, colour levels) and Potts weight.
    name: what to call the image in errors (an id or file).

  Returns:
    float32 [H, W, C] mean-field marginals (each pixel sums to 1).

  Raises:
    ValueError naming the image: a wrong shape or dtype, scores that do not match the image's
    size, or NaN scores.
  """
  dcrf, utils = _densecrf()
  image = _check_image(image, name)
  probs = np.asarray(probs)
  h, w = image.shape[:2]
  if probs.ndim != 3 or probs.shape[:2] != (h, w) or probs.shape[2] < 1:
    raise ValueError(f"{_where(name)}: scores have shape {probs.shape}; expected [H, W, C] = "
                     f"[{h}, {w}, C] to match the image ({w}x{h}, WxH)")
  if probs.dtype.kind not in "biuf" or (probs.dtype.kind == "f" and np.isnan(probs).any()):
    raise ValueError(f"{_where(name)}: scores must be numbers, not NaN (got dtype {probs.dtype}"
                     f"{', NaN values' if probs.dtype.kind in 'f' else ''})")
  iterations = _check_iterations(iterations, name)
  c = probs.shape[2]
  # [C, H*W] in pixel-major order (pixel index y * W + x), as pydensecrf's DenseCRF2D expects.
  unary = utils.unary_from_softmax(probs.astype(np.float32, copy=False).transpose(2, 0, 1))
  crf = dcrf.DenseCRF2D(w, h, c)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  _add_pairwise(crf, image, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat)
  q = np.array(crf.inference(iterations), np.float32)  # [C, H*W]
  return np.ascontiguousarray(q.reshape(c, h, w).transpose(1, 2, 0))


def crf_from_labels(image, labels, num_labels, *, gt_prob=GT_PROB, iterations=ITERATIONS,
                    gauss_sxy=3, gauss_compat=3, bi_sxy=50, bi_srgb=5, bi_compat=10, name=None):
  """Dense CRF on a hard label map: the reference's seed CRF (wseg `_crf_inference`).

  The unary is pydensecrf's `unary_from_labels(labels, num_labels, gt_prob, zero_unsure=False)`:
  probability gt_prob for the pixel's label and (1 - gt_prob) / (num_labels - 1) for every other
  label (label 0, the background, is an ordinary label).

  Args:
    image: uint8 [H, W, 3] RGB.
    labels: int [H, W] label map, values 0..num_labels-1.
    num_labels: the number of labels; the reference uses all C = F + 1 classes (21 for VOC), not
      only those present.
    gt_prob: the label's probability, in (0, 1).
    iterations, gauss_*, bi_*: as `crf_from_softmax` (defaults: the reference's seed CRF).
    name: what to call the image in errors.

  Returns:
    uint8 [H, W] (int32 for more than 256 labels) argmax of the marginals; ties go to the lower
    label, as np.argmax in the reference.
  """
  dcrf, utils = _densecrf()
  image = _check_image(image, name)
  h, w = image.shape[:2]
  labels = np.asarray(labels)
  num_labels = int(num_labels)
  if labels.shape != (h, w):
    raise ValueError(f"{_where(name)}: label map has shape {labels.shape}; expected [H, W] = "
                     f"[{h}, {w}] to match the image ({w}x{h}, WxH)")
  if labels.dtype.kind not in "iu":
    raise ValueError(f"{_where(name)}: label map must hold integers, got {labels.dtype}")
  if num_labels < 2:
    raise ValueError(f"{_where(name)}: num_labels must be >= 2, got {num_labels}")
  if labels.min() < 0 or labels.max() >= num_labels:
    raise ValueError(f"{_where(name)}: label values {labels.min()}..{labels.max()} outside "
                     f"0..{num_labels - 1}")
  if not 0 < gt_prob < 1:
    raise ValueError(f"{_where(name)}: gt_prob must be in (0, 1), got {gt_prob}")
  iterations = _check_iterations(iterations, name)
  unary = utils.unary_from_labels(labels, num_labels, gt_prob=gt_prob, zero_unsure=False)
  crf = dcrf.DenseCRF2D(w, h, num_labels)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  _add_pairwise(crf, image, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat)
  q = np.array(crf.inference(iterations), np.float32).reshape(num_labels, h, w)
  return np.argmax(q, axis=0).astype(np.uint8 if num_labels <= 256 else np.int32)


def _cam_stack(cam_dict, shape, name):
  """(sorted keys, float32 [K, H, W]) of a cam_dict, checked against the image's (H, W)."""
  keys = sorted(cam_dict)
  for key in keys:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or key < 0:
      raise ValueError(f"{_where(name)}: cam dict key {key!r} is not a class index (int >= 0)")
    cam_shape = np.shape(cam_dict[key])
    if cam_shape != tuple(shape):
      raise ValueError(f"{_where(name)}: the CAM of class {key} is {cam_shape} but the image is "
                       f"{tuple(shape)} ([H, W]); the cam file and the image do not belong "
                       "together")
  if not keys:
    return keys, np.zeros((0,) + tuple(shape), np.float32)
  return keys, np.stack([np.asarray(cam_dict[k], np.float32) for k in keys])


def la_ha_scores(cam_dict, image, alpha, *, iterations=ITERATIONS, name=None):
  """One la / ha CRF score dict, as SEAM's infer_SEAM.py saves it (`_crf_with_alpha`).

  Args:
    cam_dict: {class index k (0..F-1): float32 [H, W] normalised CAM} of the present classes
      (a stage-1 cam file, `cam_io.load_cam_dict`).
    image: uint8 [H, W, 3] RGB.
    alpha: the background power: bg = (1 - max_k cam_k)^alpha (SEAM: 4 for la, 24 for ha).
    iterations: mean-field iterations (the reference's 10).
    name: what to call the image in errors.

  Returns:
    dict {0: float32 [H, W] background marginal, k + 1: float32 [H, W] marginal of class k}, with
    keys inserted in increasing order (the reference's order: its cam_dicts list classes in
    increasing index, and PSA's AffinityNet reader takes `list(d.values())` positionally). The
    CRF is `crf_from_softmax` with the reference's settings (Gaussian 3 / 3, bilateral 80 / 13 /
    10) on the [bg, present classes] stack. With no present class (the reference would fail) the
    result is {0: ones}, what a one-label CRF gives.
  """
  image = _check_image(image, name)
  h, w = image.shape[:2]
  keys, cams = _cam_stack(cam_dict, (h, w), name)
  if not keys:
    return {0: np.ones((h, w), np.float32)}
  # A Python int / float exponent keeps the float32 arithmetic of the reference (its alpha is an
  # int); a numpy float64 scalar would promote the background to float64.
  alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
  # The reference's float32 power overflows to inf where a CAM is far below 0 (min-max
  # normalisation puts the zeroed minimum of a CAM that is positive everywhere at
  # -(min + 1e-5) / (max - min + 1e-5), e.g. -40); the CRF's clip makes that 1, as there.
  with np.errstate(over="ignore"):
    bg = np.power(1 - np.max(cams, axis=0, keepdims=True), alpha)
  scores = np.concatenate([bg, cams], axis=0).transpose(1, 2, 0)
  q = crf_from_softmax(image, scores, iterations=iterations, name=name, **SOFTMAX_CRF)
  out = {0: np.ascontiguousarray(q[..., 0])}
  for i, key in enumerate(keys):
    out[int(key) + 1] = np.ascontiguousarray(q[..., i + 1])
  return out


def seed_from_cam_dict(cam_dict, num_classes, shape, bg_threshold=SEED_BG_THRESHOLD, name=None):
  """The reference's seed before its CRF: argmax of [bg = t, CAM of class k at channel k + 1].

  Absent classes score 0 (the reference's zero tensor), so they never beat a threshold t >= 0.

  Args:
    cam_dict: {class index k: float32 [H, W]}.
    num_classes: C = F + 1 channels (keys must be < C - 1).
    shape: (H, W) of the image.
    bg_threshold: the background score t (0.26 in the reference).
    name: what to call the image in errors.

  Returns:
    uint8 [H, W] labels 0..C-1.
  """
  keys, cams = _cam_stack(cam_dict, shape, name)
  if keys and keys[-1] + 1 >= num_classes:
    raise ValueError(f"{_where(name)}: cam dict key {keys[-1]} needs more than {num_classes} "
                     "classes")
  tensor = np.zeros((num_classes,) + tuple(shape), np.float32)
  for key, cam in zip(keys, cams):
    tensor[key + 1] = cam
  tensor[0] = bg_threshold
  return np.argmax(tensor, axis=0).astype(np.uint8)


def seed_crf(cam_dict, image, num_classes, *, bg_threshold=SEED_BG_THRESHOLD,
             iterations=ITERATIONS, name=None):
  """The reference's CRF seed mask (wseg contrast_infer.py `--out_crf`): uint8 [H, W] labels."""
  image = _check_image(image, name)
  seed = seed_from_cam_dict(cam_dict, num_classes, image.shape[:2], bg_threshold, name)
  return crf_from_labels(image, seed, num_classes, gt_prob=GT_PROB, iterations=iterations,
                         name=name, **LABEL_CRF)


def save_scores(path, scores, fmt=cam_io.NPZ):
  """Writes a la / ha score dict atomically, in the cam files' format (`cam_io.save_map_dict`).

  Args:
    path: output file ('.npz', or '.npy' for fmt='reference_npy', is appended when missing).
    scores: {int key: float32 [H, W]} (`la_ha_scores`' output).
    fmt: 'npz' (default: keys [K] + maps float32 [K, H, W], no pickle) or 'reference_npy' (the
      reference's `np.save` of the dict, as SEAM's infer_SEAM.py writes it).

  Returns:
    The path written.
  """
  return cam_io.save_map_dict(path, scores, fmt)


def load_scores(path, num_classes, fmt=cam_io.NPZ):
  """Reads a la / ha score dict without running pickled code.

  Args:
    path: a file written by `save_scores` ('.npz'), or with fmt='reference_npy' the reference's
      '.npy' (read through the restricted unpickler).
    num_classes: C = F + 1: keys must be in 0..C-1.
    fmt: 'npz' (default) or 'reference_npy'.

  Returns:
    {int key: float32 [H, W]} in increasing key order, key 0 (background) always present.

  Raises:
    FileNotFoundError / ValueError naming the file (see `cam_io.load_cam_dict`).
  """
  try:
    scores = cam_io.load_cam_dict(path, num_fg=num_classes, fmt=fmt)
  except ValueError as e:
    raise ValueError(f"{e} (read as a la / ha CRF score dict: key 0 = background, keys "
                     f"1..{num_classes - 1} = classes)") from e
  if 0 not in scores:
    raise ValueError(f"{os.fspath(path)}: no background score (key 0); expected a la / ha CRF "
                     "score dict {0: bg, k + 1: class k}")
  return scores
