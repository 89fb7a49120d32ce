r"""Top-1 of a pretraining run (the 'pretrain' stage's inference) on a split of its data set.

  python -m ppc_jax.pretrain.evaluate --config=configs/pretrain_demo.py \
      --workdir=runs/pretrain_demo/train [--split=val] [--out_dir=DIR]

Restores the run's latest checkpoint, evaluates `config.pretrain`'s evaluation protocol (central
crop, `eval_size`) and writes `<out_dir or workdir>/eval_<split>.json`.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from ppc_jax import entry

_EXPERIMENT = config_flags.DEFINE_config_file("config", None, "The run's experiment config file.",
                                              lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining run's work directory.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default config.infer.split).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where eval_<split>.json goes (default workdir).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  config = _EXPERIMENT.value
  runtime.setup_host(config)
  from ppc_jax.pretrain import pretrain_trainer  # pylint: disable=import-outside-toplevel
  result = pretrain_trainer.evaluate_workdir(config, _WORKDIR.value, split=_SPLIT.value,
                                             out_dir=_OUT_DIR.value)
  logging.info("%s", result)
  print(f"top-1 {result['eval_top1']:.4f} on {result['eval_images']} images of "
        f"{result['split']} (step {result['step']})")


def cli():
  """The console script `ppc-pretrain-eval` (pyproject.toml)."""
  entry.run(main)


if __name__ == "__main__":
  cli()
