"""The training loop as a library: `run_loop(stage, ...)`, and stage 1's `train_and_evaluate`.

`run_loop` is the one loop of every training stage (resume, signals, jitted sharded step with host
syncs only at log/checkpoint steps, metrics, progress, NaN check, close); a stage describes itself
as a `Stage` (its state, batches, step, checkpoint meta). Stage 1: mesh and batch sizes -> model,
optimizer and state -> pretrained init -> `Stage` -> `run_loop`. The AffinityNet stage
(`ppc_jax.refine.aff_trainer`) builds its own `Stage`.

CAM-only warm-up: `config.cam_warmup_steps` = N > 0 trains steps [0, N) with the 'cam' objective
and the rest with `config.loss.variant`, in one run with one optimizer and one poly LR schedule
over all the steps (`steps.WarmupTrainStep`). The last warm-up step is always a log step, so no
logged window mixes the two objectives' metrics.

Resuming: the state holds the step; the step RNG is `fold_in(seed key, step)` and the input pipeline
is a pure function of (seed, step), so an interrupted run that resumes from its last checkpoint
reaches the same parameters as an uninterrupted one.
"""

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ppc_jax import atomic_io
from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import metrics_writer
from ppc_jax import models
from ppc_jax import mxnet_params
from ppc_jax import optim
from ppc_jax import sharding as shd
from ppc_jax import steps
from ppc_jax import weights
from ppc_jax.data import pipeline
from ppc_jax.data import voc
from ppc_jax.data import voc_meta


class NonFiniteLossError(FloatingPointError):
  """Raised when a logged metric is NaN/inf; the last good checkpoint is kept."""


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint and leaves at the next stop point.

  Installed for the whole run (init, restore and compilation included), so a preemption notice
  that arrives before the first step is not lost. A second SIGINT means "stop now" (Ctrl-C twice
  aborts a long compile): the previous handlers come back and the signal is re-raised. Repeated
  SIGTERMs, or a SIGTERM next to a Ctrl-C (a launcher passing the stop on), change nothing.
  """

  def __init__(self):
    self.raised = False
    self._sigints = 0
    self._previous = {}

  def install(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no harm
        pass
    if self._previous:
      logging.info("SIGTERM/SIGINT now save a checkpoint and stop (a second Ctrl-C: at once)")

  def uninstall(self):
    for sig, handler in self._previous.items():
      # None: the previous handler was not set from Python (nothing we can put back).
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      self._sigints += 1
      if self._sigints > 1:
        logging.warning("second SIGINT: stopping without saving")
        self.uninstall()
        signal.raise_signal(signum)
        return
    if not self.raised:
      logging.warning("signal %d received: saving a checkpoint and stopping", signum)
    self.raised = True


def total_steps(config, num_examples):
  """config.total_steps, or floor(num_examples / batch) * num_epochs as the reference's max_step."""
  if config.total_steps > 0:
    return int(config.total_steps)
  steps_per_epoch = num_examples // config.input.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f"the split has {num_examples} images, fewer than one global batch "
        f"({config.input.batch_size})")
  return steps_per_epoch * int(config.num_epochs)


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


def initial_state(config, model, tx, mesh, rng):
  """The step-0 train state: initialised, then overwritten from config.init's pretrained file."""
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  repl = shd.replicated(mesh)

  def init(rng):
    return steps.create_state(steps.init_variables(model, rng, image_shape), tx)

  state = jax.jit(init, out_shardings=repl)(rng)
  if config.init.torch_checkpoint and config.init.mxnet_params:
    raise ValueError("config.init.torch_checkpoint and config.init.mxnet_params are both set "
                     f"({config.init.torch_checkpoint!r}, {config.init.mxnet_params!r}); "
                     "expected at most one source of pretrained weights")
  if config.init.torch_checkpoint or config.init.mxnet_params:
    state = _load_pretrained(config, state, tx, repl)
  return state


def _load_pretrained(config, state, tx, repl):
  """Overwrites parameters from a reference torch checkpoint or the MXNet ImageNet file."""
  template = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
  if config.init.mxnet_params:
    params_file = config.init.mxnet_params
    md5 = config.init.mxnet_md5
    md5 = mxnet_params.RESNET38_A1_MD5 if md5 == "a1" else (md5 or None)
    logging.info("initialising the backbone from %s (md5 check: %s)", params_file, md5 or "off")
    variables = weights.from_mxnet_file(params_file, template=template, md5=md5)
  else:
    path = config.init.torch_checkpoint
    state_dict = weights.load_torch_file(path)
    try:
      variables, layout = weights.from_reference_state_dict(
          state_dict, template=template, layout=config.init.layout, strict=config.init.strict)
    except ValueError as e:
      raise ValueError(f"config.init.torch_checkpoint {path}: {e}") from e
    logging.info("initialised from %s (%s layout, strict=%s)", path, layout, config.init.strict)
  variables = jax.device_put(variables, repl)
  return jax.jit(lambda v: steps.create_state(v, tx), out_shardings=repl)(variables)


