"""Stage 0 training: image-classification pretraining of a backbone (`config.stage='pretrain'`).

`train_pretrain(config, workdir)` builds a `trainer.Stage` for the shared `trainer.run_loop`
(checkpoints, exact resume, signals, metrics, progress, NaN check are every stage's); the step
(`step.make_train_step`) is jitted with the batch sharded on the mesh's 'data' axis and the state
replicated, so BN statistics and the loss are those of the global batch, on one process or many.

Evaluation (top-1 and loss on `config.infer.split`, `Evaluator`): every `pretrain.eval_every_steps`
steps and after the last one. The run is cut into segments at those steps, each one
`trainer.run_loop` to the segment's end (which saves a checkpoint there), followed by the
evaluation of the state it reached; its numbers go to metrics.jsonl / TensorBoard at that step
(`eval_top1`, `eval_loss`), and the last one also to `<workdir>/eval_<split>.json`. A resumed run
continues at its checkpoint; an evaluation that a kill cut short is not repeated, except the
final one (a finished run without its eval file evaluates on the rerun).

Metrics logged every `log_every_steps`: loss, top1 (on the training crops, before the update),
lr, grad_norm, images_per_sec, input_wait_fraction.
"""

import json
import os

from absl import logging
import jax

from ppc_jax import atomic_io
from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax import metrics_writer
from ppc_jax import sharding as shd
from ppc_jax import stages
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.data import pipeline
from ppc_jax.pretrain import data
from ppc_jax.pretrain import schedule as schedule_lib
from ppc_jax.pretrain import step as step_lib


def check_classes(source, config):
  """The model's output count equals the data set's classes (a ValueError saying what to set)."""
  if len(source.classes) != int(config.model.num_classes):
    raise ValueError(
        f"config.model.num_classes={config.model.num_classes}, but {source.list_path} has "
        f"{len(source.classes)} classes; set --config.model.num_classes={len(source.classes)}")


def eval_file(workdir, split):
  return os.path.join(workdir, f"eval_{split}.json")


def segment_ends(num_steps, every):
  """The steps after which the run evaluates: every `every` steps (0: none) and the last."""
  ends = list(range(every, num_steps, every)) if every > 0 else []
  return ends + [num_steps]


