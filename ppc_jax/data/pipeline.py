"""Dual-view training input: a deterministic, per-process-sharded, resumable tf.data pipeline.

Batch (numpy, this process's rows of the global batch; `ppc_jax.sharding.to_global` turns it into
global jax.Arrays):
  image1:   float32 [b, S, S, 3]  view 1: the reference augmentation (see augment.py), S = crop_size
  image2:   float32 [b, s, s, 3]  view 2: align-corners bilinear resize of image1, s = view2_size
  labels:   float32 [b, F]        multi-hot image labels, F foreground classes (class list order)
  saliency: float32 [b, S, S]     only with `with_saliency`: in [0, 1], same geometry as image1
                                  (bicubic like the image, as in the reference), 0 in the padding
where b = global batch // process_count.

Data order (a pure function of (seed, step), which is what makes resuming exact):
  * Epoch e is a permutation of the split, drawn with a stateless shuffle keyed by (seed, e)
    (`shuffle_buffer=0`, the default; -1 keeps list order, > 0 runs tf.data's buffered shuffle
    on the index stream with a per-epoch seed). Its first floor(N / B) * B entries form
    floor(N / B) global batches of B (the reference's drop_last).
  * Process p of P takes rows [p * b, (p + 1) * b) of every global batch: shards are disjoint,
    their union is the global batch, and the global batch does not depend on P.
  * The augmentation of an example is keyed by (seed, epoch, position in the epoch), so it does
    not depend on P, threads or timing either.
  * Resuming at global step t starts epoch t // steps_per_epoch at batch t % steps_per_epoch by
    slicing the index list (no decoding of skipped examples): `make_train_iterator(...,
    start_step=t)` yields exactly what an uninterrupted run yields from step t on.

Bad inputs (see voc.py for the eager checks): a file that fails to decode during training raises
`voc.DataError` naming it; with `skip_bad=True` it is reported once (counted warning) and its slot
takes the next readable example in list order, so batch shapes, the data order of every other
slot and resuming are unaffected; the iterator logs a summary at each epoch end and on close().
"""

import atexit
import gc
import threading
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from ppc_jax.data import augment
from ppc_jax.data import sources
from ppc_jax.data import voc

_MAX_EPOCHS = 1 << 30

# A tf.data iterator whose map runs a tf.numpy_function must be destroyed before the interpreter
# finalises: its destructor waits for the host calls in flight, and a finalising interpreter ends
# any thread that asks for the GIL, so that wait never returns (the process hangs at exit).
# TrainIterator.close() destroys it (the trainer closes on every path); iterators made here also
# register, and any still open are released at exit, before Python finalises. Both only work if
# nothing else holds tf.data's iterator, hence TrainIterator.__next__ never lets a traceback
# through it escape.
_LIVE_ITERATORS = weakref.WeakSet()


def _release_live_iterators():
  for iterator in list(_LIVE_ITERATORS):
    iterator._release()  # pylint: disable=protected-access
  gc.collect()


atexit.register(_release_live_iterators)


