"""Test setup: 8 fake CPU devices, set before JAX initialises its backends."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
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

jax.config.update("jax_num_cpu_devices", 8)
