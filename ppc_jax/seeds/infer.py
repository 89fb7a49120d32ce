r"""Multi-scale + flip CAM inference: cam_dict files, seed PNGs and overlays for a split.

  python -m ppc_jax.seeds.infer --config=configs/ppc_voc12.py:data_dir=PATH --workdir=runs/ppc \
      [--split=train] [--out_dir=runs/ppc/infer_train]

Follows the reference's contrast_infer.py (METHOD 4.1): each image at scales (0.5, 1, 1.5, 2),
PIL-bicubic resized to (round(W*s), round(H*s)) with Python's half-to-even round, plus its
horizontal flip; the PCM-refined CAM (`cam_rv`, align_corners=True upsampled by the model) of every
input is resized to the image size (align_corners=False), multiplied by the labels, un-flipped and
summed; the sum is min-max normalised per class. `config.infer.mode='eps'` follows EPS's
infer.py instead (METHOD 4.2): the raw fc8 output at feature resolution (`cam_key='cam_down'`, no
PCM), softmax over background + classes, resized to the image (align_corners=False), foreground
x labels, un-flipped, summed, and max-normalised per class, x / (max + 1e-5).

Runs on `ppc_jax.inference`: images grouped by exact size, batched and sharded over the local
devices, programs compiled ahead in threads (one per image size; no padding enters the network,
so every CAM equals the image's inference alone, bit for bit). Multi-host: each process takes
every process_count-th image.

Examples come from `config.input.source` (the directory tree or the prepared TFDS data set;
`sources.open_source`). Classes: the source's class list (VOC's 20 unless the config, the data
directory's classes.txt or the TFDS data set's metadata says otherwise);
config.model.num_classes must be its count + 1 (checked before the checkpoint is restored).

Outputs under --out_dir (default `<workdir>/infer_<split>`):
  cams/<id>.npz     the cam_dict {class index 0..F-1: float32 [H, W]} of the present classes, F the
                    foreground count, as np.savez of keys [K] + maps [K, H, W] (no pickle;
                    `ppc_jax.data.cam_io.load_cam_dict` reads it back). For the reference's
                    pickled `<id>.npy`: `python -m ppc_jax.data.cam_io --to=reference_npy ...`
                    (or run_inference(..., cam_format='reference_npy'))
  seeds/<id>.png    VOC-palette seed masks at --bg_threshold (default config.infer.bg_threshold)
  overlays/<id>.jpg CAM heat maps over the first `num_overlays` images
  summary.json      what was run
Existing cams are kept (an interrupted run resumes); every file is written atomically.
"""

import functools
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import inference
from ppc_jax import restore
from ppc_jax.data import cam_io
from ppc_jax.data import infer_inputs
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.seeds import cam_postprocess

# 'seam': METHOD 4.1 (the map `cam_key`, min-max normalised); 'eps': METHOD 4.2 (softmax of the
# raw fc8 output, max normalised).
MODES = ("seam", "eps")


def check_mode(mode, cam_key):
  if mode not in MODES:
    raise ValueError(f"config.infer.mode={mode!r}; expected one of {MODES}")
  if mode == "eps" and cam_key != "cam_down":
    raise ValueError(f"config.infer.mode='eps' takes the raw fc8 output at feature resolution: "
                     f"config.infer.cam_key must be 'cam_down', got {cam_key!r}")


