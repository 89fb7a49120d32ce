"""One inference engine for the three stages: CAMs, the random walk and segmentation.

A stage supplies its per-image inference as a `PerImage`: the device function of one image
(`compute`), the shapes of its inputs for an image size (`input_spec`), how to read one image's
inputs on the host (`load`) and how to write its results (`write`). `run_split` does the rest:

- each process takes every process_count-th image (its share);
- images whose output already exists are skipped (an interrupted run resumes);
- images are grouped by exact size (H, W), read from the file headers; no padding enters a
  network, so a result does not depend on the other images of its batch;
- a group of up to D x k same-size images (D local devices, k = images_per_device) is one call of
  one program, its inputs sharded over the devices; a smaller last group runs on the first
  ceil(n / k) devices, so no device computes a copy;
- inside a program each device runs `compute` on its images one at a time (k = 1: exactly the
  one-image program; k > 1: `lax.map`), so every result equals `compute` on that image alone;
- every program is compiled ahead from shapes alone, in threads (XLA compiles outside the GIL;
  the variables must have the model's shapes, as a restore gives them: Flax's re-check of each
  parameter's shape is skipped in the trace, `models.trusted_shapes`):
  the programs of the next SIZES_PER_WINDOW sizes compile while the current ones compute, through
  the persistent compilation cache when it is on (`runtime.setup_host`), and are dropped when
  their window is done, so memory follows the window and not the number of sizes; with that cache
  on, each program is also kept exported (`program_cache`), so a rerun neither traces nor
  lowers the model again;
- the next group's inputs are read in a thread, and a group's results are written while the next
  group computes (dispatch is asynchronous);
- a tqdm bar shows progress; SIGTERM / SIGINT stop between groups, after writing what was
  computed (`ppc_jax.interrupt`).
`write` must write every file atomically and the file that marks the image done last.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import math
import os
import threading
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
from jax.sharding import PartitionSpec as P
import tqdm

from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax import program_cache as program_cache_lib
from ppc_jax import sharding as shd
from ppc_jax.data import voc
from ppc_jax.models import trusted_shapes

# Distinct image sizes whose programs are compiled ahead and held at a time.
SIZES_PER_WINDOW = 8


@dataclasses.dataclass(frozen=True)
class PerImage:
  """A stage's inference of one image.

  Attributes:
    name: what runs, for logs, the progress bar and interrupt messages ('random walk').
    compute: `(variables, inputs, size) -> outputs` of one image: pure and traceable, `inputs`
      shaped as `input_spec(size)`, `size` = (H, W) static.
    input_spec: `(H, W) -> pytree of jax.ShapeDtypeStruct`, one image's inputs (no batch axis).
    load: `index -> (inputs, context)` on the host: numpy arrays matching `input_spec`, and
      anything `write` needs; or None when the image is skipped (`read_or_skip`).
    write: `(index, outputs, context) -> None`: numpy outputs of one image to files, each written
      atomically, the file named by `done_name` last.
    done_name: `image_id -> file name` in `done_dir` that marks the image done.
    done_dir: the directory of those files.
  """
  name: str
  compute: Callable[..., Any]
  input_spec: Callable[..., Any]
  load: Callable[..., Any]
  write: Callable[..., Any]
  done_name: Callable[[str], str]
  done_dir: str


def compile_threads(threads):
  """Compile threads: `threads`, or one per usable CPU when 0."""
  if threads > 0:
    return threads
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
      os.cpu_count() or 1)


def skip_or_raise(source, error):
  """With the source's skip_bad, records a bad image (counted, as its eager checks do); else
  raises it. With verify='none' a broken file is first met during inference."""
  if not getattr(source, "skip_bad", False):
    raise error
  source.bad.add(error)


def read_or_skip(source, read, index):
  """`read(index)`, or None when it raises a DataError and the source skips bad images."""
  try:
    return read(index)
  except voc.DataError as e:
    skip_or_raise(source, e)
    return None


class Engine:
  """Compiled, device-sharded programs of a per-image function, one per (image size, devices).

  Args:
    compute, input_spec: as `PerImage`'s.
    variables: the model variables (host or device arrays); replicated on the devices used.
    devices: the devices (default: this process's local devices; each process runs its own
      images, with no cross-process collective).
    images_per_device: k, images each device computes per call (one after the other).
    program_cache: a `program_cache.ProgramCache` of exported programs, None for none, or
      'auto': beside the persistent compilation cache when that is on
      (`program_cache.default_cache`). Used when `compute` has a fingerprint.
  """

  def __init__(self, compute, input_spec, variables, *, devices=None, images_per_device=1,
               program_cache="auto"):
    if int(images_per_device) < 1:
      raise ValueError(f"images_per_device must be >= 1, got {images_per_device}")
    self.devices = list(jax.local_devices() if devices is None else devices)
    self.images_per_device = int(images_per_device)
    self.batch_size = len(self.devices) * self.images_per_device
    self._compute = compute
    self._input_spec = input_spec
    self._host_variables = variables
    self._meshes = {}          # m -> (mesh of the first m devices, variables replicated on it)
    self._compiled = {}        # key -> compiled program
    self._pending = {}         # key -> future of a compile in flight
    self._lock = threading.Lock()
    if isinstance(program_cache, str):
      if program_cache != "auto":
        raise ValueError(f"program_cache must be a ProgramCache, None or 'auto', got "
                         f"{program_cache!r}")
      program_cache = program_cache_lib.default_cache()
    self._program_cache = program_cache
    self._program_key = None   # the key text common to this engine's programs
    if program_cache is not None:
      try:
        function = program_cache_lib.fingerprint(compute)
      except program_cache_lib.NoFingerprint as e:
        logging.info("program cache off for this engine: %s", e)
      else:
        self._program_key = "\n".join([
            function, program_cache_lib.environment_text(self.devices[0]),
            "variables " + program_cache_lib.abstract_text(variables),
            f"images_per_device {self.images_per_device}"])
    self.programs_loaded = 0   # programs read from the program cache (not traced)

  @property
  def num_devices(self):
    return len(self.devices)

  def key(self, num_images, size):
    """The program key of a call on `num_images` (<= batch_size) images of `size`: (size, m)."""
    if not 0 < num_images <= self.batch_size:
      raise ValueError(f"a call takes 1..{self.batch_size} images, got {num_images}")
    return (tuple(int(s) for s in size), math.ceil(num_images / self.images_per_device))

  def keys(self, groups):
    """The distinct program keys of `groups` [(indices, (H, W))], in first-use order."""
    return list(dict.fromkeys(self.key(len(group), size) for group, size in groups))

  def _mesh(self, m):
    with self._lock:  # compile threads and the loop both ask
      if m not in self._meshes:
        mesh = shd.make_mesh(devices=self.devices[:m])
        variables = jax.device_put(self._host_variables, shd.replicated(mesh))
        self._meshes[m] = (mesh, variables)
      return self._meshes[m]

  def _jitted(self, size, m):
    """jit of the m-device program: inputs [m * k, ...] sharded on 'data', variables replicated."""
    mesh, _ = self._mesh(m)
    compute = functools.partial(self._compute, size=size)
    k = self.images_per_device

    def per_device(variables, inputs):  # inputs: leaves [k, ...], this device's images
      if k == 1:  # the one-image program itself
        out = compute(variables, jax.tree.map(lambda x: x[0], inputs))
        return jax.tree.map(lambda y: y[None], out)
      return jax.lax.map(lambda x: compute(variables, x), inputs)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(shd.DATA_AXIS)),
                                 out_specs=P(shd.DATA_AXIS)))

  def _compile(self, key):
    size, m = key
    mesh, variables = self._mesh(m)
    sharding = shd.batch_sharding(mesh)
    n = m * self.images_per_device
    spec = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((n,) + tuple(s.shape), s.dtype, sharding=sharding),
        self._input_spec(size))
    # The variables were restored against the stage's abstract ones: Flax's re-check of each
    # parameter's shape is skipped while tracing (same program, less tracing per size).
    if self._program_key is None:
      with trusted_shapes.skip_param_shape_checks():
        lowered = self._jitted(size, m).lower(variables, spec)
    else:
      lowered = jax.jit(self._exported(size, m, variables, spec).call).lower(variables, spec)
    return lowered.compile()

  def _exported(self, size, m, variables, spec):
    """The program of (size, m) as `jax.export.Exported`: from the program cache, or traced and
    stored there."""
    key = program_cache_lib.key_of(self._program_key, f"devices {m}",
                                   "inputs " + program_cache_lib.abstract_text(spec))
    expected = tuple((tuple(x.shape), np.dtype(x.dtype))
                     for x in jax.tree.leaves((variables, spec)))
    exported = self._program_cache.get(key, expected_avals=expected, num_devices=m)
    if exported is not None:
      with self._lock:
        self.programs_loaded += 1
      return exported
    with trusted_shapes.skip_param_shape_checks():
      exported = jax.export.export(self._jitted(size, m))(variables, spec)
    self._program_cache.put(key, exported)
    return exported

  def start_compiling(self, keys, pool):
    """Submits the compiles of `keys` not compiled or in flight to the executor `pool`; with the
    persistent compilation cache on, a program compiled by an earlier run is loaded instead.

    Returns:
      the number of compiles submitted.
    """
    for key in [k for k, f in self._pending.items() if f.cancelled()]:
      del self._pending[key]
    new = [k for k in keys if k not in self._compiled and k not in self._pending]
    for key in new:
      self._pending[key] = pool.submit(self._compile, key)
    return len(new)

  def precompile(self, keys, threads=0):
    """Compiles `keys` on `threads` threads (0: one per usable CPU) and waits; returns the count."""
    with concurrent.futures.ThreadPoolExecutor(compile_threads(threads)) as pool:
      n = self.start_compiling(keys, pool)
      for key in list(self._pending):
        self._compiled[key] = self._pending.pop(key).result()
    return n

  def release(self, keep=()):
    """Drops the compiled programs whose keys are not in `keep`."""
    keep = set(keep)
    for key in [k for k in self._compiled if k not in keep]:
      del self._compiled[key]

  def program(self, key):
    """The compiled program of `key`: held, waited for, or compiled now."""
    future = self._pending.pop(key, None)
    if future is not None and not future.cancelled():  # cancelled: an earlier run stopped
      self._compiled[key] = future.result()
    if key not in self._compiled:
      self._compiled[key] = self._compile(key)
    return self._compiled[key]

  def dispatch(self, inputs, size):
    """Starts the computation of n same-size images; returns the device outputs, [m * k, ...]
    per leaf (rows n.. repeat the last image; asynchronous: read with `jax.device_get`).

    Args:
      inputs: list of n (1..batch_size) per-image input pytrees of `input_spec(size)`.
      size: (H, W).
    """
    key = self.key(len(inputs), size)
    mesh, variables = self._mesh(key[1])
    rows = list(inputs) + [inputs[-1]] * (key[1] * self.images_per_device - len(inputs))
    batch = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    return self.program(key)(variables, jax.device_put(batch, shd.batch_sharding(mesh)))

  def __call__(self, inputs, size):
    """The host outputs of n same-size images: a list of n per-image output pytrees."""
    return unbatch(jax.device_get(self.dispatch(inputs, size)), len(inputs))


def unbatch(outputs, n):
  """The first n per-image pytrees of batched host outputs."""
  return [jax.tree.map(lambda y, j=j: y[j], outputs) for j in range(n)]


def groups_by_size(source, indices, max_group):
  """(indices, (H, W)) of images that share a size, at most `max_group` each; sizes in first-seen
  order, a size's groups together. Sizes come from the headers; an unreadable header raises its
  DataError, or with the source's skip_bad is recorded and the image left out."""
  by_size = collections.OrderedDict()
  for i in indices:
    try:
      size = source.image_size(i)
    except voc.DataError as e:
      skip_or_raise(source, e)
      continue
    by_size.setdefault(tuple(size), []).append(i)
  return [(members[s:s + max_group], size) for size, members in by_size.items()
          for s in range(0, len(members), max_group)]


