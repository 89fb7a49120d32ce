r"""Seed / pseudo-mask evaluation: confusion-matrix mIoU and the background-threshold sweep.

Follows the reference `eval.py::do_python_eval` (METHOD 4.3):
  * pixels whose GT is 255 are ignored; TP, P (predicted) and T (ground truth) are accumulated per
    class over the whole split; IoU_c = TP / (T + P - TP + 1e-10); mIoU = mean over all C classes
    (C = 21 for VOC: background + the class list's foreground classes);
  * cam files (cam_dicts): per image, tensor[0] = t, tensor[k + 1] = cam_dict[k] (0 for absent
    classes), prediction = argmax (ties to the lower index, i.e. background first);
  * the curve is t = 0.00, 0.01, ..., 0.59 (60 values) and the reported seed mIoU is its maximum;
  * png inputs are evaluated as they are (no threshold).

The sweep is exact and done in one pass. Per image, the argmax over the stacked tensor depends on
t only through the background channel, so with m = max over the foreground channels and a = their
argmax, the prediction at t is a if m > t else 0 (ties go to background). A pixel is therefore
foreground for exactly the thresholds t_j < m, i.e. for j < k with k = searchsorted(t, m, 'left').
One bincount over (gt, a, k) per image gives a [C, C, T + 1] histogram, and cumulative sums over
k turn it into all T confusion matrices at once.

Usage (voc_root: the VOC2012 directory, or a directory holding VOCdevkit/VOC2012):
  python -m ppc_jax.evaluate --voc_root=data/VOCdevkit/VOC2012 --split=train --cam_dir=CAMS \
      [--type=npz|reference_npy|png] [--out_dir=REPORT_DIR] [--t=0.26] \
      [--baselines [--cls_labels=FILE]] [--classes=SPEC]
--type: npz (default) = ppc_jax's cam files `<id>.npz` (`ppc_jax.data.cam_io`, no pickle);
reference_npy (or npy) = the reference's pickled `<id>.npy` cam_dicts, read through the restricted
unpickler; png = label maps `<id>.png`.
Without --t, cam files are swept over t = 0.00..0.59 and the best mIoU is reported. The class
list (confusion-matrix size, names, valid GT values, cam_dict keys) is `voc.load_classes`: the
--classes spec (as config.input.classes), else `<voc_root>/classes.txt`, else VOC's 20.

numpy only: importing this module does not import JAX (the cam_dict reader is `ppc_jax.data.cam_io`);
report.json, the curve PNG and the printed table are written by `ppc_jax.report`.
"""

import json
import os

import numpy as np
from PIL import Image

from ppc_jax import fileio
from ppc_jax.data import cam_io
from ppc_jax.data.cam_io import load_cam_dict
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

NUM_CLASSES = voc_meta.VOC.num_classes  # 21: the default of the class-count arguments
IGNORE_LABEL = voc_meta.IGNORE_LABEL  # 255
IOU_EPS = 1e-10  # the reference's denominator epsilon
# The reference curve: t = i / 100 for i in range(60), compared in float32 (the tensor's dtype).
SWEEP_THRESHOLDS = tuple(i / 100.0 for i in range(60))
# input_type -> cam file format (cam_io.FORMATS); 'npy', the type's old name, is the reference's.
CAM_INPUT_TYPES = {cam_io.NPZ: cam_io.NPZ, cam_io.REFERENCE_NPY: cam_io.REFERENCE_NPY,
                   "npy": cam_io.REFERENCE_NPY}
INPUT_TYPES = tuple(CAM_INPUT_TYPES) + ("png",)


# ------------------------------------------------------------------------------------------------
# Data access.
# ------------------------------------------------------------------------------------------------


def gt_path(voc_root, img_id):
  """`<VOC2012>/SegmentationClass/<id>.png`, the reference's GT (not SegmentationClassAug)."""
  return os.path.join(voc.resolve_root(voc_root), voc.MASK_DIR, f"{img_id}.png")