def cam_of_image(model, variables, inputs, size, *, cam_key, mode="seam"):
  """The normalised multi-scale CAM of one image (the engine's per-image function).

  Args:
    model: the stage-1 network.
    variables: its {'params', 'batch_stats'}.
    inputs: {'x': tuple over scales of float32 [P, Hs, Ws, 3] (P = 2: the image and its flip,
      or 1), 'labels': float32 [F]}, as `cam_inputs` builds them.
    size: (H, W) of the image, static.
    cam_key, mode: config.infer's.

  Returns:
    float32 [H, W, F] normalised CAM (absent classes at -1 in 'seam' mode and 0 in 'eps' mode, as
    the references).
  """
  sum_cam = None
  for x in inputs["x"]:
    out = model.apply(variables, x, train=False)
    if cam_key not in out:
      raise ValueError(f"config.infer.cam_key={cam_key!r} is not a model output ({sorted(out)})")
    # EPS: class probabilities over background + classes, before any resize.
    cams = jax.nn.softmax(out[cam_key], axis=-1) if mode == "eps" else out[cam_key]
    sum_cam = cam_postprocess.merge_scale(
        cams, inputs["labels"], size, flipped=cam_postprocess.default_flipped(x.shape[0]),
        sum_cam=sum_cam)
  if mode == "eps":
    return cam_postprocess.max_normalize_cam(sum_cam)
  return cam_postprocess.normalize_cam(sum_cam)


def cam_input_spec(size, *, scales, flip, num_fg):
  """The shapes of `cam_inputs` for an image of size (H, W)."""
  h, w = size
  per_image = 2 if flip else 1
  x = tuple(jax.ShapeDtypeStruct((per_image,) + infer_inputs.scaled_size(w, h, s)[::-1] + (3,),
                                 jnp.float32) for s in scales)
  return {"x": x, "labels": jax.ShapeDtypeStruct((num_fg,), jnp.float32)}


def cam_inputs(image, labels, *, scales, flip):
  """One image's inputs to `cam_of_image`: the reference's multi-scale (+ flip) arrays."""
  return {"x": tuple(infer_inputs.multiscale_flip(image, scales, flip)),
          "labels": np.asarray(labels, np.float32)}


def cam_engine(model, variables, *, scales, flip, cam_key, mode="seam", num_fg=20, devices=None,
               images_per_device=1):
  """An `inference.Engine` of `cam_of_image`: `engine([cam_inputs(...), ...], (H, W))` gives
  the CAMs of same-size images."""
  check_mode(mode, cam_key)
  scales = tuple(float(s) for s in scales)
  compute = functools.partial(cam_of_image, model, cam_key=cam_key, mode=mode)
  spec = functools.partial(cam_input_spec, scales=scales, flip=bool(flip), num_fg=num_fg)
  return inference.Engine(compute, spec, variables, devices=devices,
                          images_per_device=images_per_device)


def cam_task(source, infer_config, out_dir, *, bg_threshold, cam_format, model):
  """The `inference.PerImage` of CAM inference: cams, seeds and overlays of one image."""
  scales = tuple(float(s) for s in infer_config.scales)

  def load(i):
    image = inference.read_or_skip(source, source.image_pil, i)
    if image is None:
      return None
    return cam_inputs(image, source.labels[i], scales=scales, flip=infer_config.flip), image

  def write(i, norm, image):
    image_id = source.ids[i]
    labels = source.labels[i]
    seed = cam_postprocess.seed_from_cams_host(norm, labels, bg_threshold)
    cam_postprocess.save_label_png(os.path.join(out_dir, "seeds", image_id + ".png"), seed)
    if i < infer_config.num_overlays:
      overlay = cam_postprocess.cam_overlay(np.asarray(image), norm, labels)
      atomic_io.save_image(os.path.join(out_dir, "overlays", image_id + ".jpg"),
                           PIL.Image.fromarray(overlay), quality=90)
    # The CAM file last: it marks the image done (a rerun skips it), so it must not exist
    # before the image's other outputs, even if the process is killed between two writes.
    cam_io.save_cam_dict(cam_io.file_path(os.path.join(out_dir, "cams"), image_id, cam_format),
                         norm, labels, fmt=cam_format)

  compute = functools.partial(cam_of_image, model, cam_key=infer_config.cam_key,
                              mode=infer_config.mode)
  return inference.PerImage(
      name="CAM inference", compute=compute,
      input_spec=functools.partial(cam_input_spec, scales=scales, flip=bool(infer_config.flip),
                                   num_fg=source.classes.num_fg),
      load=load, write=write, done_name=lambda image_id: cam_io.file_name(image_id, cam_format),
      done_dir=os.path.join(out_dir, "cams"))


