r"""Multi-scale + flip CAM inference: cam_dict files, seed PNGs and overlays for a split.

  python -m ppc_jax.seeds.infer --config=configs/ppc_voc12.py:data_dir=PATH --workdir=runs/ppc \
      [--split=train] [--out_dir=runs/ppc/infer_train]

Follows the reference's contrast_infer.py (METHOD 4.1): each image at scales (0.5, 1, 1.5, 2),
PIL-bicubic resized to (round(W*s), round(H*s)) with Python's half-to-even round, plus its
horizontal flip; the PCM-refined CAM (`cam_rv`, align_corners=True upsampled by the model) of every
input is resized to the image size (align_corners=False), multiplied by the labels, un-flipped and
summed; the sum is min-max normalised per class. `config.infer.mode='eps'` follows EPS's
infer.py instead (METHOD 4.2): the raw fc8 output at feature resolution (`cam_key='cam_down'`, no
PCM), softmax over background + classes, resized to the image (align_corners=False), foreground
x labels, un-flipped, summed, and max-normalised per class, x / (max + 1e-5).

Batching without recompiles or inexactness: images are grouped by their exact size (VOC has few
distinct sizes, most are 500x375 or 375x500), and a group's inputs of one scale form one batch
[2G, Hs, Ws, 3] (G images, each with its flip), sharded over the local devices. No padding ever
enters the network, so every CAM equals unbatched inference; one compilation per (size, scale).
Multi-host: each process takes every process_count-th image.

Examples come from `config.input.source` (the directory tree or the prepared TFDS data set;
`sources.open_source`). Classes: the source's class list (VOC's 20 unless the config, the data
directory's classes.txt or the TFDS data set's metadata says otherwise);
config.model.num_classes must be its count + 1 (checked before the checkpoint is restored).

Outputs under --out_dir (default `<workdir>/infer_<split>`):
  cams/<id>.npz     the cam_dict {class index 0..F-1: float32 [H, W]} of the present classes, F the
                    foreground count, as np.savez of keys [K] + maps [K, H, W] (no pickle;
                    `ppc_jax.data.cam_io.load_cam_dict` reads it back). For the reference's
                    pickled `<id>.npy`: `python -m ppc_jax.data.cam_io --to=reference_npy ...`
                    (or run_inference(..., cam_format='reference_npy'))
  seeds/<id>.png    VOC-palette seed masks at --bg_threshold (default config.infer.bg_threshold)
  overlays/<id>.jpg CAM heat maps over the first `num_overlays` images
  summary.json      what was run
Existing cams are kept (an interrupted run resumes); every file is written atomically.
"""

import collections
import concurrent.futures
import functools
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import tqdm

from ppc_jax import atomic_io
from ppc_jax.data import cam_io
from ppc_jax.seeds import cam_postprocess
from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax import restore
from ppc_jax import sharding as shd
from ppc_jax.data import infer_inputs
from ppc_jax.data import sources
from ppc_jax.data import voc


# Distinct image sizes whose programs are compiled ahead and held at a time (see run_inference).
SIZES_PER_WINDOW = 8

# 'seam': METHOD 4.1 (the map `cam_key`, min-max normalised); 'eps': METHOD 4.2 (softmax of the
# raw fc8 output, max normalised).
MODES = ("seam", "eps")