def load_gt(voc_root, img_id, classes=voc_meta.VOC):
  """Reads a GT mask: [H, W] uint8 class indices 0..F, 255 = ignore (F = classes.num_fg).

  Raises:
    FileNotFoundError: the mask is missing (named).
    voc.DataError (a ValueError): not a palette / grey PNG, or values outside 0..F, 255.
  """
  path = gt_path(voc_root, img_id)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"GT mask not found for id {img_id!r}: {path}")
  return voc.read_mask(path, classes)


# ------------------------------------------------------------------------------------------------
# Confusion matrices and IoU.
# ------------------------------------------------------------------------------------------------


def confusion_matrix(gt, pred, num_classes=NUM_CLASSES):
  """Pixel confusion matrix of one prediction, ignoring GT 255.

  Args:
    gt: [H, W] ints, 0..num_classes-1 or 255 (ignored).
    pred: [H, W] ints. Values outside 0..num_classes-1 (e.g. 255 in a pseudo-mask) are counted in
      the last column: they add to T of the GT class but to no class's P, as in the reference.

  Returns:
    [num_classes, num_classes + 1] int64, rows = GT class, columns = predicted class (+ 'other').
  """
  gt = np.asarray(gt)
  pred = np.asarray(pred)
  if gt.shape != pred.shape:
    raise ValueError(f"gt shape {gt.shape} != pred shape {pred.shape}")
  keep = gt != IGNORE_LABEL
  g = gt[keep].astype(np.int64)
  if g.size and (g.min() < 0 or g.max() >= num_classes):
    raise ValueError(f"gt values must be 0..{num_classes - 1} or {IGNORE_LABEL}")
  p = pred[keep].astype(np.int64)
  p = np.where((p >= 0) & (p < num_classes), p, num_classes)
  counts = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
  return counts.reshape(num_classes, num_classes + 1)


def iou_from_confusion(conf):
  """Per-class IoU and mIoU of the reference: TP / (T + P - TP + 1e-10), mean over all classes.

  Args:
    conf: [..., C, C + 1] confusion matrices (`confusion_matrix`); leading axes are batched.

  Returns:
    (iou [..., C] float64, miou [...] float64).
  """
  conf = np.asarray(conf, np.int64)
  c = conf.shape[-2]
  tp = np.diagonal(conf[..., :c], axis1=-2, axis2=-1)
  t = conf.sum(axis=-1)  # every non-ignored GT pixel of the class, whatever was predicted
  p = conf[..., :c].sum(axis=-2)
  iou = tp / (t + p - tp + IOU_EPS)
  return iou, iou.mean(axis=-1)


# ------------------------------------------------------------------------------------------------
# The threshold sweep.
# ------------------------------------------------------------------------------------------------


def fg_max_argmax(cam_dict, shape, num_fg=voc_meta.VOC.num_fg):
  """Per-pixel max and argmax (class 1..F) over the reference tensor's foreground channels.

  The reference tensor has 0 in every absent class's channel. Only the lowest-index absent channel
  can matter for the argmax (equal values go to the lowest index), so it stands in for all of them.
  The argmax is a running max over channels in increasing class order with a strict '>' (the
  first maximum wins, like np.argmax); it is several times faster than np.argmax over axis 0.

  Args:
    cam_dict: {class_idx 0..F-1: float32 [H, W]}.
    shape: (H, W) of the maps (also used when the dict is empty).
    num_fg: F, the class list's foreground count (the tensor has F + 1 channels).

  Returns:
    (max [H, W] float32, argmax [H, W] uint8 in 1..F; F <= 254 fits uint8).
  """
  absent = [k for k in range(num_fg) if k not in cam_dict]
  # (class_idx, map or the scalar 0 of the absent channels), in increasing class order.
  channels = sorted([(k, np.asarray(v, np.float32)) for k, v in cam_dict.items()]
                    + ([(absent[0], np.float32(0.0))] if absent else []), key=lambda kv: kv[0])
  k0, v0 = channels[0]
  fg_max = np.broadcast_to(v0, shape).astype(np.float32)  # a fresh copy
  fg_cls = np.full(shape, k0 + 1, np.uint8)
  for k, v in channels[1:]:
    upd = v > fg_max
    np.copyto(fg_max, v, where=upd)
    np.copyto(fg_cls, np.uint8(k + 1), where=upd)
  return fg_max, fg_cls


