r"""Pretraining input: image-classification examples from a TFDS data set or from class folders,
through the shared deterministic data order, as ImageNet-recipe tf.data batches.

Sources (`config.pretrain.source`):
  'tfds'     any TFDS image-classification data set by name (`pretrain.tfds_name`, e.g.
             'imagenet2012'), prepared in the array_record file format, which gives random access
             (each process reads only the records of its own rows of every global batch, which is
             what keeps the data order the pure function of (seed, step) that exact resuming
             needs). `pretrain.tfds_data_dir` may be a bucket (gs://...): array_record reads local
             files only, so the prepared version is copied once per host into
             `pretrain.tfds_cache_dir`. An unprepared set is prepared in a single-process run
             (`pretrain.tfds_manual_dir`: ImageNet's archives); otherwise, once, beforehand:
               tfds build imagenet2012 --data_dir=DIR --manual_dir=ARCHIVES \
                   --file_format=array_record
  'folders'  `<pretrain.folder_dir>/<split>/<class_name>/*.jpg|jpeg|png`: the class list is the
             sorted folder names of the training split (`config.input.split`); every split
             maps its folders onto it. An empty or malformed tree is a `voc.DataError` naming
             the directory.

Batches (numpy, this process's rows of the global batch; NHWC, ImageNet-normalised with
`voc_meta.IMAGENET_MEAN` / `IMAGENET_STD`):
  training    image float32 [b, S, S, 3] (S = config.input.crop_size), label int32 [b]
              random-resized crop (area `pretrain.area_range` of the image, aspect ratio
              `pretrain.aspect_range`; `tf.image.stateless_sample_distorted_bounding_box`, the
              Inception / ResNet recipe) resized bilinearly to S x S, then a horizontal flip
              (config.input.hflip). Draws keyed by (seed, epoch, position), as every stage's.
  evaluation  image float32 [b, E, E, 3] (E = pretrain.eval_size), label int32 [b],
              weight float32 [b] (0 on the padding of the last batch): the central square of
              side `pretrain.eval_crop_fraction` x the short side (224 of 256), resized to E.
JPEG files are decoded with the crop fused into the decoder (`tf.io.decode_and_crop_jpeg`);
others (PNG) are decoded whole and cut. Image sizes come from the file headers on the host
(PIL, nothing decoded), where an unreadable file is a `voc.DataError` naming it (with
config.input.skip_bad: skipped, its slot refilled, as in every stage's input).
"""

import math
import os

from absl import logging
import numpy as np
import tensorflow as tf

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax.data import augment
from ppc_jax.data import pipeline
from ppc_jax.data import voc
from ppc_jax.data import voc_meta

SOURCES = ("tfds", "folders")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = "<dir>/<split>/<class_name>/*.jpg|jpeg|png"


# ----------------------------------------------------------------------------------------------
# Sources: `num_examples`, `classes`, `read(i) -> (encoded bytes, label)`, `example_name(i)`,
# and `bad` / `list_path` for the shared refilling loader.


def _visible(names):
  return sorted(n for n in names if not n.startswith("."))


def folder_classes(root, split):
  """The sorted class-folder names of `<root>/<split>`, or a DataError naming the directory."""
  if not root or not fileio.isdir(root):
    raise voc.DataError(root or "<empty>", "the class-folder directory does not exist "
                        f"(config.pretrain.folder_dir); expected {LAYOUT}",
                        kind="missing class-folder directory")
  split_dir = fileio.join(root, split)
  if not fileio.isdir(split_dir):
    present = [n for n in _visible(fileio.listdir(root)) if fileio.isdir(fileio.join(root, n))]
    raise voc.DataError(split_dir, f"no split {split!r} here (splits found: {present}); "
                        f"expected {LAYOUT}", kind="missing split directory")
  names = _visible(fileio.listdir(split_dir))
  classes = [n for n in names if fileio.isdir(fileio.join(split_dir, n))]
  stray = [n for n in names if n not in classes]
  if stray:
    raise voc.DataError(split_dir, f"files outside class folders ({', '.join(stray[:3])}"
                        f"{', ...' if len(stray) > 3 else ''}); expected {LAYOUT}",
                        kind="malformed class-folder tree")
  if not classes:
    raise voc.DataError(split_dir, f"no class folders; expected {LAYOUT}",
                        kind="empty class-folder tree")
  return tuple(classes)


