r"""CAM inference on a split with VOC's spread of image sizes: compilation vs compute.

  python bench/infer_sizes.py [--images 48] [--tail_sizes 12] [--width_divisor 8] \
      [--scales 0.5,1.0,1.5,2.0] [--reps 2] [--out bench/results/infer_sizes_cpu.md]

Random images whose sizes follow VOC's shape (half 500x375, a quarter 375x500, the rest a tail
of `--tail_sizes` other sizes), random labels, the SEAM network at `--width_divisor` (8: the
demo's width, so that the CPU runs it in minutes; 1: full size) with random weights. Every case
runs in a fresh process (the jit caches start empty) on the same images, the cases in turn,
`--reps` rounds (so that a machine whose load drifts affects every case alike):

  jit, no cache        each program compiled on first use, in the loop (ppc_jax before the
                       compile-ahead path; one compile per distinct (size, scale) input)
  ahead, 1 thread      `ppc_jax.seeds.infer`'s loop (config.infer.compile_threads = 1, the default):
                       the programs of the next window of sizes compile while the current
                       window computes, into an empty persistent cache
                       (config.compilation_cache_dir)
  ahead, all threads   the same with one compile thread per usable CPU (compile_threads = 0),
                       no cache
  ahead, warm cache    a second process on the first one's cache: every program is loaded

and prints, per case, the seconds to the first CAM and for the whole split (compile + compute),
the split's images/s, the compute-only images/s (the split again in the same process, every
program held) and the ratio of the two times: the cost of compilation as a factor on the compute,
measured minutes apart in one process, so it is the column that survives a loaded machine whose
load drifts between cases.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("jit", "ahead", "ahead_all", "warm")
NAMES = {"jit": "jit on first use, no cache", "ahead": "ahead, 1 thread, empty cache",
         "ahead_all": "ahead, all threads, no cache", "warm": "ahead, 1 thread, warm cache"}


def voc_like_sizes(num_images, tail_sizes, seed=0):
  """(H, W) per image: half 375x500 (landscape), a quarter 500x375, the rest `tail_sizes` others."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(seed)
  tail = [(int(rng.randint(180, 500)), int(rng.randint(180, 500))) for _ in range(tail_sizes)]
  sizes = []
  for i in range(num_images):
    if i % 4 in (0, 1):
      sizes.append((375, 500))
    elif i % 4 == 2:
      sizes.append((500, 375))
    else:
      sizes.append(tail[(i // 4) % tail_sizes])
  return sizes


def worker(args):
  """One case in this process; prints one JSON line."""
  sys.path.insert(0, REPO)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import PIL.Image  # pylint: disable=import-outside-toplevel
  from ppc_jax import config_lib, runtime  # pylint: disable=import-outside-toplevel
  if args.case in ("ahead", "warm"):  # one directory per round: 'warm' reads what 'ahead' wrote
    runtime.configure_compilation_cache(args.cache_dir, 4.0)
  runtime.configure_xla_cpu(True)
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import models, train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import infer  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds.infer import CamInference  # pylint: disable=import-outside-toplevel
  cfg = config_lib.model_config(width_divisor=args.width_divisor)
  model = models.build_model(cfg)
  variables = jax.device_get(train_state.init_variables(model, jax.random.PRNGKey(0), (64, 64, 3)))
  rng = np.random.RandomState(1)
  sizes = voc_like_sizes(args.images, args.tail_sizes)
  images = [PIL.Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in sizes]
  labels = np.zeros((len(images), 20), np.float32)
  labels[np.arange(len(images)), rng.randint(0, 20, len(images))] = 1
  scales = tuple(float(s) for s in args.scales.split(","))
  engine = CamInference(model, variables, scales=scales, flip=True, cam_key="cam_rv")
  # As ppc_jax.seeds.infer.group_by_size orders them: a size's images together, one image per call
  # (one CPU device).
  order = sorted(range(len(images)), key=lambda i: (sizes.index(sizes[i]), i))
  groups = [([i], sizes[i]) for i in order]
  shapes = lambda window: [(len(g), size) for g, size in window]  # noqa: E731
  programs = len(engine.programs(shapes(groups)))
  t0 = time.perf_counter()
  first = None
  if args.case == "jit":
    for i in order:
      jax.block_until_ready(engine([images[i]], labels[i:i + 1]))
      first = first or time.perf_counter() - t0
  else:
    with concurrent.futures.ThreadPoolExecutor(
        infer.compile_threads(0 if args.case == "ahead_all" else 1)) as pool:
      for group, _ in infer.compiled_ahead(engine, groups, 20, pool):
        jax.block_until_ready(engine([images[group[0]]], labels[group]))
        first = first or time.perf_counter() - t0
  total = time.perf_counter() - t0
  # Steady state: the same images again, every program compiled and held.
  engine.precompile(shapes(groups), 20)
  t1 = time.perf_counter()
  for i in order:
    jax.block_until_ready(engine([images[i]], labels[i:i + 1]))
  compute = time.perf_counter() - t1
  print(json.dumps(dict(case=args.case, programs=programs, first_s=first, total_s=total,
                        compute_s=compute, images=len(images), distinct_sizes=len(set(sizes)))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=48)
  parser.add_argument("--tail_sizes", type=int, default=12)
  parser.add_argument("--width_divisor", type=int, default=8)
  parser.add_argument("--scales", default="0.5,1.0,1.5,2.0")
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--out", default="")
  parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case:
    worker(args)
    return 0
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                  "JAX_PERSISTENT_CACHE"))}
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  rows = []
  for rep in range(args.reps):
    with tempfile.TemporaryDirectory() as cache_dir:  # 'ahead' fills it, 'warm' reads it
      for case in CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--cache_dir",
               cache_dir, "--images", str(args.images), "--tail_sizes", str(args.tail_sizes),
               "--width_divisor", str(args.width_divisor), "--scales", args.scales]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=REPO)
        rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), rep=rep))
        print(f"round {rep}, {NAMES[case]}: {rows[-1]}", flush=True)
  r0 = rows[0]
  lines = [f"{r0['images']} images, {r0['distinct_sizes']} distinct sizes, scales {args.scales} "
           f"x flip, width 1/{args.width_divisor}; {r0['programs']} programs", "",
           "| round | case | s to the first CAM | s for the split | images/s | "
           "compute only: images/s | split / compute only |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['rep']} | {NAMES[r['case']]} | {r['first_s']:.1f} | {r['total_s']:.1f} | "
                 f"{r['images'] / r['total_s']:.2f} | {r['images'] / r['compute_s']:.2f} | "
                 f"{r['total_s'] / r['compute_s']:.2f} |")
  table = "\n".join(lines)
  print("\n" + table)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
