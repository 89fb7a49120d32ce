r"""The end-to-end demo on the built-in synthetic VOC set: the whole pipeline, seeds to segmentation.

  python -m ppc_jax.demo --workdir=runs/demo [--config=configs/pipeline_demo.py] [--check_margin=0.03]

With the default config (configs/pipeline_demo.py) this is `python -m ppc_jax.pipeline` on the
synthetic set: data, SEAM+PPC training (configs/demo.py, CAM-only warm-up included), CAMs of
train_aug, seed mIoU on train, CRF labels, AffinityNet, random walk, mask mIoU on train, DeepLab-v1
on the masks, segmentation mIoU on val, and `<workdir>/report.md` / `report.json` with the three
mIoUs beside the evaluator's trivial baselines, per-stage time and overlays. Re-running resumes:
every finished stage is skipped, an interrupted one continues from its checkpoints / files.

A stage-1 config (configs/demo.py) runs the seeds part alone, as before the pipeline existed:
training, CAM inference on `config.infer.split`, seed evaluation and a seed report.

Exits with an error unless the seed mIoU beats both trivial baselines by `--check_margin`
(default 0.03, i.e. 3 points); `--check_margin=-1` turns the check off
(`make demo DEMO_FLAGS=--check_margin=-1`).
"""

import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ppc_jax import fileio

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "pipeline_demo.py"),
    "Demo config file: a pipeline config (configs/pipeline_demo.py, the default) or a stage-1 "
    "config (configs/demo.py: the seeds part alone).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
_CHECK = flags.DEFINE_float(
    "check_margin", 0.03,
    "Exit with an error unless the seed mIoU (classes in GT) beats both trivial baselines by at "
    "least this much (a fraction: 0.03 = 3 points). A negative value turns the check off.")


def _schedule_text(config):
  warmup = config.cam_warmup_steps
  if warmup > 0 and config.loss.variant != "cam":
    return (f"{config.total_steps} steps: {warmup} CAM-only, then "
            f"{config.total_steps - warmup} {config.loss.variant}")
  return f"{config.total_steps} steps of {config.loss.variant}"


def run_demo(config, workdir):
  """Generates data (if missing), trains, infers and evaluates; returns the report dict."""
  from ppc_jax import atomic_io
  from ppc_jax import evaluate
  from ppc_jax import report
  from ppc_jax import stages
  from ppc_jax.data import synth

  stage = stages.of(config)
  fileio.makedirs(workdir)
  times = {}
  t = time.perf_counter()
  voc_root = os.path.join(workdir, "data", "VOCdevkit", "VOC2012")
  if (synth.is_generated_here(voc_root) or not fileio.isdir(voc_root)
      or not fileio.listdir(voc_root)):
    synth.generate_owned(voc_root, config.synth.to_dict())  # else: a set made before, read as is
  config.input.data_dir = voc_root
  times["data"] = time.perf_counter() - t

  # One trainer run, CAM-only warm-up included: exactly `python -m ppc_jax.train` with this config.
  t = time.perf_counter()
  train_dir = os.path.join(workdir, "train")
  train_metrics = stage.train(config, train_dir)
  times["train"] = time.perf_counter() - t

  t = time.perf_counter()
  infer_dir = os.path.join(workdir, "infer_" + config.infer.split)
  summary = stage.infer(config, train_dir, out_dir=infer_dir)
  times["infer"] = time.perf_counter() - t

  t = time.perf_counter()
  cam_dir = os.path.join(infer_dir, "cams")
  result = evaluate.evaluate_cam_dir(voc_root, config.infer.split, cam_dir)
  baselines = evaluate.evaluate_baselines(voc_root, config.infer.split)
  eval_dir = os.path.join(workdir, "eval_" + config.infer.split)
  report.write_report(eval_dir, result, split=config.infer.split, cam_dir=cam_dir,
                      baselines=baselines)
  times["evaluate"] = time.perf_counter() - t

  overlays = sorted(fileio.listdir(os.path.join(infer_dir, "overlays")))[:8]
  rows = [("SEAM+PPC (this run)", result)] + [
      (f"baseline: {name}", r) for name, r in baselines.items()]
  facts = {
      "machine": report.machine_description(),
      "config": f"loss {config.loss.variant}, width 1/{config.model.width_divisor}, "
                f"blocks {tuple(config.model.stage_blocks)}, crop {config.input.crop_size}, "
                f"view 2 {config.input.view2_size}, batch {config.input.batch_size}, "
                f"momentum {config.optim.momentum_mode}",
      "train": f"{_schedule_text(config)}, LR {config.optim.lr:g}; final loss "
               f"{train_metrics.get('loss', float('nan')):.4f} (L_cls "
               f"{train_metrics.get('loss_cls', float('nan')):.4f})",
      "images": f"{summary['num_images']} evaluated",
      "seconds": ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
  }
  report.write_markdown(
      os.path.join(workdir, "report.md"), title="ppc_jax demo: SEAM+PPC on the synthetic VOC set",
      method_rows=rows, per_class=result,
      curve_png=os.path.relpath(os.path.join(eval_dir, "miou_curve.png"), workdir),
      overlays=[os.path.relpath(os.path.join(infer_dir, "overlays", o), workdir)
                for o in overlays],
      facts=facts)
  out = {"result": result, "baselines": baselines, "times": times, "facts": facts}
  atomic_io.write_json(os.path.join(workdir, "report.json"), out)
  return out