def _calibrate_bn(config, model, state, source, mesh):
  """Sets the frozen BN statistics from the first training crops (a separate iterator, so the
  training data order is untouched)."""
  from ppc_jax import bn_calibration
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


def _is_finite(metrics):
  return all(np.isfinite(v) for v in metrics.values())


def _overlay_images(cam_fn, state, host_batch, count):
  """uint8 [count, H, W, 3] view-1 images blended with their CAM (PCM's where the model has PCM;
  present classes)."""
  from ppc_jax import cam_postprocess  # only needed now and then
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


@dataclasses.dataclass
class Stage:
  """What one training stage hands the shared loop (`run_loop`).

  Stage 1 (`train_and_evaluate`) and the AffinityNet stage (`ppc_jax.refine.aff_trainer`) build
  one each; the loop owns checkpoints, resume, signals, metrics, progress and the NaN check.

  Attributes:
    num_steps: the run's length.
    batch_size: global images per step (for `images_per_sec`).
    initial_state: `() -> state`, the step-0 train state (pretrained weights applied), replicated.
    prepare_fresh: `(state) -> state`, run only when no checkpoint exists (e.g. BN calibration).
    make_batches: `(start_step) -> iterator` of host batches (dicts of numpy arrays); the
      iterator's `close()` is called on every exit path when it has one.
    train_step: `(step, state, global_batch, rng) -> (state, metrics)`, jitted and sharded; `step`
      is the host int index of the step about to run.
    rng: the step key (replicated); the step folds in its own index.
    meta: saved with every checkpoint; a resumed run warns about each key whose saved value
      differs from this one.
    boundary_steps: extra steps (counted as done steps) that are always log points, e.g. the last
      CAM-only warm-up step, so that no logged window mixes two objectives.
    image_summaries: optional `(state, host_batch) -> {name: uint8 [N, H, W, 3]}` written every
      `config.log_images_every_steps`.
  """
  num_steps: int
  batch_size: int
  initial_state: Callable[[], Any]
  make_batches: Callable[[int], Any]
  train_step: Callable[..., Any]
  rng: Any
  prepare_fresh: Optional[Callable[[Any], Any]] = None
  meta: dict = dataclasses.field(default_factory=dict)
  boundary_steps: tuple = ()
  image_summaries: Optional[Callable[[Any, Any], dict]] = None


