"""Process-level setup shared by the entry points (train, infer, demo)."""

import importlib.metadata
import os
import re


# XLA:CPU flags for this workload: the ResNet38 train step and inference run markedly faster with
# them (`bench/speed.py --cpu_flags=ppc,jax`; docs/benchmarks.md, "CPU").
#  * YNNPACK fusions off: XLA:CPU hands dots and convolutions to YNNPACK by default, which runs the
#    ResNet38 convolutions (3x3 dilated, 1024-2048 channels) and their weight gradients well below
#    the rate of the Eigen path it falls back to.
#  * the concurrency-optimised scheduler off: it stretches live ranges so that independent thunks
#    can run side by side, which costs more temporaries on this step and buys no speed on few
#    cores.
# Only the CPU backend reads them; accelerator runs are unaffected. XLA aborts on a flag it does
# not know and the YNNPACK one is experimental, so they are set only for the jaxlib release they
# were chosen for (requirements.txt); any other jaxlib runs with its own defaults.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",
                 "--xla_cpu_enable_concurrency_optimized_scheduler=false")
CPU_XLA_FLAGS_JAXLIB = ("0.10.2",)


def configure_xla_cpu(enabled=True):
  """Adds CPU_XLA_FLAGS to XLA_FLAGS, except flags the user set.

  A no-op when `enabled` is False (config `xla_cpu_flags`), when the environment has
  PPC_JAX_CPU_FLAGS=0 (JAX's defaults), or when jaxlib is not a CPU_XLA_FLAGS_JAXLIB release.
  Effective only before JAX's backends initialise (the first JAX computation), so the entry points
  call it first.
  """
  if not enabled or os.environ.get("PPC_JAX_CPU_FLAGS", "1") == "0":
    return
  try:
    if importlib.metadata.version("jaxlib") not in CPU_XLA_FLAGS_JAXLIB:
      return
  except importlib.metadata.PackageNotFoundError:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags


# XLA:CPU's intra-op pool ("XLAEigen") has max(cores, devices) threads. Its thunk executor runs a
# collective that may block on a pool thread when other work is ready, where it holds the thread
# until every device arrives, while convolutions and dots split into the same pool and wait for
# their pieces. With several fake CPU devices on a machine with fewer cores, the pool has exactly
# one thread per device: a device lagging behind the others can then wait forever for pieces
# queued behind blocked collectives (the process then aborts in a collective at XLA's rendezvous
# termination timeout). PJRT_NPROC sizes the pool; this many threads per device leaves
# most of it spare.
CPU_POOL_THREADS_PER_DEVICE = 4


def fake_cpu_device_count():
  """CPU devices per process asked for by the environment (XLA_FLAGS or JAX_NUM_CPU_DEVICES)."""
  found = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                     os.environ.get("XLA_FLAGS", ""))
  if found:
    return int(found[-1])  # XLA takes the last occurrence
  try:
    return int(os.environ.get("JAX_NUM_CPU_DEVICES", "") or 1)
  except ValueError:
    return 1


def size_cpu_thread_pool():
  """Sets PJRT_NPROC so that several CPU devices in one process get a pool with threads to spare.

  A no-op with one CPU device per process (the usual case, real or multi-process) and when the
  user set PJRT_NPROC. Must run before JAX's backends initialise.
  """
  devices = fake_cpu_device_count()
  if devices <= 1 or os.environ.get("PJRT_NPROC"):
    return
  os.environ["PJRT_NPROC"] = str(max(os.cpu_count() or 1, CPU_POOL_THREADS_PER_DEVICE * devices))


def configure_compilation_cache(cache_dir, max_gb):
  """Turns on JAX's persistent compilation cache in `cache_dir` ('' = leaves it off).

  Every program is cached, however fast it compiled (JAX's default keeps only those over 1 s;
  inference has hundreds of small per-size programs). max_gb > 0 bounds the directory (LRU) and
  makes JAX take a file lock around each read and write, so processes that share the directory
  never read a half-written entry.

  A directory the environment already gives JAX (JAX_COMPILATION_CACHE_DIR) is left in place,
  as configure_xla_cpu keeps the flags a user set.

  Returns:
    the absolute cache directory in use, or None when off.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not cache_dir:
    return None
  path = os.path.abspath(os.path.expanduser(cache_dir))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise OSError(f"config.compilation_cache_dir={cache_dir!r}: cannot create {path} ({e}); "
                  "set it to a writable directory, or to '' to turn the cache off") from e
  if max_gb <= 0:
    raise ValueError(f"config.compilation_cache_max_gb must be > 0, got {max_gb}")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", int(max_gb * 2**30))
  return path


def setup_host(config=None):
  """Keeps TensorFlow (used only for tf.data) off accelerators and quiet; sets XLA:CPU flags, the
  CPU thread pool's size (size_cpu_thread_pool) and the persistent compilation cache.

  Must run before TensorFlow is imported (TF would otherwise grab GPU memory that JAX needs) and
  before the first JAX computation (XLA reads its flags once).

  Args:
    config: the run's ConfigDict: `xla_cpu_flags` selects configure_xla_cpu, and
      `compilation_cache_dir` / `compilation_cache_max_gb` configure_compilation_cache
      (None: CPU flags on, no cache).
  """
  configure_xla_cpu(True if config is None else bool(config.xla_cpu_flags))
  size_cpu_thread_pool()
  if config is not None:
    configure_compilation_cache(config.compilation_cache_dir, config.compilation_cache_max_gb)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (ValueError, RuntimeError):
    pass
  quiet_library_logs()


class _QuietLibraries:
  """logging.Filter: drops INFO-and-below records from chatty libraries (orbax logs every file)."""

  def __init__(self, prefixes=("orbax", "jax._src")):
    self._markers = tuple(f"/{p.replace('.', '/')}/" for p in prefixes)

  def filter(self, record):
    if record.levelno > 20:  # WARNING and above always pass
      return True
    return not any(m in record.pathname for m in self._markers)


def quiet_library_logs():
  """Keeps ppc_jax's own INFO logs while hiding orbax/jax INFO chatter."""
  import logging as std_logging
  from absl import logging as absl_logging
  quiet = _QuietLibraries()
  absl_logging.get_absl_handler().addFilter(quiet)
  std_logging.getLogger().addFilter(quiet)
