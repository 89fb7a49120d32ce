r"""One command for an accelerator: every stage's step, inference, a short trained run; one JSON.

  python bench/device_check.py --out $OUT/device_check.json [--reference_dir WSEG_DIR]
  python bench/device_check.py --cases=seam_fp32,seam_bf16 --budget_s 200
  python bench/device_check.py --tiny --out /tmp/device_check.json   # every case, tiny, on CPU

Cases, in the order they run (the most wanted first, so that a budget cut drops the least wanted);
each runs in its own subprocess, so a failure or an out-of-memory of one is reported and the rest
still run, and each peak memory is its own:

  seam_fp32, seam_bf16   stage-1 SEAM+PPC train step at configs/ppc_voc12.py's size (ResNet38
                         width 1, batch 8, crop 448, view 2 at 128), compute in float32 / bfloat16
  reference              the official PyTorch step at the same batch and crop, timed in this run
                         (bench/reference_torch.py; needs --reference_dir, else skipped)
  e2e                    a short training run through ppc_jax.trainer.run_loop (a trainer.Stage,
                         orbax checkpoints, metrics.jsonl) on seam_fp32's program, fed by a numpy
                         / PIL input path on the host (SyntheticBatches): no TensorFlow needed
  aff                    AffinityNet train step (configs/aff_ppc_voc12.py: batch 8, crop 448)
  deeplab_r38            DeepLab-v1 / ResNet38 step (configs/seg_ppc_voc12.py: batch 10, crop 448)
  infer_cold, infer_warm CAM inference, 4 scales x flip, the project's compile-ahead loop, on 8
                         images of a VOC-like size mix (3 sizes): cold, then in a fresh process on
                         the persistent compilation cache the cold case filled
  rw_cold, rw_warm       the random walk (AffinityNet forward + walk) on the same images
  seam_fp32_remat, seam_bf16_remat   the stage-1 step with per-block rematerialisation
  deeplab_r101           DeepLab-v2 / ResNet-101 step (configs/seg_eps_ppc_voc12.py)
  pretrain_r38           stage 0's ImageNet classifier step (configs/pretrain_imagenet_resnet38.py
                         in bfloat16: ResNet38 width 1, batch 32 per chip, crop 224), the
                         measured step of docs/pretrain.md's time estimate

Train steps: the state is made on the host from the shapes (`synthetic_variables`; a step's time
does not depend on the values), the step is lowered and compiled ahead (compile time apart), run
twice to warm up, then `--steps` times back to back (s/step = their wall time / steps, as the
trainer runs them: asynchronously). FLOPs are XLA's cost analysis of the compiled step (of the
lowered one where the backend gives none); MFU = FLOP/s / the chip's dense bf16 peak
(train_e2e.BF16_PEAK_TFLOPS by device kind, or --peak_tflops; unknown kinds: no MFU). 'XLA GB' is
the compiled program's own need (arguments + outputs + temporaries); 'peak GB' the device's
peak_bytes_in_use (GPU: includes the autotuner's trial buffers) or the host's peak RSS.

All cases share one persistent compilation cache (--cache_dir, default a fresh one per run), so
e2e loads seam_fp32's step (same program: the optimizer schedule of both spans --e2e_steps) and
later cases reuse the GPU autotuning results of earlier ones (JAX's per-fusion autotune cache).

A global deadline (--budget_s after the start): a case is not started with less than
--min_start_s left, and one still running at the deadline is stopped; both are reported as
'skipped (budget)' / 'timed out (budget)'. Every module a case imports imports without
TensorFlow (tests/test_device_check.py runs --tiny with tensorflow blocked): the inference
commands open their splits through `data/sources.py`, which imports no tf.data.

Writes one JSON (--out; default bench/results/device_check_<device>_<date>.json): commit,
device, library versions, CPU model, and a row per case; prints the table as cases finish and
again at the end. docs/device_check.md says how to run it on an accelerator host. `--tiny` runs
every case at 1/32 widths and tiny sizes on the CPU (with `--jobs 2`, two at a time; accelerator
runs take one case at a time, so that none times another).
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")

# name -> (kind, parameters), in run order.
CASES = collections.OrderedDict([
    ("seam_fp32", ("seam", dict(dtype="float32", remat=False))),
    ("seam_bf16", ("seam", dict(dtype="bfloat16", remat=False))),
    ("reference", ("reference", {})),
    ("e2e", ("e2e", {})),
    ("aff", ("aff", {})),
    ("deeplab_r38", ("deeplab", dict(stem="seg_ppc_voc12"))),
    ("infer_cold", ("infer", dict(warm=False))),
    ("infer_warm", ("infer", dict(warm=True))),
    ("rw_cold", ("rw", dict(warm=False))),
    ("rw_warm", ("rw", dict(warm=True))),
    ("seam_fp32_remat", ("seam", dict(dtype="float32", remat=True))),
    ("seam_bf16_remat", ("seam", dict(dtype="bfloat16", remat=True))),
    ("deeplab_r101", ("deeplab", dict(stem="seg_eps_ppc_voc12"))),
    # Stage 0's classifier step (ImageNet pretraining), for docs/pretrain.md's time estimate.
    ("pretrain_r38", ("pretrain", dict(stem="pretrain_imagenet_resnet38"))),
])
WARM_OF = {"infer_warm": "infer_cold", "rw_warm": "rw_cold"}
# Cases that wait for another (--jobs > 1): the warm ones for their cold case, e2e for the cache
# entry of seam_fp32's step.
AFTER = dict(WARM_OF, e2e="seam_fp32")

# VOC's shapes (H, W): mostly 375x500 and 500x375, one other; --tiny divides them by 8.
IMAGE_SIZES = [(375, 500)] * 4 + [(500, 375)] * 3 + [(333, 500)]
# XLA:CPU compiles the tiny programs about 2x faster at these settings (--tiny only: the timings
# there exercise the code, they measure nothing).
TINY_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "etils", "numpy",
                 "ml-collections", "torch", "pillow", "tensorflow", "tensorflow-cpu",
                 "tensorflow-datasets")


# ------------------------------------------------------------------------------------------------
# Child side: one case per process.
# ------------------------------------------------------------------------------------------------

# The configs below are held in variables named by stage (stage1 / aff / seg), not `config`: each
# function reads its own stage's fields, which tests/test_configs.py's static scan would check
# against every stage's configs; tests/test_device_check.py reads them all, in every case.
def _load_config(name, *arg):
  """get_config(*arg) of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(f"device_check_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def stage1_config(tiny):
  """configs/ppc_voc12.py; with `tiny`, 1/32 width, one block per stage, batch 8 at 48 / 24 px."""
  stage1 = _load_config("ppc_voc12")
  if tiny:
    stage1.model.width_divisor = 32
    stage1.model.stage_blocks = (1, 1, 1, 1)
    stage1.input.crop_size, stage1.input.view2_size = 48, 24
    stage1.input.resize_long = (48, 64)
    stage1.loss.ppc.topk_divisor = 2  # K = h * w // 8 assumes 16x16 maps; these are 6x6
  return stage1


def aff_config(tiny):
  """configs/aff_ppc_voc12.py; with `tiny`, 1/32 width, one block per stage, crop 64."""
  aff = _load_config("aff_ppc_voc12")
  if tiny:
    aff.model.width_divisor = 32
    aff.model.stage_blocks = (1, 1, 1, 1)
    aff.input.crop_size = 64
  return aff


def seg_config(name, tiny):
  """configs/<name>.py (a DeepLab config); with `tiny`, 1/32 width, one block per stage, 48 px."""
  seg = _load_config(name)
  if tiny:
    seg.model.width_divisor = 32
    seg.model.stage_blocks = (1, 1, 1, 1)
    seg.model.layers = (1, 1, 1, 1)
    seg.input.crop_size = 48
  return seg


def pretrain_config(name, tiny):
  """configs/<name>.py:bf16 (a stage-0 config) at a per-chip batch of 32 at 224 px (the memory of
  stage 1's 8 images at 448); with `tiny`, 1/32 width, one block per stage, 10 classes, 32 px."""
  pre = _load_config(name, "batch=32,bf16")
  if tiny:
    pre.model.width_divisor = 32
    pre.model.stage_blocks = (1, 1, 1, 1)
    pre.model.num_classes = 10
    pre.input.crop_size = 32
  return pre


def image_sizes(tiny):
  """(H, W) of the inference images (IMAGE_SIZES, or an eighth of them with `tiny`)."""
  return [(h // 8, w // 8) for h, w in IMAGE_SIZES] if tiny else list(IMAGE_SIZES)


def synthetic_variables(abstract, seed=0):
  """Host (numpy) variables of the shapes and dtypes in `abstract` (a tree of ShapeDtypeStruct).

  Normal 'kernel's of variance 1 / (3 fan-in) (fan-in = all but the last axis; the variance of
  torch's default conv init, which ResNet38's convolutions use), ones for 'scale' and 'var',
  zeros elsewhere (biases, BN means). Stands in for the jitted `init_variables`, which compiles
  the whole forward pass once more (about 20 s of a case on an H200); a step's cost does not
  depend on the values. He-normal kernels (variance 2 / fan-in) made the full-width SEAM+PPC
  loss NaN within 3 steps; these keep it finite.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      fan_in = max(1, int(np.prod(x.shape[:-1])))
      return (rng.standard_normal(x.shape, np.float32) / np.sqrt(3.0 * fan_in)).astype(x.dtype)
    if name in ("scale", "var"):
      return np.ones(x.shape, x.dtype)
    return np.zeros(x.shape, x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _mesh():
  """A mesh of the first device: the check times one chip."""
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  return shd.make_mesh(devices=jax.devices()[:1])


def synthetic_state(recipe, mesh):
  """The train state of a `train_state.Recipe` from synthetic_variables, replicated on `mesh`."""
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  repl = shd.replicated(mesh)
  variables = jax.device_put(synthetic_variables(recipe.abstract_variables), repl)
  return jax.jit(lambda v: train_state.create_state(v, recipe.tx), out_shardings=repl)(variables)


def _flops(stage):
  """Floating-point operations of a Lowered / Compiled stage by XLA's cost analysis, or None."""
  try:
    costs = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(costs, (list, tuple)):  # one dict per computation in older jax releases
    costs = costs[0] if costs else {}
  flops = float((costs or {}).get("flops", 0.0) or 0.0)
  return flops if flops > 0 and math.isfinite(flops) else None


def _footprint_gb(compiled):
  """Arguments + outputs - aliased + temporaries of a compiled program (GB), or None."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes) / 1e9


def _memory():
  """dict(peak_gb, in_use_gb, mem_kind): the device's allocator statistics, or host peak RSS."""
  import resource  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  stats = None
  if dev.platform != "cpu":
    try:
      stats = dev.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
  if stats and "peak_bytes_in_use" in stats:
    return dict(peak_gb=stats["peak_bytes_in_use"] / 1e9,
                in_use_gb=stats.get("bytes_in_use", 0) / 1e9, mem_kind="device")
  return dict(peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, in_use_gb=None,
              mem_kind="host RSS")


def device_info():
  """The first device: platform, kind, device count, memory limit (GB, where known)."""
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  limit = None
  if dev.platform != "cpu":
    try:
      limit = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # pylint: disable=broad-except
      limit = None
  return dict(platform=dev.platform, device_kind=dev.device_kind, devices=jax.device_count(),
              memory_limit_gb=None if limit is None else limit / 1e9)


def time_train_step(step, state, batch, mesh, steps, warmup=2):
  """Compiles `step` ahead for (state, batch, key) and times `steps` calls after `warmup`.

  Args:
    step: a jitted `(state, batch, key) -> (state, metrics)` (train_state.jit_train_step; the
      state is donated).
    state, batch: its arguments on `mesh` (batch: global arrays, leading axis the batch B).
    mesh: the one-device mesh.
    steps, warmup: timed and untimed calls.

  Returns:
    dict(lower_s, compile_s, step_s, images_per_s (B / step_s), flops_per_step, flops_source,
    xla_gb, loss (of the last step), timed_steps, warmup_steps).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  key = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, key)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops, source = _flops(compiled), "compiled"
    if flops is None:
      flops, source = _flops(lowered), "lowered"
    metrics = None
    for _ in range(warmup):
      state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(steps):  # back to back, as the trainer dispatches them
      state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / max(steps, 1)
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  return dict(lower_s=lower_s, compile_s=compile_s, step_s=step_s,
              images_per_s=batch_size / step_s, flops_per_step=flops,
              flops_source=source if flops else None, xla_gb=_footprint_gb(compiled),
              loss=float(metrics["loss"]), timed_steps=steps, warmup_steps=warmup)


def _global(host_batch, mesh):
  from ppc_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  return shd.to_global(host_batch, shd.batch_sharding(mesh))


def case_seam(args, dtype, remat):
  """Stage-1 SEAM+PPC step of configs/ppc_voc12.py with compute `dtype`, `remat` on or off."""
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import step as seed_step  # pylint: disable=import-outside-toplevel
  stage1 = stage1_config(args.tiny)
  stage1.model.dtype, stage1.model.remat = dtype, bool(remat)
  b, s, v = stage1.input.batch_size, stage1.input.crop_size, stage1.input.view2_size
  mesh = _mesh()
  t0 = time.perf_counter()
  # The schedule spans --e2e_steps, as e2e's run: the two programs are then the same.
  recipe = train_state.build_recipe(stage1, args.e2e_steps)
  state = synthetic_state(recipe, mesh)
  init_s = time.perf_counter() - t0
  batches = SyntheticBatches(image_sizes(args.tiny)[:4], batch_size=b, crop=s, view2=v,
                             resize_long=tuple(stage1.input.resize_long), threads=1, prefetch=1)
  try:
    host = next(batches)
  finally:
    batches.close()
  # The trainer's program (WarmupTrainStep without warm-up = this jit), so e2e finds it cached.
  step = train_state.jit_train_step(seed_step.make_train_step(
      recipe.model, recipe.tx, recipe.schedule, recipe.groups, stage1.loss), mesh)
  row = time_train_step(step, state, _global(host, mesh), mesh, args.steps)
  return dict(row, what=f"SEAM+PPC step, batch {b}, crop {s}, view 2 {v}, {dtype}"
              + (", remat" if remat else ""), config="configs/ppc_voc12.py", batch=b, crop=s,
              view2=v, dtype=dtype, remat=bool(remat), width_divisor=stage1.model.width_divisor,
              stage_blocks=list(stage1.model.stage_blocks), init_s=init_s,
              images_per_step=b)


def case_aff(args):
  """AffinityNet step of configs/aff_ppc_voc12.py on random images and label maps."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import aff_step  # pylint: disable=import-outside-toplevel
  aff = aff_config(args.tiny)
  b, s = aff.input.batch_size, aff.input.crop_size
  mesh = _mesh()
  t0 = time.perf_counter()
  recipe = train_state.build_recipe(aff, args.e2e_steps)  # the schedule's length: any
  state = synthetic_state(recipe, mesh)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  host = {"image": rng.standard_normal((b, s, s, 3), np.float32),
          # background, two classes and ignored pixels, at the feature grid's size
          "aff_label": rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(b, s // 8, s // 8),
                                  p=[0.5, 0.2, 0.1, 0.2])}
  step = train_state.jit_train_step(aff_step.make_aff_train_step(
      recipe.model, recipe.tx, recipe.schedule, recipe.groups, int(aff.refine.radius)), mesh)
  row = time_train_step(step, state, _global(host, mesh), mesh, args.steps)
  return dict(row, what=f"AffinityNet step, batch {b}, crop {s}", config="configs/aff_ppc_voc12.py",
              batch=b, crop=s, dtype="float32", width_divisor=aff.model.width_divisor,
              init_s=init_s, images_per_step=b)


def case_deeplab(args, stem):
  """DeepLab step of configs/<stem>.py on random images and pseudo-masks."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.segment import seg_step  # pylint: disable=import-outside-toplevel
  seg = seg_config(stem, args.tiny)
  b, s = seg.input.batch_size, seg.input.crop_size
  mesh = _mesh()
  t0 = time.perf_counter()
  # seg_trainer.build's recipe (that module imports the tf.data reader).
  recipe = train_state.build_recipe(seg, int(seg.total_steps))
  state = synthetic_state(recipe, mesh)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  mask = rng.integers(0, seg.model.num_classes, (b, s, s)).astype(np.uint8)
  mask[rng.random((b, s, s)) < 0.1] = 255
  host = {"image": rng.standard_normal((b, s, s, 3), np.float32), "mask": mask}
  step = train_state.jit_train_step(seg_step.make_seg_train_step(
      recipe.model, recipe.tx, recipe.schedule, recipe.groups), mesh)
  row = time_train_step(step, state, _global(host, mesh), mesh, args.steps)
  backbone, head = seg.model.backbone, seg.model.head
  return dict(row, what=f"DeepLab-{head} {backbone} step, batch {b}, crop {s}",
              config=f"configs/{stem}.py", batch=b, crop=s, dtype="float32",
              width_divisor=seg.model.width_divisor, init_s=init_s, images_per_step=b)


def case_pretrain(args, stem):
  """Stage 0's classifier step of configs/<stem>.py on random images and labels."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.pretrain import schedule as schedule_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax.pretrain import step as pre_step  # pylint: disable=import-outside-toplevel
  pre = pretrain_config(stem, args.tiny)
  b, s = pre.input.batch_size, pre.input.crop_size
  mesh = _mesh()
  t0 = time.perf_counter()
  recipe = train_state.build_recipe(pre, args.e2e_steps)
  # The trainer's optimizer (its warm-up / cosine schedule over epochs; any length will do).
  tx, schedule, groups = schedule_lib.make_optimizer(pre, 100, 10,
                                                     recipe.abstract_variables["params"])
  recipe = dataclasses.replace(recipe, tx=tx, schedule=schedule, groups=groups)
  state = synthetic_state(recipe, mesh)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  host = {"image": rng.standard_normal((b, s, s, 3), np.float32),
          "label": rng.integers(0, pre.model.num_classes, b).astype(np.int32)}
  step = train_state.jit_train_step(pre_step.make_train_step(
      recipe.model, tx, schedule, groups, float(pre.pretrain.label_smoothing)), mesh)
  row = time_train_step(step, state, _global(host, mesh), mesh, args.steps)
  return dict(row, what=f"{pre.model.backbone} classifier step, batch {b}, crop {s}, "
              f"{pre.model.dtype}", config=f"configs/{stem}.py:batch={b},bf16", batch=b, crop=s,
              dtype=pre.model.dtype, width_divisor=pre.model.width_divisor, init_s=init_s,
              images_per_step=b)


def _seeds_infer():
  """ppc_jax.seeds.infer (imports no TensorFlow: its sources come from `data/sources.py`)."""
  from ppc_jax.seeds import infer  # pylint: disable=import-outside-toplevel
  return infer


def _random_images(sizes, seed=1):
  """PIL RGB images of the given (H, W): smooth random colour fields plus noise."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import PIL.Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = []
  for h, w in sizes:
    coarse = PIL.Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((w, h), PIL.Image.BILINEAR), np.int16)
    noisy = np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    out.append(PIL.Image.fromarray(noisy))
  return out


def _random_labels(n, num_fg, seed=2):
  """float32 [n, num_fg]: one to three present classes per image."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  labels = np.zeros((n, num_fg), np.float32)
  for i in range(n):
    labels[i, rng.choice(num_fg, size=int(rng.integers(1, 4)), replace=False)] = 1.0
  return labels


def _engine_split(engine, sizes, make_inputs, threads):
  """The engine's loop over images of `sizes` (same-size groups in first-seen order, programs
  compiled ahead by window), then the same groups again with every program held.

  Returns:
    (seconds to the first result, split seconds, compute-only seconds, programs)
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import inference  # pylint: disable=import-outside-toplevel
  by_size = collections.OrderedDict()
  for i, size in enumerate(sizes):
    by_size.setdefault(size, []).append(i)
  groups = [(members[k:k + engine.batch_size], size) for size, members in by_size.items()
            for k in range(0, len(members), engine.batch_size)]
  t0, first = time.perf_counter(), None
  with concurrent.futures.ThreadPoolExecutor(inference.compile_threads(threads)) as pool:
    for group, size in inference.compiled_ahead(engine, groups, pool):
      jax.device_get(engine.dispatch([make_inputs(i) for i in group], size))
      first = first or time.perf_counter() - t0
  split_s = time.perf_counter() - t0
  engine.precompile(engine.keys(groups), threads)  # from the cache: no compile timed
  compute_s = 0.0
  for group, size in groups:
    inputs = [make_inputs(i) for i in group]
    t0 = time.perf_counter()
    jax.block_until_ready(engine.dispatch(inputs, size))
    compute_s += time.perf_counter() - t0
  return first, split_s, compute_s, len(engine.keys(groups))


def case_infer(args, warm):
  """CAM inference of configs/ppc_voc12.py (scales x flip) on the VOC-like size mix, on the
  inference engine (`ppc_jax.inference`: same-size groups, one program per size compiled ahead by
  window), then the same images again with every program held (compute only)."""
  from ppc_jax import train_state  # pylint: disable=import-outside-toplevel
  infer = _seeds_infer()
  stage1 = stage1_config(args.tiny)
  recipe = train_state.build_recipe(stage1, 1)
  settings = stage1.infer
  num_fg = stage1.model.num_classes - 1
  engine = infer.cam_engine(recipe.model, synthetic_variables(recipe.abstract_variables),
                            scales=settings.scales, flip=settings.flip, cam_key=settings.cam_key,
                            mode=settings.mode, num_fg=num_fg,
                            images_per_device=settings.images_per_device)
  sizes = image_sizes(args.tiny)
  images = _random_images(sizes)
  labels = _random_labels(len(images), num_fg)
  first, split_s, compute_s, programs = _engine_split(
      engine, sizes, lambda i: infer.cam_inputs(images[i], labels[i], scales=settings.scales,
                                                flip=settings.flip), settings.compile_threads)
  n = len(images)
  scales = "/".join(f"{x:g}" for x in settings.scales) + (" x flip" if settings.flip else "")
  return dict(what=f"CAM inference, {n} images of {len(set(sizes))} sizes, scales {scales}"
              + (", warm cache" if warm else ", cold"), config="configs/ppc_voc12.py",
              images=n, distinct_sizes=len(set(sizes)), programs=programs, first_s=first,
              split_s=split_s, compute_s=compute_s, compile_s=split_s - compute_s,
              step_s=compute_s / n, images_per_s=n / compute_s, split_images_per_s=n / split_s,
              sizes=[list(s) for s in sizes], width_divisor=stage1.model.width_divisor,
              warm=warm)


def case_rw(args, warm):
  """The random walk of configs/aff_ppc_voc12.py (AffinityNet forward, dense affinity, walk,
  upsample, argmax: rw_infer.mask_of_image) on the size mix, on the inference engine as
  rw_infer runs it; then again, compute only."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax import inference, train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel
  aff = aff_config(args.tiny)
  recipe = train_state.build_recipe(aff, 1)
  num_fg = 20
  engine = inference.Engine(
      lambda v, x, size: rw_infer.mask_of_image(recipe.model, v, x, size,
                                                refine_config=aff.refine),
      lambda size: rw_infer.mask_input_spec(size, num_fg=num_fg),
      synthetic_variables(recipe.abstract_variables),
      images_per_device=aff.infer.images_per_device)
  sizes = image_sizes(args.tiny)
  images = [np.asarray(im) for im in _random_images(sizes)]
  rng = np.random.default_rng(3)
  cams = []
  for h, w in sizes:  # two present classes, zeros elsewhere (rw_infer.cam_fg_array)
    cam = np.zeros((h, w, num_fg), np.float32)
    cam[..., rng.choice(num_fg, 2, replace=False)] = rng.random((h, w, 2), np.float32)
    cams.append(cam)
  first, split_s, compute_s, programs = _engine_split(
      engine, sizes, lambda i: rw_infer.mask_inputs(images[i], cams[i]),
      aff.infer.compile_threads)
  n = len(images)
  walk = aff.refine
  return dict(what=f"random walk, {n} images of {len(set(sizes))} sizes, beta {walk.beta:g}, "
              f"logt {walk.logt}" + (", warm cache" if warm else ", cold"),
              config="configs/aff_ppc_voc12.py", images=n, distinct_sizes=len(set(sizes)),
              programs=programs, first_s=first, split_s=split_s, compute_s=compute_s,
              compile_s=split_s - compute_s, step_s=compute_s / n, images_per_s=n / compute_s,
              split_images_per_s=n / split_s, width_divisor=aff.model.width_divisor, warm=warm)


def case_e2e(args):
  """A short stage-1 run through trainer.run_loop (checkpoints, metrics.jsonl), fed on the host by
  SyntheticBatches; the steady windows' images/s and input wait from its metrics.jsonl."""
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import train_state, trainer  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import step as seed_step  # pylint: disable=import-outside-toplevel
  train_e2e = _bench_module("train_e2e")
  stage1 = stage1_config(args.tiny)
  stage1.total_steps = args.e2e_steps
  stage1.log_every_steps = args.e2e_log_every
  stage1.ckpt_every_steps = args.e2e_ckpt_every
  stage1.tensorboard = False  # TensorFlow's summary writer; metrics.jsonl is written anyway
  stage1.progress_bar = False
  stage1.log_images_every_steps = 0
  b, s, v = stage1.input.batch_size, stage1.input.crop_size, stage1.input.view2_size
  mesh = _mesh()
  recipe = train_state.build_recipe(stage1, args.e2e_steps)  # seam_fp32's (see case_seam)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(stage1.seed))
  del init_rng  # the state comes from synthetic_variables
  sizes = image_sizes(args.tiny) * 2  # 16 source images
  threads = args.e2e_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

  def make_batches(start):
    return SyntheticBatches(sizes, batch_size=b, crop=s, view2=v,
                            resize_long=tuple(stage1.input.resize_long), start_step=start,
                            seed=stage1.input.seed, threads=threads, prefetch=2 * threads)

  # The loader's own rate on one thread, before the run (images/s per host core it needs).
  probe = make_batches(0)
  try:
    probe_s = min(_time_call(lambda k=k: probe.make_batch(k)) for k in range(2))
  finally:
    probe.close()
  stage = trainer.Stage(
      name="device_check e2e", num_steps=args.e2e_steps, batch_size=b,
      initial_state=lambda: synthetic_state(recipe, mesh),
      make_batches=make_batches,
      train_step=seed_step.WarmupTrainStep(recipe.model, recipe.tx, recipe.schedule,
                                           recipe.groups, stage1.loss, mesh,
                                           cam_warmup_steps=0),
      rng=step_rng, meta={"num_steps": args.e2e_steps})
  workdir = os.path.join(args.workdir, "e2e")
  if os.path.exists(workdir):
    shutil.rmtree(workdir)  # a resumed run would time only its tail
  t0 = time.perf_counter()
  last = trainer.run_loop(stage, stage1, workdir, mesh)
  wall_s = time.perf_counter() - t0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  summary = train_e2e.steady_summary(rows, b)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  checkpoints = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  ckpt_bytes = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(ckpt_dir)
                   for f in files)
  return dict(what=f"trainer.run_loop, {args.e2e_steps} steps of SEAM+PPC, batch {b}, crop {s}, "
              f"view 2 {v}, {stage1.model.dtype}, host input", config="configs/ppc_voc12.py",
              batch=b, crop=s, view2=v, dtype=str(stage1.model.dtype), steps=args.e2e_steps,
              log_every=args.e2e_log_every, ckpt_every=args.e2e_ckpt_every, wall_s_loop=wall_s,
              # The loop's start-up (the step's compile or cache load, the first batches): the
              # first window less its steps at the steady rate.
              compile_s=None if summary["s_per_step"] is None else max(
                  0.0, summary["first_s"] - summary["first_steps"] * summary["s_per_step"]),
              first_window_s=summary["first_s"], first_window_steps=summary["first_steps"],
              step_s=summary["s_per_step"], images_per_s=summary["images_per_s"],
              input_wait_fraction=summary["input_wait_fraction"], metrics_rows=len(rows),
              last_loss=last.get("loss"), checkpoints=checkpoints, checkpoint_gb=ckpt_bytes / 1e9,
              workdir=workdir, loader_threads=threads,
              loader_images_per_s_per_thread=b / probe_s, images_per_step=b)


def _time_call(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _bench_module(name):
  """bench/<name>.py as a module (train_e2e: the peak table and the window summary)."""
  if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
  return importlib.import_module(name)


class SyntheticBatches:
  """Stage-1 batches made on the host in numpy / PIL, from a pool of synthetic VOC-sized images.

  The tf.data pipeline's steps without TensorFlow: random long side in `resize_long` (bicubic),
  horizontal flip, ImageNet normalisation, a random crop of `crop` with zero padding, view 2 by an
  align-corners bilinear resize of the crop; colour jitter is left out. Batch k is a function of
  (seed, k), made `prefetch` batches ahead on `threads` worker threads (PIL's resize and numpy's
  array arithmetic run outside the GIL) and returned in order.

  Yields dicts of numpy arrays: image1 float32 [B, crop, crop, 3], image2 float32
  [B, view2, view2, 3], labels float32 [B, 20].
  """

  def __init__(self, sizes, *, batch_size, crop, view2, resize_long=(), start_step=0, seed=0,
               threads=1, prefetch=2, num_fg=20):
    import numpy as np  # pylint: disable=import-outside-toplevel
    self._np = np
    self.images = _random_images(sizes, seed=seed + 11)
    self.labels = _random_labels(len(self.images), num_fg, seed=seed + 12)
    self.batch_size, self.crop, self.view2 = batch_size, crop, view2
    self.resize_long, self.seed = tuple(resize_long), seed
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, threads))
    self._next, self._prefetch = start_step, max(1, prefetch)
    self._queue = collections.deque()  # filled on the first next(): make_batch alone starts none

  def _submit(self):
    self._queue.append(self._pool.submit(self.make_batch, self._next))
    self._next += 1

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) < self._prefetch:
      self._submit()
    return self._queue.popleft().result()

  def close(self):
    self._pool.shutdown(wait=True, cancel_futures=True)

  def make_batch(self, step):
    """The batch of step `step` (see the class docstring)."""
    np = self._np
    rng = np.random.default_rng((self.seed, step))
    picks = rng.integers(0, len(self.images), self.batch_size)
    examples = [self._example(rng, i) for i in picks]
    return {"image1": np.stack([e[0] for e in examples]),
            "image2": np.stack([e[1] for e in examples]),
            "labels": self.labels[picks]}

  def _example(self, rng, index):
    import PIL.Image  # pylint: disable=import-outside-toplevel
    from ppc_jax.data import voc_meta  # pylint: disable=import-outside-toplevel
    np = self._np
    image = self.images[index]
    if self.resize_long:
      long_side = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
      scale = long_side / max(image.size)
      size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
      image = image.resize(size, PIL.Image.BICUBIC)
    array = np.asarray(image)
    if rng.random() < 0.5:
      array = array[:, ::-1]
    h, w, s = array.shape[0], array.shape[1], self.crop
    ch, cw = min(h, s), min(w, s)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    dy, dx = int(rng.integers(0, s - ch + 1)), int(rng.integers(0, s - cw + 1))
    view1 = np.zeros((s, s, 3), np.float32)
    mean = np.asarray(voc_meta.IMAGENET_MEAN, np.float32) * 255
    std = np.asarray(voc_meta.IMAGENET_STD, np.float32) * 255
    view1[dy:dy + ch, dx:dx + cw] = (array[y:y + ch, x:x + cw].astype(np.float32) - mean) / std
    return view1, resize_align_corners(view1, self.view2)


