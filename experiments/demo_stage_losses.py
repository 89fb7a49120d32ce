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
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def walk(run, logt, beta, bg):
  """mask mIoU (classes in GT) of one run's AffinityNet with these walk settings, on train."""
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel
  out_dir = os.path.join(run, "stage_study", f"logt{logt}_beta{beta:g}_bg{bg:g}")
  report = os.path.join(out_dir, "report.json")
  if not os.path.exists(report):
    config = pretrained.load_run_config(os.path.join(run, "affinity"))
    config.refine.logt, config.refine.beta = logt, beta
    config.refine.bg_mode, config.refine.bg_value = "constant", bg
    config.progress_bar = False
    rw_infer.run_random_walk(config, os.path.join(run, "affinity"), split="train",
                             cam_dir=os.path.join(run, "seeds", "infer_train_aug", "cams"),
                             out_dir=out_dir)
  with open(report, encoding="utf-8") as f:
    return json.load(f)["mask"]["miou_gt_classes"]


def seed_at(run, bg):
  """The seeds' mIoU at background `bg` and at the sweep's best background, on train."""
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  data_dir = pretrained.load_run_config(os.path.join(run, "affinity")).input.data_dir
  cam_dir = os.path.join(run, "seeds", "infer_train_aug", "cams")
  fixed = evaluate.evaluate_cam_dir(data_dir, "train", cam_dir, thresholds=(bg,))
  best = evaluate.evaluate_cam_dir(data_dir, "train", cam_dir)
  return fixed["miou_gt_classes"], best["miou_gt_classes"], best["best_threshold"]


ERRORS = ("fg_as_bg", "bg_as_fg", "fg_wrong_class", "unlabelled")


def _error_counts(pred, gt, counts):
  """Adds one image's pixel counts (GT-labelled pixels only) to `counts` (keys ERRORS + right)."""
  valid = gt != 255
  labelled = valid & (pred != 255)
  counts["total"] += int(valid.sum())
  counts["unlabelled"] += int((valid & (pred == 255)).sum())
  counts["right"] += int((labelled & (pred == gt)).sum())
  counts["fg_as_bg"] += int((labelled & (gt > 0) & (pred == 0)).sum())
  counts["bg_as_fg"] += int((labelled & (gt == 0) & (pred > 0)).sum())
  counts["fg_wrong_class"] += int((labelled & (gt > 0) & (pred > 0) & (pred != gt)).sum())


def error_breakdown(run):
  """Where the seeds (t = 0.26 PNGs), the CRF labels and the walk's masks are wrong, on train.

  Returns {'seeds' | 'crf_labels' | 'masks': {kind: share of the GT-labelled pixels}}, kinds
  ERRORS and 'right'.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import affinity_labels  # pylint: disable=import-outside-toplevel
  data_dir = pretrained.load_run_config(os.path.join(run, "affinity")).input.data_dir
  with open(os.path.join(data_dir, "ImageSets", "Segmentation", "train.txt"),
            encoding="utf-8") as f:
    ids = f.read().split()
  out = {}
  for name in ("seeds", "crf_labels", "masks"):
    counts = dict.fromkeys(ERRORS + ("right", "total"), 0)
    for image_id in ids:
      gt = np.asarray(Image.open(os.path.join(data_dir, "SegmentationClass", image_id + ".png")))
      if name == "seeds":
        pred = np.asarray(Image.open(os.path.join(run, "seeds", "infer_train_aug", "seeds",
                                                  image_id + ".png")))
      elif name == "masks":
        pred = np.asarray(Image.open(os.path.join(run, "affinity", "rw_train_aug", "masks",
                                                  image_id + ".png")))
      else:
        stacks = []
        for kind in ("crf_la", "crf_ha"):
          with np.load(os.path.join(run, "crf", kind, image_id + ".npz"),
                       allow_pickle=False) as z:
            keys, maps = z["keys"], z["maps"]
          stacks.append(np.moveaxis(maps, 0, -1))
        label = affinity_labels.label_map_from_crf(*stacks)
        pred = np.where(label == 255, 255, keys[np.minimum(label, len(keys) - 1)])
      _error_counts(pred, gt, counts)
    out[name] = {k: counts[k] / counts["total"] for k in ERRORS + ("right",)}
  return out


def crf_label_quality(run):
  """AffinityNet's training labels (la / ha CRF, `label_map_from_crf`) on train, against the GT.

  Returns (coverage, accuracy, miou): the fraction of GT-labelled pixels that get a label (not
  255); of those, the fraction whose label is the GT class and the mIoU over the classes in GT
  (the labelled pixels only), at full resolution.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import affinity_labels  # pylint: disable=import-outside-toplevel
  data_dir = pretrained.load_run_config(os.path.join(run, "affinity")).input.data_dir
  with open(os.path.join(data_dir, "ImageSets", "Segmentation", "train.txt"),
            encoding="utf-8") as f:
    ids = f.read().split()
  labelled = correct = total = 0
  n = 256
  confusion = np.zeros((n, n), np.int64)
  for image_id in ids:
    stacks = []
    for kind in ("crf_la", "crf_ha"):
      with np.load(os.path.join(run, "crf", kind, image_id + ".npz"), allow_pickle=False) as z:
        keys, maps = z["keys"], z["maps"]
      stacks.append(np.moveaxis(maps, 0, -1))
    label = affinity_labels.label_map_from_crf(*stacks)
    cls = np.where(label == 255, 255, keys[np.minimum(label, len(keys) - 1)])
    gt = np.asarray(Image.open(os.path.join(data_dir, "SegmentationClass", image_id + ".png")))
    valid = gt != 255
    total += valid.sum()
    has = valid & (cls != 255)
    labelled += has.sum()
    correct += (has & (cls == gt)).sum()
    confusion += np.bincount(gt[has].astype(np.int64) * n + cls[has], minlength=n * n).reshape(n, n)
  present = confusion.sum(axis=1) > 0
  iou = np.diag(confusion) / np.maximum(confusion.sum(0) + confusion.sum(1) - np.diag(confusion), 1)
  return float(labelled / total), float(correct / max(labelled, 1)), float(iou[present].mean())


