"""A markdown report of a run: seed mIoU table against trivial baselines, curve, overlays."""

import os
import platform

import numpy as np

from ppc_jax import atomic_io


def _pct(x):
  return f"{100.0 * x:.1f}"


def machine_description():
  import jax
  dev = jax.devices()[0]
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{jax.device_count()} x {dev.platform} ({dev.device_kind}), jax {jax.__version__}")


def write_markdown(path, *, title, method_rows, per_class, curve_png, overlays, facts):
  """Writes the report atomically.

  Args:
    path: output .md path.
    title: heading.
    method_rows: list of (name, result dict from ppc_jax.evaluate) to tabulate.
    per_class: result dict whose per-class IoU is listed.
    curve_png: path of the threshold curve, relative to the report.
    overlays: relative paths of overlay images to show.
    facts: dict of run facts (steps, times, machine, ...) listed at the top.
  """
  lines = [f"# {title}", ""]
  for k, v in facts.items():
    lines.append(f"- **{k}**: {v}")
  lines += ["", "## Seed mIoU (evaluated on the `train` split, threshold swept 0.00..0.59)", "",
            "| method | mIoU, classes in GT (%) | mIoU, 21 classes (reference formula, %) "
            "| best threshold |",
            "|---|---|---|---|"]
  for name, r in method_rows:
    lines.append(f"| {name} | {_pct(r['miou_gt_classes'])} | {_pct(r['miou'])} | "
                 f"{r.get('best_threshold', float('nan')):.2f} |")
  lines += ["", "The reference formula averages IoU over all 21 VOC classes; a data set that uses "
            "only some of them (the synthetic one) scores 0 on the absent ones, so the first "
            "column averages over the classes present in the ground truth.", ""]
  lines += ["## Per-class IoU of the trained model (best threshold)", "",
            "| class | IoU (%) |", "|---|---|"]
  for name, iou in per_class["per_class_iou"].items():
    if np.isfinite(iou) and (iou > 0 or name == "background"):
      lines.append(f"| {name} | {_pct(iou)} |")
  lines += ["", "## Threshold curve", "", f"![mIoU vs background threshold]({curve_png})", ""]
  if overlays:
    lines += ["## CAM overlays (PCM-refined, multi-scale + flip)", ""]
    lines += [" ".join(f"![{os.path.basename(p)}]({p})" for p in overlays), ""]
  atomic_io.write_text(path, "\n".join(lines) + "\n")