class FolderSource:
  """One split of a class-folder tree.

  Attributes: classes (names, label = position), paths, labels (int32 [N]), num_examples,
  list_path (the split directory, for messages), bad (`voc.BadInputLog`).
  """

  def __init__(self, root, split, *, classes=None):
    """classes: the class list to label with (the training split's for other splits); None =
    this split's own folders."""
    own = folder_classes(root, split)
    self.classes = tuple(classes) if classes is not None else own
    split_dir = fileio.join(root, split)
    unknown = sorted(set(own) - set(self.classes))
    if unknown:
      raise voc.DataError(split_dir, f"class folders {unknown[:5]} are not among the "
                          f"{len(self.classes)} classes of the training split",
                          kind="unknown class folder")
    paths, labels = [], []
    for label, name in enumerate(self.classes):
      if name not in own:
        continue  # an evaluation split may lack classes
      class_dir = fileio.join(split_dir, name)
      files = _visible(fileio.listdir(class_dir))
      images = [f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
      others = [f for f in files if f not in images]
      if others:
        raise voc.DataError(class_dir, f"not an image file: {', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''} (expected "
                            f"{'/'.join(IMAGE_EXTENSIONS)} files only)",
                            kind="malformed class folder")
      if not images:
        raise voc.DataError(class_dir, f"no images in this class folder (expected {LAYOUT})",
                            kind="empty class folder")
      paths += [fileio.join(class_dir, f) for f in images]
      labels += [label] * len(images)
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, np.int32)
    self.list_path = split_dir
    self.bad = voc.BadInputLog(f"class folders {split_dir}")

  @property
  def num_examples(self):
    return len(self.paths)

  def example_name(self, i):
    return self.paths[i]

  def read(self, i):
    try:
      data = fileio.read_bytes(self.paths[i])
    except OSError as e:
      raise voc.DataError(self.paths[i], f"cannot read the image file ({e})",
                          kind="unreadable image") from None
    return data, int(self.labels[i])


def _copy_prepared(remote, local):
  """Copies one prepared TFDS version directory (shards first, dataset_info.json last: TFDS takes
  a directory with dataset_info.json for prepared), skipping files whose size already matches."""
  names = sorted(fileio.listdir(remote), key=lambda n: (n == "dataset_info.json", n))
  for name in names:
    source, target = fileio.join(remote, name), os.path.join(local, name)
    if os.path.isfile(target) and os.path.getsize(target) == fileio.getsize(source):
      continue
    atomic_io.write_bytes(target, fileio.read_bytes(source))


def local_tfds_dir(name, data_dir, cache_dir):
  """The local TFDS data directory to read `name` from ('' -> None: TFDS's default).

  array_record reads local files only: a set prepared on a bucket is copied once into
  `<cache_dir>/<scheme>/<bucket path>` (files whose size matches are not copied again).
  """
  if not data_dir:
    return None
  if not fileio.is_url(data_dir):
    return data_dir
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.data_path}: {name} is not prepared there (config.pretrain.tfds_data_dir); "
        f"prepare it first: tfds build {name} --data_dir=... --file_format=array_record")
  relative = os.fspath(builder.info.full_name)
  scheme, rest = data_dir.split("://", 1)
  local = os.path.join(fileio.abspath(cache_dir), scheme, rest.strip("/"))
  _copy_prepared(fileio.join(data_dir, relative), os.path.join(local, relative))
  return local


