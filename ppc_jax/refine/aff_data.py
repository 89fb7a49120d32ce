"""AffinityNet training input (stage 2): images with la/ha CRF labels, as the reference's
`VOC12AffDataset` under `aff_train.py` (METHOD 4.3 and 11.9).

Batch (numpy, this process's rows of the global batch):
  image:     float32 [b, S, S, 3]    ImageNet-normalised crop, S = crop_size
  aff_label: uint8   [b, S/8, S/8]   affinity label map: 0 = confident background, 1.. = the
                                      position of the class among the image's CRF channels,
                                      255 = ignored (see `affinity_labels.label_map_from_crf`)
The pair labels (bg / fg / neg within the radius) are computed from `aff_label` inside the jitted
step (`ppc_jax.refine.affinity_loss`), so the host ships 1/64 of the pixels.

Per example, in the reference's order (its transform lists zipped: jitter; asarray; joint crop with
normalise; joint flip with 8x8 average pooling of the scores):
  1. ColorJitter(0.3, 0.3, 0.3, 0.1) on the PIL image (no random resize in this stage).
  2. The uint8 pixels and the la and ha CRF score stacks are concatenated (float32) and cut by the
     reference RandomCrop into a zero float32 container: the padding is 0 in *pixel* units, so it
     is -mean/std after normalising (unlike stage 1, which pads after normalising), and 0 in every
     score channel (so `label_map_from_crf` marks it ignored).
  3. Normalise in float32 (the container is float32, so numpy computes x / 255 - mean in float32).
  4. Horizontal flip of the container, p = 0.5.
  5. The score channels are average-pooled 8x8 and turned into the label map.
The random draws come from the stage-1 mechanism (`augment.draw_params`, keyed by (seed, epoch,
position)), and the data order, process sharding and resuming are stage 1's (`pipeline`), so a
resumed run sees exactly the batches an uninterrupted run sees.

CRF files: `<la_dir>/<id>.npz` and `<ha_dir>/<id>.npz`, the score dicts {0: background, k + 1:
class k} of `ppc_jax.refine.crf_labels` in the cam files' npz format (`cam_io`: keys + maps, read
with allow_pickle=False). Where `<id>.npz` is missing, a `<id>.npy` holding a plain [K, H, W]
float array (wseg's `aff_prepare.py`) is read as well (no pickle in it). The reference's pickled
dicts (SEAM's infer) are read only when asked (`AffSource(..., crf_format='reference_npy')`),
through the restricted unpickler (`ppc_jax.untrusted`), or after converting them
(`python -m ppc_jax.data.cam_io --to=npz ...`). la and ha must hold the same keys and the image's
size, else a `voc.DataError` names the file.
"""

import os

import numpy as np
import tensorflow as tf

from ppc_jax import fileio
from ppc_jax import untrusted
from ppc_jax.data import augment
from ppc_jax.data import pipeline
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.refine import affinity_labels
from ppc_jax.data import cam_io

LABEL_STRIDE = 8  # the backbone's output stride: labels live on the feature grid


_REFERENCE_DICT = "np.save of a dict {0: background, k + 1: class k} of float32 [H, W]"


def _read_npy_scores(path, num_fg, allow_reference_dict):
  """(float array [K, H, W], keys or None) of an .npy CRF file: a plain array, or (only when
  allowed) the reference's pickled dict through the restricted unpickler."""
  with fileio.open(path, "rb") as f:
    head = f.read(6)
  if head != untrusted.NPY_MAGIC:
    raise ValueError("not a .npy file")
  try:
    return untrusted.load_npy_array(path), None
  except untrusted.PickledArrayError:  # an object array: the reference's pickled dict
    if not allow_reference_dict:
      raise ValueError("a pickled dict (the reference's format), read only when asked for: "
                       "AffSource(crf_format='reference_npy'), or convert the directory once: "
                       + cam_io.CONVERT_HINT.format(to=cam_io.NPZ)) from None
  scores = untrusted.load_npy_dict(path, key_types=(int, np.integer), what="CRF score file",
                                   expected=_REFERENCE_DICT)
  keys = tuple(sorted(int(k) for k in scores))
  if any(not 0 <= k <= num_fg for k in keys):
    raise ValueError(f"keys {list(keys)} outside 0..{num_fg}")
  # The reference stacks `dict.values()` in insertion order, which is increasing key order in
  # every file it writes; sorting makes that explicit.
  return np.stack([np.asarray(scores[k], np.float32) for k in keys]), keys