class CamInference:
  """Jitted, device-sharded multi-scale CAM computation for groups of same-size images."""

  def __init__(self, model, variables, *, scales, flip, cam_key, mode="seam", devices=None):
    if mode not in MODES:
      raise ValueError(f"config.infer.mode={mode!r}; expected one of {MODES}")
    if mode == "eps" and cam_key != "cam_down":
      raise ValueError(f"config.infer.mode='eps' takes the raw fc8 output at feature resolution: "
                       f"config.infer.cam_key must be 'cam_down', got {cam_key!r}")
    self.scales = tuple(float(s) for s in scales)
    self.flip = bool(flip)
    self.cam_key = cam_key
    self.mode = mode
    # A process-local mesh: each process infers its own images on its own devices.
    self.mesh = shd.make_mesh(devices=jax.local_devices() if devices is None else devices)
    self.batch_sharding = shd.batch_sharding(self.mesh)
    self.variables = jax.device_put(variables, shd.replicated(self.mesh))
    self.num_devices = self.mesh.devices.size

    def forward(variables, x):
      out = model.apply(variables, x, train=False)
      if cam_key not in out:
        raise ValueError(f"config.infer.cam_key={cam_key!r} is not a model output "
                         f"({sorted(out)})")
      # EPS: class probabilities over background + classes, before any resize.
      return jax.nn.softmax(out[cam_key], axis=-1) if mode == "eps" else out[cam_key]

    # Explicit shardings everywhere: a precompiled program accepts only the shardings it was
    # compiled for (the batch split over the devices, the rest replicated).
    self.replicated = shd.replicated(self.mesh)
    self._forward = jax.jit(forward, out_shardings=self.batch_sharding)
    self._merge = jax.jit(self._merge_impl, static_argnames=("orig_size", "per_image"),
                          out_shardings=self.replicated)
    normalize = (cam_postprocess.max_normalize_cam if mode == "eps"
                 else cam_postprocess.normalize_cam)
    self._finish = jax.jit(jax.vmap(normalize), out_shardings=self.replicated)
    # Ahead-of-time compiled programs by key (`programs`), and those being compiled (futures).
    self._compiled = {}
    self._pending = {}
    self.per_image = 2 if self.flip else 1

  def _batch_size(self, num_images):
    """Forward batch of `num_images` same-size images: per_image inputs each, padded up to a
    multiple of the device count."""
    b = num_images * self.per_image
    return b + (-b) % self.num_devices

  def programs(self, groups):
    """The distinct programs that `__call__` runs on groups of (G images, (H, W)).

    Returns:
      list of keys ('forward', B, Hs, Ws), ('merge', B, Hs, Ws, G, H, W) and ('finish', G, H, W)
      in the order the calls first need them (so compiles submitted in this order finish in
      the order the loop waits for them); equal shapes of different sizes and scales share one
      program.
    """
    keys = {}
    for g, (h, w) in groups:
      b = self._batch_size(g)
      for scale in self.scales:
        ws, hs = infer_inputs.scaled_size(w, h, scale)
        keys.setdefault(("forward", b, hs, ws))
        keys.setdefault(("merge", b, hs, ws, g, h, w))
      keys.setdefault(("finish", g, h, w))
    return list(keys)

  def _compile_one(self, key, num_fg):
    """Lowers and compiles the program of `key` (see `programs`) from shapes alone."""

    def spec(shape, sharding=self.replicated, dtype=jnp.float32):
      return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    if key[0] == "forward":
      _, b, hs, ws = key
      return self._forward.lower(self.variables,
                                 spec((b, hs, ws, 3), self.batch_sharding)).compile()
    if key[0] == "merge":
      _, b, hs, ws, g, h, w = key
      cams = jax.eval_shape(self._forward, self.variables,
                            spec((b, hs, ws, 3), self.batch_sharding))
      return self._merge.lower(
          spec(cams.shape, self.batch_sharding, cams.dtype), spec((g, num_fg)),
          spec((g, h, w, num_fg)), orig_size=(h, w), per_image=self.per_image).compile()
    _, g, h, w = key
    return self._finish.lower(spec((g, h, w, num_fg))).compile()

  def start_compiling(self, groups, num_fg, pool):
    """Submits the programs of `groups` not compiled or in flight yet to the thread pool `pool`
    (XLA compiles outside the GIL, so they compile side by side, and beside the computation of
    earlier groups). With the persistent compilation cache on (runtime.setup_host) a program
    compiled by an earlier run is loaded instead.

    Args:
      groups: iterable of (G, (H, W)): G same-size images of height H and width W per call.
      num_fg: F, the class list's foreground count.
      pool: a concurrent.futures executor.

    Returns:
      the number of programs submitted.
    """
    keys = [k for k in self.programs(groups) if k not in self._compiled and k not in self._pending]
    for key in keys:
      self._pending[key] = pool.submit(self._compile_one, key, num_fg)
    return len(keys)

  def precompile(self, groups, num_fg, threads=0):
    """start_compiling on a pool of `threads` (0 = one per usable CPU), then waits for them all.

    Returns:
      the number of programs compiled.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=compile_threads(threads)) as pool:
      n = self.start_compiling(groups, num_fg, pool)
      for key in list(self._pending):
        self._compiled[key] = self._pending.pop(key).result()
    return n

  def release(self, keep=()):
    """Drops the compiled programs whose keys are not in `keep` (bounds the memory of a split
    with many sizes: each size's programs are needed only while its images run)."""
    keep = set(keep)
    for key in [k for k in self._compiled if k not in keep]:
      del self._compiled[key]

  def _program(self, key, jitted, **static):
    """The compiled program of `key` (waiting for it if it is being compiled), or the jitted
    function (compiled on first use)."""
    if key in self._pending:
      self._compiled[key] = self._pending.pop(key).result()
    compiled = self._compiled.get(key)
    return compiled if compiled is not None else functools.partial(jitted, **static)

  def _merge_impl(self, cams, labels, sum_cam, *, orig_size, per_image):
    """cams [G*per_image, Hs, Ws, F + 1], labels [G, F], sum_cam [G, H, W, F] -> new sum."""
    g = labels.shape[0]
    cams = cams[: g * per_image].reshape((g, per_image) + cams.shape[1:])
    flipped = cam_postprocess.default_flipped(per_image) if self.flip else (False,)
    merge = functools.partial(cam_postprocess.merge_scale, orig_size=orig_size, flipped=flipped)
    return jax.vmap(lambda c, l, s: merge(c, l, sum_cam=s))(cams, labels, sum_cam)

  def __call__(self, images, labels):
    """Normalised CAMs of G same-size images.

    Args:
      images: list of G PIL RGB images of one size (H, W).
      labels: float32 [G, F], F = the class list's foreground count (the model has F + 1
        CAM channels).

    Returns:
      float32 [G, H, W, F] normalised CAMs (absent classes at -1 in 'seam' mode and 0 in 'eps'
      mode, as the references).
    """
    h, w = images[0].height, images[0].width
    g = len(images)
    per_image = self.per_image
    labels = np.asarray(labels, np.float32)
    sum_cam = jax.device_put(np.zeros((g, h, w, labels.shape[-1]), np.float32), self.replicated)
    labels = jax.device_put(labels, self.replicated)
    # Per image: one [per_image, Hs, Ws, 3] array per scale (exact shapes, no padding).
    per_scale = [infer_inputs.multiscale_flip(im, self.scales, self.flip) for im in images]
    for k in range(len(self.scales)):
      x = np.concatenate([arrays[k] for arrays in per_scale])
      pad = (-len(x)) % self.num_devices  # batch must split over devices: repeat the last input
      if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      b, hs, ws = x.shape[:3]
      forward = self._program(("forward", b, hs, ws), self._forward)
      cams = forward(self.variables, jax.device_put(x, self.batch_sharding))
      merge = self._program(("merge", b, hs, ws, g, h, w), self._merge, orig_size=(h, w),
                            per_image=per_image)
      sum_cam = merge(cams, labels, sum_cam)
    return self._program(("finish", g, h, w), self._finish)(sum_cam)


def compile_threads(threads):
  """Compile threads: `threads`, or one per usable CPU when 0."""
  if threads > 0:
    return threads
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
      os.cpu_count() or 1)