class TFDSSource:
  """One split of a prepared TFDS image-classification set, read record by record.

  Attributes: classes (the label feature's names), num_examples, list_path ('tfds:<name>/<split>'),
  bad (`voc.BadInputLog`).
  """

  def __init__(self, name, split, *, data_dir="", manual_dir="", cache_dir="~/.cache/ppc_jax/tfds",
               image_key="image", label_key="label", prepare=True):
    """prepare: prepare an unprepared local set here (array_record; `manual_dir` holds manually
    downloaded archives); False raises instead (e.g. every process of a multi-process run)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    local = local_tfds_dir(name, data_dir, cache_dir)
    builder = tfds.builder(name, data_dir=local)
    command = (f"tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'} "
               f"{'--manual_dir=' + manual_dir + ' ' if manual_dir else ''}"
               "--file_format=array_record")
    if not builder.is_prepared():
      if not prepare:
        raise FileNotFoundError(f"{builder.data_path}: {name} is not prepared; prepare it once "
                                f"before a multi-process run: {command}")
      logging.info("preparing %s in %s (array_record)", name, builder.data_path)
      builder.download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
    features = builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise ValueError(f"{name}: no feature {key!r} (config.pretrain.tfds_image_key / "
                         f"tfds_label_key); its features are {sorted(features.keys())}")
    if not hasattr(features[label_key], "names"):
      raise ValueError(f"{name}: feature {label_key!r} is not a ClassLabel (single-label "
                       "classification sets only)")
    if split not in builder.info.splits:
      raise ValueError(f"{name} at {builder.data_path} has no split {split!r}; its splits: "
                       f"{sorted(builder.info.splits.keys())}")
    self.classes = tuple(features[label_key].names)
    try:
      self._records = builder.as_data_source(
          split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    except NotImplementedError:
      raise ValueError(
          f"{builder.data_path}: {name} is prepared as {builder.info.file_format}, which gives "
          "no random access; convert it once: tfds convert_format "
          f"--dataset_version_dir={builder.data_path} --out_file_format=array_record") from None
    self._image_key, self._label_key = image_key, label_key
    self.list_path = f"tfds:{name}/{split}"
    self.bad = voc.BadInputLog(f"{name} {split}")

  @property
  def num_examples(self):
    return len(self._records)

  def example_name(self, i):
    return f"{self.list_path}[{i}]"

  def read(self, i):
    record = self._records[int(i)]
    return record[self._image_key], int(record[self._label_key])


def open_source(config, split, *, classes=None, prepare=True):
  """The split `split` of `config.pretrain`'s data set.

  Args:
    config: the experiment config (pretrain.source and its fields).
    split: a split name (config.input.split for training, config.infer.split to evaluate).
    classes: class folders: the list to label with (default: the training split's folders).
    prepare: TFDS: prepare an unprepared set here (see `TFDSSource`).
  """
  pcfg = config.pretrain
  if pcfg.source == "folders":
    if classes is None:
      classes = folder_classes(pcfg.folder_dir, config.input.split)
    return FolderSource(pcfg.folder_dir, split, classes=classes)
  if pcfg.source == "tfds":
    return TFDSSource(pcfg.tfds_name, split, data_dir=pcfg.tfds_data_dir,
                      manual_dir=pcfg.tfds_manual_dir, cache_dir=pcfg.tfds_cache_dir,
                      image_key=pcfg.tfds_image_key, label_key=pcfg.tfds_label_key,
                      prepare=prepare)
  raise ValueError(f"config.pretrain.source must be one of {SOURCES}, got {pcfg.source!r}")


# ----------------------------------------------------------------------------------------------
# Host function and TF ops.


class _Loader(pipeline.RefillingLoader):
  """One example's encoded bytes, label and size (header only) on the host; errors name the
  file, and with skip_bad a bad example's slot takes the next readable one."""

  def load(self, index, params):
    del params
    data, label = self.source.read(index)
    width, height = voc.read_size(self.source.example_name(index), "image", data)
    if width < 1 or height < 1:
      raise voc.DataError(self.source.example_name(index), "empty image", kind="empty image")
    return np.array(data, dtype=object), np.int32(label), np.array([height, width], np.int32)

  def __call__(self, index):
    return self.load_or_refill(index, None)


def _host_example(loader, index):
  """(bytes [], label int32 [], size int32 [2] = (H, W)) of example `index`, via the loader."""
  data, label, size = tf.numpy_function(loader, [index], [tf.string, tf.int32, tf.int32])
  return tf.ensure_shape(data, []), tf.ensure_shape(label, []), tf.ensure_shape(size, [2])


def decode_window(data, window):
  """uint8 [h, w, 3]: the window [top, left, h, w] of an encoded image (JPEG: decoded with the
  crop fused in, which skips most of the image; others: decoded whole, then cut)."""
  def jpeg():
    return tf.io.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def random_window(size, key, area_range, aspect_range):
  """[top, left, h, w] int32 of a random-resized crop: stateless, a function of `key` only.

  Args:
    size: int32 [2] = (H, W).
    key: stateless seed [2].
    area_range, aspect_range: (lo, hi) of the crop's share of the image area and of its w / h.
  """
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([size, [3]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=key, min_object_covered=float(area_range[0]),
      aspect_ratio_range=tuple(float(a) for a in aspect_range),
      area_range=tuple(float(a) for a in area_range), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], crop[0], crop[1]])


