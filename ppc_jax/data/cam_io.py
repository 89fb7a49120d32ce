r"""cam files: the per-image CAMs written by inference and read by the CRF, the random walk and
evaluation; the same layout holds the CRF's la / ha score dicts (`ppc_jax.refine.crf`).

A cam dict is {class_idx (0..F-1): float32 [H, W]}: the normalised CAM of each class present in
the image-level labels (label > 1e-5), as the reference's `contrast_infer.py` computes it (F = 20
for VOC; the label index, so key k is mask value / CAM channel k + 1). Two file formats:

  npz            (default; what ppc_jax writes and reads back) `<id>.npz`, `np.savez` of two arrays,
                 no pickle:
                   keys  int64 [K]        the class indices, strictly increasing
                   maps  float32 [K, H, W] maps[i] is the map of keys[i] (K may be 0)
                 read with `np.load(..., allow_pickle=False)` (`untrusted.load_npz_arrays`).
  reference_npy  `<id>.npy`, `np.save` of the pickled dict: the reference's format (its `eval.py`
                 reads it with `np.load(path, allow_pickle=True).item()`). Only on request: written
                 with fmt='reference_npy', read through the restricted unpickler of
                 `ppc_jax.untrusted` (dicts, numbers and numpy arrays; anything else is refused).

Readers take the format as a setting (default npz) and never guess it from what is on disk: a
missing file whose other-format twin exists is reported as such, naming both. Converting a whole
directory either way (import of the reference's files, export for its scripts):

  python -m ppc_jax.data.cam_io --to=npz --src=REFERENCE_CAMS --dst=CAMS
  python -m ppc_jax.data.cam_io --to=reference_npy --src=CAMS --dst=REFERENCE_CAMS

numpy only (no JAX): the evaluator imports this module and must start without JAX.
"""

import os

import numpy as np

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import untrusted
from ppc_jax.data import voc_meta

NUM_FG = voc_meta.VOC.num_fg  # VOC's 20: the default key range of `load_cam_dict`.
# The reference keeps class j when label[j] > 1e-5 (labels are 0/1 floats from cls_labels.npy).
LABEL_PRESENT_EPS = 1e-5

NPZ = "npz"
REFERENCE_NPY = "reference_npy"
EXTENSIONS = {NPZ: ".npz", REFERENCE_NPY: ".npy"}
FORMATS = tuple(EXTENSIONS)
NPZ_EXPECTED = "np.savez of keys int [K] (increasing) and maps float32 [K, H, W]"
CONVERT_HINT = "python -m ppc_jax.data.cam_io --to={to} --src=DIR --dst=NEW_DIR"


def check_format(fmt):
  """`fmt` if it is one of FORMATS, else a ValueError naming them."""
  if fmt not in EXTENSIONS:
    raise ValueError(f"cam file format must be one of {list(FORMATS)}, got {fmt!r}")
  return fmt


def file_name(image_id, fmt=NPZ):
  """`<id>.npz` (or `<id>.npy` for the reference format): the file name of an image's cam file."""
  return image_id + EXTENSIONS[check_format(fmt)]


def file_path(directory, image_id, fmt=NPZ):
  """`<directory>/<id>.npz` (`.npy` for the reference format)."""
  return os.path.join(os.fspath(directory), file_name(image_id, fmt))


def other_format(fmt):
  """The format that is not `fmt`."""
  return REFERENCE_NPY if check_format(fmt) == NPZ else NPZ


def format_advice(fmt):
  """How to read files of the format that is not `fmt` (for messages)."""
  if check_format(fmt) == NPZ:
    return ("the reference's pickled .npy dicts are read only on request, through the restricted "
            "reader (format 'reference_npy': evaluate --type=reference_npy, crf_labels "
            "--cam_format=reference_npy), or convert them once: "
            + CONVERT_HINT.format(to=NPZ))
  return ("that is ppc_jax's .npz format (the default): drop the 'reference_npy' setting, or "
          "convert: " + CONVERT_HINT.format(to=REFERENCE_NPY))


def not_found_error(path, fmt=NPZ, what="cam file"):
  """A FileNotFoundError naming `path`; if the other format's file is there instead, it says so."""
  path = os.fspath(path)
  message = f"{path}: {what} not found"
  ext = EXTENSIONS[check_format(fmt)]
  twin = path[:-len(ext)] + EXTENSIONS[other_format(fmt)] if path.endswith(ext) else None
  if twin and fileio.exists(twin):
    message += (f"; {twin} exists instead, in the {other_format(fmt)} format: "
                f"{format_advice(fmt)}")
  return FileNotFoundError(message)