def _process_info(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # only when not given: keeps the data side importable without initialising JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return int(process_index), int(process_count)


def local_batch_size(global_batch, process_count):
  """global_batch // process_count, or a ValueError saying why not."""
  if global_batch <= 0:
    raise ValueError(f"config.input.batch_size must be positive, got {global_batch}")
  if global_batch % process_count:
    raise ValueError(
        f"config.input.batch_size={global_batch} (the global batch) is not divisible by the "
        f"{process_count} processes; choose a multiple of {process_count}")
  return global_batch // process_count


def steps_per_epoch(num_examples, global_batch):
  """Full global batches per epoch (the reference drops the last partial batch)."""
  spe = num_examples // global_batch
  if spe == 0:
    raise ValueError(f"the split has {num_examples} images, fewer than one global batch "
                     f"({global_batch})")
  return spe


class RefillingLoader:
  """Base of the per-example host functions called through tf.numpy_function (stage 1,
  AffinityNet, DeepLab): `load(i, params)` reads and augments example i.

  tf.data turns the host function's exception into an OpError whose text need not name the file,
  so the last DataError is kept for `TrainIterator` to re-raise. With skip_bad a bad example is
  reported once (counted warning) and its slot takes the next readable example in list order.
  """

  def __init__(self, source, skip_bad):
    self.source = source
    self.skip_bad = bool(skip_bad)
    self.known_bad = set()
    self.substitutions = 0
    self.last_error = None
    self._lock = threading.Lock()

  def load(self, index, params):
    raise NotImplementedError

  def load_or_refill(self, index, params):
    n = self.source.num_examples
    index = int(index)
    for attempt in range(n):
      i = (index + attempt) % n
      if i in self.known_bad:
        continue
      try:
        out = self.load(i, params)
      except voc.DataError as e:
        if not self.skip_bad:
          self.last_error = e
          raise
        with self._lock:
          self.known_bad.add(i)
        self.source.bad.add(e, action="skipped (its slot takes the next readable image)")
        continue
      if attempt:
        with self._lock:
          self.substitutions += 1
      return out
    error = voc.DataError(self.source.list_path, "no readable image left in the split")
    self.last_error = error
    raise error

  def summary(self):
    return f"{self.source.bad.summary()}; {self.substitutions} batch slots refilled"


class _HostLoader(RefillingLoader):
  """Stage 1's host function: decode + PIL augmentation of one example."""

  def __init__(self, source, crop_size, resize_long, jitter, hflip, with_saliency, skip_bad):
    super().__init__(source, skip_bad)
    self.crop_size = int(crop_size)
    self.resize_long = tuple(resize_long) if resize_long else None
    self.jitter = tuple(jitter) if jitter else (0.0, 0.0, 0.0, 0.0)
    self.hflip = bool(hflip)
    self.with_saliency = with_saliency

  def load(self, index, params):
    src = self.source
    image = src.image_pil(index)
    sal = None
    if self.with_saliency:
      sal = src.saliency_pil(index)
      if sal.size != image.size:
        raise voc.DataError(src.saliency_paths[index],
                            f"saliency is {sal.size[0]}x{sal.size[1]} (WxH); expected the "
                            f"image's {image.size[0]}x{image.size[1]}",
                            kind="saliency size differs from the image")
    window, placement, sal_window = augment.host_augment(image, params, self.crop_size, sal)
    if sal_window is None:
      sal_window = np.zeros((0, 0), np.float32)
    return window, placement, sal_window, src.labels[index], np.int64(index)

  def __call__(self, index, draws):
    params = augment.decode_params(draws, self.resize_long, self.jitter, self.hflip)
    return self.load_or_refill(index, params)


def _epoch_dataset(epoch, *, n, global_batch, lo, local_batch, seed, shuffle_buffer, first_batch):
  """(index, position, epoch) of this process's examples of one epoch, from `first_batch` on."""
  spe = n // global_batch
  epoch = tf.cast(epoch, tf.int64)
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([int(seed) & 0x7FFFFFFF, 0x0DA7A], tf.int64), tf.cast(epoch, tf.int32))
  if shuffle_buffer == 0:
    order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
  elif shuffle_buffer < 0:
    order = tf.range(n, dtype=tf.int64)
  else:
    # fold_in returns [f(parent key), data]: draw from the whole key so each epoch differs.
    op_seed = tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
    order = tf.data.Dataset.range(n).shuffle(shuffle_buffer, seed=op_seed).batch(n)
    order = order.get_single_element()
  rows = tf.reshape(order[:spe * global_batch], [spe, global_batch])
  pos = tf.reshape(tf.range(spe * global_batch, dtype=tf.int64), [spe, global_batch])
  rows = tf.reshape(rows[first_batch:, lo:lo + local_batch], [-1])
  pos = tf.reshape(pos[first_batch:, lo:lo + local_batch], [-1])
  return tf.data.Dataset.from_tensor_slices((rows, pos, tf.fill(tf.shape(rows), epoch)))