class Evaluator:
  """Top-1 and mean loss of a state on the evaluation split, over the mesh's devices."""

  def __init__(self, config, model, mesh, source):
    self.config, self.mesh, self.source = config, mesh, source
    repl = shd.replicated(mesh)
    self._step = jax.jit(step_lib.make_eval_step(model),
                         in_shardings=(repl, shd.batch_sharding(mesh)), out_shardings=repl)

  def __call__(self, state):
    """{'eval_top1', 'eval_loss', 'eval_images'} of `state` (its params and batch_stats)."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    batches, num_batches, count = data.make_eval_iterator(self.config, self.source)
    sharding = shd.batch_sharding(self.mesh)
    total = None
    try:
      with jax.set_mesh(self.mesh):
        for _ in range(num_batches):
          sums = self._step(variables, shd.to_global(next(batches), sharding))
          total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    finally:
      batches.close()
    total = {k: float(v) for k, v in jax.device_get(total).items()}
    if int(round(total["count"])) != count:
      raise AssertionError(f"evaluated {total['count']} examples of {count}")
    return {"eval_top1": total["correct"] / count, "eval_loss": total["loss"] / count,
            "eval_images": count}


def _write_eval(config, workdir, step, result):
  """Appends the evaluation to metrics.jsonl / TensorBoard at `step` (process 0 writes)."""
  writer = metrics_writer.MetricWriter(workdir, tensorboard=config.tensorboard)
  try:
    writer.write_scalars(step, {k: float(v) for k, v in result.items()})
  finally:
    writer.close()


def train_pretrain(config, workdir):
  """Pretrains `config.model` (model 'classifier') on `config.pretrain`'s data in `workdir`.

  Returns:
    dict of the last logged training metrics with the final evaluation's (eval_top1,
    eval_loss, eval_images) added.
  """
  stages.of(config)  # the model is the classifier
  fileio.makedirs(workdir)
  mesh = shd.make_mesh(config.num_devices or None)
  shd.check_global_batch(config.input.batch_size, mesh)
  shd.check_global_batch(config.pretrain.eval_batch_size, mesh)
  if jax.process_index() == 0:
    atomic_io.write_text(os.path.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))
  prepare = jax.process_count() == 1
  source = data.open_source(config, config.input.split, prepare=prepare)
  check_classes(source, config)
  eval_source = data.open_source(config, config.infer.split, classes=source.classes,
                                 prepare=prepare)
  num_steps = trainer.total_steps(config, source.num_examples)
  spe = pipeline.steps_per_epoch(source.num_examples, config.input.batch_size)
  recipe = train_state.build_recipe(config, num_steps)
  model = recipe.model
  tx, schedule, groups = schedule_lib.make_optimizer(config, num_steps, spe,
                                                     recipe.abstract_variables["params"])
  logging.info("pretraining %s (width 1/%d): %d images, %d classes, %d steps (%d per epoch)",
               config.model.backbone, config.model.width_divisor, source.num_examples,
               len(source.classes), num_steps, spe)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  jitted = train_state.jit_train_step(step_lib.make_train_step(
      model, tx, schedule, groups, float(config.pretrain.label_smoothing)), mesh)
  evaluator = Evaluator(config, model, mesh, eval_source)

  # The state each segment ends with: the loop's last output (not donated to a later step).
  held = {}

  def train_step(_, state, batch, step_rng):
    state, metrics = jitted(state, batch, step_rng)
    held["state"] = state
    return state, metrics

  def restored(step):
    """The checkpointed state at `step`, replicated on the mesh (a segment that ran no step)."""
    abstract = ckpt_lib.abstract_like(
        jax.eval_shape(lambda v: train_state.create_state(v, tx), recipe.abstract_variables),
        shd.replicated(mesh))
    with ckpt_lib.Checkpointer(workdir, every_steps=0) as checkpointer:
      return checkpointer.restore(abstract, step=step)[0]

  with ckpt_lib.Checkpointer(workdir, every_steps=0) as checkpointer:
    start = checkpointer.latest_step() or 0
  final_file = eval_file(workdir, config.infer.split)
  last = {}
  result = {}
  for end in segment_ends(num_steps, int(config.pretrain.eval_every_steps)):
    if end < start or (end == start and (end != num_steps or fileio.exists(final_file))):
      continue  # trained and evaluated by an earlier run
    stage = trainer.Stage(
        name="pretraining",
        num_steps=end,
        batch_size=config.input.batch_size,
        initial_state=lambda: trainer.initial_state(config, model, tx, mesh, init_rng),
        make_batches=lambda first: data.make_train_iterator(config, source, start_step=first),
        train_step=train_step,
        rng=step_rng,
        meta={"num_steps": num_steps, "stage": "pretrain"})
    try:
      last = trainer.run_loop(stage, config, workdir, mesh) or last
    except interrupt.Interrupted as e:
      raise interrupt.Interrupted(stage.name, e.done, num_steps) from None
    state = held.pop("state", None) or restored(end)
    result = evaluator(state)
    del state
    logging.info("step %d: eval top-1 %.4f, loss %.4f on %d images of %s", end,
                 result["eval_top1"], result["eval_loss"], result["eval_images"],
                 config.infer.split)
    _write_eval(config, workdir, end, result)
    if end == num_steps and jax.process_index() == 0:
      atomic_io.write_text(final_file, json.dumps(
          dict(result, step=end, split=config.infer.split), indent=2))
  if not result and fileio.exists(final_file):
    with fileio.open(final_file) as f:
      result = {k: v for k, v in json.load(f).items() if k.startswith("eval_")}
  return dict(last, **result)


def evaluate_workdir(config, workdir, *, split=None, out_dir=None):
  """Top-1 of a pretraining run's latest checkpoint on `split` (default config.infer.split):
  the stage's inference. Writes `<out_dir or workdir>/eval_<split>.json`.

  Returns:
    {'eval_top1', 'eval_loss', 'eval_images', 'step', 'split'}.
  """
  stages.of(config)
  split = split or config.infer.split
  mesh = shd.make_mesh(config.num_devices or None)
  shd.check_global_batch(config.pretrain.eval_batch_size, mesh)
  prepare = jax.process_count() == 1
  classes = None
  if config.pretrain.source == "folders":
    classes = data.folder_classes(config.pretrain.folder_dir, config.input.split)
  source = data.open_source(config, split, classes=classes, prepare=prepare)
  check_classes(source, config)
  recipe = train_state.build_recipe(config, 1)  # the run length only shapes the LR schedule
  abstract = ckpt_lib.abstract_like(recipe.abstract_state(), shd.replicated(mesh))
  with ckpt_lib.Checkpointer(workdir, every_steps=0) as checkpointer:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first "
                              "(python -m ppc_jax.train)")
    state, _ = checkpointer.restore(abstract)
  result = Evaluator(config, recipe.model, mesh, source)(state)
  result = dict(result, step=int(jax.device_get(state["step"])), split=split)
  out = out_dir or workdir
  if jax.process_index() == 0:
    fileio.makedirs(out)
    atomic_io.write_text(eval_file(out, split), json.dumps(result, indent=2))
  logging.info("%s: top-1 %.4f on %d images of %s (step %d)", workdir, result["eval_top1"],
               result["eval_images"], split, result["step"])
  return result
