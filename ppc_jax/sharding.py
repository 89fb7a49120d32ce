"""Device mesh and shardings: batch sharded on a 'data' axis, state replicated (the pjit model).

The mesh uses `AxisType.Auto`: PPC's batch-global ops (prototype top-k over every pixel of the
batch, einsums contracting the batch axis) then compile as written and XLA inserts the small
all-gathers. With jax 0.10's default Explicit axes they raise ShardingTypeError.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices=None, *, devices=None):
  """The project's 1-D ('data',) Auto mesh.

  Args:
    num_devices: use the first `num_devices` global devices (default: all of them).
    devices: an explicit device list instead, kept in the given order, e.g. `jax.local_devices()`
      for a process-local mesh (inference: each process runs its own images on its own devices,
      with no cross-process collective). `jax.make_mesh` is not used for it because its topology
      search may reject an arbitrary subset of a TPU slice; a 1-D data mesh needs no topology.

  Returns:
    jax.sharding.Mesh with the single axis DATA_AXIS of type Auto.
  """
  auto = (jax.sharding.AxisType.Auto,)
  if devices is not None:
    if num_devices is not None:
      raise ValueError("make_mesh takes num_devices or devices, not both")
    devices = list(devices)
    if not devices:
      raise ValueError("make_mesh needs at least one device")
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=auto)
  n = jax.device_count() if num_devices is None else num_devices
  if n > jax.device_count():
    raise ValueError(f"asked for a mesh of {n} devices, only {jax.device_count()} exist")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=auto, devices=jax.devices()[:n])


def batch_sharding(mesh):
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_global_batch(global_batch, mesh):
  """Raises unless the global batch splits evenly over processes and devices.

  Returns:
    (per_process, per_device) batch sizes, for logging.
  """
  n_dev = mesh.devices.size
  n_proc = jax.process_count()
  if global_batch % n_dev:
    raise ValueError(
        f"config.input.batch_size={global_batch} is not divisible by the {n_dev} devices of the "
        "mesh; choose a multiple")
  if global_batch % n_proc:
    raise ValueError(
        f"config.input.batch_size={global_batch} is not divisible by {n_proc} processes")
  return global_batch // n_proc, global_batch // n_dev


def to_global(local_batch, sharding):
  """Turns each process's numpy batch (its rows of the global batch) into global jax.Arrays."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
