"""Test setup: 8 fake CPU devices, set before JAX initialises its backends."""
import os

# XLA:CPU aborts the process (LOG(FATAL), then SIGABRT) when the device threads of a collective
# arrive more than 40 s apart (xla_cpu_collective_call_terminate_timeout_seconds, meant to end a
# deadlock). The 8 fake devices share two cores here, and with other suites or jobs alongside a
# device thread can be starved for long. That is the suspected cause (not confirmed: no core or
# XLA message was caught) of pytest workers dying with a bare "Fatal Python error: Aborted" in
# the in-process training's first steps; pytest's fd capture hid any XLA message (hence
# `--capture=sys` in the Makefile). 600 s still ends a real deadlock; subprocesses inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's own XLA:CPU settings, here and in every training subprocess the tests start (the entry
# points read this): the multi-process and resume tolerances were calibrated with them, and
# Eigen's convolutions (runtime.CPU_XLA_FLAGS) amplify the all-reduce order differences in the
# small PCM heads beyond them. tests/test_runtime.py covers the flag logic itself.
os.environ["PPC_JAX_CPU_FLAGS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


# The end-to-end fixtures of test_end_to_end.py and test_multihost.py (module scope: each of those
# modules trains its own uninterrupted reference run, as its xdist group expects).
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted single-process training run that resumed runs are compared with."""
  import e2e_fixtures  # pylint: disable=import-outside-toplevel
  return e2e_fixtures.reference_run(tmp_path_factory)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """A persistent compilation cache shared by a module's training subprocesses."""
  import e2e_fixtures  # pylint: disable=import-outside-toplevel
  return e2e_fixtures.compile_cache_dir(tmp_path_factory)
