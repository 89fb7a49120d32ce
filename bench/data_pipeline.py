r"""Throughput of the dual-view training input pipeline at crop 448, per CPU core.

  python bench/data_pipeline.py [--images 48] [--batches 12] [--threads 1,2]

Writes a synthetic VOC-format set of VOC-like images (500x375 and 375x500 JPEGs, saliency PNGs)
to a temporary directory, then runs the reference-configured pipeline (long side 448-768 bicubic,
flip, colour jitter, normalise, crop 448 with zero padding, view 2 at 128x128) in a fresh process
per setting, pinned to N cores (sched_setaffinity) with N tf.data threads. Prints a table of
images/s (wall clock) and images per CPU-second (the process's own CPU time: a per-core rate
that other load on the machine does not distort).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
  """Runs in a child process: pinned to `threads` cores, measures one setting, prints JSON."""
  args.threads = int(args.threads)
  cores = sorted(os.sched_getaffinity(0))[:args.threads]
  os.sched_setaffinity(0, cores)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, REPO)
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  cfg = config_lib.seeds_input_config()
  cfg.update(dict(data_dir=args.data, batch_size=args.batch))
  cfg.with_saliency = args.saliency
  cfg.threads = args.threads
  cfg.num_parallel_calls = args.threads
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  for _ in range(args.warmup):
    next(it)
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  it.close()
  n = args.batches * args.batch
  assert batch["image1"].shape == (args.batch, 448, 448, 3), batch["image1"].shape
  print(json.dumps(dict(threads=args.threads, saliency=args.saliency, images=n,
                        wall_s=wall, cpu_s=cpu, cores=len(cores))))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--images", type=int, default=48, help="synthetic images written")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=12, help="timed batches per setting")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", default="1,2")
  parser.add_argument("--data", default=None, help="existing VOC2012 root (skips generation)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--saliency", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return

  sys.path.insert(0, REPO)
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    root = args.data
    if root is None:
      t0 = time.perf_counter()
      root = synth.generate(tmp, num_train_aug=args.images, num_train=0, num_val=0,
                            min_size=500, max_size=500, aspect_range=(0.75, 0.75), seed=0)
      print(f"generated {args.images} synthetic 500x375 / 375x500 images in "
            f"{time.perf_counter() - t0:.1f} s")
    available = len(os.sched_getaffinity(0))
    print(f"host: {available} cores available, load average {os.getloadavg()[0]:.2f} "
          "(other load lowers images/s, not images per CPU-second)")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
      if threads > available:
        print(f"skipping {threads} threads: only {available} cores")
        continue
      for saliency in (False, True):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--data", root,
               "--threads", str(threads), "--batch", str(args.batch),
               "--batches", str(args.batches), "--warmup", str(args.warmup)]
        cmd += ["--saliency"] if saliency else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print()
    print("| threads (cores) | saliency | images/s | images/s per core | images per CPU-second |")
    print("|---|---|---|---|---|")
    for r in rows:
      ips = r["images"] / r["wall_s"]
      print(f"| {r['threads']} | {'yes' if r['saliency'] else 'no'} | {ips:.1f} | "
            f"{ips / r['threads']:.1f} | {r['images'] / r['cpu_s']:.1f} |")
    print(f"\ncrop 448, view 2 128x128, long side 448-768, global batch {args.batch}, "
          f"{args.batches} timed batches after {args.warmup} warm-up batches")


if __name__ == "__main__":
  main()