class ThresholdSweep:
  """Accumulates the confusion matrices of all thresholds over a dataset in one pass."""

  def __init__(self, thresholds=SWEEP_THRESHOLDS, num_classes=NUM_CLASSES):
    """Args:
      thresholds: background scores t, ascending (compared in float32 like the reference).
      num_classes: C, the class list's count with background (21 for VOC).
    """
    t32 = np.asarray(thresholds, np.float64).astype(np.float32)
    if t32.ndim != 1 or t32.size == 0 or np.any(np.diff(t32) <= 0):
      raise ValueError(f"thresholds must be a non-empty strictly increasing list, got {thresholds}")
    self.thresholds = t32
    self.num_classes = num_classes
    self._nk = t32.size + 1
    # Thresholds on a (near-)uniform grid, like the default 0.00..0.59 after float32 rounding,
    # allow an O(1) guess of the count per pixel; the fix-up in `_count_below` makes it exact
    # whatever the grid, the tolerance only bounds how many fix-up passes run.
    steps = np.diff(t32.astype(np.float64))
    self._uniform = t32.size > 1 and bool(np.ptp(steps) <= 1e-3 * steps.mean())
    self._hist = np.zeros(num_classes * num_classes * self._nk, np.int64)
    self.num_images = 0

  def _count_below(self, m):
    """Exact number of thresholds strictly below each value of m (float32 [N] -> intp [N]).

    Equals np.searchsorted(thresholds, m, side='left') for non-NaN m (inf allowed), ~3x faster
    on a uniform grid: an O(1) guess from the grid, then a fix-up with exact float32 comparisons.
    """
    thr = self.thresholds
    n = thr.size
    if not self._uniform:
      return np.searchsorted(thr, m, side="left")
    inv_step = np.float32((n - 1) / (float(thr[-1]) - float(thr[0])))
    guess = (m - thr[0]) * inv_step
    np.clip(guess, -1.0, n, out=guess)  # also tames +-inf before the integer cast
    k = np.floor(guess).astype(np.intp)
    k += 1
    np.clip(k, 0, n, out=k)
    # The guess can be off by one from float rounding (and m == t_j must count as not below):
    # move k until thr[k - 1] < m <= thr[k]; in practice this loop runs once or twice.
    padded = np.concatenate([thr[:1], thr, thr[-1:]])  # padded[i] = thr[i - 1]; ends masked
    while True:
      down = (k > 0) & (padded[k] >= m)  # thr[k - 1] is not below m: too many counted
      up = (k < n) & (padded[k + 1] < m)  # thr[k] is below m: too few counted
      if not (down.any() or up.any()):
        return k
      k -= down
      k += up

  def image_histogram(self, gt, fg_max, fg_cls):
    """One image's (gt, argmax class, #thresholds below max) histogram; pure, thread-safe.

    Args:
      gt: [H, W] GT (0..C-1, 255 ignored).
      fg_max: [H, W] float32 max foreground score (no NaN).
      fg_cls: [H, W] class index (1..C-1) of that max.

    Returns:
      int64 [C * C * (T + 1)] counts, to pass to `add_histogram`.
    """
    # k = number of thresholds t_j < m, i.e. the pixel is foreground exactly for j < k (strict
    # '>' of the reference argmax tie rule: m == t goes to background).
    k = self._count_below(np.asarray(fg_max, np.float32).reshape(-1))
    gt = np.asarray(gt).reshape(-1)
    flat = gt.astype(np.intp)
    flat *= self.num_classes
    flat += np.asarray(fg_cls).reshape(-1)
    flat *= self._nk
    flat += k
    # Ignored pixels go to one spare bin past the end instead of being gathered out (cheaper).
    flat[gt == IGNORE_LABEL] = self._hist.size
    return np.bincount(flat, minlength=self._hist.size + 1)[:-1]

  def add_histogram(self, hist):
    """Accumulates one image's `image_histogram`."""
    self._hist += hist
    self.num_images += 1

  def add(self, gt, fg_max, fg_cls):
    """Adds one image (arguments as `image_histogram`)."""
    self.add_histogram(self.image_histogram(gt, fg_max, fg_cls))

  def add_cam_dict(self, gt, cam_dict):
    """Adds one image given its cam_dict (shapes must already be checked)."""
    fg_max, fg_cls = fg_max_argmax(cam_dict, gt.shape)
    self.add(gt, fg_max, fg_cls)

  def confusions(self):
    """[T, C, C + 1] int64 confusion matrices, one per threshold."""
    c = self.num_classes
    hist = self._hist.reshape(c, c, self._nk)
    # cum[g, a, j] = pixels with k <= j: background at threshold j.
    cum = np.cumsum(hist, axis=-1)[..., :-1]
    total = hist.sum(axis=-1, keepdims=True)
    fg = total - cum  # pixels with k > j: predicted a at threshold j
    conf = np.zeros((self.thresholds.size, c, c + 1), np.int64)
    conf[:, :, :c] = np.moveaxis(fg, -1, 0)
    # fg_cls is never 0, so column 0 of `fg` is empty and this is all of the background column.
    conf[:, :, 0] += np.moveaxis(cum.sum(axis=1), -1, 0)
    return conf


