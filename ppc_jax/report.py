"""Reports of evaluation results (numpy / matplotlib, no JAX at import).

  write_report    report.json (+ miou_curve.png for a threshold sweep) of one evaluation
  format_result   a readable per-class table for the terminal
  plot_curve      the mIoU-vs-threshold curve as a PNG
  write_markdown  the demo's markdown report: seed mIoU against trivial baselines, overlays
"""

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
  num_classes = len(per_class["per_class_iou"])  # the class list's count, background included
  lines = [f"# {title}", ""]
  for k, v in facts.items():
    lines.append(f"- **{k}**: {v}")
  lines += ["", "## Seed mIoU (evaluated on the `train` split, threshold swept 0.00..0.59)", "",
            f"| method | mIoU, classes in GT (%) | mIoU, {num_classes} classes (reference formula, "
            "%) | best threshold |",
            "|---|---|---|---|"]
  for name, r in method_rows:
    lines.append(f"| {name} | {_pct(r['miou_gt_classes'])} | {_pct(r['miou'])} | "
                 f"{r.get('best_threshold', float('nan')):.2f} |")
  lines += ["", f"The reference formula averages IoU over all {num_classes} classes of the class "
            "list; a data set that uses only some of them (the synthetic one) scores 0 on the "
            "absent ones, so the first column averages over the classes present in the ground "
            "truth.", ""]
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


def plot_curve(path, result, title=None):
  """Writes the mIoU-vs-threshold curve of a sweep result as a PNG (matplotlib Agg), atomically."""
  import io  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  t = np.asarray(result["thresholds"])
  miou = 100.0 * np.asarray(result["miou_curve"])
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  try:
    ax.plot(t, miou, marker=".", lw=1)
    ax.axvline(result["best_threshold"], color="r", ls="--", lw=1,
               label=f"best t={result['best_threshold']:.2f}: {100 * result['miou']:.2f}%")
    ax.set_xlabel("background threshold t")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title or "seed mIoU vs background threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
  finally:
    plt.close(fig)
  atomic_io.write_bytes(path, buf.getvalue())


def write_report(out_dir, result, *, split=None, cam_dir=None, baselines=None):
  """Writes `report.json` (and `miou_curve.png` for sweeps) under out_dir.

  Returns:
    dict of the written paths.
  """
  out = dict(result)
  out["split"] = split
  out["cam_dir"] = None if cam_dir is None else os.fspath(cam_dir)
  if baselines is not None:
    out["baselines"] = {
        name: {k: r[k] for k in ("miou", "miou_gt_classes", "best_threshold", "per_class_iou")
               if k in r}
        for name, r in baselines.items()}
  paths = {"json": os.path.join(out_dir, "report.json")}
  atomic_io.write_json(paths["json"], out)
  if "miou_curve" in result and len(result["miou_curve"]) > 1:
    paths["curve"] = os.path.join(out_dir, "miou_curve.png")
    plot_curve(paths["curve"], result)
  return paths


def format_result(result):
  """A readable table of a result (per-class IoU, mIoU and best threshold, in %)."""
  lines = []
  items = list(result["per_class_iou"].items())
  for i in range(0, len(items), 2):
    lines.append("  ".join(f"{n:>12}: {100 * v:7.3f}%" for n, v in items[i:i + 2]))
  tail = f"{'mIoU':>12}: {100 * result['miou']:7.3f}%"
  if "best_threshold" in result:
    tail += f"   (best threshold t = {result['best_threshold']:.2f})"
  lines.append(tail)
  if "inference" in result:
    inf = result["inference"]
    lines.append(f"{'CAMs':>12}: {inf.get('mode', 'seam')} mode, map {inf.get('cam_key', '?')}, "
                 f"checkpoint step {inf.get('checkpoint_step')}")
  if result.get("num_gt_classes", len(items)) < len(items):
    lines.append(f"{'mIoU (GT)':>12}: {100 * result['miou_gt_classes']:7.3f}%   (over the "
                 f"{result['num_gt_classes']} classes present in the GT; not the reference metric)")
  return "\n".join(lines)
