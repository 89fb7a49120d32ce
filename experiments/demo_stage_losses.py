r"""Where do stages 2 and 3 lose mIoU on the demo set? Measured stage by stage on finished runs.

Question: on the demo set the random walk's pseudo-masks score below the seeds they start from,
and the segmentation below the masks it learns from (bench/method_effects.py). Which step loses
it: AffinityNet's training labels (the la / ha CRF), the walk (the reference's VOC settings beta 8,
logt 6 = 2^6 steps, background 0.27, made for feature maps of about 63x47, where the demo's are
12x16), or DeepLab: does it fit its masks (train) and carry that to val?
Answer: docs/benchmarks.md, "Stage 2 and 3 on the demo set"
(results/demo_stage_losses_cpu.json).

  python experiments/demo_stage_losses.py --runs runs/method_effects/pretrained/seam/seed0,... \
      [--logt 0,1,2,3,4,6] [--beta 8] [--bg 0.27] [--out results.json]

Each run is a finished `ppc_jax.pipeline` work directory of configs/pipeline_demo.py. Per run:
the CRF labels' coverage and mIoU on train against the GT; the seeds at the walk's background and
at the sweep's best; the trained AffinityNet walking the train CAMs with every (logt, beta, bg) of
the grid; the trained DeepLab on train (the images whose masks it learned) beside its val score.
Outputs go to <run>/stage_study/; the pipeline's own files are not touched.
"""

import argparse
import functools
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
EVAL_SPLIT = "train"  # configs/pipeline_demo.py's eval_split: seeds and masks are scored on it


@functools.lru_cache(maxsize=None)
def _run_files(run):
  """(paths, data_dir, train ids) of a finished configs/pipeline_demo.py run."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax import pipeline  # pylint: disable=import-outside-toplevel
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  # Paths depends only on the splits and the refinement, the same for every variant.
  config = config_lib.load_sibling_config(os.path.join(REPO, "configs", "pipeline_demo.py"),
                                          "pipeline_demo")
  paths = pipeline.Paths(run, config)
  data_dir = pretrained.load_run_config(paths.affinity).input.data_dir
  with open(os.path.join(data_dir, "ImageSets", "Segmentation", EVAL_SPLIT + ".txt"),
            encoding="utf-8") as f:
    ids = tuple(f.read().split())
  return paths, data_dir, ids


def walk(run, logt, beta, bg):
  """mask mIoU (classes in GT) of one run's AffinityNet with these walk settings, on train."""
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel
  paths = _run_files(run)[0]
  out_dir = os.path.join(run, "stage_study", f"logt{logt}_beta{beta:g}_bg{bg:g}")
  report = os.path.join(out_dir, "report.json")
  if not os.path.exists(report):
    config = pretrained.load_run_config(paths.affinity)
    config.refine.logt, config.refine.beta = logt, beta
    config.refine.bg_mode, config.refine.bg_value = "constant", bg
    config.progress_bar = False
    rw_infer.run_random_walk(config, paths.affinity, split=EVAL_SPLIT, cam_dir=paths.cams,
                             out_dir=out_dir)
  with open(report, encoding="utf-8") as f:
    return json.load(f)["mask"]["miou_gt_classes"]


def seed_scores(run, backgrounds):
  """The seeds' mIoU on train: ({bg: mIoU at that background}, best mIoU, best background)."""
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  paths, data_dir, _ = _run_files(run)
  best = evaluate.evaluate_cam_dir(data_dir, EVAL_SPLIT, paths.cams)
  fixed = {bg: evaluate.evaluate_cam_dir(data_dir, EVAL_SPLIT, paths.cams,
                                         thresholds=(bg,))["miou_gt_classes"]
           for bg in sorted(set(backgrounds))}
  return fixed, best["miou_gt_classes"], best["best_threshold"]


ERRORS = ("fg_as_bg", "bg_as_fg", "fg_wrong_class", "unlabelled")
OUTPUT_KINDS = ("seeds", "crf_labels", "masks")


def _crf_label_map(crf_dir, image_id):
  """AffinityNet's training labels of one image (`label_map_from_crf`) as class indices."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import affinity_labels  # pylint: disable=import-outside-toplevel
  stacks = []
  for kind in ("crf_la", "crf_ha"):
    with np.load(os.path.join(crf_dir, kind, image_id + ".npz"), allow_pickle=False) as z:
      keys, maps = z["keys"], z["maps"]
    stacks.append(np.moveaxis(maps, 0, -1))
  label = affinity_labels.label_map_from_crf(*stacks)
  return np.where(label == 255, 255, keys[np.minimum(label, len(keys) - 1)])


def error_breakdown(run):
  """Where the seeds (t = 0.26 PNGs), the CRF labels and the walk's masks are wrong, on train.

  Returns ({'seeds' | 'crf_labels' | 'masks': {kind: share of the GT-labelled pixels}}, with
  kinds ERRORS and 'right'; {'coverage', 'accuracy', 'miou'} of the CRF labels: the share of
  GT-labelled pixels they label (not 255), the share of those that is right, and their mIoU
  over the classes in GT on the labelled pixels).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  paths, data_dir, ids = _run_files(run)
  n = 256  # label values; 255 = unlabelled
  counts = {name: np.zeros((n, n), np.int64) for name in OUTPUT_KINDS}  # [GT, prediction]
  for image_id in ids:
    gt = np.asarray(Image.open(os.path.join(data_dir, "SegmentationClass", image_id + ".png")))
    preds = {
        "seeds": np.asarray(Image.open(os.path.join(paths.cams_out, "seeds", image_id + ".png"))),
        "crf_labels": _crf_label_map(paths.crf, image_id),
        "masks": np.asarray(Image.open(os.path.join(paths.masks, image_id + ".png"))),
    }
    valid = gt != 255
    for name, pred in preds.items():
      counts[name] += np.bincount(gt[valid].astype(np.int64) * n + pred[valid],
                                  minlength=n * n).reshape(n, n)
  shares = {}
  for name, c in counts.items():
    total, unlabelled = c.sum(), c[:, 255].sum()
    right = np.trace(c[:255, :255])
    fg_fg = c[1:255, 1:255].sum()
    shares[name] = {"fg_as_bg": c[1:255, 0].sum() / total, "bg_as_fg": c[0, 1:255].sum() / total,
                    "fg_wrong_class": (fg_fg - np.trace(c[1:255, 1:255])) / total,
                    "unlabelled": unlabelled / total, "right": right / total}
    shares[name] = {k: float(v) for k, v in shares[name].items()}
  c = counts["crf_labels"][:255, :255]  # the labelled pixels
  present = c.sum(axis=1) > 0
  iou = np.diag(c) / np.maximum(c.sum(0) + c.sum(1) - np.diag(c), 1)
  labelled = 1.0 - shares["crf_labels"]["unlabelled"]
  quality = dict(coverage=labelled, accuracy=shares["crf_labels"]["right"] / max(labelled, 1e-12),
                 miou=float(iou[present].mean()))
  return shares, quality


