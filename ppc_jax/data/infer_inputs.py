"""Multi-scale + flip inference inputs (METHOD 4.1) and ground truth, one record per image.

Per image and scale s (default 0.5, 1.0, 1.5, 2.0), exactly as the reference's
`VOC12ClsDatasetMSF`: PIL bicubic resize of the RGB image to (round(W * s), round(H * s)) with
Python's round (halves to even: 187.5 -> 188, 562.5 -> 562), the reference normalisation
(float64, then float32), and the horizontally flipped copy right after the original.

Shapes and recompiles. CAM values must equal unpadded inference: PCM normalises affinities over
*every* position of the feature map, so zero padding would change the refined CAM of every pixel,
not only near the border (and convolutions near the border too). The default is therefore exact
shapes: each scale's array has the scaled image's own size and the model side compiles once per
distinct (Hs, Ws). VOC has few distinct image sizes (most images are 500x375 or 375x500), so the
compile cost is paid a few dozen times per data set, then cached. `pad_multiple > 0` instead pads
each scale (bottom and right, zeros = the mean colour after normalisation) up to multiples of that
size, with the valid size returned for cropping: far fewer shapes, but CAMs then differ from the
reference's; use it for quick looks only.

Record (a dict) per image:
  id:            str
  index:         int, position in the source
  orig_size:     (H, W) of the original image
  image:         uint8 [H, W, 3] the original RGB image (for overlays / CRF)
  labels:        float32 [20] multi-hot
  scale_factors: tuple of the scales
  scales:        list over scales of float32 [F, Hp, Wp, 3], F = 2 (original, flipped) or 1
  valid_sizes:   list over scales of (Hs, Ws): the unpadded size (= (Hp, Wp) unless padding).
                 The flipped copy is padded on the right as well, so for both copies the valid
                 region is [:Hs, :Ws]; crop it, then un-flip the flipped one.
  gt:            uint8 [H, W] mask (0..20, 255 = void), with with_gt=True
The model side can run all F inputs of a scale as one batch, and batch images whose
`shape_key(record)` agree.
"""

import collections
import concurrent.futures

from absl import logging
import numpy as np
import PIL.Image

from ppc_jax.data import voc
from ppc_jax.data import voc_meta

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)


def scaled_size(width, height, scale):
  """The reference's scaled (width, height): Python round of W * s and H * s (halves to even)."""
  return round(width * scale), round(height * scale)


def bucket_size(height, width, multiple):
  """(height, width) rounded up to multiples of `multiple` (identity for multiple <= 1)."""
  if multiple <= 1:
    return height, width
  return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def multiscale_flip(image, scales=DEFAULT_SCALES, flip=True, pad_multiple=0):
  """The reference's multi-scale (+ flip) inputs of one image.

  Args:
    image: RGB PIL image (decoded).
    scales: scale factors.
    flip: add the horizontally flipped copy after the original.
    pad_multiple: 0 = exact shapes; > 1 pads each scale up to multiples of it (see module doc).

  Returns:
    (arrays, valid_sizes): lists over scales of float32 [F, Hp, Wp, 3] and (Hs, Ws).
  """
  width, height = image.size
  arrays, valid = [], []
  for s in scales:
    w, h = scaled_size(width, height, s)
    if w < 1 or h < 1:
      raise ValueError(f"scale {s} of a {width}x{height} image gives an empty image")
    # PIL returns a copy for an unchanged size, as in the reference at scale 1.0.
    x = voc_meta.normalize(np.asarray(image.resize((w, h), resample=PIL.Image.BICUBIC)))
    views = [x, x[:, ::-1]] if flip else [x]
    hp, wp = bucket_size(h, w, pad_multiple)
    stack = np.zeros((len(views), hp, wp, 3), np.float32)
    for k, v in enumerate(views):
      stack[k, :h, :w] = v
    arrays.append(stack)
    valid.append((h, w))
  return arrays, valid


def shape_key(record):
  """Hashable key of a record's input shapes: records with equal keys can be batched together."""
  return tuple(a.shape[1:3] for a in record["scales"])


def infer_source(voc_root, split="train", *, with_gt=True, mask_dir=voc.MASK_DIR,
                 skip_bad=False, max_images=0, cls_labels=None):
  """VOCSource for inference/evaluation: ground truth from SegmentationClass by default (the
  reference evaluates seeds against VOC2012/SegmentationClass on train)."""
  return voc.VOCSource(voc_root, split, need_masks=with_gt, mask_dir=mask_dir if with_gt else None,
                       skip_bad=skip_bad, max_images=max_images, cls_labels=cls_labels)


def _load(source, index, scales, flip, pad_multiple, with_gt):
  image = source.image_pil(index)
  record = dict(id=source.ids[index], index=index, orig_size=(image.size[1], image.size[0]),
                image=np.asarray(image), labels=source.labels[index],
                scale_factors=tuple(scales))
  if with_gt:
    gt = source.mask(index)
    if gt.shape != record["orig_size"]:
      raise voc.DataError(source.mask_paths[index],
                          f"mask is {gt.shape[1]}x{gt.shape[0]} (WxH); expected the image's "
                          f"{image.size[0]}x{image.size[1]}")
    record["gt"] = gt
  record["scales"], record["valid_sizes"] = multiscale_flip(image, scales, flip, pad_multiple)
  return record


def iterate(source, *, scales=DEFAULT_SCALES, flip=True, with_gt=True, pad_multiple=0,
            num_threads=2, prefetch=4, process_index=0, process_count=1, skip_bad=None):
  """Yields one record per image (see the module docstring), in source order.

  Decoding and resizing run in `num_threads` host threads (PIL releases the GIL), `prefetch`
  images ahead, so they overlap the accelerator's work.

  Args:
    source: a VOCSource (e.g. `infer_source(...)`).
    scales, flip, pad_multiple: see `multiscale_flip`.
    with_gt: load and check the ground-truth masks (the source must have mask paths).
    num_threads, prefetch: host parallelism and lookahead.
    process_index, process_count: this process reads images process_index, +process_count, ...
    skip_bad: skip unreadable images with a counted warning (default: source.skip_bad); the
      summary is logged when the generator ends.

  Raises:
    voc.DataError naming the file, unless skipping.
  """
  skip = source.skip_bad if skip_bad is None else skip_bad
  indices = range(process_index, source.num_examples, process_count)
  skipped = 0
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    pending = collections.deque()
    it = iter(indices)

    def fill():
      while len(pending) < max(1, prefetch):
        i = next(it, None)
        if i is None:
          return
        pending.append(pool.submit(_load, source, i, scales, flip, pad_multiple, with_gt))

    fill()
    while pending:
      future = pending.popleft()
      fill()
      try:
        record = future.result()
      except voc.DataError as e:
        if not skip:
          for f in pending:
            f.cancel()
          raise
        source.bad.add(e)
        skipped += 1
        continue
      yield record
  if skipped:
    logging.warning("inference inputs: %d images skipped; %s", skipped, source.bad.summary())
