r"""The inference engine on a split of VOC's image sizes: split time over compute-only time.

  python bench/inference.py [--images 24] [--size_scale 1.0] [--kinds cam,rw,seg] [--reps 1] \
      [--out bench/results/inference_cpu.md]

A synthetic split drawn with VOC 2012's size mix (`ppc_jax.data.synth`, size_mix='voc': half
375x500, a quarter 500x375, a quarter long tail, most tail images of a size of their own) is run
through the three inference kinds at the demo's width (configs/pipeline_demo.py's stage configs,
random weights), each by its stage's own task on `ppc_jax.inference.run_split`:

  cam   CAM inference (stage 1: scales 0.5/1/1.5/2 x flip, cams + seeds + overlays written)
  rw    the random walk (AffinityNet + walk, of the cams the cam case wrote; mask PNGs written)
  seg   segmentation inference (DeepLab, test scales x flip, prediction PNGs; CRF off: the CRF is
        host work of its own, not the engine's)

Each kind runs in a fresh process twice: 'cold' on an empty persistent compilation cache, then
'warm' on the caches the cold run filled (the compilation cache and the exported programs
beside it, `ppc_jax.program_cache`). A run reports the split's time (headers, reading,
compiling, computing, writing: `run_split`'s seconds) and, in the same process afterwards with
every program held, the compute-only time (each group's inputs read first, then only the calls
and the wait for their results are timed). The ratio of the two is the engine's overhead on the
computation; it is measured minutes apart in one process, so it survives a machine whose load
drifts between cases.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import device_check  # noqa: E402  (bench/device_check.py: cpu_model, synthetic_variables)
KINDS = ("cam", "rw", "seg")
NAMES = {"cam": "CAM inference", "rw": "random walk", "seg": "segmentation (no CRF)"}


def _stage_configs(data_dir):
  sys.path.insert(0, REPO)
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  pipeline = config_lib.load_sibling_config(os.path.join(REPO, "configs", "x.py"),
                                            "pipeline_demo")
  configs = {"cam": pipeline.seeds, "rw": pipeline.affinity, "seg": pipeline.segment}
  for config in configs.values():
    config.input.data_dir = data_dir
    config.input.source = "directory"
  configs["seg"].segment.crf = False
  return configs


def worker(args):
  """One kind in this process; prints one JSON line."""
  sys.path.insert(0, REPO)
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  configs = _stage_configs(args.data_dir)
  config = configs[args.kind]
  runtime.configure_compilation_cache(args.cache_dir, 4.0)
  runtime.configure_xla_cpu(config.xla_cpu_flags)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ppc_jax import inference, train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import cam_io, sources  # pylint: disable=import-outside-toplevel
  from ppc_jax.refine import rw_infer  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import infer  # pylint: disable=import-outside-toplevel
  from ppc_jax.segment import seg_infer  # pylint: disable=import-outside-toplevel

  recipe = train_state.build_recipe(config, 1)
  model = recipe.model
  variables = device_check.synthetic_variables(recipe.abstract_variables)
  source = sources.open_source(config.input, "train", with_saliency=False)
  out = os.path.join(args.work, f"{args.kind}_{args.case}")
  if args.kind == "cam":
    for sub in ("cams", "seeds", "overlays"):
      os.makedirs(os.path.join(out, sub), exist_ok=True)
    task = infer.cam_task(source, config.infer, out, bg_threshold=config.infer.bg_threshold,
                          cam_format=cam_io.NPZ, model=model)
  elif args.kind == "rw":
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    task = rw_infer.mask_task(source, model, config.refine,
                              cam_dir=os.path.join(args.work, "cam_cold", "cams"),
                              mask_dir=os.path.join(out, "masks"), cam_format=cam_io.NPZ,
                              split="train")
  else:
    os.makedirs(out, exist_ok=True)
    task = seg_infer.seg_task(source, model, config.segment, out, scales=config.infer.scales,
                              flip=config.infer.flip)
  engine = inference.Engine(task.compute, task.input_spec, variables,
                            images_per_device=config.infer.images_per_device)
  indices = range(len(source.ids))
  stats = inference.run_split(task, engine, source, indices,
                              threads=config.infer.compile_threads, show_progress=False)
  # Compute only: every program held, each group's inputs read before its timed call.
  groups = inference.groups_by_size(source, indices, engine.batch_size)
  engine.precompile(engine.keys(groups), threads=config.infer.compile_threads)
  compute_s = 0.0
  for group, size in groups:
    inputs = [task.load(i)[0] for i in group]
    t0 = time.perf_counter()
    jax.block_until_ready(engine.dispatch(inputs, size))
    compute_s += time.perf_counter() - t0
  sizes = [source.image_size(i) for i in indices]
  print(json.dumps(dict(kind=args.kind, case=args.case, images=len(sizes),
                        distinct_sizes=len(set(sizes)), programs=stats["num_programs"],
                        programs_loaded=stats["programs_loaded"],
                        split_s=stats["seconds"], compute_s=compute_s,
                        ratio=stats["seconds"] / compute_s,
                        width_divisor=config.model.width_divisor,
                        device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                        written=len(os.listdir(task.done_dir)), checksum=float(
                            np.sum([os.path.getsize(os.path.join(task.done_dir, f))
                                    for f in os.listdir(task.done_dir)])))))


def _commit():
  commit, dirty = device_check.git_commit(None)
  return "unknown" if commit is None else commit[:7] + ("+changes" if dirty else "")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=24)
  parser.add_argument("--size_scale", type=float, default=1.0,
                      help="scale of VOC's sizes (1.0: 375x500 etc.)")
  parser.add_argument("--kinds", default=",".join(KINDS))
  parser.add_argument("--reps", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--kind", help=argparse.SUPPRESS)
  parser.add_argument("--case", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
  parser.add_argument("--work", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  kinds = [k for k in args.kinds.split(",") if k]
  if "rw" in kinds and "cam" not in kinds:
    parser.error("--kinds: rw walks the CAMs of the cam case; include cam")
  sys.path.insert(0, REPO)
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = synth.generate(None, voc_root=os.path.join(tmp, "VOC2012"),
                              num_train_aug=args.images, num_train=args.images, num_val=0,
                              size_mix="voc", size_scale=args.size_scale, seed=args.seed)
    for rep in range(args.reps):
      work = os.path.join(tmp, f"rep{rep}")
      cache = os.path.join(tmp, f"cache{rep}")
      for kind in kinds:
        for case in ("cold", "warm"):
          cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--kind", kind,
                 "--case", case, "--data_dir", data_dir, "--cache_dir", cache, "--work", work]
          proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
          if proc.returncode:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"{kind} {case} failed (exit {proc.returncode})")
          row = json.loads(proc.stdout.strip().splitlines()[-1])
          row["rep"] = rep
          rows.append(row)
          print(f"rep {rep} {NAMES[kind]:22s} {case}: split {row['split_s']:.1f} s, compute "
                f"{row['compute_s']:.1f} s, ratio {row['ratio']:.2f}", flush=True)
  first = rows[0]
  lines = [
      f"`python bench/inference.py --images {args.images} --size_scale {args.size_scale:g} "
      f"--kinds {args.kinds} --reps {args.reps}`", "",
      f"commit {_commit()}; {device_check.cpu_model()}, {os.cpu_count()} CPUs; {first['device']}; "
      f"jax {first['jax']}; load average at the end "
      f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}", "",
      f"{first['images']} images of {first['distinct_sizes']} sizes (VOC's mix x "
      f"{args.size_scale:g}), demo width (1/{first['width_divisor']}), random weights.", "",
      "| rep | kind | cache | programs (of them exported ones loaded) | split s | "
      "compute-only s | split / compute |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['rep']} | {NAMES[r['kind']]} | {r['case']} | "
                 f"{r['programs']} ({r['programs_loaded']}) | "
                 f"{r['split_s']:.1f} | {r['compute_s']:.1f} | {r['ratio']:.2f} |")
  table = "\n".join(lines) + "\n"
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(table)


if __name__ == "__main__":
  main()
