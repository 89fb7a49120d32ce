r"""Stage 3 inference and evaluation: multi-scale + flip DeepLab logits, optional dense CRF,
palette PNGs in the VOC server's layout, confusion-matrix mIoU and per-class IoU.

  python -m ppc_jax.segment.seg_infer --config=configs/seg_ppc_voc12.py --workdir=runs/seg \
      [--split=val] [--out_dir=...] [--config.segment.crf=True]

Per image (reference `test.py` / `collect_func`, METHOD 11.14): the normalised image is resized by
bicubic at each scale of `config.infer.scales` (0.5 .. 1.75), each input and its
horizontal mirror go through the model in eval mode (running BN statistics, no dropout), each
output's logits are resized to the image (bilinear, align_corners=True; the mirror's flipped
back), the 2 x S logits are **averaged**, then softmax, then (with `config.segment.crf`) a dense
CRF on the probabilities, then argmax.

CRF: the released `test.py` calls `dense_crf_from_deeplabv2`, which its `utils/DenseCRF.py` does not
define (the script cannot run as released). Its name points to DeepLab-v2's VOC CRF, the default
of `config.segment.crf_params`: 10 iterations, Gaussian sxy 1 / compat 3, bilateral sxy 67 /
srgb 3 / compat 4 (unary -log p, as pydensecrf's unary_from_softmax). The CRF reads the uint8
image as decoded (the reference de-normalises its float input and truncates to uint8, which can
differ by one grey level).

Outputs under `out_dir` (default `<workdir>/seg_<split>`):
  results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png   palette PNGs (the layout the VOC
                                                            evaluation server takes for `test`:
                                                            tar the `results` folder)
  report.json                                                mIoU, per-class IoU (when the split
                                                            has ground truth), counts, settings
Runs on `ppc_jax.inference`: processes split the ids, images whose PNG exists are skipped (an
interrupted run resumes), same-size images are batched and sharded over the local devices with
one program per image size compiled ahead; the device computes the logits' sum over scales x
flip, the host the mean, softmax, CRF and argmax (as before, so a prediction does not depend on
the other images of its batch).
The images come from `config.input.source` (the directory tree or the TFDS set,
`sources.open_source`); the evaluation reads the GT masks of `config.input.data_dir`'s tree with
either source (as stage 1's), and is skipped where that tree lacks them.
"""

import functools
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import evaluate
from ppc_jax import fileio
from ppc_jax import inference
from ppc_jax import restore
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.ops import resize
from ppc_jax.seeds import cam_postprocess
from ppc_jax.segment import seg_augment


def logits_of_image(model, variables, inputs, size):
  """Sum of one image's eval-mode logits over scales x flip (the engine's per-image function).

  Args:
    model: DeepLab.
    variables: its {'params', 'batch_stats'}.
    inputs: tuple over scales of float32 [P, h, w, 3] (P = 2: the scaled image and its mirror,
      or 1), as `seg_inputs` builds them.
    size: (H, W) of the image, static.

  Returns:
    float32 [H, W, C]: each output's logits resized to (H, W) (bilinear, align_corners=True; the
    mirror's flipped back), summed.
  """
  total = None
  for x in inputs:
    logits = model.apply(variables, x, train=False)["logits"]
    up = resize.resize_bilinear(logits, tuple(size), align_corners=True)
    if x.shape[0] == 2:
      up = up.at[1].set(up[1, :, ::-1])
    out = jnp.sum(up, axis=0)
    total = out if total is None else total + out
  return total


def seg_input_spec(size, *, scales, flip):
  """The shapes of `seg_inputs` for an image of size (H, W)."""
  h, w = size
  per_image = 2 if flip else 1
  return tuple(
      jax.ShapeDtypeStruct((per_image,) + ((h, w) if s == 1.0 else (
          seg_augment.scaled_size(h, s), seg_augment.scaled_size(w, s))) + (3,), jnp.float32)
      for s in scales)


def seg_inputs(image_norm, scales, flip):
  """One image's inputs to `logits_of_image`: per scale the bicubic-resized normalised image
  [h, w, 3] (as is at scale 1) stacked with its mirror."""
  out = []
  for s in scales:
    x = image_norm if s == 1.0 else seg_augment.resize_cubic(image_norm, s)
    out.append(np.stack([x, x[:, ::-1]]) if flip else x[None])
  return tuple(out)


def predict_logits(model, variables, image_norm, scales, flip):
  """Mean logits of one image over scales x flip (reference `collect_func` before its softmax),
  without the engine: float32 [H, W, 3] normalised image -> float32 [H, W, C]."""
  size = image_norm.shape[:2]
  total = jax.jit(functools.partial(logits_of_image, model), static_argnums=2)(
      variables, seg_inputs(image_norm, scales, flip), size)
  return np.asarray(jax.device_get(total), np.float32) / (len(scales) * (2 if flip else 1))


def softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def label_from_logits(logits, image, segment_config):
  """uint8 [H, W] label map from the mean logits [H, W, C] of a uint8 RGB image, per
  `config.segment`: softmax, then the dense CRF when `crf`, then argmax."""
  sc = segment_config
  probs = softmax(logits)
  if sc.crf:
    from ppc_jax.refine import crf  # pylint: disable=import-outside-toplevel
    p = sc.crf_params
    probs = crf.crf_from_softmax(image, probs, iterations=p.iterations, gauss_sxy=p.gauss_sxy,
                                 gauss_compat=p.gauss_compat, bi_sxy=p.bi_sxy, bi_srgb=p.bi_srgb,
                                 bi_compat=p.bi_compat)
  return np.argmax(probs, -1).astype(np.uint8)


def prediction_dir(out_dir, split):
  return os.path.join(out_dir, "results", "VOC2012", "Segmentation", f"comp6_{split}_cls")


