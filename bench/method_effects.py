r"""The method comparison at demo size, stage by stage, from scratch and from a pretrained backbone.

  python bench/method_effects.py                       # every method, seeds 0-4, both backbones
  python bench/method_effects.py --seeds 0,1 --methods seam,seam_ppc --backbones pretrained
  python bench/method_effects.py --table_only          # the table of what is already run

Each run is `python -m ppc_jax.pipeline --config=configs/pipeline_demo.py:variant=<method>,
seed=<seed>,classes=compact` (the demo pipeline with the set's own 5-class head, where the
contrast can learn) on one shared synthetic set. 'pretrained' adds
`--config.seeds.init.backbone_workdir=<stage 0 run> --config.seeds.init.calibrate_bn_images=0`:
stage 1 starts from the stage-0 backbone of configs/pretrain_demo.py (48 synthetic classes,
none of them the demo's), built here once if `--pretrain_workdir` has no checkpoint; AffinityNet
and DeepLab start from stage 1 as in the demo. Nothing else differs between the two settings.

The table gives, per backbone and method, the median over seeds of the seed, pseudo-mask and
segmentation mIoU (classes in GT), the refinement's gain (mask - seed), PPC's gain over its base
method (per seed, then the median) and the cross-view contrast losses against chance (log 5).
With `--recorded` (default: bench/results/method_effects_cpu.json, written by a full run) the
medians are printed beside the recorded ones: a change that breaks a method shows up as a
column that moved by more than the recorded seed-to-seed spread. This is a benchmark, not a
test: about 4 minutes per run on a 2-core CPU, 50 runs for the defaults.

Runs are independent processes; a rerun skips finished runs and resumes interrupted ones (the
pipeline's own resume).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))
import device_check  # noqa: E402  (bench/device_check.py: cpu_model, git_commit)

METHODS = ("cam", "seam", "seam_ppc", "eps", "eps_ppc")
NAMES = {"cam": "CAM", "seam": "SEAM", "seam_ppc": "SEAM+PPC", "eps": "EPS", "eps_ppc": "EPS+PPC"}
BASE_OF = {"seam_ppc": "seam", "eps_ppc": "eps"}
BACKBONES = ("scratch", "pretrained")
OUTPUTS = ("seed", "mask", "segmentation")
NUM_CLASSES = 5  # classes=compact: background + the set's 4 classes
RECORDED = os.path.join(REPO, "bench", "results", "method_effects_cpu.json")


def _run_logged(cmd, log_path):
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "a", encoding="utf-8") as log:
    rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                        check=False).returncode
  if rc:
    raise SystemExit(f"method_effects: {' '.join(cmd)} exited with {rc}; see {log_path}")


def ensure_pretrained(pretrain_workdir, seed):
  """Builds the stage-0 backbone (configs/pretrain_demo.py) unless its run has a checkpoint."""
  ckpt = os.path.join(pretrain_workdir, "checkpoints")
  if os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)):
    return
  data = os.path.join(os.path.dirname(pretrain_workdir), "data")
  log = os.path.join(os.path.dirname(pretrain_workdir), "log.txt")
  print(f"building the pretrained backbone in {pretrain_workdir}", flush=True)
  if not os.path.exists(os.path.join(data, "synth_classes.json")):
    _run_logged([sys.executable, "-m", "ppc_jax.data.synth_classes", "--out", data], log)
  _run_logged([sys.executable, "-m", "ppc_jax.train",
               f"--config=configs/pretrain_demo.py:data_dir={data},seed={seed}",
               f"--workdir={pretrain_workdir}"], log)


def run_one(args, backbone, method, seed):
  """One pipeline run (skipped when its report exists); returns its result dict."""
  workdir = os.path.join(args.workdir, backbone, method, f"seed{seed}")
  report_path = os.path.join(workdir, "report.json")
  if not os.path.exists(report_path):
    cmd = [sys.executable, "-m", "ppc_jax.pipeline",
           f"--config=configs/pipeline_demo.py:variant={method},seed={seed},classes=compact",
           f"--workdir={workdir}", f"--config.input.data_dir={args.data_dir}",
           "--config.progress_bar=False"]
    if backbone == "pretrained":
      cmd += [f"--config.seeds.init.backbone_workdir={args.pretrain_workdir}",
              "--config.seeds.init.calibrate_bn_images=0"]
    t0 = time.perf_counter()
    _run_logged(cmd, os.path.join(workdir, "log.txt"))
    print(f"  {backbone} {method} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
  with open(report_path, encoding="utf-8") as f:
    report = json.load(f)
  with open(os.path.join(workdir, "pipeline", "seeds.json"), encoding="utf-8") as f:
    seeds_metrics = json.load(f).get("final_metrics", {})
  result = {"backbone": backbone, "method": method, "seed": seed,
            "seconds": sum(v or 0.0 for v in report["seconds"].values())}
  for out in OUTPUTS:
    result[f"{out}_miou"] = report[out].get("miou_gt_classes")
  for k in ("loss_cross_prototype", "loss_cross_label", "loss_intra", "contrast/sim_spread",
            "contrast/proto_sim", "loss_cls"):
    if k in seeds_metrics:
      result[k] = seeds_metrics[k]
  result["baselines"] = {k: v["miou_gt_classes"] for k, v in report["baselines"].items()}
  result["seed_at_rw_threshold_miou"] = seed_at_rw_threshold(workdir, report)
  return result


def seed_at_rw_threshold(workdir, report):
  """The seed mIoU (classes in GT) at the random walk's constant background score.

  The seed column is at the best threshold of a sweep scored against the GT (the papers' seed
  number), the mask column at the random walk's fixed background (0.27); this column puts the
  seeds at that same background, so that mask - this is what the random walk itself adds.
  Cached in <run>/seed_at_rw_threshold.json (None where the background is not a constant).
  """
  cache = os.path.join(workdir, "seed_at_rw_threshold.json")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      return json.load(f)["miou_gt_classes"]
  from ppc_jax import atomic_io  # pylint: disable=import-outside-toplevel
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax import pipeline  # pylint: disable=import-outside-toplevel
  config = config_lib.load_sibling_config(os.path.join(REPO, "configs", "pipeline_demo.py"),
                                          "pipeline_demo")
  paths = pipeline.Paths(workdir, config)  # the layout of every variant's run
  with open(os.path.join(paths.affinity, "config.json"), encoding="utf-8") as f:
    refine = json.load(f)["refine"]
  value = None
  if refine["bg_mode"] == "constant":
    result = evaluate.evaluate_cam_dir(report["data_dir"], config.eval_split, paths.cams,
                                       thresholds=(float(refine["bg_value"]),))
    value = result["miou_gt_classes"]
  atomic_io.write_json(cache, {"bg_value": refine.get("bg_value"), "miou_gt_classes": value})
  return value


def _median(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def summarise(results):
  """{backbone: {method: {column: median}}} over seeds, with the derived gains."""
  by_key = {}
  for r in results:
    by_key.setdefault((r["backbone"], r["method"]), {})[r["seed"]] = r
  summary = {}
  for (backbone, method), runs in sorted(by_key.items()):
    row = {out: _median([r[f"{out}_miou"] for r in runs.values()]) for out in OUTPUTS}
    row["seed_at_rw"] = _median([r.get("seed_at_rw_threshold_miou") for r in runs.values()])
    row["refine_gain"] = _median([r["mask_miou"] - r["seed_miou"] for r in runs.values()])
    row["walk_gain"] = _median([r["mask_miou"] - r["seed_at_rw_threshold_miou"]
                                for r in runs.values()
                                if r.get("seed_at_rw_threshold_miou") is not None])
    for k in ("loss_cross_prototype", "loss_cross_label"):
      row[k] = _median([r.get(k) for r in runs.values()])
    base = by_key.get((backbone, BASE_OF.get(method)), {})
    for out in OUTPUTS:
      gains = [runs[s][f"{out}_miou"] - base[s][f"{out}_miou"] for s in runs if s in base]
      row[f"ppc_gain_{out}"] = _median(gains)
      row[f"ppc_wins_{out}"] = f"{sum(g > 0 for g in gains)}/{len(gains)}" if gains else None
    row["seeds"] = sorted(runs)
    summary.setdefault(backbone, {})[method] = row
  return summary


def _pct(x, signed=False):
  if x is None:
    return "-"
  return f"{100.0 * x:+.1f}" if signed else f"{100.0 * x:.1f}"


def format_table(summary, baselines, recorded=None):
  """Markdown: one row per backbone x method (medians over seeds, %), recorded medians beside.

  `baselines`: {'<kind> (<split>)': mIoU} as the pipeline's report names them; seeds and masks
  are scored on train, the segmentation on val.
  """
  chance = math.log(NUM_CLASSES)
  head = ("| backbone | method | seeds | seed | seed at 0.27 | mask | segmentation | mask - seed "
          "| mask - seed at 0.27 | PPC - base (seed / mask / seg; wins) | cross losses (chance "
          f"{chance:.2f}) |")
  lines = [head, "|---" * 11 + "|"]
  for backbone in BACKBONES:
    for method in METHODS:
      row = summary.get(backbone, {}).get(method)
      if row is None:
        continue
      rec = ((recorded or {}).get(backbone) or {}).get(method)
      cells = []
      for out in ("seed", "seed_at_rw", "mask", "segmentation"):
        cell = _pct(row.get(out))
        if rec is not None and rec.get(out) is not None:
          cell += f" ({_pct(rec[out])})"
        cells.append(cell)
      ppc = "-"
      if method in BASE_OF and row.get("ppc_wins_seed"):
        ppc = (" / ".join(_pct(row[f"ppc_gain_{o}"], True) for o in OUTPUTS) + "; "
               + " ".join(row[f"ppc_wins_{o}"] for o in OUTPUTS))
      cross = "-"
      if row.get("loss_cross_prototype") is not None:
        cross = f"{row['loss_cross_prototype']:.2f} / {row['loss_cross_label']:.2f}"
      lines.append(f"| {backbone} | {NAMES[method]} | {len(row['seeds'])} | "
                   + " | ".join(cells) + f" | {_pct(row['refine_gain'], True)} | "
                   f"{_pct(row.get('walk_gain'), True)} | {ppc} | {cross} |")
  for kind in sorted({k.split(" (")[0] for k in baselines}):
    train, val = baselines.get(f"{kind} (train)"), baselines.get(f"{kind} (val)")
    lines.append(f"| baseline | {kind.replace('_', ' ')} | | {_pct(train)} | {_pct(train)} | "
                 f"{_pct(train)} | {_pct(val)} | | | | |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=os.path.join("runs", "method_effects"))
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--backbones", default=",".join(BACKBONES))
  parser.add_argument("--pretrain_workdir", default="",
                      help="a stage-0 run of configs/pretrain_demo.py (default: "
                           "<workdir>/pretrain/train, built when missing)")
  parser.add_argument("--pretrain_seed", type=int, default=0)
  parser.add_argument("--recorded", default=RECORDED,
                      help="a JSON written by --out; its medians are printed beside ('' = none)")
  parser.add_argument("--out", default="", help="write the results and summary here (JSON)")
  parser.add_argument("--table_only", action="store_true",
                      help="run nothing: tabulate the finished runs in --workdir")
  args = parser.parse_args()
  args.workdir = os.path.abspath(args.workdir)
  args.data_dir = os.path.join(args.workdir, "data", "VOCdevkit", "VOC2012")
  args.pretrain_workdir = os.path.abspath(
      args.pretrain_workdir or os.path.join(args.workdir, "pretrain", "train"))
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  methods = [m for m in args.methods.split(",") if m]
  backbones = [b for b in args.backbones.split(",") if b]
  for name, values, allowed in (("--methods", methods, METHODS),
                                ("--backbones", backbones, BACKBONES)):
    if set(values) - set(allowed):
      parser.error(f"{name}: unknown {sorted(set(values) - set(allowed))}; expected {allowed}")

  if "pretrained" in backbones and not args.table_only:
    ensure_pretrained(args.pretrain_workdir, args.pretrain_seed)
  results = []
  t0 = time.perf_counter()
  # Seed-major: an interrupted comparison has every method and backbone for the seeds it did.
  for seed in seeds:
    for backbone in backbones:
      for method in methods:
        done = os.path.exists(os.path.join(args.workdir, backbone, method, f"seed{seed}",
                                           "report.json"))
        if args.table_only and not done:
          continue
        results.append(run_one(args, backbone, method, seed))
  if not results:
    raise SystemExit(f"method_effects: no finished runs in {args.workdir}")
  summary = summarise(results)
  baselines = results[0]["baselines"]
  recorded = None
  if args.recorded and os.path.exists(args.recorded):
    with open(args.recorded, encoding="utf-8") as f:
      recorded = json.load(f).get("summary")
  print("\nmIoU (classes in GT, %): medians over seeds"
        + (f"; in brackets the recorded medians ({os.path.relpath(args.recorded, REPO)})"
           if recorded else "") + "\n")
  print(format_table(summary, baselines, recorded))
  if args.out:
    from ppc_jax import atomic_io  # pylint: disable=import-outside-toplevel
    commit, dirty = device_check.git_commit(None)
    atomic_io.write_json(args.out, {
        "commit": commit, "dirty": dirty, "cpu": device_check.cpu_model(),
        "cpus": os.cpu_count(), "versions": device_check.versions(),
        "seeds": sorted({r["seed"] for r in results}), "methods": methods,
        "backbones": backbones, "pretrain_workdir": os.path.relpath(args.pretrain_workdir, REPO),
        "runs": results, "summary": summary, "baselines": baselines,
        "table_markdown": format_table(summary, baselines)})
    print(f"\nwrote {args.out}")
  print(f"({time.perf_counter() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