def resize_align_corners(x, size):
  """Align-corners bilinear resize of float32 [H, W, C] to [size, size, C] (numpy)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  def axis(n_in):
    pos = np.linspace(0.0, n_in - 1, size)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)

  y0, y1, fy = axis(x.shape[0])
  x0, x1, fx = axis(x.shape[1])
  rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def run_child(args):
  """Runs case `args.child` in this process and prints `ROW {json}`."""
  sys.path.insert(0, REPO)
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.configure_xla_cpu()  # as the entry points (a no-op off the pinned jaxlib)
  runtime.size_cpu_thread_pool()
  import jax  # pylint: disable=import-outside-toplevel
  runtime.configure_compilation_cache(args.cache_dir, 16.0)
  runtime.quiet_library_logs()
  cache_events = collections.Counter()

  def on_event(event, **kwargs):
    del kwargs
    if event.startswith("/jax/compilation_cache/cache_"):
      cache_events[event.rsplit("_", 1)[-1]] += 1

  try:  # the counts are informative only: a jax without the hook still runs the case
    jax.monitoring.register_event_listener(on_event)
  except AttributeError:
    pass
  kind, params = CASES[args.child]
  fn = {"seam": case_seam, "aff": case_aff, "deeplab": case_deeplab, "infer": case_infer,
        "rw": case_rw, "e2e": case_e2e, "pretrain": case_pretrain}[kind]
  t0 = time.perf_counter()
  row = fn(args, **params)
  row.update(_memory())
  row.update(case=args.child, status="ok", case_s=time.perf_counter() - t0, device=device_info(),
             cache_hits=cache_events["hits"], cache_misses=cache_events["misses"],
             tensorflow_loaded=sys.modules.get("tensorflow") is not None)
  print("ROW " + json.dumps(_clean(row)), flush=True)


def _clean(value):
  """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if hasattr(value, "item") and not isinstance(value, (str, bytes)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


# ------------------------------------------------------------------------------------------------
# Parent side: environment, cases, deadline, table, JSON.
# ------------------------------------------------------------------------------------------------

def versions():
  """Installed versions of DISTRIBUTIONS and of JAX's accelerator plugins (None: absent)."""
  out = {}
  for name in DISTRIBUTIONS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  for dist in importlib.metadata.distributions():
    name = (dist.metadata.get("Name") or "").lower()
    if name.startswith(("jax-cuda", "jax_cuda", "libtpu", "jax-rocm")):
      out[name] = dist.version
  return out


def cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def git_commit(override):
  """(commit, dirty): --commit, else `git` in the repository; (None, None) without either."""
  if override:
    return override, None
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, timeout=20, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    return commit, bool(status.strip())
  except (OSError, subprocess.SubprocessError):
    return None, None


def nvidia_smi():
  """`nvidia-smi`'s name, driver and memory of each GPU, or None where there is none."""
  if not shutil.which("nvidia-smi"):
    return None
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return [line.strip() for line in out.stdout.splitlines() if line.strip()] or None


def child_env(args):
  """The children's environment: the repository importable, this run's cache only; CPU (--tiny)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  if args.tiny:
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    flags = env.get("XLA_FLAGS", "")
    for flag in TINY_XLA_FLAGS:
      if flag.split("=")[0] not in flags:
        flags = f"{flags} {flag}".strip()
    env["XLA_FLAGS"] = flags
  return env


def _log_reason(text):
  """A one-line reason from a failed child's log: out of memory, else its last error line."""
  if re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|OOM", text):
    match = re.findall(r".*(?:RESOURCE_EXHAUSTED|[Oo]ut of memory).*", text)
    return "out of memory: " + (match[-1].strip()[:300] if match else "")
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupted)\b", ln)]
  return (errors or lines or ["(no output)"])[-1][:300]