def size_windows(groups, sizes_per_window):
  """Consecutive runs of `groups` [(indices, (H, W))] with at most `sizes_per_window` sizes each."""
  windows, current, sizes = [], [], set()
  for group, size in groups:
    if size not in sizes and len(sizes) == sizes_per_window:
      windows.append(current)
      current, sizes = [], set()
    current.append((group, size))
    sizes.add(size)
  if current:
    windows.append(current)
  return windows


def compiled_ahead(engine, groups, pool):
  """Yields `groups` in order while the programs of the next window of sizes compile in `pool`;
  a window's programs are released once it is done."""
  windows = size_windows(groups, SIZES_PER_WINDOW)
  if windows:
    engine.start_compiling(engine.keys(windows[0]), pool)
  for k, window in enumerate(windows):
    upcoming = engine.keys(windows[k + 1]) if k + 1 < len(windows) else []
    engine.start_compiling(upcoming, pool)
    yield from window
    engine.release(keep=upcoming)


def todo_indices(source, indices, done_dir, done_name):
  """This process's share of `indices` (every process_count-th), and those of it not done.

  Returns:
    (mine, todo): lists of indices into `source`.
  """
  mine = list(indices)[jax.process_index()::jax.process_count()]
  done = fileio.names_in(done_dir)
  return mine, [i for i in mine if done_name(source.ids[i]) not in done]


