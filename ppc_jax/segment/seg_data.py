"""Segmentation training input (stage 3): images with pseudo-mask PNGs, the reference's 'weak'
augmentation (`seg_augment`), as a deterministic, per-process-sharded, resumable tf.data pipeline.

Batch (numpy, this process's rows of the global batch):
  image: float32 [b, S, S, 3]  ImageNet-normalised crop, S = config.input.crop_size (448)
  mask:  uint8   [b, S, S]     class indices, 255 = ignored (padding and the masks' own void)

Pseudo-masks: `<config.segment.mask_dir>/<id>.png` for every id of `config.input.split`
(train_aug), palette or grey-level PNGs of class indices (what `ppc_jax.refine.rw_infer` and
`ppc_jax.seeds.infer` write; values 0..F and 255, checked); the images come from
`config.input.source` (the directory tree or the TFDS set). The data order, process sharding and
resume are stage 1's (`ppc_jax.data.pipeline`): a resumed run sees the batches of an
uninterrupted one.
"""


import tensorflow as tf

from ppc_jax import fileio
from ppc_jax.data import augment
from ppc_jax.data import pipeline
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.segment import seg_augment


def seg_source(config):
  """The training split (`sources.open_source`: the directory tree or the TFDS set, per
  `config.input.source`) with `config.segment.mask_dir`'s PNG files as its masks."""
  mask_dir = config.segment.mask_dir
  if not mask_dir or not fileio.isdir(mask_dir):
    raise voc.DataError(mask_dir or "<empty>", "the pseudo-mask directory does not exist "
                        "(config.segment.mask_dir); expected <id>.png per image of "
                        f"{config.input.split}", kind="missing pseudo-mask directory")
  return sources.open_source(config.input, with_saliency=False, labels="none",
                              mask_dir=fileio.abspath(mask_dir), need_masks=True)


class _SegLoader(pipeline.RefillingLoader):
  """Host function of one example (through tf.numpy_function): errors name the file, and with
  skip_bad a bad example's slot is refilled, as in `pipeline._HostLoader`."""

  def __init__(self, source, crop_size, scale_range, hsv, hflip, skip_bad=False):
    super().__init__(source, skip_bad)
    self.crop_size = int(crop_size)
    self.scale_range = tuple(scale_range) if scale_range else ()
    self.hsv = tuple(int(v) for v in hsv) if hsv else (0, 0, 0)
    self.hflip = bool(hflip)

  def load(self, index, params):
    image = self.source.image(index)
    mask = self.source.mask(index)  # the mask_dir file, whichever source gives the image
    if mask.shape != image.shape[:2]:
      raise voc.DataError(self.source.mask_paths[index],
                          f"pseudo-mask is {mask.shape[1]}x{mask.shape[0]} (WxH); expected "
                          f"the image's {image.shape[1]}x{image.shape[0]}",
                          kind="mask size differs")
    return seg_augment.make_example(image, mask, params, self.crop_size)

  def __call__(self, index, draws):
    params = seg_augment.decode_params(draws, scale_range=self.scale_range, hsv=self.hsv,
                                       hflip=self.hflip)
    return self.load_or_refill(index, params)


def make_seg_iterator(config, source, *, start_step=0, process_index=None, process_count=None):
  """Numpy batches {'image', 'mask'} from global step `start_step` on.

  Args:
    config: the experiment config (reads config.input: batch_size (global), crop_size, hflip,
      seed, shuffle_buffer, skip_bad, num_parallel_calls, prefetch, threads; config.segment:
      scale_range, hsv).
    source: `seg_source(config)`.
    start_step: global step of the first batch (resuming).
    process_index, process_count: default jax.process_index() / jax.process_count().

  Returns:
    `pipeline.TrainIterator` (closes its tf.data iterator on close(); errors name the file).
  """
  cfg = config.input
  crop = int(cfg.crop_size)
  process_index, process_count = pipeline._process_info(process_index, process_count)  # pylint: disable=protected-access
  ds, local_batch, spe = pipeline.index_stream(cfg, source.num_examples, start_step,
                                               process_index, process_count)
  seed = int(cfg.seed)
  loader = _SegLoader(source, crop, config.segment.scale_range, config.segment.hsv, cfg.hflip,
                      bool(cfg.skip_bad))

  def example(index, position, epoch):
    draws = augment.draw_params(augment.example_key(seed, epoch, position))
    image, mask = tf.numpy_function(loader, [index, draws], [tf.float32, tf.uint8])
    return {"image": tf.ensure_shape(image, [crop, crop, 3]),
            "mask": tf.ensure_shape(mask, [crop, crop])}

  ds = pipeline.batched(ds, cfg, example, local_batch)
  return pipeline.TrainIterator(ds, loader, spe, start_step)


__all__ = ["make_seg_iterator", "seg_source"]