def center_window(size, fraction):
  """[top, left, s, s] int32: the central square of side max(1, floor(fraction * short side))."""
  short = tf.cast(tf.minimum(size[0], size[1]), tf.float32)
  side = tf.maximum(tf.cast(short * float(fraction), tf.int32), 1)
  return tf.stack([(size[0] - side + 1) // 2, (size[1] - side + 1) // 2, side, side])


def normalize(image):
  """float32 [..., 3] in [0, 255] -> (x / 255 - mean) / std with the ImageNet statistics."""
  mean = tf.constant(voc_meta.IMAGENET_MEAN, tf.float32)
  std = tf.constant(voc_meta.IMAGENET_STD, tf.float32)
  return (image / 255.0 - mean) / std


def _resized(image, size):
  """uint8 [h, w, 3] -> float32 [size, size, 3], bilinear (half-pixel centres, no antialias)."""
  return tf.image.resize(tf.cast(image, tf.float32)[None], [size, size], method="bilinear")[0]


# ----------------------------------------------------------------------------------------------
# Iterators.


def make_train_iterator(config, source, *, start_step=0, process_index=None, process_count=None):
  """Numpy batches {'image', 'label'} from global step `start_step` on (see the module docstring).

  The data order, process rows and resume are every stage's (`pipeline.index_stream`): a resumed
  run sees the batches of an uninterrupted one.

  Args:
    config: the experiment config (config.input: batch_size (global), crop_size, hflip, seed,
      shuffle_buffer, skip_bad, num_parallel_calls, prefetch, threads; config.pretrain:
      area_range, aspect_range).
    source: `open_source(config, config.input.split)`.
    start_step: global step of the first batch.
    process_index, process_count: default jax.process_index() / jax.process_count().

  Returns:
    `pipeline.TrainIterator` (errors name the file; `close()` releases tf.data's iterator).
  """
  cfg, pcfg = config.input, config.pretrain
  crop = int(cfg.crop_size)
  area_range, aspect_range = tuple(pcfg.area_range), tuple(pcfg.aspect_range)
  hflip = bool(cfg.hflip)
  seed = int(cfg.seed)
  process_index, process_count = pipeline._process_info(process_index, process_count)  # pylint: disable=protected-access
  ds, local_batch, spe = pipeline.index_stream(cfg, source.num_examples, start_step,
                                               process_index, process_count)
  loader = _Loader(source, bool(cfg.skip_bad))

  def example(index, position, epoch):
    data, label, size = _host_example(loader, index)
    key = augment.example_key(seed, epoch, position)
    crop_key = tf.random.experimental.stateless_fold_in(key, 0)
    flip_key = tf.random.experimental.stateless_fold_in(key, 1)
    image = _resized(decode_window(data, random_window(size, crop_key, area_range,
                                                       aspect_range)), crop)
    if hflip:
      flip = tf.random.stateless_uniform([], seed=flip_key) < 0.5
      image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    return {"image": tf.ensure_shape(normalize(image), [crop, crop, 3]), "label": label}

  ds = pipeline.batched(ds, cfg, example, local_batch)
  return pipeline.TrainIterator(ds, loader, spe, start_step)


def eval_indices(num_examples, max_images):
  """The examples an evaluation reads: all, or `max_images` spread evenly over the split (a
  class-folder split is sorted by class, so its first N would be a few classes only)."""
  if not max_images or max_images >= num_examples:
    return np.arange(num_examples, dtype=np.int64)
  return np.unique(np.round(np.linspace(0, num_examples - 1, int(max_images))).astype(np.int64))


def make_eval_iterator(config, source, *, process_index=None, process_count=None):
  """This process's rows of every evaluation batch {'image', 'label', 'weight'}.

  Global batch `pretrain.eval_batch_size`; every example once, in split order, the last batch
  padded with weight-0 copies of the first example; process p takes rows [p b, (p + 1) b) of
  every global batch, so the sums of an evaluation step over the global batch are the split's.

  Returns:
    (`pipeline.TrainIterator`, number of batches, number of examples evaluated).
  """
  cfg, pcfg = config.input, config.pretrain
  size = int(pcfg.eval_size)
  fraction = float(pcfg.eval_crop_fraction)
  process_index, process_count = pipeline._process_info(process_index, process_count)  # pylint: disable=protected-access
  global_batch = int(pcfg.eval_batch_size)
  local_batch = pipeline.local_batch_size(global_batch, process_count)
  indices = eval_indices(source.num_examples, int(config.infer.max_images))
  n = len(indices)
  if not n:
    raise voc.DataError(source.list_path, "no examples to evaluate", kind="empty split")
  num_batches = math.ceil(n / global_batch)
  rows = np.arange(num_batches * global_batch).reshape(num_batches, global_batch)
  lo = process_index * local_batch
  rows = rows[:, lo:lo + local_batch].reshape(-1)
  valid = rows < n
  index = np.where(valid, indices[np.minimum(rows, n - 1)], indices[0])
  loader = _Loader(source, bool(cfg.skip_bad))

  def example(index, weight):
    data, label, image_size = _host_example(loader, index)
    image = _resized(decode_window(data, center_window(image_size, fraction)), size)
    return {"image": tf.ensure_shape(normalize(image), [size, size, 3]), "label": label,
            "weight": weight}

  ds = tf.data.Dataset.from_tensor_slices((index, valid.astype(np.float32)))
  ds = pipeline.batched(ds, cfg, example, local_batch)
  return pipeline.TrainIterator(ds, loader, num_batches, 0), num_batches, n
