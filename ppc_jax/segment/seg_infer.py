r"""Stage 3 inference and evaluation: multi-scale + flip DeepLab logits, optional dense CRF,
palette PNGs in the VOC server's layout, confusion-matrix mIoU and per-class IoU.

  python -m ppc_jax.segment.seg_infer --config=configs/seg_ppc_voc12.py --workdir=runs/seg \
      [--split=val] [--out_dir=...] [--config.segment.crf=True]

Per image (reference `test.py` / `collect_func`, METHOD 11.14): the normalised image is resized by
bicubic at each scale of `config.segment.test_scales` (0.5 .. 1.75), each input and its
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
Images whose PNG exists are skipped, so an interrupted run resumes; processes split the ids.
The images come from `config.input.source` (the directory tree or the TFDS set,
`sources.open_source`); the evaluation reads the GT masks of `config.input.data_dir`'s tree with
either source (as stage 1's), and is skipped where that tree lacks them.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ppc_jax import atomic_io
from ppc_jax.seeds import cam_postprocess
from ppc_jax import evaluate
from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax import restore
from ppc_jax.data import sources
from ppc_jax.data import voc
from ppc_jax.ops import resize
from ppc_jax.segment import seg_augment


def make_forward(model):
  """`forward(variables, x [2 or 1, h, w, 3], size=(H, W)) -> [H, W, C]`: eval-mode logits of an
  image (and its mirror, un-flipped) resized to (H, W) with align_corners=True, summed over the
  batch. One program per (input shape, output size)."""

  def forward(variables, x, size):
    logits = model.apply(variables, x, train=False)["logits"]
    up = resize.resize_bilinear(logits, size, align_corners=True)
    if x.shape[0] == 2:
      up = up.at[1].set(up[1, :, ::-1])
    return jnp.sum(up, axis=0)

  return jax.jit(forward, static_argnums=(2,))


def predict_logits(forward, variables, image_norm, scales, flip):
  """Mean logits over scales x flip (reference `collect_func` before its softmax).

  Args:
    forward: `make_forward(model)`.
    variables: the model's {'params', 'batch_stats'}.
    image_norm: float32 [H, W, 3] normalised image (`seg_augment.normalize_float32`).
    scales: test scales.
    flip: add each scale's mirror.

  Returns:
    float32 [H, W, C].
  """
  h, w = image_norm.shape[:2]
  total = None
  for s in scales:
    x = image_norm if s == 1.0 else seg_augment.resize_cubic(image_norm, s)
    batch = np.stack([x, x[:, ::-1]]) if flip else x[None]
    out = forward(variables, jnp.asarray(batch), (h, w))
    total = out if total is None else total + out
  count = len(scales) * (2 if flip else 1)
  return np.asarray(jax.device_get(total), np.float32) / count


def softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def predict_label(forward, variables, image, segment_config):
  """uint8 [H, W] label map of one uint8 RGB image per `config.segment`."""
  sc = segment_config
  logits = predict_logits(forward, variables, seg_augment.normalize_float32(image),
                          tuple(sc.test_scales), bool(sc.test_flip))
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


def _segment_images(source, todo, forward, variables, sc, pred_dir, split, show_progress):
  """run_segmentation's loop: one prediction PNG per image of `todo` (indices into source)."""
  for n, i in enumerate(tqdm.tqdm(todo, desc=f"segment {split}", unit="img",
                                  disable=jax.process_index() != 0 or not show_progress)):
    interrupt.check("segmentation", n, len(todo), unit="image")
    try:
      image = source.image(i)
    except voc.DataError as e:  # with verify='none' a broken image is first met here
      if not source.skip_bad:
        raise
      source.bad.add(e)
      continue
    label = predict_label(forward, variables, image, sc)
    cam_postprocess.save_label_png(os.path.join(pred_dir, source.ids[i] + ".png"), label)


def run_segmentation(config, workdir, *, split=None, out_dir=None, evaluate_split=True):
  """Writes the label PNGs of a split and evaluates them when the split has ground truth.

  Args:
    config: the segmentation config (model 'deeplab', `config.segment`).
    workdir: the segmentation work directory (its latest checkpoint).
    split: default `config.segment.test_split` ('val').
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
  split = split or sc.test_split
  out_dir = out_dir or os.path.join(workdir, f"seg_{split}")
  pred_dir = prediction_dir(out_dir, split)
  fileio.makedirs(pred_dir)
  # The images from config.input.source (the directory tree or the TFDS set).
  source = sources.open_source(config.input, split, max_images=sc.max_images,
                                with_saliency=False, labels="none")
  classes = voc.check_model_classes(source.classes, config.model.num_classes)
  model, variables, step = restore.restore_variables(config, workdir)
  forward = make_forward(model)
  mine = list(range(jax.process_index(), len(source.ids), jax.process_count()))
  done = fileio.names_in(pred_dir)
  todo = [i for i in mine if source.ids[i] + ".png" not in done]
  logging.info("segmentation inference on %d of %d images of %s (%d already done)", len(todo),
               len(mine), split, len(mine) - len(todo))
  bad_before = source.bad.count
  t0 = time.perf_counter()
  with interrupt.handling_signals(
      "segmentation: SIGTERM/SIGINT now stop after the current image"):
    _segment_images(source, todo, forward, variables, sc, pred_dir, split,
                    config.progress_bar)
  skipped = source.bad.count - bad_before
  seconds = time.perf_counter() - t0
  computed = len(todo) - skipped
  if skipped:
    logging.warning("segmentation: %d unreadable images skipped; %s", skipped,
                    source.bad.summary())
  summary = dict(split=split, num_images=len(mine), computed=computed, skipped=skipped,
                 seconds=seconds,
                 images_per_sec=computed / seconds if computed and seconds > 0 else None,
                 checkpoint_step=step, scales=list(sc.test_scales), flip=bool(sc.test_flip),
                 crf=bool(sc.crf), pred_dir=pred_dir, classes=list(classes.names))
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
  flags.DEFINE_string("split", "", "Split to segment (default config.segment.test_split).")
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