def load_crf_scores(path, num_fg, fmt=cam_io.NPZ):
  """The score stack of one CRF file: float32 [H, W, K] and its keys (dict files) or None.

  Args:
    path: an `.npz` file (`crf.save_scores`: keys [K] + maps [K, H, W]); or an `.npy` file: a
      float array [K, H, W] (wseg), or with fmt='reference_npy' also np.save of a pickled dict
      {0: bg, k + 1: class k} (the reference), read through the restricted unpickler.
    num_fg: foreground classes of the data set (keys must be 0..num_fg).
    fmt: 'npz' or 'reference_npy': only 'reference_npy' admits the pickled dicts of an `.npy`
      (which reader a path gets follows its extension).

  Raises:
    voc.DataError naming the file: missing, unreadable, wrong keys or shapes.
  """
  path = os.fspath(path)
  if not fileio.exists(path):
    # Names the other format's file when that one is there instead.
    found = str(cam_io.not_found_error(path, fmt, "CRF score file"))[len(path) + 2:]
    raise voc.DataError(path, found + " (run `python -m ppc_jax.refine.crf_labels` on the stage-1 "
                        "CAMs first)", kind="missing CRF file")
  try:
    if path.endswith(cam_io.EXTENSIONS[cam_io.NPZ]):
      keys, array = cam_io.read_npz_stack(path, "CRF score file")
      keys = tuple(keys.tolist())
      if any(not 0 <= k <= num_fg for k in keys):
        raise ValueError(f"keys {list(keys)} outside 0..{num_fg}")
    else:
      reference = cam_io.check_format(fmt) == cam_io.REFERENCE_NPY
      array, keys = _read_npy_scores(path, num_fg, reference)
  except (OSError, ValueError, EOFError) as e:
    problem = str(e)  # untrusted's messages already start with the path
    problem = problem[len(path) + 2:] if problem.startswith(path + ": ") else problem
    raise voc.DataError(path, f"unreadable CRF score file: {problem}",
                        kind="bad CRF file") from None
  if array.ndim != 3 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.floating):
    raise voc.DataError(path, f"expected float scores [K, H, W], got {array.dtype} "
                              f"{array.shape}", kind="bad CRF file")
  return np.ascontiguousarray(np.moveaxis(array.astype(np.float32), 0, -1)), keys


def crf_path(directory, image_id, fmt=cam_io.NPZ):
  """The CRF file of an image: `<id>.npz`; for 'npz', a `<id>.npy` when only that exists (wseg's
  plain arrays; pickled dicts in it are refused by `load_crf_scores`); `<id>.npy` for
  'reference_npy'."""
  path = cam_io.file_path(directory, image_id, fmt)
  if fmt == cam_io.NPZ and not fileio.exists(path):
    npy = cam_io.file_path(directory, image_id, cam_io.REFERENCE_NPY)
    if fileio.exists(npy):
      return npy
  return path


class AffSource:
  """A VOC split with its la and ha CRF score directories."""

  def __init__(self, voc_source, la_dir, ha_dir, crf_format=cam_io.NPZ):
    """crf_format: 'npz' (crf_labels' files) or 'reference_npy' (the reference's `.npy` files,
    pickled dicts read through the restricted unpickler); see the module docstring."""
    self.crf_format = cam_io.check_format(crf_format)
    for d, what in ((la_dir, "la"), (ha_dir, "ha")):
      if not d or not fileio.isdir(d):
        raise voc.DataError(d or "<empty>", f"the {what} CRF directory does not exist (config."
                                            f"aff.{what}_dir)", kind="missing CRF directory")
    self.voc = voc_source
    self.la_dir = la_dir
    self.ha_dir = ha_dir
    self.bad = voc_source.bad

  @property
  def num_examples(self):
    return self.voc.num_examples

  @property
  def ids(self):
    return self.voc.ids

  @property
  def list_path(self):
    return self.voc.list_path

  def scores(self, i):
    """(la, ha) float32 [H, W, K] score stacks of example i (same keys, same shape)."""
    image_id = self.voc.ids[i]
    la_path = crf_path(self.la_dir, image_id, self.crf_format)
    ha_path = crf_path(self.ha_dir, image_id, self.crf_format)
    num_fg = self.voc.classes.num_fg
    la, la_keys = load_crf_scores(la_path, num_fg, self.crf_format)
    ha, ha_keys = load_crf_scores(ha_path, num_fg, self.crf_format)
    if la.shape != ha.shape or la_keys != ha_keys:
      raise voc.DataError(ha_path, f"la and ha CRF files differ: {la_path} has keys "
                                   f"{la_keys} shape {la.shape}, this one keys {ha_keys} shape "
                                   f"{ha.shape}", kind="la/ha mismatch")
    return la, ha


def normalize_float32(pixels):
  """float32 [..., 3] pixel values 0..255 -> ImageNet-normalised in float32, as the reference's
  `Normalize` on its float32 crop container."""
  mean = np.asarray(voc_meta.IMAGENET_MEAN, np.float64).astype(np.float32)
  std = np.asarray(voc_meta.IMAGENET_STD, np.float64).astype(np.float32)
  x = pixels.astype(np.float32)
  return ((x / np.float32(255.0) - mean) / std).astype(np.float32)


