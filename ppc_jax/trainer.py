"""The training loop every stage shares: `run_loop(stage, ...)` and the pieces around it.

`run_loop` is the one loop of every training stage (resume, signals, jitted sharded step with host
syncs only at log/checkpoint steps, metrics, progress, NaN check, close); a stage describes itself
as a `Stage` (its state, batches, step, checkpoint meta): stage 1 in
`ppc_jax.seeds.seed_trainer`, AffinityNet in `ppc_jax.refine.aff_trainer`, DeepLab in
`ppc_jax.segment.seg_trainer`. `initial_state` builds a step-0 state with pretrained weights from
`config.init` (`ppc_jax.pretrained`: the MXNet ImageNet ResNet38, a reference .pth, or the
backbone of an earlier run).

Resuming: the state holds the step; the step RNG is `fold_in(seed key, step)` and each stage's
input pipeline is a pure function of (seed, step), so an interrupted run that resumes from its
last checkpoint reaches the same parameters as an uninterrupted one. What the interrupted run
logged past that checkpoint leaves metrics.jsonl and the TensorBoard files
(`MetricWriter.drop_after`), so they read as one run's. A save that a kill cut short is named in a
warning and ignored.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ppc_jax import checkpoint as ckpt_lib
from ppc_jax import interrupt
from ppc_jax import metrics_writer
from ppc_jax import pretrained
from ppc_jax import sharding as shd
from ppc_jax import stages
from ppc_jax import train_state


# Per-window timings the loop adds to the logged metrics. They differ between runs of one config,
# so comparisons of two runs' metrics (resume, multi-process) leave them out.
TIMING_KEYS = ("images_per_sec", "input_wait_fraction")


class NonFiniteLossError(FloatingPointError):
  """Raised when a logged metric is NaN/inf; the last good checkpoint is kept."""


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


def initial_state(config, model, tx, mesh, rng):
  """The step-0 train state: initialised, then `config.init`'s weights (`pretrained.load`, with
  the stage's own import of reference files), replicated on `mesh`."""
  image_shape = (config.input.crop_size, config.input.crop_size, 3)
  repl = shd.replicated(mesh)
  variables = _jitted_init(model, image_shape, repl)(rng)
  if pretrained.sources(config.init):
    loaded = pretrained.load(config, jax.device_get(variables),
                             stages.get(config.stage).import_torch)
    variables = jax.device_put(loaded, repl)
  return _jitted_create_state(tx, repl)(variables)


# One compiled program per (model, shape, sharding) and per (optimizer, sharding): a process that
# builds a stage's step-0 state again (the pipeline, tests) reuses it instead of recompiling.
@functools.lru_cache(maxsize=8)
def _jitted_init(model, image_shape, sharding):
  return jax.jit(lambda r: train_state.init_variables(model, r, image_shape),
                 out_shardings=sharding)


@functools.lru_cache(maxsize=8)
def _jitted_create_state(tx, sharding):
  return jax.jit(lambda v: train_state.create_state(v, tx), out_shardings=sharding)


def _is_finite(metrics):
  return all(np.isfinite(v) for v in metrics.values())


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
    name: what the stage trains, for messages ('stage-1 training', 'AffinityNet training').
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
  name: str = "training"


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

  Raises:
    interrupt.Interrupted: SIGTERM / SIGINT stopped the run before its last step (after saving a
      checkpoint of the step reached): the stage is not complete, and a rerun resumes it.
  """
  checkpointer = ckpt_lib.Checkpointer(
      workdir, every_steps=config.ckpt_every_steps, max_to_keep=config.ckpt_max_to_keep)
  writer = metrics_writer.MetricWriter(workdir, tensorboard=config.tensorboard)
  with interrupt.handling_signals("SIGTERM/SIGINT now save a checkpoint and stop"):
    try:
      last_metrics = _run(stage, config, mesh, checkpointer, writer)
    finally:
      checkpointer.close()
      writer.close()
  return last_metrics


def _run(stage, config, mesh, checkpointer, writer):
  """`run_loop`'s body (signal handlers installed; closing the checkpointer is the caller's)."""
  num_steps = stage.num_steps
  last_metrics = {}
  batches = None
  done = None
  try:
    if jax.process_index() == 0:
      for path in checkpointer.uncommitted():
        logging.warning("ignoring the uncommitted checkpoint %s (an interrupted save)", path)
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
    # What a killed run logged past its last checkpoint: this run logs those steps again.
    writer.drop_after(start)

    batches = stage.make_batches(start)
    batch_sharding = shd.batch_sharding(mesh)
    step_rng = jax.device_put(stage.rng, shd.replicated(mesh))
    boundaries = set(stage.boundary_steps)

    acc, acc_steps = None, 0
    t_last, step_last = time.perf_counter(), start
    input_wait_s = 0.0  # this window's host time spent getting batches onto the devices
    progress = tqdm.tqdm(total=num_steps, initial=start, desc="train", unit="step",
                         disable=jax.process_index() != 0 or not config.progress_bar,
                         dynamic_ncols=True)
    with jax.set_mesh(mesh):
      for step in range(start, num_steps):
        t_input = time.perf_counter()
        host_batch = next(batches)
        batch = shd.to_global(host_batch, batch_sharding)
        input_wait_s += time.perf_counter() - t_input
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
          stopping = interrupt.requested()
        elif sync_point:
          from jax.experimental import multihost_utils
          stopping = bool(np.any(multihost_utils.process_allgather(
              np.array(interrupt.requested()))))
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
          # Steps are dispatched asynchronously, so the device may still be busy with earlier
          # steps while the host waits here: this is an upper bound on the share of the window
          # the accelerator sat idle for want of input (0 when the pipeline keeps up).
          host["input_wait_fraction"] = input_wait_s / (now - t_last)
          if "lr" in metrics:
            host["lr"] = float(jax.device_get(metrics["lr"]))  # the LR of this step, not a mean
          t_last, step_last, input_wait_s = now, done, 0.0
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
          break
    progress.close()
  finally:
    # On every path, errors included: an input iterator left open would be destroyed only at
    # interpreter shutdown, where it can hang (see pipeline.py, _LIVE_ITERATORS).
    if batches is not None and hasattr(batches, "close"):
      batches.close()
  if done != num_steps:
    # Saved at `done` above; the stage is not complete until a rerun reaches num_steps.
    raise interrupt.Interrupted(stage.name, done, num_steps)
  return last_metrics