def run_case(name, args, env, timeout_s, log_dir):
  """One case in a subprocess with a wall-clock limit; its row (status ok / failed / timed out)."""
  if CASES[name][0] == "reference":
    cmd = [sys.executable, os.path.join(BENCH, "reference_torch.py"), "--reference_dir",
           args.reference_dir, "--batch", "8", "--crop", "448", "--steps", str(max(args.steps, 2))]
  else:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--cache_dir",
           args.cache_dir, "--workdir", args.workdir, "--steps", str(args.steps),
           "--e2e_steps", str(args.e2e_steps), "--e2e_log_every", str(args.e2e_log_every),
           "--e2e_ckpt_every", str(args.e2e_ckpt_every), "--e2e_threads", str(args.e2e_threads)]
    cmd += ["--tiny"] if args.tiny else []
  log_path = os.path.join(log_dir, f"{name}.log")
  t0 = time.perf_counter()
  with open(log_path, "wb") as log:
    # Its own session: at the deadline the case and anything it started are stopped together.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)
    try:
      code = proc.wait(timeout=max(timeout_s, 1))
      timed_out = False
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      code = proc.wait()
      timed_out = True
  wall = time.perf_counter() - t0
  with open(log_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  found = [ln for ln in text.splitlines() if ln.startswith("ROW ")]
  if timed_out:
    return dict(case=name, status="timed out (budget)", wall_s=wall, log=log_path,
                reason=f"stopped at the deadline after {wall:.0f} s (--budget_s)",
                log_tail=text[-2000:])
  if code or not found:
    return dict(case=name, status="failed", wall_s=wall, log=log_path, exit_code=code,
                reason=_log_reason(text), log_tail=text[-3000:])
  row = json.loads(found[-1][4:])
  if CASES[name][0] == "reference":
    row = dict(row, what=f"official PyTorch step (usr922/wseg), batch {row['batch']}, crop "
               f"{row['crop']}, float32", reference_case=row.get("case"), status="ok",
               device=dict(device_kind=row.get("device")))
  row.update(case=name, wall_s=wall, log=log_path)
  return row


def derive(rows, peak_tflops):
  """Adds TFLOP/s, MFU, e2e's FLOPs (from the seam row of its dtype) and the reference ratio."""
  seam = {(r.get("dtype"), r.get("remat")): r for r in rows.values()
          if r.get("status") == "ok" and CASES[r["case"]][0] == "seam"}
  e2e = rows.get("e2e")
  if e2e and e2e.get("status") == "ok":
    src = seam.get((e2e.get("dtype"), False))
    if src and src.get("flops_per_step") and src.get("batch") == e2e.get("batch"):
      e2e["flops_per_step"] = src["flops_per_step"]
      e2e["flops_source"] = f"{src['case']}'s program (the same step)"
  for r in rows.values():
    if r.get("status") != "ok":
      continue
    if r.get("flops_per_step") and r.get("step_s"):
      r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
      r["mfu"] = r["tflops_per_s"] / peak_tflops if peak_tflops else None
  ref, ours = rows.get("reference"), rows.get("seam_fp32")
  if ref and ours and ref.get("status") == ours.get("status") == "ok":
    ref["speedup_of_seam_fp32"] = ref["step_s"] / ours["step_s"]
    bf16 = rows.get("seam_bf16")
    if bf16 and bf16.get("status") == "ok":
      ref["speedup_of_seam_bf16"] = ref["step_s"] / bf16["step_s"]


HEADER = (f"{'case':<16} {'status':<10} {'compile s':>9} {'s/step':>8} {'img/s':>8} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'XLA GB':>7} {'peak GB':>8}  note")


def _fmt(value, spec, width=0):
  return ("-" if value is None else format(value, spec)).rjust(width)


def table_line(r):
  """One row of the table (HEADER's columns)."""
  status = r.get("status", "?")
  short = {"ok": "ok", "failed": "FAILED", "skipped (budget)": "skipped",
           "timed out (budget)": "TIMEOUT", "skipped": "skipped"}.get(status, status)
  note = r.get("what", "")
  if status != "ok":
    note = r.get("reason", "")
  elif r.get("split_s") is not None:  # inference: img/s compute only; the split with compiles
    note += (f"; split incl. compile {r['split_s']:.1f} s ({r['split_images_per_s']:.2f} img/s), "
             f"first after {r['first_s']:.1f} s; cache hits {r.get('cache_hits', 0)}")
  elif r["case"] == "e2e":
    wait = r.get("input_wait_fraction")
    note += (f"; first window {r['first_window_s']:.1f} s, input wait "
             f"{_fmt(None if wait is None else 100 * wait, '.1f')} %, checkpoints "
             f"{r.get('checkpoints')}, loader {r['loader_images_per_s_per_thread']:.0f} img/s "
             f"per thread x {r['loader_threads']}")
  elif r["case"] == "reference":
    ratio = r.get("speedup_of_seam_fp32")
    note += (f"; torch {r.get('torch')}" + (f"; seam_fp32 {ratio:.2f}x faster" if ratio else ""))
  mfu = r.get("mfu")
  return (f"{r['case']:<16} {short:<10} {_fmt(r.get('compile_s'), '.1f', 9)} "
          f"{_fmt(r.get('step_s'), '.4f', 8)} {_fmt(r.get('images_per_s'), '.2f', 8)} "
          f"{_fmt(r.get('tflops_per_s'), '.1f', 8)} "
          f"{'-' if mfu is None else format(100 * mfu, '.1f') + '%':>6} "
          f"{_fmt(r.get('xla_gb'), '.2f', 7)} {_fmt(r.get('peak_gb'), '.2f', 8)}  {note}")


def footnotes(result):
  """The lines under the table: machine, versions, what the columns mean."""
  dev, v = result["device"], result["versions"]
  peak = result["peak_bf16_tflops"]
  lines = [
      f"machine: {dev.get('device_kind')} ({dev.get('platform')}, {dev.get('devices')} device(s)), "
      f"host {result['host']['cpu_model']} x {result['host']['cores']} cores",
      f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, flax {v.get('flax')}, optax {v.get('optax')},"
      f" orbax {v.get('orbax-checkpoint')}, torch {v.get('torch')}; commit {result['commit']}",
      "MFU: XLA's FLOPs of the compiled step / s / " + (
          f"{peak:g} TFLOP/s (the chip's dense bf16 peak), float32 rows too" if peak else
          "(no peak known for this device kind: --peak_tflops)")
      + "; remat rows count the recomputed forward",
      "img/s: train rows images per step / s per step (steps back to back); infer / rw rows "
      "compute only, every program held",
      "XLA GB: the compiled program's arguments + outputs + temporaries; peak GB: "
      + ("device peak_bytes_in_use (includes the GPU autotuner's trial buffers)"
         if dev.get("platform") not in (None, "cpu") else "host peak RSS of the case's process"),
  ]
  if result["tiny"]:
    lines.append("--tiny: 1/32 widths and tiny sizes on the CPU; the numbers exercise the code and "
                 "measure nothing")
  return lines


def _rel(path):
  """`path` relative to the repository when inside it (results carry no machine's layout)."""
  path = os.path.abspath(path)
  return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def default_out(device_kind, tiny):
  slug = re.sub(r"[^a-z0-9]+", "_", (device_kind or "unknown").lower()).strip("_")
  date = datetime.date.today().strftime("%Y%m%d")
  return os.path.join(BENCH, "results",
                      f"device_check_{'tiny_' if tiny else ''}{slug}_{date}.json")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="", help="the JSON (default bench/results/"
                      "device_check_<device>_<date>.json)")
  parser.add_argument("--cases", default=",".join(CASES),
                      help=f"comma-separated, run in the default order: {', '.join(CASES)}")
  parser.add_argument("--budget_s", type=float, default=450.0,
                      help="deadline after the start: later cases are skipped, a running one is "
                      "stopped")
  parser.add_argument("--min_start_s", type=float, default=None,
                      help="start no case with less than this left (default 20, --tiny 0)")
  parser.add_argument("--tiny", action="store_true",
                      help="every case at tiny widths and sizes on the CPU (the test)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per train case (default 20, --tiny 2)")
  parser.add_argument("--e2e_steps", type=int, default=None, help="default 300, --tiny 8")
  parser.add_argument("--e2e_log_every", type=int, default=None, help="default 50, --tiny 2")
  parser.add_argument("--e2e_ckpt_every", type=int, default=None, help="default 100, --tiny 4")
  parser.add_argument("--e2e_threads", type=int, default=0,
                      help="input threads of e2e (0: half the host's cores, 1 to 8)")
  parser.add_argument("--reference_dir", default="",
                      help="a checkout of usr922/wseg: the official step in the same run")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="dense bf16 TFLOP/s of one chip (default: by device kind)")
  parser.add_argument("--cache_dir", default="",
                      help="persistent compilation cache of the run (default: a fresh one in the "
                      "work directory)")
  parser.add_argument("--workdir", default="",
                      help="logs, e2e's run and the cache; kept when given (default: a temporary "
                      "directory, removed at the end)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="cases run side by side; > 1 only with --tiny (on one accelerator "
                      "overlapping cases would time each other)")
  parser.add_argument("--commit", default="", help="the commit to record where git is absent")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  tiny_or = lambda tiny, full: tiny if args.tiny else full  # noqa: E731
  args.steps = args.steps if args.steps is not None else tiny_or(2, 20)
  args.e2e_steps = args.e2e_steps or tiny_or(8, 300)
  args.e2e_log_every = args.e2e_log_every or tiny_or(2, 50)
  args.e2e_ckpt_every = args.e2e_ckpt_every or tiny_or(4, 100)
  if args.child:
    run_child(args)
    return 0

  start = time.perf_counter()
  cases = [c for c in args.cases.split(",") if c]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
  cases = [c for c in CASES if c in cases]  # the default order, whatever order was given
  if args.jobs < 1 or (args.jobs > 1 and not args.tiny):
    parser.error("--jobs > 1 is for --tiny only: cases sharing one accelerator time each other")
  if args.e2e_steps < 2 * args.e2e_log_every:
    parser.error("--e2e_steps must hold at least two log windows (the first holds compilation)")
  if importlib.util.find_spec("ml_collections") is None:
    raise SystemExit("ml_collections is not installed: the configs need it (pure Python; "
                     "docs/device_check.md says how to carry its wheel to an offline host)")
  min_start = args.min_start_s if args.min_start_s is not None else tiny_or(0.0, 20.0)
  keep, args.cache_dir_given = bool(args.workdir), bool(args.cache_dir)
  args.workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="device_check_"))
  args.cache_dir = os.path.abspath(args.cache_dir or os.path.join(args.workdir, "jax_cache"))
  log_dir = os.path.join(args.workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  env = child_env(args)
  commit, dirty = git_commit(args.commit)
  # A warm case needs its cold case in this run, or a cache that already held entries.
  cache_had_entries = os.path.isdir(args.cache_dir) and any(os.scandir(args.cache_dir))
  print(f"bench/device_check.py: {len(cases)} case(s), budget {args.budget_s:.0f} s"
        + (" (--tiny, CPU)" if args.tiny else ""), flush=True)
  print(HEADER, flush=True)
  done, futures, lock = {}, {}, threading.Lock()

  def one(name):
    if AFTER.get(name) in futures:  # e2e after seam_fp32 (its cached step), warm after cold
      futures[AFTER[name]].result()
    left = args.budget_s - (time.perf_counter() - start)
    row = None
    if CASES[name][0] == "reference" and args.tiny:
      row = dict(case=name, status="skipped", reason="not in --tiny: the official network has "
                 "no tiny size (run on the device host with --reference_dir)")
    elif CASES[name][0] == "reference" and not args.reference_dir:
      row = dict(case=name, status="skipped",
                 reason="no --reference_dir (a checkout of usr922/wseg) given")
    elif (name in WARM_OF and not cache_had_entries
          and done.get(WARM_OF[name], {}).get("status") != "ok"):
      row = dict(case=name, status="skipped", reason=f"needs {WARM_OF[name]} first in this run "
                 "(or the --workdir / --cache_dir of a run that had it)")
    elif left < max(min_start, 1e-9):
      row = dict(case=name, status="skipped (budget)",
                 reason=f"{max(left, 0):.0f} s left of --budget_s {args.budget_s:.0f}")
    if row is None:
      row = run_case(name, args, env, left, log_dir)
    with lock:
      done[name] = row
      print(table_line(row), flush=True)
    return row

  # Cases are taken in order; with --jobs 1 (every accelerator run) one at a time.
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    for name in cases:
      futures[name] = pool.submit(one, name)
  rows = collections.OrderedDict((name, futures[name].result()) for name in cases)

  device = next((r["device"] for r in rows.values()
                 if r.get("status") == "ok" and "platform" in r.get("device", {})), {})
  train_e2e = _bench_module("train_e2e")
  peak = args.peak_tflops or train_e2e.peak_tflops(device.get("device_kind", "")) or None
  derive(rows, peak)
  result = dict(
      tool="bench/device_check.py", argv=list(argv if argv is not None else sys.argv[1:]),
      date=datetime.datetime.now().isoformat(timespec="seconds"), commit=commit,
      dirty=dirty, tiny=args.tiny, device=device, gpus=nvidia_smi(),
      host=dict(cpu_model=cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                system=platform.platform()),
      versions=versions(), peak_bf16_tflops=peak, budget_s=args.budget_s,
      cache_dir=_rel(args.cache_dir) if keep or args.cache_dir_given else None,
      workdir=_rel(args.workdir) if keep else None,
      xla_flags=env.get("XLA_FLAGS", ""), steps=args.steps,
      cases=rows, elapsed_s=time.perf_counter() - start)
  lines = [HEADER, "-" * len(HEADER)] + [table_line(r) for r in rows.values()]
  lines += [""] + footnotes(result)
  result["table"] = lines
  print("\n" + "\n".join(lines), flush=True)
  out = args.out or default_out(device.get("device_kind"), args.tiny)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  for r in rows.values():  # kept: paths in the repository relative to it; else gone with it
    for key in ("log", "workdir"):
      if key in r:
        r[key] = _rel(r[key]) if keep else None
  with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(_clean(result), f, indent=2)
  os.replace(out + ".tmp", out)
  print(f"\nwrote {out} ({time.perf_counter() - start:.0f} s)", flush=True)
  if not keep:
    shutil.rmtree(args.workdir, ignore_errors=True)
  bad = [n for n, r in rows.items() if r["status"] in ("failed", "timed out (budget)")]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
