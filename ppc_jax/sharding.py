"""Device mesh and shardings: batch sharded on a 'data' axis, state replicated (the pjit model).

The mesh uses `AxisType.Auto`: PPC's batch-global ops (prototype top-k over every pixel of the
batch, einsums contracting the batch axis) then compile as written and XLA inserts the small
all-gathers. With jax 0.10's default Explicit axes they raise ShardingTypeError.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices=None):
  """A 1-D Auto mesh over all (or the first `num_devices`) global devices."""
  n = jax.device_count() if num_devices is None else num_devices
  if n > jax.device_count():
    raise ValueError(f"asked for a mesh of {n} devices, only {jax.device_count()} exist")
  devices = jax.devices()[:n]
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


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
