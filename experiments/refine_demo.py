r"""Stage 2 on the demo's synthetic set: seeds -> CRF labels -> AffinityNet -> random walk -> masks.

Question: on the demo's synthetic set, do the stage-2 pseudo-masks (CRF labels, AffinityNet,
random walk) score above the seeds they start from, as on VOC in the paper (+7.7 points)?
Answer: no. On the 5-class demo (stage 1 = compare_methods.py's SEAM+PPC runs, seeds 0-2;
results/refine_demo_compact_cpu.json) the masks are 1.5-3 points below the seeds on every seed
(median 24.6 % against 29.0 % at the seeds' best threshold, 27.0 % at the walk's background 0.27).
The causes (weak from-scratch CAMs, 240 AffinityNet steps, 128 px crops) are not separated
(docs/benchmarks.md, "Stages 2 and 3 on the demo set").

  python experiments/refine_demo.py [--workdir runs/refine_demo] [--seeds 0,1,2] \
      [--config_args ...] [--stage1_root runs/compare]

Per seed k (each in a fresh process, every part resumable and skipped when done):
  1. stage 1: the demo config `variant=seam_ppc,seed=k` (+ --config_args), trained as `make demo`
     trains (CAM-only warm-up included), on one synthetic set generated once into <workdir>/data;
     with --stage1_root (an `experiments/compare_methods.py` workdir run with the same
     --config_args), its data set and its finished `seam_ppc/seed<k>/train` runs are stage 1
     instead (the same config, so the same network; nothing is trained twice);
  2. CAMs of train_aug (AffinityNet's training set) and of train (the evaluation split);
  3. la / ha CRF labels of train_aug (`python -m ppc_jax.refine.crf_labels`, alphas 4 / 24);
  4. AffinityNet (`configs/aff_demo.py`), its backbone from the stage-1 run, `config.seed = k`;
  5. random walk of the train CAMs (`ppc_jax.refine.rw_infer`): masks, and the mask mIoU beside
     the seed mIoU of the CAMs it started from (same evaluator, classes present in the GT; the
     seeds at their best threshold of the sweep, the masks as they are; and the seeds at the
     walk's own background score 0.27, the one its input CAMs had).
Writes <workdir>/seed<k>/result.json and <workdir>/refine.json, and prints a table with the
AffinityNet training speed (images/s over its last logging window) and the random walk's.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, arg):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def stage1_config(seed, config_args):
  arg = f"variant=seam_ppc,seed={seed}" + (f",{config_args}" if config_args else "")
  return _load(os.path.join(REPO, "configs", "demo.py"), arg)


def worker(args):
  """Parts 1-5 for one seed in this process; writes result.json."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, REPO)
  from absl import logging  # pylint: disable=import-outside-toplevel
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import infer  # pylint: disable=import-outside-toplevel
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import seed_trainer  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import aff_trainer  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel

  seed_cfg = stage1_config(args.seed, args.config_args)
  runtime.setup_host(seed_cfg)
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  run_dir = os.path.join(args.workdir, f"seed{args.seed}")
  seed_cfg.input.data_dir = args.voc_root
  seed_cfg.progress_bar = False
  seed_cfg.log_images_every_steps = 0
  seed_cfg.infer.num_overlays = 0
  times = {}

  t = time.perf_counter()
  if args.stage1_root:
    stage1_dir = os.path.join(args.stage1_root, "seam_ppc", f"seed{args.seed}", "train")
    done = os.path.join(os.path.dirname(stage1_dir), "result.json")
    if not os.path.exists(done):
      raise FileNotFoundError(f"{done}: no finished SEAM+PPC run of seed {args.seed} under "
                              f"--stage1_root={args.stage1_root} (run "
                              "experiments/compare_methods.py --methods seam_ppc there first)")
    with open(os.path.join(stage1_dir, "config.json"), encoding="utf-8") as f:
      used = json.load(f)
    if used["model"]["num_classes"] != seed_cfg.model.num_classes or used["seed"] != args.seed:
      raise ValueError(f"{stage1_dir}/config.json: num_classes {used['model']['num_classes']}, "
                       f"seed {used['seed']}; this run expects {seed_cfg.model.num_classes}, "
                       f"{args.seed} (same --config_args as the compare run?)")
  else:
    stage1_dir = os.path.join(run_dir, "stage1")
    seed_trainer.train_and_evaluate(seed_cfg, stage1_dir)
  times["stage1_train"] = time.perf_counter() - t
  cams = {}
  for split in ("train_aug", "train"):
    t = time.perf_counter()
    out = os.path.join(run_dir, f"infer_{split}")
    infer.run_inference(seed_cfg, stage1_dir, split=split, out_dir=out)
    cams[split] = os.path.join(out, "cams")
    times[f"infer_{split}"] = time.perf_counter() - t

  t = time.perf_counter()
  crf_dir = os.path.join(run_dir, "crf")
  subprocess.run([sys.executable, "-m", "ppc_jax.refine.crf_labels", f"--voc_root={args.voc_root}",
                  "--split=train_aug", f"--cam_dir={cams['train_aug']}", f"--out_dir={crf_dir}"],
                 check=True, cwd=REPO)
  times["crf_labels"] = time.perf_counter() - t

  aff_cfg = _load(os.path.join(REPO, "configs", "aff_demo.py"), None)
  aff_cfg.seed = args.seed
  aff_cfg.input.seed = args.seed
  aff_cfg.input.data_dir = args.voc_root
  aff_cfg.input.classes = seed_cfg.input.classes
  aff_cfg.progress_bar = False
  aff_cfg.init.backbone_workdir = stage1_dir
  aff_cfg.refine.la_dir = os.path.join(crf_dir, "crf_la")
  aff_cfg.refine.ha_dir = os.path.join(crf_dir, "crf_ha")
  aff_cfg.refine.cam_dir = cams["train"]
  aff_cfg.model.width_divisor = seed_cfg.model.width_divisor
  aff_cfg.model.stage_blocks = seed_cfg.model.stage_blocks
  t = time.perf_counter()
  aff_dir = os.path.join(run_dir, "aff")
  aff_metrics = aff_trainer.train_affinity(aff_cfg, aff_dir)
  times["aff_train"] = time.perf_counter() - t
  rows = []
  with open(os.path.join(aff_dir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  t = time.perf_counter()
  summary = rw_infer.run_random_walk(aff_cfg, aff_dir, out_dir=os.path.join(run_dir, "rw_train"))
  times["random_walk"] = time.perf_counter() - t
  seeds_png = evaluate.evaluate_cam_dir(args.voc_root, "train", cams["train"])
  out = dict(
      seed=args.seed, config_args=args.config_args, stage1_dir=stage1_dir,
      seed_miou_gt_classes=seeds_png["miou_gt_classes"], seed_threshold=seeds_png["best_threshold"],
      mask_miou_gt_classes=summary["mask"]["miou_gt_classes"],
      seed_miou=seeds_png["miou"], mask_miou=summary["mask"]["miou"],
      aff_final_metrics=aff_metrics or (rows[-1] if rows else {}),
      aff_images_per_sec=rows[-1]["images_per_sec"] if rows else None,
      rw_images_per_sec=summary["images_per_sec"], times=times)
  tmp = os.path.join(run_dir, "result.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2, default=float)
  os.replace(tmp, os.path.join(run_dir, "result.json"))


def _pct(x):
  return f"{100.0 * x:5.1f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default=os.path.join("runs", "refine_demo"))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--config_args", default="",
                      help="further k=v arguments of configs/demo.py, e.g. classes=compact")
  parser.add_argument("--stage1_root", default="",
                      help="an experiments/compare_methods.py workdir (same --config_args): its "
                           "data and finished seam_ppc runs are stage 1")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--voc_root", help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  if args.stage1_root:
    args.stage1_root = os.path.abspath(args.stage1_root)
  if args.worker:
    worker(args)
    return 0
  sys.path.insert(0, REPO)
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  config = stage1_config(seeds[0], args.config_args)
  data_root = os.path.join(args.stage1_root or args.workdir, "data")
  voc_root = os.path.join(data_root, "VOCdevkit", "VOC2012")
  if not os.path.exists(os.path.join(voc_root, "cls_labels.npy")):
    if args.stage1_root:
      parser.error(f"--stage1_root={args.stage1_root}: no data set at {voc_root}")
    synth.generate(data_root, **config.synth.to_dict())
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  walk_bg = _load(os.path.join(REPO, "configs", "aff_demo.py"), None).refine.bg_value
  results = {}
  t0 = time.perf_counter()
  for seed in seeds:
    path = os.path.join(args.workdir, f"seed{seed}", "result.json")
    if not os.path.exists(path):
      print(f"[{time.perf_counter() - t0:6.0f} s] seed {seed}", flush=True)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(os.path.join(os.path.dirname(path), "log.txt"), "a", encoding="utf-8") as log:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--workdir",
                        args.workdir, "--seed", str(seed), "--voc_root", voc_root,
                        "--config_args", args.config_args, "--stage1_root", args.stage1_root],
                       check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    with open(path, encoding="utf-8") as f:
      results[seed] = json.load(f)
    # The seeds at the background score the walk's input had (same CAM files, one threshold).
    at_bg = evaluate.evaluate_cam_dir(
        voc_root, "train", os.path.join(args.workdir, f"seed{seed}", "infer_train", "cams"),
        thresholds=(walk_bg,))
    results[seed]["seed_miou_at_walk_bg"] = at_bg["miou_gt_classes"]
  lines = [f"| seed | seed mIoU (best t) | seed mIoU at t = {walk_bg} | mask mIoU after RW | "
           "AffinityNet train img/s | random walk img/s |", "|---|---|---|---|---|---|"]
  for seed, r in results.items():
    lines.append(f"| {seed} | {_pct(r['seed_miou_gt_classes'])} ({r['seed_threshold']:.2f}) | "
                 f"{_pct(r['seed_miou_at_walk_bg'])} | "
                 f"{_pct(r['mask_miou_gt_classes'])} | {r['aff_images_per_sec']:.1f} | "
                 f"{r['rw_images_per_sec']:.1f} |")
  med = lambda k: statistics.median(r[k] for r in results.values())  # noqa: E731
  lines.append(f"| median | {_pct(med('seed_miou_gt_classes'))} | "
               f"{_pct(med('seed_miou_at_walk_bg'))} | {_pct(med('mask_miou_gt_classes'))} | | |")
  table = "\n".join(lines)
  print("\nmIoU (%) on the synthetic train split, classes present in the GT\n")
  print(table)
  out = os.path.join(args.workdir, "refine.json")
  with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(dict(seeds=seeds, config_args=args.config_args,
                   runs=[results[s] for s in seeds], table_markdown=table), f, indent=2,
              default=float)
  os.replace(out + ".tmp", out)
  print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