def run_inference(config, workdir, *, split=None, out_dir=None, bg_threshold=None,
                  variables=None, model=None, cam_format=None):
  """Writes cam_dicts, seeds and overlays for every image of a split; returns a summary dict.

  cam_format: the cam files' format (`cam_io.FORMATS`): default `config.infer.cam_format`
  ('npz'; 'reference_npy' writes the reference's pickled dicts).
  """
  cam_format = cam_io.check_format(config.infer.cam_format if cam_format is None else cam_format)
  if config.stage != "seeds":
    raise ValueError(f"config.stage={config.stage!r}: CAM inference needs a stage-1 config; for "
                     "an AffinityNet run use python -m ppc_jax.refine.rw_infer")
  icfg = config.infer
  check_mode(icfg.mode, icfg.cam_key)
  split = split or icfg.split
  out_dir = out_dir or os.path.join(workdir, f"infer_{split}")
  bg_threshold = icfg.bg_threshold if bg_threshold is None else bg_threshold
  # The data and its class list first: a model whose head does not fit the list fails here,
  # before any restore.
  source = sources.open_source(config.input, split, max_images=icfg.max_images,
                               with_saliency=False)
  classes = voc.check_model_classes(source.classes, config.model.num_classes)
  if variables is None:
    model, variables, step = restore.restore_variables(config, workdir)
  else:
    step = None
  for sub in ("cams", "seeds", "overlays"):
    fileio.makedirs(os.path.join(out_dir, sub))
  # A cam file of the format written marks an image done; files of the other format do not count.
  task = cam_task(source, icfg, out_dir, bg_threshold=bg_threshold, cam_format=cam_format,
                  model=model)
  _, todo = inference.todo_indices(source, range(len(source.ids)), task.done_dir,
                                   task.done_name)
  done = fileio.names_in(task.done_dir)
  other = cam_io.other_format(cam_format)
  stale = sum(cam_io.file_name(source.ids[i], other) in done for i in todo)
  if stale:
    logging.warning("%s: %d cam files in the %s format are not reused (this run writes %s); "
                    "to reuse them, stop and convert them first: python -m ppc_jax.data.cam_io "
                    "--to=%s --src=DIR --dst=DIR", task.done_dir, stale, other, cam_format,
                    cam_format)
  engine = inference.Engine(task.compute, task.input_spec, variables,
                            images_per_device=icfg.images_per_device)
  stats = inference.run_split(task, engine, source, range(len(source.ids)),
                              threads=icfg.compile_threads, show_progress=config.progress_bar,
                              desc=f"infer {split}")
  if stats["skipped"]:
    logging.warning("inference: %d unreadable images skipped; %s", stats["skipped"],
                    source.bad.summary())
  summary = dict(split=split, num_images=stats["num_images"], computed=stats["computed"],
                 skipped=stats["skipped"], seconds=stats["seconds"],
                 num_programs=stats["num_programs"], checkpoint_step=step,
                 scales=list(icfg.scales), flip=icfg.flip, mode=icfg.mode, cam_key=icfg.cam_key,
                 bg_threshold=bg_threshold, out_dir=out_dir, devices=engine.num_devices,
                 classes=list(classes.names))
  if jax.process_index() == 0:
    atomic_io.write_json(os.path.join(out_dir, "summary.json"), summary)
  return summary


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------

def _define_flags():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_string("split", None, "Split to infer (default config.infer.split).")
  flags.DEFINE_string("out_dir", None, "Output directory (default <workdir>/infer_<split>).")
  flags.DEFINE_float("bg_threshold", None, "Seed background score (default from config).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime
  f = flags.FLAGS
  runtime.setup_host(f.config)
  summary = run_inference(f.config, f.workdir, split=f.split, out_dir=f.out_dir,
                          bg_threshold=f.bg_threshold)
  logging.info("inference done: %s", summary)
  print(json.dumps(summary, indent=2))


def cli():
  """The console script `ppc-infer` (pyproject.toml): `python -m ppc_jax.seeds.infer`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