# ------------------------------------------------------------------------------------------------
# Dataset evaluation.
# ------------------------------------------------------------------------------------------------


def _result(conf_per_t, thresholds, num_images, input_type, names):
  iou, miou = iou_from_confusion(conf_per_t)
  best = int(np.argmax(miou))  # first maximum: the lowest threshold among ties
  # Not in the reference: the mean over the classes that occur in the GT. On a data set that
  # uses only some classes (the synthetic one) the all-class mean is dominated by absent classes.
  # T does not depend on t, so this ranks thresholds exactly as mIoU does.
  in_gt = conf_per_t[best].sum(axis=-1) > 0
  out = {
      "input_type": input_type,
      "num_images": int(num_images),
      "miou": float(miou[best]),
      "per_class_iou": {n: float(v) for n, v in zip(names, iou[best])},
      "miou_gt_classes": float(iou[best][in_gt].mean()) if in_gt.any() else 0.0,
      "num_gt_classes": int(in_gt.sum()),
      "gt_classes": [n for n, present in zip(names, in_gt) if present],
      "confusion": conf_per_t[best].tolist(),
  }
  if thresholds is not None:
    out["best_threshold"] = float(np.round(float(thresholds[best]), 6))
    out["thresholds"] = [float(np.round(float(t), 6)) for t in thresholds]
    out["miou_curve"] = [float(v) for v in miou]
  return out


def _check_shape(pred_shape, gt, pred_file, voc_root, img_id):
  if tuple(pred_shape) != gt.shape:
    raise ValueError(f"shape mismatch: {pred_file} has shape {tuple(pred_shape)} but GT "
                     f"{gt_path(voc_root, img_id)} has shape {gt.shape}")


def _map_in_order(fn, items, num_workers, progress=None):
  """Yields fn(item) in order, computed by a thread pool with a bounded number in flight.

  Threads pay off because file decoding, pickle loading and the numpy passes release the GIL.
  An exception is raised when its item's turn comes, so the first failing id (in list order) is
  the one reported, as in a plain loop.
  """
  if num_workers <= 1:
    for item in items:
      yield fn(item)
      if progress is not None:
        progress.update(1)
    return
  import collections  # pylint: disable=g-import-not-at-top
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  with futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    it = iter(items)
    try:
      for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 2 * num_workers:
          yield pending.popleft().result()
          if progress is not None:
            progress.update(1)
      while pending:
        yield pending.popleft().result()
        if progress is not None:
          progress.update(1)
    finally:
      for f in pending:
        f.cancel()


