"""runtime: XLA:CPU flags (never overriding the user's) and the persistent compilation cache."""

import importlib.metadata
import os

import numpy as np
import pytest

import e2e_fixtures as e2e
from ppc_jax import runtime


@pytest.fixture(autouse=True)
def _installed_jaxlib_is_known(monkeypatch):
  """The flag logic under test, whichever jaxlib runs the tests (requirements pin the known one)."""
  monkeypatch.setattr(runtime, "CPU_XLA_FLAGS_JAXLIB", (importlib.metadata.version("jaxlib"),))


def test_adds_every_cpu_flag_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu()
  runtime.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags[0] == "--xla_force_host_platform_device_count=4"
  assert sorted(flags[1:]) == sorted(runtime.CPU_XLA_FLAGS)


def test_keeps_a_flag_the_user_set(monkeypatch):
  name = runtime.CPU_XLA_FLAGS[1].split("=")[0]
  monkeypatch.setenv("XLA_FLAGS", f"{name}=true")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert f"{name}=true" in flags and runtime.CPU_XLA_FLAGS[1] not in flags
  assert runtime.CPU_XLA_FLAGS[0] in flags


def test_opt_out_leaves_jax_defaults(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("PPC_JAX_CPU_FLAGS", "0")
  runtime.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == ""


def test_other_jaxlib_releases_keep_their_defaults(monkeypatch):
  """XLA aborts on unknown flags: a jaxlib the flags were not measured with gets none."""
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  monkeypatch.setattr(runtime, "CPU_XLA_FLAGS_JAXLIB", ("0.0.0",))
  runtime.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == ""


def test_config_switch_off(monkeypatch):
  """configs set `xla_cpu_flags=False` (the demo does) to keep JAX's defaults."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  assert config_lib.seeds_config().xla_cpu_flags is True
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu(enabled=False)
  assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.parametrize("xla_flags, jax_num, expected", [
    ("--xla_force_host_platform_device_count=8", None, 8),
    ("--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=6", None, 6),
    ("", "4", 4),
    ("", None, 1),
    ("--xla_cpu_enable_fast_math=false", "x", 1),
])
def test_fake_cpu_device_count_reads_the_environment(monkeypatch, xla_flags, jax_num, expected):
  monkeypatch.setenv("XLA_FLAGS", xla_flags)
  if jax_num is None:
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  else:
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", jax_num)
  assert runtime.fake_cpu_device_count() == expected


def test_cpu_pool_is_sized_only_for_several_devices_and_never_over_the_user(monkeypatch):
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.delenv("PJRT_NPROC", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.size_cpu_thread_pool()
  assert "PJRT_NPROC" not in os.environ  # one device: XLA's own sizing
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  runtime.size_cpu_thread_pool()
  assert int(os.environ["PJRT_NPROC"]) == max(os.cpu_count(), 8 * runtime.CPU_POOL_THREADS_PER_DEVICE)
  monkeypatch.setenv("PJRT_NPROC", "3")
  runtime.size_cpu_thread_pool()
  assert os.environ["PJRT_NPROC"] == "3"


_CACHE_SCRIPT = r"""
import json, sys
import numpy as np
from ppc_jax import config_lib, runtime
config = config_lib.seeds_config()
config.compilation_cache_dir = sys.argv[1]
path = runtime.configure_compilation_cache(config.compilation_cache_dir,
                                           config.compilation_cache_max_gb)
import jax
import PIL.Image
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from ppc_jax import models, train_state
from ppc_jax.seeds import infer
cfg = config_lib.model_config(width_divisor=32)
cfg.stage_blocks = (1, 1, 1, 1)
model = models.build_model(cfg)
variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3)))
engine = infer.cam_engine(model, variables, scales=(0.5, 1.0), flip=True, cam_key="cam_rv")
image = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 26, 3), np.uint8))
labels = np.zeros(20, np.float32)
labels[3] = 1
programs = engine.precompile([engine.key(1, (20, 26))])
inputs = infer.cam_inputs(image, labels, scales=(0.5, 1.0), flip=True)
np.save(sys.argv[2], engine([inputs], (20, 26))[0])
# JAX's monitoring event names end in compilation_cache/cache_hits and .../cache_misses.
count = lambda kind: sum(e.endswith("compilation_cache/" + kind) for e in events)
print(json.dumps(dict(path=path, programs=programs, hits=count("cache_hits"),
                      misses=count("cache_misses"), loaded=engine.programs_loaded)))
"""


def test_compilation_cache_is_reused_by_a_second_process(tmp_path):
  """config.compilation_cache_dir: the first process writes its programs, compiled and exported
  (ppc_jax.program_cache), a second process loads every one of them (no trace, no compile) and
  computes the same CAMs bit for bit."""
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "cache_run.py").write_text(_CACHE_SCRIPT)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
         and not k.startswith("JAX_PERSISTENT_CACHE")}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
  cache = tmp_path / "home" / "xla"  # created by configure_compilation_cache
  runs = []
  for k in range(2):
    proc = subprocess.run([sys.executable, str(tmp_path / "cache_run.py"), str(cache),
                           str(tmp_path / f"cams{k}.npy")], env=env, capture_output=True,
                          text=True, timeout=e2e.PROCESS_TIMEOUT_S, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  first, second = runs
  assert first["path"] == str(cache) and first["programs"] == 1  # one program per image size
  assert first["misses"] >= first["programs"] and first["hits"] == 0
  assert second["hits"] >= second["programs"] and second["misses"] == 0
  assert (first["loaded"], second["loaded"]) == (0, 1)
  assert any(name.endswith("-cache") for name in os.listdir(cache))
  programs = os.listdir(cache / "ppc_jax_programs")
  assert len(programs) == 1 and programs[0].endswith(".exported")
  np.testing.assert_array_equal(np.load(tmp_path / "cams0.npy"), np.load(tmp_path / "cams1.npy"))


def test_compilation_cache_settings(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert runtime.configure_compilation_cache("", 4.0) is None
  with pytest.raises(ValueError, match="compilation_cache_max_gb must be > 0"):
    runtime.configure_compilation_cache(str(tmp_path / "c"), 0.0)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(OSError, match="compilation_cache_dir.*cannot create"):
    runtime.configure_compilation_cache(str(blocker / "sub"), 4.0)
  # The environment's directory wins (as a user's XLA flags do).
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert runtime.configure_compilation_cache(str(tmp_path / "c"), 4.0) == str(tmp_path / "env")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_the_test_processes_have_spare_intra_op_threads():
  """conftest.py's PJRT_NPROC: XLA:CPU's intra-op pool has threads to spare beyond the devices.

  With one pool thread per fake device, collectives that block their threads can starve a lagging
  device's split convolutions (the deadlock conftest.py describes); a jaxlib that stopped reading
  PJRT_NPROC would bring that back, and this names it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = jax.device_put(np.ones((len(jax.devices()), 4), np.float32),
                     NamedSharding(mesh, PartitionSpec("data")))
  assert float(jax.jit(lambda v: v.sum())(x)) == 4 * len(jax.devices())  # a collective ran
  names = []
  for task in os.listdir("/proc/self/task"):
    try:
      with open(f"/proc/self/task/{task}/comm") as f:
        names.append(f.read().strip())
    except OSError:  # the thread ended meanwhile
      pass
  pool = sum(name.endswith("XLAEigen") for name in names)
  assert pool >= len(jax.devices()) + 16, (pool, len(jax.devices()), os.environ.get("PJRT_NPROC"))