def run_pipeline_demo(config, workdir):
  """The whole pipeline on the synthetic set (a pipeline config); returns
  {'result': seed result, 'baselines': {name: result} on the seed split, 'report': summary}."""
  from ppc_jax import pipeline
  results = pipeline.run_pipeline(config, workdir)
  summary = results["report"]
  seed = results["seed_eval"]
  split = config.eval_split
  baselines = {name.split(" (")[0]: r for name, r in summary["baselines"].items()
               if name.endswith(f"({split})")}
  return {"result": seed, "baselines": baselines, "report": summary}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime
  config = _CONFIG.value
  is_pipeline = "seeds" in config
  runtime.setup_host(config.seeds if is_pipeline else config)
  t0 = time.perf_counter()
  if is_pipeline:
    out = run_pipeline_demo(config, _WORKDIR.value)
  else:
    out = run_demo(config, _WORKDIR.value)
  r = out["result"]
  lines = [f"seed mIoU (classes in GT) {100 * r['miou_gt_classes']:.1f}% at t={r['best_threshold']:.2f}"]
  if is_pipeline:
    s = out["report"]
    lines.append(f"pseudo-mask mIoU (classes in GT) {100 * s['mask_miou_gt_classes']:.1f}% "
                 f"({config.eval_split})")
    lines.append(f"segmentation mIoU (classes in GT) {100 * s['segment_miou_gt_classes']:.1f}% "
                 f"({config.segment.infer.split})")
  for name, b in out["baselines"].items():
    lines.append(f"baseline {name}: {100 * b['miou_gt_classes']:.1f}%")
  lines.append(f"report: {os.path.join(_WORKDIR.value, 'report.md')} "
               f"({time.perf_counter() - t0:.0f} s)")
  print("\n".join(lines))
  if _CHECK.value >= 0:
    best_baseline = max(b["miou_gt_classes"] for b in out["baselines"].values())
    if r["miou_gt_classes"] < best_baseline + _CHECK.value:
      raise SystemExit(
          f"demo check failed: seed mIoU {100 * r['miou_gt_classes']:.1f}% is not "
          f"{100 * _CHECK.value:.0f} points above the best baseline ({100 * best_baseline:.1f}%)")
  logging.info("demo done")


def cli():
  """The console script `ppc-demo` (pyproject.toml): `python -m ppc_jax.demo`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  entry.run(main)


if __name__ == "__main__":
  cli()
