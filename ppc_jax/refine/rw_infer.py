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

Runs on `ppc_jax.inference`: processes take every P-th image, images are grouped by exact size,
batched and sharded over the local devices, one program per size compiled ahead (exact: no
padding beyond the reference's multiple of 8, so a mask equals the image's random walk alone).
Resumable: images whose PNG exists are skipped. Then the evaluator scores the masks on the split
beside the seeds they came from (`<out_dir>/report.json`, printed as a table).

Images come from `config.input.source` (the directory tree or the TFDS set,
`sources.open_source`); the evaluation reads the GT masks of `config.input.data_dir`'s tree with
either source, as stage 1's.
"""

import functools
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import evaluate
from ppc_jax import fileio
from ppc_jax import inference
from ppc_jax import restore
from ppc_jax.data import cam_io
from ppc_jax.data import sources
from ppc_jax.data import voc_meta
from ppc_jax.refine import random_walk
from ppc_jax.seeds import cam_postprocess


def check_refine_config(refine_config):
  if refine_config.bg_mode not in random_walk.BG_MODES:
    raise ValueError(f"config.refine.bg_mode={refine_config.bg_mode!r}: expected one of "
                     f"{random_walk.BG_MODES}")


def mask_of_image(model, variables, inputs, size, *, refine_config):
  """The random-walk mask of one image (the engine's per-image function).

  Args:
    model: AffinityNet.
    variables: its variables.
    inputs: {'image': float32 [Hp, Wp, 3] normalised image zero-padded to multiples of 8,
      'cam': float32 [H, W, F] stage-1 CAM of the present classes, zeros elsewhere}.
    size: (H, W), static (the CAM's size).
    refine_config: config.refine.

  Returns:
    int32 [H, W] labels 0..F.
  """
  del size  # the CAM's shape
  rc = refine_config
  features = model.apply(variables, inputs["image"][None], train=False)["features"][0]
  return random_walk.random_walk_mask(
      features, inputs["cam"], radius=int(rc.radius), beta=float(rc.beta), logt=int(rc.logt),
      bg_mode=rc.bg_mode, bg_value=float(rc.bg_value), alpha=float(rc.bg_power))


def mask_input_spec(size, *, num_fg):
  """The shapes of one image's inputs to `mask_of_image` for an image of size (H, W)."""
  h, w = size
  pad = lambda n: n + (-n) % random_walk.STRIDE  # noqa: E731
  return {"image": jax.ShapeDtypeStruct((pad(h), pad(w), 3), jnp.float32),
          "cam": jax.ShapeDtypeStruct((h, w, num_fg), jnp.float32)}


def mask_inputs(image, cam_fg):
  """One image's inputs to `mask_of_image`: uint8 [H, W, 3] image, float32 [H, W, F] CAM."""
  return {"image": np.asarray(random_walk.pad_to_multiple(voc_meta.normalize(image))),
          "cam": np.asarray(cam_fg, np.float32)}


def cam_fg_array(cam_dict, shape, num_fg):
  """float32 [H, W, F]: the cam_dict's present classes, zeros elsewhere (the reference's array)."""
  out = np.zeros(tuple(shape) + (num_fg,), np.float32)
  for k, v in cam_dict.items():
    if v.shape != tuple(shape):
      raise ValueError(f"CAM of class {k} is {v.shape}, the image {tuple(shape)}")
    out[..., k] = v
  return out


def read_cam(cam_dir, image_id, shape, num_fg, cam_format, split):
  """The stage-1 CAM of an image as `cam_fg_array`; a missing or bad file names itself."""
  cam_path = cam_io.file_path(cam_dir, image_id, cam_format)
  if not fileio.exists(cam_path):
    raise FileNotFoundError(f"{cam_io.not_found_error(cam_path, cam_format)} (no stage-1 CAM "
                            f"for image {image_id!r} of {split})")
  try:
    return cam_fg_array(cam_io.load_cam_dict(cam_path, num_fg, fmt=cam_format), shape, num_fg)
  except ValueError as e:
    problem = str(e)  # cam_io's messages already start with the path
    problem = problem[len(cam_path) + 2:] if problem.startswith(cam_path + ": ") else problem
    # Not a DataError: skip_bad skips the data set's files, never our own intermediate ones.
    raise ValueError(f"{cam_path}: bad cam file: {problem}") from None


# The fields of config.refine that `mask_of_image` reads.
WALK_FIELDS = ("radius", "beta", "logt", "bg_mode", "bg_value", "bg_power")


def walk_settings(refine_config):
  """The random walk's fields of config.refine (what `mask_of_image` reads), so the engine's
  program key (`program_cache`) does not change with the refine section's paths."""
  return ml_collections.ConfigDict({k: refine_config[k] for k in WALK_FIELDS})


def mask_task(source, model, refine_config, *, cam_dir, mask_dir, cam_format, split):
  """The `inference.PerImage` of the random walk: one mask PNG per image."""
  num_fg = source.classes.num_fg

  def load(i):
    image = inference.read_or_skip(source, source.image_pil, i)
    if image is None:
      return None
    image = np.asarray(image)
    cam = read_cam(cam_dir, source.ids[i], image.shape[:2], num_fg, cam_format, split)
    return mask_inputs(image, cam), None

  def write(i, mask, context):
    del context
    cam_postprocess.save_label_png(os.path.join(mask_dir, source.ids[i] + ".png"),
                                   np.asarray(mask).astype(np.uint8))

  return inference.PerImage(
      name="random walk",
      compute=functools.partial(mask_of_image, model,
                                refine_config=walk_settings(refine_config)),
      input_spec=functools.partial(mask_input_spec, num_fg=num_fg), load=load, write=write,
      done_name=lambda image_id: image_id + ".png", done_dir=mask_dir)


def run_random_walk(config, workdir, *, cam_dir=None, out_dir=None, split=None, evaluate_masks=True,
                    cam_format=None):
  """Writes the refined masks of a split and (optionally) evaluates them beside the seeds.

  Args:
    config: the AffinityNet experiment config (model 'affinity_net', `config.refine`).
    workdir: the AffinityNet work directory (its latest checkpoint is used).
    cam_dir, split: default `config.refine.cam_dir` / `config.infer.split`.
    out_dir: default `<workdir>/rw_<split>`.
    evaluate_masks: score masks and seeds with `ppc_jax.evaluate` (needs the split's GT).
    cam_format: the cam files' format (`cam_io`): default `config.refine.cam_format` ('npz'),
      or 'reference_npy' for the reference's pickled `<id>.npy` cam_dicts (read through the
      restricted unpickler).

  Returns:
    summary dict (counts, seconds, images/s, and 'mask' / 'seed' results when evaluated).
  """
  rc = config.refine
  check_refine_config(rc)
  split = split or config.infer.split
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
  task = mask_task(source, model, rc, cam_dir=cam_dir, mask_dir=mask_dir, cam_format=cam_format,
                   split=split)
  engine = inference.Engine(task.compute, task.input_spec, variables,
                            images_per_device=config.infer.images_per_device)
  stats = inference.run_split(task, engine, source, range(len(source.ids)),
                              threads=config.infer.compile_threads,
                              show_progress=config.progress_bar, desc=f"random walk {split}")
  seconds, computed = stats["seconds"], stats["computed"]
  if stats["skipped"]:
    logging.warning("random walk: %d unreadable images skipped; %s", stats["skipped"],
                    source.bad.summary())
  summary = dict(split=split, num_images=stats["num_images"], computed=computed,
                 skipped=stats["skipped"], seconds=seconds,
                 images_per_sec=computed / seconds if computed and seconds > 0 else None,
                 num_programs=stats["num_programs"], checkpoint_step=step, cam_dir=cam_dir,
                 out_dir=out_dir, devices=engine.num_devices, beta=rc.beta, logt=rc.logt,
                 bg_mode=rc.bg_mode, bg_value=rc.bg_value, bg_power=rc.bg_power,
                 radius=rc.radius)
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
  flags.DEFINE_string("split", None, "Split to refine (default config.infer.split).")
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