def size_windows(groups_with_sizes, sizes_per_window):
  """Consecutive runs of groups covering at most `sizes_per_window` distinct sizes each.

  Args:
    groups_with_sizes: list of (group, (H, W)) in loop order (group_by_size keeps a size's
      groups together).
    sizes_per_window: > 0.

  Returns:
    list of lists of (group, (H, W)).
  """
  windows, current, sizes = [], [], set()
  for group, size in groups_with_sizes:
    if size not in sizes and len(sizes) == sizes_per_window:
      windows.append(current)
      current, sizes = [], set()
    current.append((group, size))
    sizes.add(size)
  if current:
    windows.append(current)
  return windows


def _skip_or_raise(source, error):
  """With the source's skip_bad, logs a bad image (counted, as its eager checks do); else raises.
  With verify='none' a broken file is first met here, not when the source is opened."""
  if not getattr(source, "skip_bad", False):
    raise error
  source.bad.add(error)


def groups_with_sizes(source, indices, max_group):
  """(indices, (H, W)) of images that share a size, at most `max_group` each, in first-seen order.

  Sizes come from the headers; a file whose header cannot be read raises its DataError, or with
  the source's skip_bad is logged and left out.
  """
  by_size = collections.OrderedDict()
  for i in indices:
    try:
      size = source.image_size(i)
    except voc.DataError as e:
      _skip_or_raise(source, e)
      continue
    by_size.setdefault(size, []).append(i)
  groups = []
  for size, members in by_size.items():
    for s in range(0, len(members), max_group):
      groups.append((members[s:s + max_group], size))
  return groups