def segment_on_train(run):
  """The trained DeepLab's mIoU (classes in GT) on train, the images whose masks it learned."""
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.segment import seg_infer  # pylint: disable=import-outside-toplevel
  segment_dir = _run_files(run)[0].segment
  out_dir = os.path.join(run, "stage_study", "seg_train")
  summary = os.path.join(out_dir, "summary.json")
  if not os.path.exists(summary):
    config = pretrained.load_run_config(segment_dir)
    config.progress_bar = False
    result = seg_infer.run_segmentation(config, segment_dir, split=EVAL_SPLIT,
                                        out_dir=out_dir)["result"]
    from ppc_jax import atomic_io  # pylint: disable=import-outside-toplevel
    atomic_io.write_json(summary, {"miou_gt_classes": result["miou_gt_classes"]})
  with open(summary, encoding="utf-8") as f:
    return json.load(f)["miou_gt_classes"]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", required=True, help="comma-separated pipeline work directories")
  parser.add_argument("--logt", default="0,1,2,3,4,6")
  parser.add_argument("--beta", default="8")
  parser.add_argument("--bg", default="0.27")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  runs = [r for r in args.runs.split(",") if r]
  grid = [(int(t), float(b), float(g)) for t in args.logt.split(",")
          for b in args.beta.split(",") for g in args.bg.split(",")]
  rows, per_run = [], {}  # per run: the CRF labels, the error kinds and stage 3
  for run in runs:
    name = os.path.relpath(run, REPO)
    errors, quality = error_breakdown(run)
    per_run[name] = dict(quality)
    if os.path.exists(os.path.join(run, "report.json")):  # stage 3 ran (not --stop_after)
      with open(os.path.join(run, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
      per_run[name].update(mask_train=report["mask"]["miou_gt_classes"],
                           segment_train=segment_on_train(run),
                           segment_val=report["segmentation"]["miou_gt_classes"])
      c = per_run[name]
      print(f"{name}: masks (train) {100 * c['mask_train']:.1f}, DeepLab on train "
            f"{100 * c['segment_train']:.1f}, on val {100 * c['segment_val']:.1f}", flush=True)
    per_run[name]["errors"] = errors
    for kind, shares in errors.items():
      print(f"{name}: {kind:10s} " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in shares.items()),
            flush=True)
    print(f"{name}: AffinityNet's CRF labels cover {100 * quality['coverage']:.1f} % of the GT "
          f"pixels, {100 * quality['accuracy']:.1f} % of them right, mIoU "
          f"{100 * quality['miou']:.1f} % (labelled pixels, classes in GT)", flush=True)
    fixed, best, best_t = seed_scores(run, [bg for _, _, bg in grid])
    for logt, beta, bg in grid:
      rows.append(dict(run=name, logt=logt, beta=beta, bg=bg, mask=walk(run, logt, beta, bg),
                       seed_at_bg=fixed[bg], seed_best=best, seed_best_threshold=best_t))
      print(f"{name}: logt {logt} beta {beta:g} bg {bg:g}: mask {100 * rows[-1]['mask']:.1f} | "
            f"seed at bg {100 * fixed[bg]:.1f}, best {100 * best:.1f} (t {best_t:.2f})",
            flush=True)
  print("\n| logt | beta | bg | median mask - seed at bg | median mask - best seed | runs |")
  print("|---|---|---|---|---|---|")
  for logt, beta, bg in grid:
    sel = [r for r in rows if (r["logt"], r["beta"], r["bg"]) == (logt, beta, bg)]
    d_fixed = statistics.median(r["mask"] - r["seed_at_bg"] for r in sel)
    d_best = statistics.median(r["mask"] - r["seed_best"] for r in sel)
    print(f"| {logt} | {beta:g} | {bg:g} | {100 * d_fixed:+.1f} | {100 * d_best:+.1f} | "
          f"{len(sel)} |")
  if args.out:
    from ppc_jax import atomic_io  # pylint: disable=import-outside-toplevel
    atomic_io.write_json(args.out, {"grid": grid, "rows": rows, "per_run": per_run})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
