"""Stage 1 training: CAM / SEAM / SEAM+PPC / EPS / EPS+PPC as a `trainer.Stage` on the shared loop.

`train_and_evaluate(config, workdir)`: mesh and batch sizes -> model, optimizer and state ->
pretrained init (or BN calibration) -> `trainer.Stage` -> `trainer.run_loop`.

CAM-only warm-up: `config.cam_warmup_steps` = N > 0 trains steps [0, N) with the 'cam' objective
and the rest with `config.loss.variant`, in one run with one optimizer and one poly LR schedule
over all the steps (`step.WarmupTrainStep`). The last warm-up step is always a log step, so no
logged window mixes the two objectives' metrics.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import pretrained
from ppc_jax import sharding as shd
from ppc_jax import train_state
from ppc_jax import trainer
from ppc_jax.data import pipeline
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.seeds import step as seed_step


def warmup_steps(config, num_steps):
  """The CAM-only steps at the start of the run: `config.cam_warmup_steps`, checked.

  Args:
    config: the experiment config.
    num_steps: the run's length (`total_steps`).

  Returns:
    the number of warm-up steps (0 for a 'cam' run, whose every step is CAM-only anyway).

  Raises:
    ValueError naming the field: a negative count, or one that leaves no step of the configured
    objective.
  """
  warmup = int(config.cam_warmup_steps)
  if warmup < 0:
    raise ValueError(f"config.cam_warmup_steps={warmup}: expected 0 (no warm-up) or a positive "
                     "number of CAM-only steps")
  if config.loss.variant == "cam":
    return 0
  if warmup >= num_steps:
    raise ValueError(
        f"config.cam_warmup_steps={warmup} leaves no step of the {config.loss.variant!r} "
        f"objective: the run has {num_steps} steps (config.total_steps={config.total_steps}); "
        f"expected fewer warm-up steps than that, or config.loss.variant='cam'")
  return warmup


def _calibrate_bn(config, model, state, source, mesh):
  """Sets the frozen BN statistics from the first training crops (a separate iterator, so the
  training data order is untouched)."""
  from ppc_jax.seeds import bn_calibration
  n = config.init.calibrate_bn_images
  per_batch = config.input.batch_size
  batches = pipeline.make_train_iterator(config.input, source=source, start_step=0)
  try:
    local = [next(batches)["image1"] for _ in range(max(1, -(-n // per_batch)))]
  finally:
    if hasattr(batches, "close"):
      batches.close()
  images = shd.to_global(np.concatenate(local), shd.batch_sharding(mesh))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  calibrated = bn_calibration.jit_calibrate(model)(variables, images)
  logging.info("BN statistics calibrated on %d training crops", images.shape[0])
  return dict(state, batch_stats=jax.device_put(calibrated["batch_stats"], shd.replicated(mesh)))


def _overlay_images(cam_fn, state, host_batch, count):
  """uint8 [count, H, W, 3] view-1 images blended with their CAM (PCM's where the model has PCM;
  present classes)."""
  from ppc_jax.seeds import cam_postprocess  # only needed now and then
  images = np.asarray(host_batch["image1"][:count])
  labels = np.asarray(host_batch["labels"][:count])
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  out = jax.device_get(cam_fn(variables, jnp.asarray(images)))
  raw = voc_meta.denormalize(images)
  overlays = []
  for i in range(len(images)):
    cam = np.maximum(out["cam_rv" if "cam_rv" in out else "cam"][i, :, :, 1:], 0)
    cam = cam / (cam.max(axis=(0, 1), keepdims=True) + 1e-5)
    overlays.append(cam_postprocess.cam_overlay(raw[i], cam, labels[i]))
  return np.stack(overlays)


def train_and_evaluate(config, workdir):
  """Trains stage 1 (CAM / SEAM / PPC / EPS) per `config` in `workdir`; returns the final metrics.

  Args:
    config: a full experiment ConfigDict (see configs/*.py).
    workdir: output directory (checkpoints/, metrics.jsonl, tb/, config.json).

  Returns:
    dict of the last logged metrics (floats).
  """
  if config.stage != "seeds":
    raise ValueError(f"config.stage={config.stage!r}: train_and_evaluate trains stage 1 "
                     "('seeds'); python -m ppc_jax.train dispatches other stages")
  fileio.makedirs(workdir)
  mesh = shd.make_mesh(config.num_devices or None)
  per_process, per_device = shd.check_global_batch(config.input.batch_size, mesh)
  logging.info(
      "devices %d (%s), processes %d; global batch %d, per process %d, per device %d",
      mesh.devices.size, jax.devices()[0].platform, jax.process_count(),
      config.input.batch_size, per_process, per_device)
  if jax.process_index() == 0:
    atomic_io.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  # Input source first: its size fixes the schedule length.
  source = sources.train_source(config.input)
  voc.check_model_classes(source.classes, config.model.num_classes)
  num_steps = trainer.total_steps(config, source.num_examples)
  warmup = warmup_steps(config, num_steps)
  logging.info("%d training images, %d steps", source.num_examples, num_steps)
  if warmup:
    logging.info("CAM-only warm-up: steps [0, %d) train 'cam', steps [%d, %d) %r", warmup, warmup,
                 num_steps, config.loss.variant)

  # Model, optimizer, state.
  recipe = train_state.build_recipe(config, num_steps)
  model, tx, schedule, groups = recipe.model, recipe.tx, recipe.schedule, recipe.groups
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)

  prepare_fresh = None
  if config.init.calibrate_bn_images and not pretrained.sources(config.init):
    prepare_fresh = lambda state: _calibrate_bn(config, model, state, source, mesh)
  cam_fn = seed_step.make_eval_cam_fn(model)
  stage = trainer.Stage(
      name="stage-1 training",
      num_steps=num_steps,
      batch_size=config.input.batch_size,
      initial_state=lambda: trainer.initial_state(config, model, tx, mesh, init_rng),
      prepare_fresh=prepare_fresh,
      make_batches=lambda start: pipeline.make_train_iterator(
          config.input, source=source, start_step=start),
      train_step=seed_step.WarmupTrainStep(model, tx, schedule, groups, config.loss, mesh,
                                       cam_warmup_steps=warmup),
      rng=step_rng,
      meta={"num_steps": num_steps, "cam_warmup_steps": warmup},
      # The last warm-up step is a log step: the next window has other metrics.
      boundary_steps=(warmup,) if warmup else (),
      image_summaries=lambda state, host_batch: {"cam_overlay": _overlay_images(
          cam_fn, state, host_batch, config.log_images_count)})
  return trainer.run_loop(stage, config, workdir, mesh)