def index_stream(input_config, num_examples, start_step, process_index, process_count):
  """This process's (index, position, epoch) triples from global step `start_step` on, forever.

  The data order of every training stage (stage 1 here, AffinityNet, DeepLab): see the module
  docstring. Reads batch_size, seed and shuffle_buffer of `input_config`.

  Returns:
    (tf.data.Dataset of (int64 index, int64 position, int64 epoch), local batch, steps per epoch).
  """
  cfg = input_config
  global_batch = int(cfg.batch_size)
  local_batch = local_batch_size(global_batch, process_count)
  spe = steps_per_epoch(num_examples, global_batch)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  start_epoch, first_batch = divmod(int(start_step), spe)
  common = dict(n=num_examples, global_batch=global_batch, lo=process_index * local_batch,
                local_batch=local_batch, seed=int(cfg.seed),
                shuffle_buffer=int(cfg.shuffle_buffer))
  ds = _epoch_dataset(start_epoch, first_batch=first_batch, **common)
  rest = tf.data.Dataset.range(start_epoch + 1, _MAX_EPOCHS).flat_map(
      lambda e: _epoch_dataset(e, first_batch=0, **common))
  return ds.concatenate(rest), local_batch, spe


def batched(ds, input_config, example, local_batch, after_batch=None):
  """Maps `example` over an index stream (parallel, order kept), batches it (drop_remainder),
  applies `after_batch`, prefetches, and sets the options that make the stream deterministic.

  Reads num_parallel_calls, prefetch and threads of `input_config`.
  """
  cfg = input_config
  parallel = int(cfg.num_parallel_calls)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE if parallel <= 0 else parallel,
              deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  if after_batch is not None:
    ds = ds.map(after_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.prefetch(int(cfg.prefetch))
  options = tf.data.Options()
  options.deterministic = True
  # One thread per element op: element-level parallelism comes from map's parallel calls, and
  # single-threaded kernels keep reductions bit-identical whatever the machine.
  options.threading.max_intra_op_parallelism = 1
  threads = int(cfg.threads)
  if threads > 0:
    options.threading.private_threadpool_size = threads
  return ds.with_options(options)


def _build(input_config, source, start_step, process_index, process_count, with_index):
  cfg = input_config
  crop = int(cfg.crop_size)
  view2 = int(cfg.view2_size)
  with_saliency = bool(cfg.with_saliency)
  if with_saliency and not getattr(source, "with_saliency", False):
    raise ValueError("config.input.with_saliency is set but the source was built without it")
  seed = int(cfg.seed)
  ds, local_batch, spe = index_stream(cfg, source.num_examples, start_step, process_index,
                                      process_count)
  loader = _HostLoader(source, crop, cfg.resize_long, cfg.jitter, cfg.hflip, with_saliency,
                       bool(cfg.skip_bad))
  num_classes = source.classes.num_fg

  def example(index, position, epoch):
    draws = augment.draw_params(augment.example_key(seed, epoch, position))
    # `loaded` differs from `index` only where a bad example's slot was refilled (skip_bad).
    window, placement, sal, label, loaded = tf.numpy_function(
        loader, [index, draws], [tf.uint8, tf.int32, tf.float32, tf.float32, tf.int64])
    window = tf.ensure_shape(window, [None, None, 3])
    placement = tf.ensure_shape(placement, [2])
    label = tf.ensure_shape(label, [num_classes])
    out = {"image1": augment.place_in_container(augment.normalize(window), placement, crop),
           "labels": label}
    if with_saliency:
      sal = tf.ensure_shape(sal, [None, None])
      out["saliency"] = augment.place_in_container(sal[..., None], placement, crop)[..., 0]
    if with_index:
      out["index"] = tf.ensure_shape(loaded, [])
    return out

  def add_view2(batch):
    batch = dict(batch)
    batch["image2"] = augment.resize_align_corners(batch["image1"], (view2, view2))
    return batch

  return batched(ds, cfg, example, local_batch, after_batch=add_view2), loader, spe


def make_train_dataset(input_config, source=None, *, start_step=0, process_index=None,
                       process_count=None, with_index=False):
  """The infinite tf.data.Dataset of this process's batches, starting at global step start_step.

  Args:
    input_config: `config.input` (data_dir, split, batch_size (global), crop_size, view2_size,
      resize_long, jitter, hflip, shuffle_buffer, seed, with_saliency, skip_bad,
      num_parallel_calls, prefetch, threads, cls_labels, labels, verify, max_images: every field
      of `config_lib.seeds_input_config()`).
    source: a VOCSource (default: `train_source(input_config)`).
    start_step: global step of the first batch.
    process_index, process_count: default jax.process_index() / jax.process_count().
    with_index: also yield `index: int64 [b]`, the positions in `source.ids` of the examples
      loaded (for tests and debugging; the trainer leaves it out).

  Returns:
    tf.data.Dataset of dicts (see the module docstring). Prefer `make_train_iterator`: an
    iterator over this dataset that is still alive when the interpreter exits can hang it (the
    map's tf.numpy_function threads wait for the GIL); delete such iterators before exiting.
  """
  process_index, process_count = _process_info(process_index, process_count)
  source = sources.train_source(input_config) if source is None else source
  return _build(input_config, source, start_step, process_index, process_count, with_index)[0]


class TrainIterator:
  """Python iterator of numpy batch dicts; translates input errors into DataError naming the file.

  Attributes:
    step: global step of the next batch.
    steps_per_epoch: global batches per epoch.
    source: the VOCSource.
  """

  def __init__(self, dataset, loader, spe, start_step):
    self._it = dataset.as_numpy_iterator()
    self._loader = loader
    self.source = loader.source
    self.steps_per_epoch = spe
    self.step = int(start_step)
    self._reported = loader.source.bad.count
    _LIVE_ITERATORS.add(self)

  def _release(self):
    # Dropping the last reference destroys tf.data's iterator now, while the interpreter can
    # still run the in-flight host calls it waits for (its destructor releases the GIL).
    self._it = iter(())

  def __iter__(self):
    return self

  def __next__(self):
    error = None
    try:
      batch = next(self._it)
    except tf.errors.OpError as e:
      # TF wraps the host function's exception in a long OpError; the original names the file.
      # The OpError's traceback holds tf.data's iterator (its frames' `self`): it must not leave
      # this method, neither raised nor chained as __context__, or whoever keeps the exception
      # (the interpreter keeps an uncaught one in sys.last_value until it finalises) keeps the
      # iterator, whose destructor then runs during interpreter shutdown and waits forever for
      # host calls that can no longer take the GIL. So: drop its traceback, raise outside the
      # except clause (no __context__).
      error = self._loader.last_error or e.with_traceback(None)
    if error is not None:
      raise error
    self.step += 1
    if self.step % self.steps_per_epoch == 0:
      self._report()
    return batch

  def _report(self):
    if self.source.bad.count != self._reported:
      self._reported = self.source.bad.count
      logging.warning("input at step %d: %s", self.step, self._loader.summary())

  @property
  def bad(self):
    return self.source.bad

  def summary(self):
    return self._loader.summary()

  def close(self):
    """Logs the bad-input summary (if any) and releases the tf.data iterator."""
    if self.source.bad.count:
      logging.warning("input closed at step %d: %s", self.step, self._loader.summary())
    self._release()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def make_train_iterator(input_config, source=None, *, start_step=0, process_index=None,
                        process_count=None, with_index=False):
  """Numpy batches from global step `start_step` on; equal to the tail of an uninterrupted run.

  Args: as `make_train_dataset`.

  Returns:
    TrainIterator yielding dicts of numpy arrays (image1, image2, labels[, saliency][, index]).
  """
  process_index, process_count = _process_info(process_index, process_count)
  source = sources.train_source(input_config) if source is None else source
  ds, loader, spe = _build(input_config, source, start_step, process_index, process_count,
                           with_index)
  return TrainIterator(ds, loader, spe, start_step)

