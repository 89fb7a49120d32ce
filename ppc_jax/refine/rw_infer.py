r"""Random-walk refinement of stage-1 CAMs into pseudo-masks (reference `aff_infer.py`).

  python -m ppc_jax.refine.rw_infer --config=configs/aff_ppc_voc12.py --workdir=runs/aff \
      --config.input.data_dir=... --config.refine.cam_dir=runs/ppc/infer_train/cams \
      [--out_dir=runs/aff/rw_train]

Per image (METHOD 4.3, 11.10; the formulas are `ppc_jax.refine.random_walk`): the normalised image,
zero-padded to a multiple of 8, goes through the trained AffinityNet; the dense affinity matrix
of its features gives T = (A^beta, column-normalised)^(2^logt); the stage-1 cam_dict (present
classes, zeros elsewhere) gets its background (`config.refine.bg_mode`: 'constant' 0.27 as wseg,
or 'power' (1 - max)^6 as SEAM), is padded, 8x8 average-pooled, multiplied by T, upsampled
(bilinear, align_corners=False), cropped and argmaxed into a palette PNG `<out_dir>/masks/<id>.png`
(values 0..F, the data set's mask values).

Distribution: processes take every P-th image; within a process images go round-robin to the
local devices (each device runs whole images; jit dispatch is asynchronous, so devices overlap).
Every image shape compiles once (exact: no padding beyond the reference's multiple of 8).
Resumable: images whose PNG exists are skipped. Then the evaluator scores the masks on the split
beside the seeds they came from (`<out_dir>/report.json`, printed as a table).

Images come from `config.input.source` (the directory tree or the TFDS set,
`sources.open_source`); the evaluation reads the GT masks of `config.input.data_dir`'s tree with
either source, as stage 1's.
"""

import collections
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tqdm

from ppc_jax import atomic_io
from ppc_jax.data import cam_io
from ppc_jax.seeds import cam_postprocess
from ppc_jax import evaluate
from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax import restore
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.refine import random_walk


def make_mask_fn(model, refine_config):
  """jit-compiled `(variables, image [Hp, Wp, 3], cam_fg [H, W, F]) -> int32 [H, W]` labels."""
  rc = refine_config
  if rc.bg_mode not in random_walk.BG_MODES:
    raise ValueError(f"config.refine.bg_mode={rc.bg_mode!r}: expected one of "
                     f"{random_walk.BG_MODES}")

  @jax.jit
  def mask_fn(variables, image, cam_fg):
    features = model.apply(variables, image[None], train=False)["features"][0]
    return random_walk.random_walk_mask(
        features, cam_fg, radius=int(rc.radius), beta=float(rc.beta), logt=int(rc.logt),
        bg_mode=rc.bg_mode, bg_value=float(rc.bg_value), alpha=float(rc.bg_power))

  return mask_fn


def cam_fg_array(cam_dict, shape, num_fg):
  """float32 [H, W, F]: the cam_dict's present classes, zeros elsewhere (the reference's array)."""
  out = np.zeros(tuple(shape) + (num_fg,), np.float32)
  for k, v in cam_dict.items():
    if v.shape != tuple(shape):
      raise ValueError(f"CAM of class {k} is {v.shape}, the image {tuple(shape)}")
    out[..., k] = v
  return out