def group_by_size(source, indices, max_group):
  """Lists of indices whose images share (H, W), at most `max_group` each, in first-seen order."""
  return [group for group, _ in groups_with_sizes(source, indices, max_group)]


def compiled_ahead(engine, groups, num_fg, pool):
  """Yields `groups` in order while compiling ahead: the programs of window k + 1 (SIZES_PER_WINDOW
  distinct sizes) compile in `pool` while the caller computes window k, whose programs are
  dropped once it is done (memory follows the window, not the number of sizes).

  Args:
    engine: a CamInference.
    groups: list of (group, (H, W)) in loop order (group_by_size keeps a size's groups together).
    num_fg: F, the class list's foreground count.
    pool: a concurrent.futures executor for the compiles.

  Yields:
    (group, (H, W)), each after the compiles it needs have been started.
  """
  shapes = lambda window: [(len(group), size) for group, size in window]  # noqa: E731
  windows = size_windows(groups, SIZES_PER_WINDOW)
  if windows:
    engine.start_compiling(shapes(windows[0]), num_fg, pool)
  for k, window in enumerate(windows):
    upcoming = shapes(windows[k + 1]) if k + 1 < len(windows) else []
    engine.start_compiling(upcoming, num_fg, pool)
    yield from window
    engine.release(keep=engine.programs(upcoming))


def _infer_groups(engine, source, groups, num_fg, out_dir, bg_threshold, num_overlays, pool,
                  split, total, show_progress=True, cam_format=cam_io.NPZ):
  """run_inference's loop over the groups, compiling ahead (compiled_ahead)."""
  with tqdm.tqdm(total=total, desc=f"infer {split}", unit="img",
                 disable=jax.process_index() != 0 or not show_progress) as progress:
    for listed, _ in compiled_ahead(engine, groups, num_fg, pool):
      # Between groups: everything written so far is whole, the rest is done on a rerun.
      interrupt.check("CAM inference", progress.n, total, unit="image")
      # A header can be fine and the data truncated: decoding names the file (DataError).
      group, images = [], []
      for i in listed:
        try:
          images.append(source.image_pil(i))
          group.append(i)
        except voc.DataError as e:
          _skip_or_raise(source, e)
      progress.update(len(listed) - len(group))
      if not group:
        continue
      norm = np.asarray(jax.device_get(engine(images, source.labels[group])))
      for j, i in enumerate(group):
        image_id = source.ids[i]
        labels = source.labels[i]
        seed = np.asarray(cam_postprocess.seed_from_cams(norm[j], labels, bg_threshold))
        cam_postprocess.save_label_png(os.path.join(out_dir, "seeds", image_id + ".png"), seed)
        if i < num_overlays:
          overlay = cam_postprocess.cam_overlay(np.asarray(images[j]), norm[j], labels)
          atomic_io.save_image(os.path.join(out_dir, "overlays", image_id + ".jpg"),
                               PIL.Image.fromarray(overlay), quality=90)
        # The CAM file last: it marks the image done (a rerun skips it), so it must not exist
        # before the image's other outputs, even if the process is killed between two writes.
        cam_io.save_cam_dict(cam_io.file_path(os.path.join(out_dir, "cams"), image_id, cam_format),
                             norm[j], labels, fmt=cam_format)
      progress.update(len(group))


