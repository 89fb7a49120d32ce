"""Test setup: 8 fake CPU devices, set before JAX initialises its backends."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ppc_jax import runtime  # noqa: E402

runtime.configure_xla_cpu()  # the XLA:CPU flags the entry points use

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