def _with_extension(path, fmt):
  """`path` with the format's extension appended when missing (as np.save / np.savez do)."""
  path = os.fspath(path)
  ext = EXTENSIONS[check_format(fmt)]
  other = EXTENSIONS[other_format(fmt)]
  if path.endswith(other):
    raise ValueError(f"{path}: a {fmt!r} file must end with {ext}, not {other}")
  return path if path.endswith(ext) else path + ext


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


def save_map_dict(path, table, fmt=NPZ, shape=None):
  """Writes {int key: float32 [H, W]} (a cam dict or a CRF score dict) atomically.

  Args:
    path: output file; the format's extension ('.npz' / '.npy') is appended when missing.
    table: {int key: [H, W] array}; values are stored as float32 (the same values).
    fmt: 'npz' (keys / maps arrays, no pickle) or 'reference_npy' (`np.save` of the pickled
      dict, keys in the table's order: the bytes the reference writes).
    shape: (H, W) for the maps of an empty table in npz (default (0, 0)).

  Returns:
    The path written.
  """
  path = _with_extension(path, fmt)
  table = {int(k): np.ascontiguousarray(v, np.float32) for k, v in table.items()}
  if fmt == REFERENCE_NPY:
    # np.save to a file object writes exactly the bytes np.save(path) would (no '.npy' appended).
    atomic_io.atomic_write(path, lambda f: np.save(f, table, allow_pickle=True), ".npy")
    return path
  keys = sorted(table)
  if keys:
    maps = np.stack([table[k] for k in keys])
  else:
    maps = np.zeros((0,) + tuple(shape or (0, 0)), np.float32)
  keys = np.asarray(keys, np.int64)
  # Uncompressed: the maps barely compress, and reading stays a copy.
  atomic_io.atomic_write(path, lambda f: np.savez(f, keys=keys, maps=maps), ".npz")
  return path


def save_cam_dict(path, norm_cam, labels, fmt=NPZ):
  """Saves an image's cam dict (`make_cam_dict`) atomically.

  Args:
    path: output file; '.npz' ('.npy' for the reference format) is appended when missing.
    norm_cam: [H, W, F] normalised CAMs.
    labels: [F] multi-hot labels; only present classes are stored.
    fmt: 'npz' (default) or 'reference_npy': the reference's pickled dict, readable by its
      `eval.py` (`np.load(path, allow_pickle=True).item()`).

  Returns:
    The path written.
  """
  norm_cam = np.asarray(norm_cam, np.float32)
  return save_map_dict(path, make_cam_dict(norm_cam, labels), fmt, shape=norm_cam.shape[:2])


def read_npz_stack(path, what="cam file", expected=NPZ_EXPECTED):
  """(keys int64 [K] strictly increasing, maps float32 [K, H, W]) of an npz cam / score file.

  Raises:
    FileNotFoundError / `untrusted.UntrustedFileError` (a ValueError) naming the file.
  """
  arrays = untrusted.load_npz_arrays(
      path, names=("keys", "maps"), what=what, expected=expected,
      npy_hint="; " + format_advice(NPZ))
  keys, maps = arrays["keys"], arrays["maps"]
  if keys.ndim != 1 or keys.dtype.kind not in "iu":
    raise untrusted.UntrustedFileError(path, f"'keys' is {keys.dtype} {keys.shape}, not a 1-D "
                                             f"integer array; expected {expected}")
  if maps.ndim != 3 or maps.shape[0] != keys.size or maps.dtype.kind != "f":
    raise untrusted.UntrustedFileError(
        path, f"'maps' is {maps.dtype} {maps.shape}, not float [K, H, W] with K = {keys.size} "
              f"(the number of keys); expected {expected}")
  if keys.size and (keys[0] < 0 or np.any(np.diff(keys) <= 0)):
    raise untrusted.UntrustedFileError(path, f"keys {keys.tolist()} are not distinct, "
                                             f"increasing and >= 0; expected {expected}")
  return keys.astype(np.int64), maps.astype(np.float32, copy=False)


def read_map_dict(path, fmt=NPZ, what="cam file"):
  """{int key: [H, W] array} as stored in a file of format `fmt` (keys not range-checked).

  npz files are read with `np.load(..., allow_pickle=False)`; reference .npy files only through
  the restricted unpickler, and only when fmt is 'reference_npy'.
  """
  if check_format(fmt) == NPZ:
    keys, maps = read_npz_stack(path, what)
    return {int(k): maps[i] for i, k in enumerate(keys.tolist())}
  return untrusted.load_npy_dict(path, key_types=(int, np.integer), what=what,
                                 expected="np.save of a dict {class_idx: float32[H, W]} (the "
                                          "reference's format)")


