"""cam_dict files: the reference's per-image CAM format, written by inference, read by evaluation.

A cam_dict is `np.save` of a pickled dict {class_idx (0..F-1): float32 [H, W]} holding the
normalised CAM of each class present in the image-level labels (label > 1e-5), exactly what the
reference's `contrast_infer.py` writes and its `eval.py` reads (F = 20 for VOC; the label index,
so key k is mask value / CAM channel k + 1).

numpy only (no JAX): the evaluator imports this module and must start without JAX.
"""

import os

import numpy as np

from ppc_jax import atomic_io
from ppc_jax import untrusted
from ppc_jax.data import voc_meta

NUM_FG = voc_meta.VOC.num_fg  # VOC's 20: the default key range of `load_cam_dict`.
# The reference keeps class j when label[j] > 1e-5 (labels are 0/1 floats from cls_labels.npy).
LABEL_PRESENT_EPS = 1e-5


def make_cam_dict(norm_cam, labels):
  """{class_idx (0..F-1): float32 [H, W]} for the present classes (label > 1e-5), as the reference.

  Args:
    norm_cam: [H, W, F] normalised CAMs (numpy or jax), F foreground classes.
    labels: [F] multi-hot labels.

  Returns:
    dict with Python int keys in increasing order and C-contiguous float32 [H, W] values.
  """
  norm_cam = np.asarray(norm_cam, np.float32)
  labels = np.asarray(labels, np.float32).reshape(-1)
  if norm_cam.ndim != 3 or norm_cam.shape[-1] != labels.size:
    raise ValueError(f"norm_cam must be [H, W, F] with F = {labels.size} (the labels' length), "
                     f"got shape {norm_cam.shape}")
  return {int(j): np.ascontiguousarray(norm_cam[..., j])
          for j in range(labels.size) if labels[j] > LABEL_PRESENT_EPS}


def save_cam_dict(path, norm_cam, labels):
  """Saves the reference cam_dict (`np.save` of a pickled dict) atomically.

  Readable by the reference `eval.py` (`np.load(path, allow_pickle=True).item()`).

  Args:
    path: output file; '.npy' is appended when missing (like np.save).
    norm_cam: [H, W, F] normalised CAMs.
    labels: [F] multi-hot labels; only present classes are stored.

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


def load_cam_dict(path, num_fg=NUM_FG):
  """Loads and validates a cam_dict file.

  Args:
    path: a '.npy' file written by `save_cam_dict` or the reference inference.
    num_fg: the class list's foreground count F (default VOC's 20): keys must be 0..F-1.

  Returns:
    dict {int class_idx in 0..F-1: float32 [H, W]} (all maps the same shape; may be empty).

  The pickle inside is read by `ppc_jax.untrusted` (dicts, numbers and numpy arrays only), so a
  crafted file is refused instead of running code.

  Raises:
    FileNotFoundError: the file does not exist (named).
    ValueError: (`untrusted.UntrustedFileError`, `UnsafeFileError` for a refused global) not a
      readable pickled dict of int -> numeric arrays, keys outside 0..F-1, or maps that are not
      equal-shape 2-D arrays; always naming the file.
  """
  path = os.fspath(path)
  cam_dict = untrusted.load_npy_dict(path, key_types=(int, np.integer), what="cam file",
                                     expected="np.save of a dict {class_idx: float32[H, W]}")
  out = {}
  shape = None
  for key, value in cam_dict.items():
    if (not isinstance(key, (int, np.integer)) or isinstance(key, bool)
        or not 0 <= int(key) < num_fg):
      raise ValueError(f"{path}: unknown class index {key!r} in cam dict (keys must be ints "
                       f"0..{num_fg - 1} for {num_fg} foreground classes; all keys: "
                       f"{sorted(map(repr, cam_dict))})")
    value = np.asarray(value, np.float32)
    if value.ndim != 2:
      raise ValueError(f"{path}: class {key} map must be [H, W], got shape {value.shape}")
    if shape is not None and value.shape != shape:
      raise ValueError(f"{path}: class maps have different shapes {shape} and {value.shape}")
    shape = value.shape
    out[int(key)] = value
  return dict(sorted(out.items()))
