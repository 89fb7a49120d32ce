"""Where a split's examples come from: the VOC directory tree or the prepared TFDS set.

`open_source` is the one way every stage opens a split (stage-1 training and CAM inference,
AffinityNet training, the random walk, DeepLab training and inference, the pipeline). No
TensorFlow at import: inference and accelerator hosts without it open directory sources here.
"""

from absl import logging

from ppc_jax.data import voc

SOURCES = ("directory", "tfds")


def open_source(input_config, split=None, *, max_images=None, with_saliency=None, classes=None,
                labels=None, mask_dir=None, need_masks=False):
  """The examples of a split, from where `config.input.source` says: the directory tree
  (`voc.VOCSource` of data_dir) or the prepared TFDS data set (`tfds_voc.TFDSSource` of
  tfds_data_dir). Both give ids, labels, classes and the same per-example PIL readers. Every
  stage opens its splits here (training, CAM inference, the random walk, DeepLab training and
  inference, the pipeline's overlays).

  Args:
    input_config: `config.input`.
    split, max_images, with_saliency, classes: default the config's fields of those names
      (`classes`: a ClassList or a `voc.load_classes` spec).
    labels: the directory source's label origin (default `config.input.labels`; 'none' for
      readers that use no image-level labels). The TFDS set keeps the labels it was built with.
    mask_dir: masks from `<mask_dir>/<id>.png` files instead of the data set's own (pseudo-masks
      an earlier stage wrote: those stay files with either source). A relative path is under the
      VOC root for the directory source.
    need_masks: require every id's mask file in mask_dir (a missing one is a DataError, or with
      skip_bad a skipped example).
  """
  cfg = input_config
  split = cfg.split if split is None else split
  max_images = int(cfg.max_images if max_images is None else max_images)
  with_saliency = bool(cfg.with_saliency if with_saliency is None else with_saliency)
  classes = cfg.classes if classes is None else classes
  source = cfg.source
  if source == "tfds":
    from ppc_jax.data import tfds_voc  # pylint: disable=g-import-not-at-top  (TFDS's import is slow)
    logging.info("%s: examples from the TFDS set %s in %r", split, tfds_voc.NAME,
                 cfg.tfds_data_dir)
    return tfds_voc.TFDSSource(cfg.tfds_data_dir, split, with_saliency=with_saliency,
                               skip_bad=bool(cfg.skip_bad), classes=classes, max_images=max_images,
                               cache_dir=cfg.tfds_cache_dir, mask_dir=mask_dir,
                               need_masks=need_masks)
  if source != "directory":
    raise ValueError(f"config.input.source={source!r}: expected one of {SOURCES}")
  return voc.VOCSource(
      cfg.data_dir, split, classes=classes, with_saliency=with_saliency,
      skip_bad=bool(cfg.skip_bad), cls_labels=cfg.cls_labels or None,
      labels=cfg.labels if labels is None else labels, verify=cfg.verify, max_images=max_images,
      mask_dir=mask_dir, need_masks=need_masks)


def train_source(input_config):
  """The training split's source (`open_source` with the config's split and fields)."""
  return open_source(input_config)