def make_example(image, la, ha, params, crop_size):
  """Steps 1-5 of the module docstring for one example.

  Args:
    image: RGB PIL image.
    la, ha: float32 [H, W, K] CRF score stacks of the same size as the image.
    params: `augment.decode_params(...)` draws (its target_long must be None).
    crop_size: S, a multiple of 8.

  Returns:
    (image float32 [S, S, 3], aff_label uint8 [S/8, S/8]).
  """
  image = augment.color_jitter_pil(image, params["factors"], params["order"])
  pixels = np.asarray(image)
  height, width = pixels.shape[:2]
  k = la.shape[-1]
  joint = np.concatenate([pixels.astype(np.float32), la, ha], axis=-1)
  img_top, img_left, cont_top, cont_left, ch, cw = augment.crop_placement(
      height, width, crop_size, *params["crop_u"])
  container = np.zeros((crop_size, crop_size, joint.shape[-1]), np.float32)
  container[cont_top:cont_top + ch, cont_left:cont_left + cw] = (
      joint[img_top:img_top + ch, img_left:img_left + cw])
  if params["flip"]:
    container = container[:, ::-1]
  out_image = normalize_float32(container[..., :3])
  pooled = affinity_labels.pool_scores(container[..., 3:], LABEL_STRIDE)
  label = affinity_labels.label_map_from_crf(pooled[..., :k], pooled[..., k:])
  return np.ascontiguousarray(out_image), np.ascontiguousarray(label, dtype=np.uint8)


class _AffLoader(pipeline.RefillingLoader):
  """Host function of one example (through tf.numpy_function): errors name the file, and with
  skip_bad a bad example's slot is refilled, as in `pipeline._HostLoader`."""

  def __init__(self, source, crop_size, jitter, hflip, skip_bad=False):
    super().__init__(source, skip_bad)
    self.crop_size = int(crop_size)
    self.jitter = tuple(jitter) if jitter else (0.0, 0.0, 0.0, 0.0)
    self.hflip = bool(hflip)

  def load(self, index, params):
    image = self.source.voc.image_pil(index)
    la, ha = self.source.scores(index)
    if la.shape[:2] != (image.size[1], image.size[0]):
      raise voc.DataError(crf_path(self.source.la_dir, self.source.ids[index],
                                   self.source.crf_format),
                          f"CRF scores are {la.shape[1]}x{la.shape[0]} (WxH); expected the "
                          f"image's {image.size[0]}x{image.size[1]}", kind="CRF size differs")
    return make_example(image, la, ha, params, self.crop_size)

  def __call__(self, index, draws):
    params = augment.decode_params(draws, None, self.jitter, self.hflip)
    return self.load_or_refill(index, params)


def make_aff_iterator(input_config, source, *, start_step=0, process_index=None,
                      process_count=None):
  """Numpy batches {'image', 'aff_label'} from global step `start_step` on.

  Args:
    input_config: `config.input` (batch_size (global), crop_size, jitter, hflip, seed,
      shuffle_buffer, skip_bad, num_parallel_calls, prefetch, threads; resize_long is not used
      here).
    source: an `AffSource`.
    start_step: global step of the first batch (resuming).
    process_index, process_count: default jax.process_index() / jax.process_count().

  Returns:
    `pipeline.TrainIterator` (closes its tf.data iterator on close(); errors name the file).
  """
  cfg = input_config
  crop = int(cfg.crop_size)
  if crop % LABEL_STRIDE:
    raise ValueError(f"config.input.crop_size={crop} must be a multiple of {LABEL_STRIDE} for "
                     "AffinityNet (labels are pooled 8x8)")
  process_index, process_count = pipeline._process_info(process_index, process_count)  # pylint: disable=protected-access
  ds, local_batch, spe = pipeline.index_stream(cfg, source.num_examples, start_step,
                                               process_index, process_count)
  seed = int(cfg.seed)
  loader = _AffLoader(source, crop, cfg.jitter, cfg.hflip, bool(cfg.skip_bad))
  side = crop // LABEL_STRIDE

  def example(index, position, epoch):
    draws = augment.draw_params(augment.example_key(seed, epoch, position))
    image, label = tf.numpy_function(loader, [index, draws], [tf.float32, tf.uint8])
    return {"image": tf.ensure_shape(image, [crop, crop, 3]),
            "aff_label": tf.ensure_shape(label, [side, side])}

  ds = pipeline.batched(ds, cfg, example, local_batch)
  return pipeline.TrainIterator(ds, loader, spe, start_step)