def load_cam_dict(path, num_fg=NUM_FG, fmt=NPZ):
  """Loads and validates a cam file.

  Args:
    path: a file written by `save_cam_dict` ('.npz'), or with fmt='reference_npy' an '.npy' of
      the reference's format.
    num_fg: the class list's foreground count F (default VOC's 20): keys must be 0..F-1; None:
      any key >= 0 (format conversion).
    fmt: 'npz' (default) or 'reference_npy' (see the module docstring). An '.npy' pickle given as
      npz is refused without being unpickled.

  Returns:
    dict {int class_idx in 0..F-1: float32 [H, W]} (all maps the same shape; may be empty).

  Raises:
    FileNotFoundError: the file does not exist (named).
    ValueError: (`untrusted.UntrustedFileError`, `UnsafeFileError` for a refused global) not a
      readable file of the format, keys outside 0..F-1, or maps that are not equal-shape 2-D
      arrays; always naming the file.
  """
  path = os.fspath(path)
  cam_dict = read_map_dict(path, fmt)
  out = {}
  shape = None
  for key, value in cam_dict.items():
    if (not isinstance(key, (int, np.integer)) or isinstance(key, bool) or key < 0
        or (num_fg is not None and key >= num_fg)):
      keys = f"0..{num_fg - 1} for {num_fg} foreground classes" if num_fg else ">= 0"
      raise ValueError(f"{path}: unknown class index {key!r} in cam dict (keys must be ints "
                       f"{keys}; all keys: {sorted(map(repr, cam_dict))})")
    value = np.asarray(value, np.float32)
    if value.ndim != 2:
      raise ValueError(f"{path}: class {key} map must be [H, W], got shape {value.shape}")
    if shape is not None and value.shape != shape:
      raise ValueError(f"{path}: class maps have different shapes {shape} and {value.shape}")
    shape = value.shape
    out[int(key)] = value
  return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# Import / export of whole directories (the reference's format <-> npz).
# ------------------------------------------------------------------------------------------------


def convert_dir(src, dst, to):
  """Converts every cam / score file of the other format in `src` into format `to` in `dst`.

  The values are kept bit for bit (float32), keys in increasing order. Files already in `dst`
  are kept (an interrupted conversion resumes); each is written atomically.

  Args:
    src: directory of '.npy' files (to='npz': the reference's pickled dicts, read through the
      restricted unpickler) or '.npz' files (to='reference_npy').
    dst: output directory (may be `src`: the two formats have different names).
    to: 'npz' or 'reference_npy'.

  Returns:
    dict(converted=..., kept=..., dst=...).
  """
  src, dst = os.fspath(src), os.fspath(dst)
  frm = other_format(check_format(to))
  if not fileio.isdir(src):
    raise FileNotFoundError(f"{src}: directory not found")
  ext = EXTENSIONS[frm]
  names = sorted(n for n in fileio.listdir(src) if n.endswith(ext))
  if not names:
    raise FileNotFoundError(f"{src}: no {ext} files to convert from the {frm} format")
  fileio.makedirs(dst)
  done = fileio.names_in(dst)
  converted = kept = 0
  for name in names:
    image_id = name[:-len(ext)]
    if file_name(image_id, to) in done:
      kept += 1
      continue
    table = load_cam_dict(os.path.join(src, name), num_fg=None, fmt=frm)
    shape = next(iter(table.values())).shape if table else None
    save_map_dict(file_path(dst, image_id, to), table, to, shape=shape)
    converted += 1
  return dict(converted=converted, kept=kept, dst=dst, to=to)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    from absl import app  # pylint: disable=g-import-not-at-top
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  summary = convert_dir(f.src, f.dst, f.to)
  print(f"{summary['converted']} files written to {summary['dst']} ({summary['to']}), "
        f"{summary['kept']} already there")


def cli():
  """`python -m ppc_jax.data.cam_io --to=npz|reference_npy --src=DIR --dst=DIR`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("to", None, list(FORMATS), "The format to write: npz (ppc_jax's) or "
                    "reference_npy (the reference's pickled dicts); the other one is read.")
  flags.DEFINE_string("src", None, "Directory of cam (or CRF score) files in the other format.")
  flags.DEFINE_string("dst", None, "Output directory (files already there are kept).")
  flags.mark_flags_as_required(["to", "src", "dst"])
  entry.run(main)


if __name__ == "__main__":
  cli()
