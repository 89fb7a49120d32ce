r"""CAM-only vs SEAM vs SEAM+PPC on the demo's synthetic set: same budget, same seeds.

Question: on the demo's synthetic set, with the same data, budget and seeds, does PPC give better
seeds than its base method (SEAM, EPS) and than CAM alone?
Answer: no. With VOC's 21-class head (5 seeds, results/compare_cpu_5seeds.json) the methods
overlap: medians SEAM+PPC 36.0, CAM 35.4, SEAM 33.9 % against a seed-to-seed spread of about 6
points. With the set's own 5 classes (3 seeds, results/compare_compact_cpu.json) PPC is below its
base method on every seed (medians SEAM 30.4 -> SEAM+PPC 29.0, EPS 35.1 -> EPS+PPC 28.3) although
its contrast learns. Every trained method beats the untrained network. The paper's ordering is not
reproduced at this scale (docs/benchmarks.md, "The demo").

  make compare       (= python experiments/compare_methods.py)
  python experiments/compare_methods.py [--workdir runs/compare] [--seeds 0,1,2] \
      [--methods cam,seam,seam_ppc] [--steps N] [--warmup N] [--config configs/demo.py]
  python experiments/compare_methods.py --seeds 0 --steps 60 --warmup 30   # a quick smoke version

Every run is the demo config with `:variant=<method>,seed=<seed>` and nothing else changed: the
same data set (generated once into <workdir>/data), the same number of steps, the same model
(the projection head exists only for seam_ppc, as the config decides), and for seam / seam_ppc the
same CAM-only warm-up as the demo (`cam_warmup_steps`, run by the trainer under one LR schedule);
'cam' trains L_cls for all the steps. The seed sets the initialisation, the dropout / sampling
keys and the data order, so a column of the table is one shared replicate. Each run is trained,
inferred (multi-scale + flip, the config's seed CAM: fc8 for 'cam', PCM-refined for the others)
and evaluated on the `train` split in a fresh process, and the table shows the seed mIoU over the
classes present in the GT at the best threshold of the sweep, per seed and the median, next to the
trivial baselines of the same evaluator. A fourth row, 'untrained', evaluates the SEAM+PPC
network as training starts (one step at LR 0): the score of label-masked random CAMs, which on
this set of large objects is well above the trivial baselines, so it is the level a trained
method has to beat.

Writes <workdir>/<method>/seed<k>/result.json per run and <workdir>/compare.json; a re-run skips
finished runs (and resumes interrupted ones from their checkpoints).
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("untrained", "cam", "seam", "seam_ppc", "eps", "eps_ppc")
# The table docs/benchmarks.md publishes; the EPS variants (the demo config's `variant=eps /
# eps_ppc`, with the synthetic saliency maps) run with --methods.
DEFAULT_METHODS = ("untrained", "cam", "seam", "seam_ppc")
NAMES = {"untrained": "untrained net (LR 0)", "cam": "CAM only", "seam": "SEAM",
         "seam_ppc": "SEAM+PPC", "eps": "EPS", "eps_ppc": "EPS+PPC"}


def load_config(path, method, seed, steps, warmup, config_args=""):
  """The config of one run: `get_config` of `path` with the variant, seed and budget, plus
  `config_args` (further `k=v` pairs of the config, e.g. 'classes=compact')."""
  spec = importlib.util.spec_from_file_location("compare_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if method == "untrained":
    # The SEAM+PPC model as training starts (random weights, calibrated BN statistics): one step
    # at LR 0 changes nothing. What the evaluation gives a network that learned nothing, a
    # sharper reference than the trivial baselines (its label-masked CAMs are random blobs, and
    # the synthetic objects are large).
    extra = f",{config_args}" if config_args else ""
    config = module.get_config(f"variant=seam_ppc,seed={seed},steps=1,warmup=0{extra}")
    config.optim.lr = 0.0
    return config
  arg = f"variant={method},seed={seed}"
  if steps > 0:
    arg += f",steps={steps}"
  if warmup >= 0:
    arg += f",warmup={warmup}"
  if config_args:
    arg += f",{config_args}"
  return module.get_config(arg)


def worker(args):
  """One (method, seed) run in this process: train, infer, evaluate, write result.json."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, REPO)
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import infer  # pylint: disable=import-outside-toplevel
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import seed_trainer  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  config = load_config(args.config, args.method, args.seed, args.steps, args.warmup,
                       args.config_args)
  runtime.setup_host(config)  # before the first JAX computation: it may set XLA:CPU flags
  # Without absl's app.run, INFO records are dropped; the trainer's are the run's log.txt.
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)

  config.input.data_dir = args.voc_root
  config.progress_bar = False
  config.log_images_every_steps = 0  # nobody looks at them here; they cost a forward pass
  config.infer.num_overlays = 4
  run_dir = os.path.join(args.workdir, args.method, f"seed{args.seed}")
  train_dir = os.path.join(run_dir, "train")
  times = {}
  t0 = time.perf_counter()
  metrics = seed_trainer.train_and_evaluate(config, train_dir)  # the demo's training, warm-up included
  times["train"] = time.perf_counter() - t0
  t = time.perf_counter()
  infer_dir = os.path.join(run_dir, "infer_" + config.infer.split)
  infer.run_inference(config, train_dir, out_dir=infer_dir)
  times["infer"] = time.perf_counter() - t
  t = time.perf_counter()
  result = evaluate.evaluate_cam_dir(args.voc_root, config.infer.split,
                                     os.path.join(infer_dir, "cams"))
  times["evaluate"] = time.perf_counter() - t
  times["total"] = time.perf_counter() - t0
  out = dict(
      method=args.method, seed=args.seed, total_steps=int(config.total_steps),
      cam_warmup_steps=(0 if args.method in ("cam", "untrained") else config.cam_warmup_steps),
      cam_key=config.infer.cam_key, infer_mode=config.infer.mode, final_metrics=metrics,
      times=times,
      miou_gt_classes=result["miou_gt_classes"], miou=result["miou"],
      best_threshold=result["best_threshold"], per_class_iou=result["per_class_iou"])
  tmp = os.path.join(run_dir, "result.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2, default=float)
  os.replace(tmp, os.path.join(run_dir, "result.json"))


def _pct(x):
  return f"{100.0 * x:5.1f}"


def format_contrast_table(results, seeds, methods):
  """Markdown table of the final cross-view contrast losses of the PPC methods ('' if none)."""
  rows = []
  for m in methods:
    vals = [results.get((m, s)) for s in seeds]
    if not any(v and "loss_cross_prototype" in v["final_metrics"] for v in vals):
      continue
    cells = [f"{v['final_metrics']['loss_cross_prototype']:.2f} / "
             f"{v['final_metrics']['loss_cross_label']:.2f}" if v else "-" for v in vals]
    rows.append(f"| {NAMES.get(m, m)} | " + " | ".join(cells) + " |")
  if not rows:
    return ""
  head = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |"
  return "\n".join([head, "|---" * (len(seeds) + 1) + "|"] + rows)


def format_table(results, baselines, seeds, methods):
  """Markdown table: one row per method (per-seed mIoU and median), then the baselines."""
  head = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | median |"
  lines = [head, "|---" * (len(seeds) + 2) + "|"]
  for m in methods:
    vals = [results.get((m, s)) for s in seeds]
    got = [v["miou_gt_classes"] for v in vals if v is not None]
    cells = [_pct(v["miou_gt_classes"]) if v is not None else "  -  " for v in vals]
    med = _pct(statistics.median(got)) if got else "  -  "
    lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(cells) + f" | {med} |")
  for name, b in baselines.items():
    v = _pct(b["miou_gt_classes"])
    lines.append(f"| baseline: {name} | " + " | ".join([v] * len(seeds)) + f" | {v} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=os.path.join("runs", "compare"))
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.py"))
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
  parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                      help=f"comma-separated, from {','.join(METHODS)}")
  parser.add_argument("--steps", type=int, default=0, help="total steps (0: the config's)")
  parser.add_argument("--warmup", type=int, default=-1,
                      help="CAM-only warm-up steps of seam / seam_ppc (-1: the config's)")
  # Worker-only arguments (one run in a child process).
  parser.add_argument("--config_args", default="",
                      help="further comma-separated k=v arguments of the config, e.g. "
                           "classes=compact (the demo's 5-class head); use its own --workdir")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--voc_root", help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  args.config = os.path.abspath(args.config)
  if args.worker:
    worker(args)
    return 0

  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")

  sys.path.insert(0, REPO)
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel

  # One data set for every run: the config's synthetic set (it does not depend on the variant).
  config = load_config(args.config, methods[0], seeds[0], args.steps, args.warmup,
                       args.config_args)
  data_root = os.path.join(args.workdir, "data")
  voc_root = os.path.join(data_root, "VOCdevkit", "VOC2012")
  if not os.path.exists(os.path.join(voc_root, "cls_labels.npy")):
    synth.generate(data_root, **config.synth.to_dict())
  baselines = evaluate.evaluate_baselines(voc_root, config.infer.split)

  results = {}
  t_all = time.perf_counter()
  # Seed-major order: an interrupted comparison still has every method for the seeds it did.
  for seed in seeds:
    for method in methods:
      result_path = os.path.join(args.workdir, method, f"seed{seed}", "result.json")
      if not os.path.exists(result_path):
        print(f"[{time.perf_counter() - t_all:6.0f} s] training {method}, seed {seed}",
              flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--workdir", args.workdir,
               "--config", args.config, "--method", method, "--seed", str(seed),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--voc_root", voc_root,
               "--config_args", args.config_args]
        os.makedirs(os.path.dirname(result_path), exist_ok=True)
        with open(os.path.join(os.path.dirname(result_path), "log.txt"), "a",
                  encoding="utf-8") as log:
          subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
      with open(result_path, encoding="utf-8") as f:
        results[(method, seed)] = json.load(f)
      r = results[(method, seed)]
      print(f"  {method} seed {seed}: seed mIoU {_pct(r['miou_gt_classes'])} % "
            f"(t={r['best_threshold']:.2f}), {r['times']['total']:.0f} s", flush=True)

  table = format_table(results, baselines, seeds, methods)
  trained = [r for r in results.values() if r["method"] != "untrained"]
  steps = {r["total_steps"] for r in trained}
  warm = {r["cam_warmup_steps"] for r in trained if r["method"] != "cam"}
  print(f"\nSeed mIoU (%), classes in GT, best threshold; {sorted(steps)} steps"
        + (f", CAM-only warm-up {sorted(warm)} for SEAM / SEAM+PPC" if warm else "") + "\n")
  print(table)
  contrast = format_contrast_table(results, seeds, methods)
  if contrast:
    print("\nContrast at the last logged step: cross-prototype / cross-pseudo-label loss "
          f"(chance log {config.model.num_classes} = {math.log(config.model.num_classes):.2f})\n")
    print(contrast)
  summary = dict(
      config=os.path.relpath(args.config, REPO) if args.config.startswith(REPO) else args.config,
      seeds=seeds, methods=methods, steps=args.steps, warmup=args.warmup,
      runs=[results[(m, s)] for s in seeds for m in methods],
      median_miou_gt_classes={m: statistics.median(
          results[(m, s)]["miou_gt_classes"] for s in seeds) for m in methods},
      baselines={k: {"miou_gt_classes": v["miou_gt_classes"], "miou": v["miou"],
                     "best_threshold": v["best_threshold"]} for k, v in baselines.items()},
      table_markdown=table, contrast_markdown=contrast, config_args=args.config_args)
  out = os.path.join(args.workdir, "compare.json")
  with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, default=float)
  os.replace(out + ".tmp", out)
  print(f"\nwrote {out} ({time.perf_counter() - t_all:.0f} s)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