def segment_on_train(run):
  """The trained DeepLab's mIoU (classes in GT) on train, the images whose masks it learned."""
  from ppc_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ppc_jax.segment import seg_infer  # pylint: disable=import-outside-toplevel
  out_dir = os.path.join(run, "stage_study", "seg_train")
  summary = os.path.join(out_dir, "summary.json")
  if not os.path.exists(summary):
    config = pretrained.load_run_config(os.path.join(run, "segment"))
    config.progress_bar = False
    result = seg_infer.run_segmentation(config, os.path.join(run, "segment"), split="train",
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
  rows, crf = [], {}  # crf: per run, the CRF labels and stage 3
  for run in runs:
    coverage, accuracy, miou = crf_label_quality(run)
    crf[os.path.relpath(run, REPO)] = dict(coverage=coverage, accuracy=accuracy, miou=miou)
    if os.path.exists(os.path.join(run, "report.json")):  # stage 3 ran (not --stop_after)
      with open(os.path.join(run, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
      crf[os.path.relpath(run, REPO)].update(
          mask_train=report["mask"]["miou_gt_classes"],
          segment_train=segment_on_train(run),
          segment_val=report["segmentation"]["miou_gt_classes"])
      c = crf[os.path.relpath(run, REPO)]
      print(f"{os.path.relpath(run, REPO)}: masks (train) {100 * c['mask_train']:.1f}, DeepLab "
            f"on train {100 * c['segment_train']:.1f}, on val {100 * c['segment_val']:.1f}",
            flush=True)
    crf[os.path.relpath(run, REPO)]["errors"] = errors = error_breakdown(run)
    for name, shares in errors.items():
      print(f"{os.path.relpath(run, REPO)}: {name:10s} " + ", ".join(
          f"{k} {100 * v:.1f} %" for k, v in shares.items()), flush=True)
    print(f"{os.path.relpath(run, REPO)}: AffinityNet's CRF labels cover {100 * coverage:.1f} % "
          f"of the GT pixels, {100 * accuracy:.1f} % of them right, mIoU {100 * miou:.1f} % "
          "(labelled pixels, classes in GT)", flush=True)
    for logt, beta, bg in grid:
      fixed, best, best_t = seed_at(run, bg)
      rows.append(dict(run=os.path.relpath(run, REPO), logt=logt, beta=beta, bg=bg,
                       mask=walk(run, logt, beta, bg), seed_at_bg=fixed, seed_best=best,
                       seed_best_threshold=best_t))
      r = rows[-1]
      print(f"{r['run']}: logt {logt} beta {beta:g} bg {bg:g}: mask {100 * r['mask']:.1f} | "
            f"seed at bg {100 * fixed:.1f}, best {100 * best:.1f} (t {best_t:.2f})", flush=True)
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
    atomic_io.write_json(args.out, {"grid": grid, "rows": rows, "per_run": crf})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