def inference_summary(cam_dir):
  """What `ppc_jax.seeds.infer` ran to make `cam_dir` (its summary.json beside the directory), or None.

  Returns:
    {'mode', 'cam_key', 'scales', 'flip', 'checkpoint_step'} as recorded (missing keys are
    omitted), or None when the directory was not written by ppc_jax.seeds.infer.
  """
  path = os.path.join(fileio.dirname(fileio.abspath(cam_dir)), "summary.json")
  if not fileio.isfile(path):
    return None
  try:
    with fileio.open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable inference summary ({e})") from e
  if not isinstance(summary, dict):
    raise ValueError(f"{path}: expected a JSON object (ppc_jax.seeds.infer's summary)")
  keys = ("mode", "cam_key", "scales", "flip", "checkpoint_step")
  return {k: summary[k] for k in keys if k in summary}


def evaluate_cam_dir(voc_root, split, cam_dir, *, input_type="npz", thresholds=SWEEP_THRESHOLDS,
                     ids=None, num_workers=None, progress=False, classes=None):
  """Evaluates a directory of cam files (threshold sweep) or label PNGs against VOC GT.

  Args:
    voc_root: the VOC2012 directory (or a directory holding `VOCdevkit/VOC2012`).
    split: split list name under `ImageSets/Segmentation` (e.g. 'train'), used when ids is None.
    cam_dir: directory of `<id>.npz` cam files, `<id>.npy` reference cam_dicts or `<id>.png` label
      maps.
    input_type: 'npz' (ppc_jax's cam files, `cam_io`), 'reference_npy' (or 'npy': the
      reference's pickled cam_dicts, read through the restricted unpickler) or 'png'.
    thresholds: background thresholds of the sweep (cam files only); default t = 0.00..0.59.
    ids: optional explicit id list (overrides the split list).
    num_workers: reader / compute threads; default min(4, cpu count).
    progress: show a tqdm bar.
    classes: the class list (a ClassList or a `voc.load_classes` spec); None: voc_root's
      classes.txt, else VOC's 20.

  Returns:
    A result dict: input_type ('npz', 'reference_npy' or 'png'), num_images, miou (the
    reference's mean over all C classes; best over the curve for cam files), per_class_iou
    {name: IoU} at the best threshold, miou_gt_classes
    (mean over the num_gt_classes classes present in the GT; not a reference number), confusion
    [C][C + 1] (rows GT, columns prediction + 'other') at the best threshold, and for cam files
    thresholds, miou_curve and best_threshold, and 'inference' (`inference_summary`: the CAM mode
    that made the directory) when ppc_jax.seeds.infer wrote it. IoUs are fractions (x100 for %). C = 21
    for VOC.

  Raises:
    FileNotFoundError: a cam / png / GT file is missing (named).
    ValueError: shape mismatch between prediction and GT (both named), bad cam dict, bad values.
  """
  if input_type not in INPUT_TYPES:
    raise ValueError(f"input_type must be one of {list(INPUT_TYPES)}, got {input_type!r}")
  classes = voc.load_classes("" if classes is None else classes, voc_root)
  names = classes.names
  ids = list(ids) if ids is not None else voc.split_ids(voc_root, split)
  if num_workers is None:
    num_workers = min(4, os.cpu_count() or 1)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(ids), desc=f"eval {input_type}")

  if input_type in CAM_INPUT_TYPES:
    cam_format = CAM_INPUT_TYPES[input_type]
    sweep = ThresholdSweep(thresholds, classes.num_classes)

    def one_npy(img_id):
      cam_file = cam_io.file_path(cam_dir, img_id, cam_format)
      if not fileio.isfile(cam_file):
        # not_found_error names the other format's file if that one is there instead.
        raise FileNotFoundError(f"cam file missing for id {img_id!r}: "
                                f"{cam_io.not_found_error(cam_file, cam_format)}")
      gt = load_gt(voc_root, img_id, classes)
      cam_dict = load_cam_dict(cam_file, num_fg=classes.num_fg, fmt=cam_format)
      if cam_dict:
        _check_shape(next(iter(cam_dict.values())).shape, gt, cam_file, voc_root, img_id)
      for key, value in cam_dict.items():
        if np.isnan(value).any():
          raise ValueError(f"{cam_file}: class {key} map holds NaN")
      return sweep.image_histogram(gt, *fg_max_argmax(cam_dict, gt.shape, classes.num_fg))

    for hist in _map_in_order(one_npy, ids, num_workers, bar):
      sweep.add_histogram(hist)
    if bar is not None:
      bar.close()
    result = _result(sweep.confusions(), sweep.thresholds, sweep.num_images, cam_format, names)
    inference = inference_summary(cam_dir)
    if inference is not None:
      result["inference"] = inference
    return result

  def one_png(img_id):
    png_file = os.path.join(cam_dir, f"{img_id}.png")
    if not fileio.isfile(png_file):
      raise FileNotFoundError(f"prediction png missing for id {img_id!r}: {png_file}")
    gt = load_gt(voc_root, img_id, classes)
    with Image.open(fileio.readable(png_file)) as img:
      mode = img.mode
      pred = np.array(img)
    if pred.ndim != 2:
      raise ValueError(f"prediction {png_file} must be a single-channel index PNG, got array "
                       f"shape {pred.shape} (mode {mode!r})")
    _check_shape(pred.shape, gt, png_file, voc_root, img_id)
    return confusion_matrix(gt, pred, classes.num_classes)

  conf = np.zeros((classes.num_classes, classes.num_classes + 1), np.int64)
  for c in _map_in_order(one_png, ids, num_workers, bar):
    conf += c
  if bar is not None:
    bar.close()
  return _result(conf[None], None, len(ids), "png", names)


