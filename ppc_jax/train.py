r"""Training entry point (thin: flags -> the trainer of `config.stage`, `ppc_jax.stages`).

Stage 1 ('seeds'), AffinityNet ('affinity') or DeepLab ('segment'), all on the one loop
`trainer.run_loop`.

  python -m ppc_jax.train --config=configs/ppc_voc12.py --workdir=runs/ppc \
      [--config.input.data_dir=...] [--config.optim.momentum_mode=corrected]

Multi-host (TPU pods: `--distributed` alone; GPU hosts / localhost: give the coordinator):
  python -m ppc_jax.train --config=... --workdir=... --distributed \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=0
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ppc_jax import entry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def init_distributed():
  """jax.distributed.initialize, auto-detected on Cloud TPU/Slurm, explicit elsewhere."""
  import jax
  kwargs = {}
  if _COORDINATOR.value:
    kwargs = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime
  runtime.setup_host(_CONFIG.value)
  if _DISTRIBUTED.value:
    init_distributed()
  import jax
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  from ppc_jax import stages
  metrics = stages.of(_CONFIG.value).train(_CONFIG.value, _WORKDIR.value)
  logging.info("final metrics: %s", metrics)


def cli():
  """The console script `ppc-train` (pyproject.toml): `python -m ppc_jax.train`."""
  entry.run(main)


if __name__ == "__main__":
  cli()