def run_inference(config, workdir, *, split=None, out_dir=None, bg_threshold=None,
                  variables=None, model=None, cam_format=None):
  """Writes cam_dicts, seeds and overlays for every image of a split; returns a summary dict.

  cam_format: the cam files' format (`cam_io.FORMATS`): default `config.infer.cam_format`
  ('npz'; 'reference_npy' writes the reference's pickled dicts).
  """
  cam_format = config.infer.cam_format if cam_format is None else cam_format
  if config.stage != "seeds":
    raise ValueError(f"config.stage={config.stage!r}: CAM inference needs a stage-1 config; for "
                     "an AffinityNet run use python -m ppc_jax.refine.rw_infer")
  icfg = config.infer
  split = split or icfg.split
  out_dir = out_dir or os.path.join(workdir, f"infer_{split}")
  bg_threshold = icfg.bg_threshold if bg_threshold is None else bg_threshold
  # The data and its class list first: a model whose head does not fit the list fails here,
  # before any restore.
  source = sources.open_source(config.input, split, max_images=icfg.max_images,
                               with_saliency=False)
  classes = voc.check_model_classes(source.classes, config.model.num_classes)
  if variables is None:
    model, variables, step = restore.restore_variables(config, workdir)
  else:
    step = None
  for sub in ("cams", "seeds", "overlays"):
    fileio.makedirs(os.path.join(out_dir, sub))

  mine = list(range(jax.process_index(), len(source.ids), jax.process_count()))
  # A cam file of the format written marks an image done; files of the other format do not count.
  cam_format = cam_io.check_format(cam_format)
  done = fileio.names_in(os.path.join(out_dir, "cams"))
  todo = [i for i in mine if cam_io.file_name(source.ids[i], cam_format) not in done]
  other = cam_io.other_format(cam_format)
  stale = sum(cam_io.file_name(source.ids[i], other) in done for i in todo)
  if stale:
    logging.warning("%s: %d cam files in the %s format are not reused (this run writes %s); "
                    "to reuse them, stop and convert them first: python -m ppc_jax.data.cam_io "
                    "--to=%s --src=DIR --dst=DIR", os.path.join(out_dir, "cams"), stale, other,
                    cam_format, cam_format)
  logging.info("inference on %d of %d images of %s (%d already done)", len(todo), len(mine),
               split, len(mine) - len(todo))
  engine = CamInference(model, variables, scales=icfg.scales, flip=icfg.flip,
                        cam_key=icfg.cam_key, mode=icfg.mode)
  max_group = max(1, icfg.images_per_batch or engine.num_devices)
  bad_before = source.bad.count
  groups = groups_with_sizes(source, todo, max_group)
  num_programs = len(engine.programs([(len(group), size) for group, size in groups]))
  logging.info("%d images of %d sizes: %d programs to compile or load, %d compile threads",
               len(todo), len({size for _, size in groups}), num_programs,
               compile_threads(icfg.compile_threads))
  t0 = time.perf_counter()
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=compile_threads(icfg.compile_threads))
  with interrupt.handling_signals(
      "CAM inference: SIGTERM/SIGINT now stop after the current images"):
    try:
      _infer_groups(engine, source, groups, classes.num_fg, out_dir, bg_threshold,
                    icfg.num_overlays, pool, split, sum(len(g) for g, _ in groups),
                    config.progress_bar, cam_format)
    finally:
      # On an error: drop the queued compiles (wait only for those running), so it surfaces now.
      pool.shutdown(wait=True, cancel_futures=True)
  seconds = time.perf_counter() - t0
  skipped = source.bad.count - bad_before  # unreadable images met here (skip_bad)
  if skipped:
    logging.warning("inference: %d unreadable images skipped; %s", skipped, source.bad.summary())
  summary = dict(split=split, num_images=len(mine), computed=len(todo) - skipped,
                 skipped=skipped, seconds=seconds, num_programs=num_programs,
                 checkpoint_step=step, scales=list(icfg.scales), flip=icfg.flip,
                 mode=icfg.mode, cam_key=icfg.cam_key, bg_threshold=bg_threshold, out_dir=out_dir,
                 devices=engine.num_devices, classes=list(classes.names))
  if jax.process_index() == 0:
    atomic_io.write_json(os.path.join(out_dir, "summary.json"), summary)
  return summary


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------

def _define_flags():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_string("split", None, "Split to infer (default config.infer.split).")
  flags.DEFINE_string("out_dir", None, "Output directory (default <workdir>/infer_<split>).")
  flags.DEFINE_float("bg_threshold", None, "Seed background score (default from config).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime
  f = flags.FLAGS
  runtime.setup_host(f.config)
  summary = run_inference(f.config, f.workdir, split=f.split, out_dir=f.out_dir,
                          bg_threshold=f.bg_threshold)
  logging.info("inference done: %s", summary)
  print(json.dumps(summary, indent=2))


def cli():
  """The console script `ppc-infer` (pyproject.toml): `python -m ppc_jax.seeds.infer`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