def run_split(per_image, engine, source, indices, *, threads=1, show_progress=True, desc=None):
  """Runs `per_image` on this process's images of `indices` that are not done.

  Args:
    per_image: the stage's `PerImage`.
    engine: an `Engine` of `per_image.compute` / `input_spec`.
    source: the images (`ppc_jax.data.sources.open_source`): ids, image_size.
    indices: indices into `source`, in the order to consider them.
    threads: compile threads (0: one per usable CPU).
    show_progress: the tqdm bar (process 0 only).
    desc: the bar's label (default per_image.name).

  Returns:
    dict: num_images (this process's share), todo, computed, skipped (unreadable, with the
    source's skip_bad), num_sizes, num_programs, programs_loaded (of them, read from the
    program cache rather than traced), seconds.
  """
  mine, todo = todo_indices(source, indices, per_image.done_dir, per_image.done_name)
  logging.info("%s on %d of %d images (%d already done), %d device(s)", per_image.name,
               len(todo), len(mine), len(mine) - len(todo), engine.num_devices)
  bad_before, loaded_before = source.bad.count, engine.programs_loaded
  t0 = time.perf_counter()
  groups = groups_by_size(source, todo, engine.batch_size)
  num_programs = len(engine.keys(groups))
  logging.info("%s: %d sizes, %d programs to compile or load, %d compile threads",
               per_image.name, len({size for _, size in groups}), num_programs,
               compile_threads(threads))
  total = sum(len(group) for group, _ in groups)
  progress = tqdm.tqdm(total=total, desc=desc or per_image.name, unit="img",
                       disable=jax.process_index() != 0 or not show_progress)

  def load_group(group):
    loaded = [(i, per_image.load(i)) for i in group]
    return [(i, item[0], item[1]) for i, item in loaded if item is not None]

  def finish(group_size, loaded, outputs):
    host = jax.device_get(outputs)
    for j, (i, _, context) in enumerate(loaded):
      per_image.write(i, jax.tree.map(lambda y, j=j: y[j], host), context)
    progress.update(group_size)

  compile_pool = concurrent.futures.ThreadPoolExecutor(compile_threads(threads))
  loader = concurrent.futures.ThreadPoolExecutor(1)
  pending = None  # (group size, loaded, device outputs) of the group computing now
  try:
    with interrupt.handling_signals(
        f"{per_image.name}: SIGTERM/SIGINT now stop after the current images"):
      next_load = loader.submit(load_group, groups[0][0]) if groups else None
      for k, (group, size) in enumerate(compiled_ahead(engine, groups, compile_pool)):
        loaded = next_load.result()
        if k + 1 < len(groups):
          next_load = loader.submit(load_group, groups[k + 1][0])
        outputs = engine.dispatch([x for _, x, _ in loaded], size) if loaded else None
        if pending is not None:  # written while this group computes
          finish(*pending)
        pending = (len(group), loaded, outputs) if loaded else None
        if not loaded:
          progress.update(len(group))
        if interrupt.requested():  # what was computed is written; the rest waits for a rerun
          if pending is not None:
            finish(*pending)
            pending = None
          interrupt.check(per_image.name, progress.n, total, unit="image")
      if pending is not None:
        finish(*pending)
  finally:
    # On an error: drop the queued compiles (wait only for those running), so it surfaces now.
    compile_pool.shutdown(wait=True, cancel_futures=True)
    loader.shutdown(wait=True, cancel_futures=True)
    progress.close()
  return dict(num_images=len(mine), todo=len(todo),
              computed=len(todo) - (source.bad.count - bad_before),
              skipped=source.bad.count - bad_before,
              num_sizes=len({size for _, size in groups}), num_programs=num_programs,
              programs_loaded=engine.programs_loaded - loaded_before,
              seconds=time.perf_counter() - t0)