def run_random_walk(config, workdir, *, cam_dir=None, out_dir=None, split=None, evaluate_masks=True,
                    cam_format=None):
  """Writes the refined masks of a split and (optionally) evaluates them beside the seeds.

  Args:
    config: the AffinityNet experiment config (model 'affinity_net', `config.refine`).
    workdir: the AffinityNet work directory (its latest checkpoint is used).
    cam_dir, split: default `config.refine.cam_dir` / `config.refine.split`.
    out_dir: default `<workdir>/rw_<split>`.
    evaluate_masks: score masks and seeds with `ppc_jax.evaluate` (needs the split's GT).
    cam_format: the cam files' format (`cam_io`): default `config.refine.cam_format` ('npz'),
      or 'reference_npy' for the reference's pickled `<id>.npy` cam_dicts (read through the
      restricted unpickler).

  Returns:
    summary dict (counts, seconds, images/s, and 'mask' / 'seed' results when evaluated).
  """
  rc = config.refine
  split = split or rc.split
  cam_dir = cam_dir or rc.cam_dir
  if not cam_dir or not fileio.isdir(cam_dir):
    raise FileNotFoundError(f"config.refine.cam_dir={cam_dir!r} is not a directory; expected the "
                            "stage-1 cams (python -m ppc_jax.seeds.infer ... writes <out>/cams)")
  cam_format = cam_io.check_format(rc.cam_format if cam_format is None else cam_format)
  out_dir = out_dir or os.path.join(workdir, f"rw_{split}")
  mask_dir = os.path.join(out_dir, "masks")
  fileio.makedirs(mask_dir)
  # The images from config.input.source (the directory tree or the TFDS set); CAMs stay files.
  source = sources.open_source(config.input, split, max_images=config.infer.max_images,
                                with_saliency=False)
  classes = source.classes
  model, variables, step = restore.restore_variables(config, workdir)
  devices = jax.local_devices()
  per_device = [jax.device_put(variables, d) for d in devices]
  mask_fn = make_mask_fn(model, rc)

  mine = list(range(jax.process_index(), len(source.ids), jax.process_count()))
  done = fileio.names_in(mask_dir)
  todo = [i for i in mine if source.ids[i] + ".png" not in done]
  logging.info("random walk on %d of %d images of %s (%d already done), %d device(s)",
               len(todo), len(mine), split, len(mine) - len(todo), len(devices))
  pending = collections.deque()

  def finish_one():
    image_id, result = pending.popleft()
    cam_postprocess.save_label_png(os.path.join(mask_dir, image_id + ".png"),
                                   np.asarray(jax.device_get(result)).astype(np.uint8))

  skipped = set()  # ids of unreadable images (skip_bad): they get no mask
  t0 = time.perf_counter()
  with interrupt.handling_signals(
      "random walk: SIGTERM/SIGINT now stop after the current images"), tqdm.tqdm(
          total=len(todo), desc=f"random walk {split}", unit="img",
          disable=jax.process_index() != 0 or not config.progress_bar) as progress:
    n = 0
    for i in todo:
      if interrupt.requested():
        while pending:  # the masks already computed are written; the rest waits for a rerun
          finish_one()
        interrupt.check("random walk", progress.n, len(todo), unit="image")
      image_id = source.ids[i]
      try:
        image = np.asarray(source.image_pil(i))
      except voc.DataError as e:  # with verify='none' a broken image is first met here
        if not source.skip_bad:
          raise
        source.bad.add(e)
        skipped.add(image_id)
        progress.update(1)
        continue
      cam_path = cam_io.file_path(cam_dir, image_id, cam_format)
      if not fileio.exists(cam_path):
        raise FileNotFoundError(f"{cam_io.not_found_error(cam_path, cam_format)} (no stage-1 CAM "
                                f"for image {image_id!r} of {split})")
      try:
        cam_fg = cam_fg_array(cam_io.load_cam_dict(cam_path, classes.num_fg, fmt=cam_format),
                              image.shape[:2], classes.num_fg)
      except ValueError as e:
        problem = str(e)  # cam_io's messages already start with the path
        problem = problem[len(cam_path) + 2:] if problem.startswith(cam_path + ": ") else problem
        raise voc.DataError(cam_path, problem, kind="bad cam file") from None
      padded = np.asarray(random_walk.pad_to_multiple(voc_meta.normalize(image)))
      d = n % len(devices)
      n += 1
      result = mask_fn(per_device[d], jax.device_put(padded, devices[d]),
                       jax.device_put(cam_fg, devices[d]))
      pending.append((image_id, result))
      if len(pending) >= len(devices):
        finish_one()
      progress.update(1)
    while pending:
      finish_one()
  seconds = time.perf_counter() - t0
  computed = len(todo) - len(skipped)
  if skipped:
    logging.warning("random walk: %d unreadable images skipped; %s", len(skipped),
                    source.bad.summary())
  summary = dict(split=split, num_images=len(mine), computed=computed, skipped=len(skipped),
                 seconds=seconds,
                 images_per_sec=computed / seconds if computed and seconds > 0 else None,
                 checkpoint_step=step, cam_dir=cam_dir, out_dir=out_dir,
                 devices=len(devices), beta=rc.beta, logt=rc.logt, bg_mode=rc.bg_mode,
                 bg_value=rc.bg_value, bg_power=rc.bg_power, radius=rc.radius)
  if evaluate_masks and jax.process_index() == 0:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("random walk masks written")
    ids = list(source.ids)
    if source.skip_bad:  # images skipped here or by another process have no mask
      written = fileio.names_in(mask_dir)
      ids = [image_id for image_id in ids if image_id + ".png" in written]
    summary["mask"] = _brief(evaluate.evaluate_cam_dir(
        config.input.data_dir, split, mask_dir, input_type="png", ids=ids, classes=classes))
    summary["seed"] = _brief(evaluate.evaluate_cam_dir(
        config.input.data_dir, split, cam_dir, input_type=cam_format, ids=ids, classes=classes))
  elif evaluate_masks:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("random walk masks written")
  if jax.process_index() == 0:
    atomic_io.write_json(os.path.join(out_dir, "report.json"), summary)
  return summary


def _brief(result):
  keys = ("input_type", "num_images", "miou", "miou_gt_classes", "best_threshold",
          "per_class_iou")
  return {k: result[k] for k in keys if k in result}


def format_summary(summary):
  """A small table: seed mIoU (best threshold) and mask mIoU on the split."""
  lines = [f"random walk on {summary['split']}: {summary['computed']} images in "
           f"{summary['seconds']:.1f} s"]
  for name in ("seed", "mask"):
    r = summary.get(name)
    if r:
      extra = f" at t={r['best_threshold']:.2f}" if "best_threshold" in r else ""
      lines.append(f"  {name:5s} mIoU {100 * r['miou']:.1f}% (classes in GT "
                   f"{100 * r['miou_gt_classes']:.1f}%){extra}")
  return "\n".join(lines)


def _define_flags():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "AffinityNet config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "AffinityNet work directory (checkpoints/).")
  flags.DEFINE_string("split", None, "Split to refine (default config.refine.split).")
  flags.DEFINE_string("out_dir", None, "Output directory (default <workdir>/rw_<split>).")
  flags.DEFINE_bool("evaluate", True, "Score masks and seeds against the split's GT.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime
  f = flags.FLAGS
  runtime.setup_host(f.config)
  summary = run_random_walk(f.config, f.workdir, out_dir=f.out_dir, split=f.split,
                            evaluate_masks=f.evaluate)
  print(format_summary(summary))
  print(json.dumps({k: v for k, v in summary.items() if k not in ("mask", "seed")}, indent=2))


def cli():
  """The console script `ppc-random-walk` (pyproject.toml): `python -m ppc_jax.refine.rw_infer`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