def _has_gt(data_dir, ids):
  """Whether data_dir holds the GT mask of every id. The evaluator reads `SegmentationClass` of
  the tree with either source (as stage 1's evaluation): a TFDS run scores only where the tree
  is there too."""
  return bool(data_dir) and all(fileio.exists(evaluate.gt_path(data_dir, i)) for i in ids)


def seg_task(source, model, segment_config, pred_dir, *, scales, flip):
  """The `inference.PerImage` of segmentation: one prediction PNG per image of the test `scales`
  (x `flip`)."""
  sc = segment_config
  scales, flip = tuple(float(s) for s in scales), bool(flip)
  count = len(scales) * (2 if flip else 1)

  def load(i):
    image = inference.read_or_skip(source, source.image, i)
    if image is None:
      return None
    return seg_inputs(seg_augment.normalize_float32(image), scales, flip), image

  def write(i, total, image):
    logits = np.asarray(total, np.float32) / count
    cam_postprocess.save_label_png(os.path.join(pred_dir, source.ids[i] + ".png"),
                                   label_from_logits(logits, image, sc))

  return inference.PerImage(
      name="segmentation", compute=functools.partial(logits_of_image, model),
      input_spec=functools.partial(seg_input_spec, scales=scales, flip=flip), load=load,
      write=write, done_name=lambda image_id: image_id + ".png", done_dir=pred_dir)


def run_segmentation(config, workdir, *, split=None, out_dir=None, evaluate_split=True):
  """Writes the label PNGs of a split and evaluates them when the split has ground truth.

  Args:
    config: the segmentation config (model 'deeplab', `config.segment`).
    workdir: the segmentation work directory (its latest checkpoint).
    split: default `config.infer.split` ('val').
    out_dir: default `<workdir>/seg_<split>`.
    evaluate_split: score against `SegmentationClass` of `config.input.data_dir` when every GT
      file exists there (also with config.input.source='tfds': the evaluator reads the tree).

  Returns:
    summary dict (counts, seconds, images/s, 'result' with miou / per_class_iou when evaluated).
  """
  if config.stage != "segment":
    raise ValueError(f"config.stage={config.stage!r}: segmentation inference needs a 'segment' "
                     "config")
  sc = config.segment
  split = split or config.infer.split
  out_dir = out_dir or os.path.join(workdir, f"seg_{split}")
  pred_dir = prediction_dir(out_dir, split)
  fileio.makedirs(pred_dir)
  # The images from config.input.source (the directory tree or the TFDS set).
  source = sources.open_source(config.input, split, max_images=config.infer.max_images,
                                with_saliency=False, labels="none")
  classes = voc.check_model_classes(source.classes, config.model.num_classes)
  model, variables, step = restore.restore_variables(config, workdir)
  task = seg_task(source, model, sc, pred_dir, scales=config.infer.scales,
                  flip=config.infer.flip)
  engine = inference.Engine(task.compute, task.input_spec, variables,
                            images_per_device=config.infer.images_per_device)
  stats = inference.run_split(task, engine, source, range(len(source.ids)),
                              threads=config.infer.compile_threads,
                              show_progress=config.progress_bar, desc=f"segment {split}")
  seconds, computed, skipped = stats["seconds"], stats["computed"], stats["skipped"]
  if skipped:
    logging.warning("segmentation: %d unreadable images skipped; %s", skipped,
                    source.bad.summary())
  summary = dict(split=split, num_images=stats["num_images"], computed=computed, skipped=skipped,
                 seconds=seconds,
                 images_per_sec=computed / seconds if computed and seconds > 0 else None,
                 num_programs=stats["num_programs"], checkpoint_step=step,
                 scales=list(config.infer.scales), flip=bool(config.infer.flip), crf=bool(sc.crf),
                 pred_dir=pred_dir, devices=engine.num_devices, classes=list(classes.names))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("segmentation PNGs written")
  has_gt = evaluate_split and jax.process_index() == 0 and _has_gt(config.input.data_dir,
                                                                   source.ids)
  if evaluate_split and jax.process_index() == 0 and not has_gt:
    logging.info("segmentation: not evaluated (no GT mask for every image of %s under "
                 "config.input.data_dir=%r)", split, config.input.data_dir)
  if has_gt:
    ids = list(source.ids)
    if source.skip_bad:  # images skipped here or by another process have no prediction
      written = fileio.names_in(pred_dir)
      ids = [image_id for image_id in ids if image_id + ".png" in written]
    result = evaluate.evaluate_cam_dir(config.input.data_dir, split, pred_dir, input_type="png",
                                       ids=ids, classes=classes)
    summary["result"] = {k: result[k] for k in ("miou", "miou_gt_classes", "per_class_iou",
                                                "num_images", "gt_classes")}
  if jax.process_index() == 0:
    atomic_io.write_json(os.path.join(out_dir, "report.json"), summary)
  return summary


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------

def _define_flags():
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Segmentation config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The segmentation work directory.")
  flags.DEFINE_string("split", "", "Split to segment (default config.infer.split).")
  flags.DEFINE_string("out_dir", "", "Output directory (default <workdir>/seg_<split>).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  config = flags.FLAGS.config
  runtime.setup_host(config)
  summary = run_segmentation(config, flags.FLAGS.workdir, split=flags.FLAGS.split or None,
                             out_dir=flags.FLAGS.out_dir or None)
  if "result" in summary:
    print(f"segmentation mIoU {100 * summary['result']['miou']:.1f}% on {summary['split']} "
          f"({summary['num_images']} images)")
  print(f"predictions: {summary['pred_dir']}")


def cli():
  """`python -m ppc_jax.segment.seg_infer`."""
  from ppc_jax import entry  # pylint: disable=import-outside-toplevel
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