def run_loop(stage, config, workdir, mesh):
  """Runs `stage` to its last step in `workdir`, resuming from the latest checkpoint there.

  Args:
    stage: a `Stage`.
    config: reads `log_every_steps`, `ckpt_every_steps`, `ckpt_max_to_keep`, `tensorboard`,
      `progress_bar`, `log_images_every_steps`.
    workdir: checkpoints/, metrics.jsonl and tb/ go here.
    mesh: the device mesh of the step (batches are sharded on its 'data' axis).

  Returns:
    dict of the last logged metrics (floats, plus 'step'); empty when already trained.
  """
  num_steps = stage.num_steps
  checkpointer = ckpt_lib.Checkpointer(
      workdir, every_steps=config.ckpt_every_steps, max_to_keep=config.ckpt_max_to_keep)
  writer = metrics_writer.MetricWriter(workdir, tensorboard=config.tensorboard)
  stop = _StopFlag()
  last_metrics = {}
  batches = None
  try:
    stop.install()
    state = stage.initial_state()
    if checkpointer.latest_step() is not None:
      state, meta = checkpointer.restore(
          ckpt_lib.abstract_like(state, shd.replicated(mesh)))
      logging.info("resumed from step %d (%s)", int(state["step"]), meta)
      for key, value in stage.meta.items():
        if key in meta and meta[key] != value:
          # e.g. num_steps: the poly schedule is a function of the run length, so a resumed run
          # of another length follows another LR curve than either run would alone.
          logging.warning("the checkpoint was written by a run with %s=%s, this run has %s: "
                          "the run changes from here on", key, meta[key], value)
    elif stage.prepare_fresh is not None:
      with jax.set_mesh(mesh):
        state = stage.prepare_fresh(state)
    start = int(jax.device_get(state["step"]))
    if start >= num_steps:
      logging.info("already trained: step %d of %d", start, num_steps)
      return last_metrics

    batches = stage.make_batches(start)
    batch_sharding = shd.batch_sharding(mesh)
    step_rng = jax.device_put(stage.rng, shd.replicated(mesh))
    boundaries = set(stage.boundary_steps)

    acc, acc_steps = None, 0
    t_last, step_last = time.perf_counter(), start
    progress = tqdm.tqdm(total=num_steps, initial=start, desc="train", unit="step",
                         disable=jax.process_index() != 0 or not config.progress_bar,
                         dynamic_ncols=True)
    with jax.set_mesh(mesh):
      for step in range(start, num_steps):
        host_batch = next(batches)
        batch = shd.to_global(host_batch, batch_sharding)
        state, metrics = stage.train_step(step, state, batch, step_rng)
        # Device-side running sum: no host sync until a log step.
        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
        acc_steps += 1
        progress.update(1)
        done = step + 1
        is_last = done == num_steps
        save_now = checkpointer.due(done) or is_last
        # Stop points are steps that every process recognises: log and save steps. A signal seen
        # by one process only is shared there (a collective every process enters), so all stop
        # and save at the same step; acting on the local flag elsewhere would leave the other
        # processes waiting in the next step's collectives.
        sync_point = done % config.log_every_steps == 0 or save_now or done in boundaries
        if jax.process_count() == 1:
          stopping = stop.raised
        elif sync_point:
          from jax.experimental import multihost_utils
          stopping = bool(np.any(multihost_utils.process_allgather(np.array(stop.raised))))
        else:
          stopping = False
        if sync_point or stopping:
          host = {k: float(v) / acc_steps for k, v in jax.device_get(acc).items()}
          if not _is_finite(host):
            bad = sorted(k for k, v in host.items() if not np.isfinite(v))
            raise NonFiniteLossError(
                f"non-finite metrics {bad} at step {done}; stopping without saving. The last good "
                f"checkpoint (step {checkpointer.latest_step()}) is kept in "
                f"{checkpointer.directory}")
          now = time.perf_counter()
          host["images_per_sec"] = (done - step_last) * stage.batch_size / (now - t_last)
          if "lr" in metrics:
            host["lr"] = float(jax.device_get(metrics["lr"]))  # the LR of this step, not a mean
          t_last, step_last = now, done
          writer.write_scalars(done, host)
          progress.set_postfix(loss=f"{host['loss']:.4f}", refresh=False)
          last_metrics = dict(host, step=done)
          acc, acc_steps = None, 0
        if (stage.image_summaries is not None and config.log_images_every_steps
            and done % config.log_images_every_steps == 0):
          writer.write_images(done, stage.image_summaries(state, host_batch))
        if save_now or stopping:
          checkpointer.save(done, state, meta=dict(stage.meta))
        if stopping:
          logging.warning("stopped at step %d after saving; rerun to resume", done)
          break
    progress.close()
  finally:
    # On every path, errors included: an input iterator left open would be destroyed only at
    # interpreter shutdown, where it can hang (see pipeline.py, _LIVE_ITERATORS).
    if batches is not None and hasattr(batches, "close"):
      batches.close()
    stop.uninstall()
    checkpointer.close()
    writer.close()
  return last_metrics


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
  os.makedirs(atomic_io.check_local(workdir, "workdir"), exist_ok=True)
  mesh = shd.make_mesh(config.num_devices or None)
  per_process, per_device = shd.check_global_batch(config.input.batch_size, mesh)
  logging.info(
      "devices %d (%s), processes %d; global batch %d, per process %d, per device %d",
      mesh.devices.size, jax.devices()[0].platform, jax.process_count(),
      config.input.batch_size, per_process, per_device)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  # Input source first: its size fixes the schedule length.
  source = pipeline.train_source(config.input)
  voc.check_model_classes(source.classes, config.model.num_classes)
  num_steps = total_steps(config, source.num_examples)
  warmup = warmup_steps(config, num_steps)
  logging.info("%d training images, %d steps", source.num_examples, num_steps)
  if warmup:
    logging.info("CAM-only warm-up: steps [0, %d) train 'cam', steps [%d, %d) %r", warmup, warmup,
                 num_steps, config.loss.variant)

  # Model, optimizer, state.
  model = models.build_model(config.model)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  abstract_vars = jax.eval_shape(lambda r: steps.init_variables(model, r, image_shape), init_rng)
  tx, schedule = optim.make_optimizer(config.optim, num_steps, abstract_vars["params"])
  groups = optim.param_groups(abstract_vars["params"], config.optim)

  prepare_fresh = None
  if (config.init.calibrate_bn_images and not config.init.torch_checkpoint
      and not config.init.mxnet_params):
    prepare_fresh = lambda state: _calibrate_bn(config, model, state, source, mesh)
  cam_fn = steps.make_eval_cam_fn(model)
  stage = Stage(
      num_steps=num_steps,
      batch_size=config.input.batch_size,
      initial_state=lambda: initial_state(config, model, tx, mesh, init_rng),
      prepare_fresh=prepare_fresh,
      make_batches=lambda start: pipeline.make_train_iterator(
          config.input, source=source, start_step=start),
      train_step=steps.WarmupTrainStep(model, tx, schedule, groups, config.loss, mesh,
                                       cam_warmup_steps=warmup),
      rng=step_rng,
      meta={"num_steps": num_steps, "cam_warmup_steps": warmup},
      # The last warm-up step is a log step: the next window has other metrics.
      boundary_steps=(warmup,) if warmup else (),
      image_summaries=lambda state, host_batch: {"cam_overlay": _overlay_images(
          cam_fn, state, host_batch, config.log_images_count)})
  return run_loop(stage, config, workdir, mesh)