# What each trivial baseline of `evaluate_baselines` predicts, for reports.
BASELINE_DESCRIPTIONS = {
    "all_background": "every pixel background",
    "painted": "the whole image painted with its lowest-index present class",
}


def evaluate_baselines(voc_root, split, *, image_labels=None, thresholds=SWEEP_THRESHOLDS,
                       ids=None, num_workers=None, classes=None):
  """Trivial baselines, run through the same sweep as real cam_dicts.

  * 'all_background': an empty cam_dict per image (every channel 0), so every pixel is background
    for every t >= 0.
  * 'painted': a cam_dict of all-ones maps for every present class. The argmax ties go to the
    lowest index, so at every threshold t < 1 the whole image is painted with the lowest-index
    present class (background when the image has no label). Uses only image-level labels.

  Args:
    voc_root: the VOC2012 directory (or a directory holding `VOCdevkit/VOC2012`).
    split: split list name.
    image_labels: optional {id: [F] multi-hot} dict, or the path of a reference cls_labels.npy.
      Default: the classes present in each GT mask (`voc.labels_from_mask`, 255 ignored), which
      is how image-level labels are made from masks.
    thresholds: the sweep thresholds.
    ids: optional explicit id list.
    num_workers: threads; default min(4, cpu count).
    classes: the class list, as for `evaluate_cam_dir`.

  Returns:
    {'all_background': result, 'painted': result}, results as `evaluate_cam_dir`'s.
  """
  classes = voc.load_classes("" if classes is None else classes, voc_root)
  names = classes.names
  ids = list(ids) if ids is not None else voc.split_ids(voc_root, split)
  if num_workers is None:
    num_workers = min(4, os.cpu_count() or 1)
  labels_path = None
  if isinstance(image_labels, (str, os.PathLike)):
    labels_path = os.fspath(image_labels)
    image_labels = voc.load_cls_labels(labels_path)
  bg_sweep = ThresholdSweep(thresholds, classes.num_classes)
  paint_sweep = ThresholdSweep(thresholds, classes.num_classes)

  def one(img_id):
    gt = load_gt(voc_root, img_id, classes)
    if image_labels is None:
      labels = voc.labels_from_mask(gt, classes)
    else:
      where = labels_path or "image_labels"
      if img_id not in image_labels:
        raise voc.DataError(where, f"no image-level label for id {img_id!r}")
      labels = voc.check_label(image_labels[img_id], img_id, where, classes)
    bg = bg_sweep.image_histogram(gt, *fg_max_argmax({}, gt.shape, classes.num_fg))
    ones = np.ones(gt.shape, np.float32)  # one read-only map shared by every present class
    painted = {int(j): ones for j in np.flatnonzero(labels > 1e-5)}
    paint = paint_sweep.image_histogram(gt, *fg_max_argmax(painted, gt.shape, classes.num_fg))
    return bg, paint

  for bg, paint in _map_in_order(one, ids, num_workers):
    bg_sweep.add_histogram(bg)
    paint_sweep.add_histogram(paint)
  return {
      "all_background": _result(bg_sweep.confusions(), bg_sweep.thresholds, len(ids), "npy",
                                names),
      "painted": _result(paint_sweep.confusions(), paint_sweep.thresholds, len(ids), "npy",
                         names),
  }


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ppc_jax import report  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  thresholds = SWEEP_THRESHOLDS if f.t is None else (f.t,)
  result = evaluate_cam_dir(f.voc_root, f.split, f.cam_dir, input_type=f.type,
                            thresholds=thresholds, progress=True, classes=f.classes)
  print(report.format_result(result))
  baselines = None
  if f.baselines:
    baselines = evaluate_baselines(f.voc_root, f.split, thresholds=thresholds,
                                   image_labels=f.cls_labels, classes=f.classes)
    for name, r in baselines.items():
      print(f"baseline {name}: mIoU {100 * r['miou']:.3f}%")
  if f.out_dir:
    paths = report.write_report(f.out_dir, result, split=f.split, cam_dir=f.cam_dir,
                                baselines=baselines)
    print("wrote", ", ".join(paths.values()))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("voc_root", None, "The VOC2012 directory (or one holding "
                      "VOCdevkit/VOC2012).", required=True)
  flags.DEFINE_string("split", "train", "Split list under ImageSets/Segmentation.")
  flags.DEFINE_string("cam_dir", None, "Directory of <id>.npz cam files (<id>.npy reference "
                      "cam_dicts with --type=reference_npy) or <id>.png masks.", required=True)
  flags.DEFINE_enum("type", cam_io.NPZ, list(INPUT_TYPES),
                    "Prediction file type: npz (ppc_jax's cam files), reference_npy or npy (the "
                    "reference's pickled cam_dicts, read through the restricted unpickler), png.")
  flags.DEFINE_float("t", None, "Single background threshold for cam files (default: the "
                     "0.00..0.59 sweep).")
  flags.DEFINE_string("out_dir", None, "Where to write report.json and miou_curve.png.")
  flags.DEFINE_bool("baselines", False, "Also evaluate the all-background and painted baselines.")
  flags.DEFINE_string("cls_labels", None, "cls_labels.npy for the painted baseline (default: "
                      "labels read off the GT masks).")
  flags.DEFINE_string("classes", "", "The class list, as config.input.classes: '' = "
                      "<voc_root>/classes.txt if present, else VOC's 20; 'voc'; a classes file "
                      "(.txt); or comma-separated foreground names.")


def cli():
  """The console script `ppc-evaluate` (pyproject.toml): `python -m ppc_jax.evaluate`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
