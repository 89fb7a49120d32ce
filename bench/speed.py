r"""Times the jitted SEAM+PPC training step and multi-scale CAM inference; prints a table.

  python bench/speed.py                  # full model at 448/128 batch 2, demo model, inference
  python bench/speed.py --cases=demo     # only the demo-size step

Each case runs in its own subprocess so its peak memory (RSS on CPU; the device's peak bytes on an
accelerator) is its own. Compile time is reported separately and excluded from the step time.
The reference (official PyTorch code, torch 2.13 CPU, 2 threads, on this machine type) takes
28.2 s per step at batch 2 / crop 448 / view 128 with 4.45 GB peak RSS, 6.9 s at crop 224, and
68 s for one 500x375 image at 4 scales x flip (2.9 GB).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    # name: (width_divisor, stage_blocks, batch, crop, view2, variant)
    "full_448": (1, (3, 3, 6, 3), 2, 448, 128, "seam_ppc"),
    "full_224": (1, (3, 3, 6, 3), 2, 224, 64, "seam_ppc"),
    "demo": (None, None, None, None, None, "seam_ppc"),  # from configs/demo.py
    "infer_500x375": (1, (3, 3, 6, 3), None, 448, None, None),
}
REFERENCE = {"full_448": (28.2, 4.45), "full_224": (6.9, 2.5), "infer_500x375": (68.0, 2.9)}


def _peak_memory_gb():
  import jax
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9, "device"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "host RSS"


def _demo_config():
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(root, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_train_case(name, steps):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ppc_jax import config_lib, models, optim, steps as steps_lib
  from ppc_jax import sharding as shd
  from ppc_jax.ops.resize import resize_bilinear

  wd, blocks, batch, crop, view2, variant = CASES[name]
  if name == "demo":
    cfg = _demo_config()
    model_cfg, optim_cfg = cfg.model, cfg.optim
    batch, crop, view2 = cfg.input.batch_size, cfg.input.crop_size, cfg.input.view2_size
    loss_cfg = cfg.loss
  else:
    model_cfg = config_lib.model_config(width_divisor=wd)
    model_cfg.stage_blocks = blocks
    optim_cfg = config_lib.optim_config()
    loss_cfg = config_lib.loss_config(variant)
  model = models.build_model(model_cfg)
  mesh = shd.make_mesh()
  t0 = time.perf_counter()
  variables = jax.jit(lambda r: steps_lib.init_variables(model, r, (crop, crop, 3)))(
      jax.random.PRNGKey(0))
  tx, schedule = optim.make_optimizer(optim_cfg, 10_000, variables["params"])
  groups = optim.param_groups(variables["params"], optim_cfg)
  state = jax.device_put(steps_lib.create_state(variables, tx), shd.replicated(mesh))
  del variables
  init_s = time.perf_counter() - t0
  rng = np.random.RandomState(0)
  image1 = rng.randn(batch, crop, crop, 3).astype(np.float32)
  labels = (rng.rand(batch, 20) < 0.1).astype(np.float32)
  labels[:, 0] = 1
  image2 = np.asarray(resize_bilinear(jnp.asarray(image1), (view2, view2), align_corners=True))
  host = {"image1": image1, "image2": image2, "labels": labels}
  batch_arr = shd.to_global(host, shd.batch_sharding(mesh))
  step = steps_lib.jit_train_step(
      steps_lib.make_train_step(model, tx, schedule, groups, loss_cfg), mesh)
  key = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_arr, key).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch_arr, key)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch_arr, key)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
  mem, mem_kind = _peak_memory_gb()
  step_s = float(np.median(times))
  return dict(case=name, batch=batch, crop=crop, view2=view2, width_divisor=model_cfg.width_divisor,
              init_s=init_s, compile_s=compile_s, step_s=step_s, images_per_s=batch / step_s,
              peak_gb=mem, mem_kind=mem_kind, loss=float(metrics["loss"]))


def run_infer_case(repeats):
  import jax
  import numpy as np
  import PIL.Image
  from ppc_jax import config_lib, models, steps as steps_lib
  from ppc_jax.infer import CamInference

  model = models.build_model(config_lib.model_config())
  variables = jax.jit(lambda r: steps_lib.init_variables(model, r, (64, 64, 3)))(
      jax.random.PRNGKey(0))
  engine = CamInference(model, variables, scales=(0.5, 1.0, 1.5, 2.0), flip=True,
                        cam_key="cam_rv")
  rng = np.random.RandomState(0)
  image = PIL.Image.fromarray(rng.randint(0, 255, (375, 500, 3), np.uint8))
  labels = np.zeros((1, 20), np.float32)
  labels[0, [3, 14]] = 1
  t0 = time.perf_counter()
  jax.block_until_ready(engine([image], labels))  # compiles the 4 scales
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(engine([image], labels))
    times.append(time.perf_counter() - t0)
  mem, mem_kind = _peak_memory_gb()
  per_image = float(np.median(times))
  return dict(case="infer_500x375", batch=1, crop="500x375", view2="4 scales x flip",
              width_divisor=1, init_s=0.0, compile_s=first_s - per_image, step_s=per_image,
              images_per_s=1.0 / per_image, peak_gb=mem, mem_kind=mem_kind, loss=float("nan"))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="full_448,full_224,demo,infer_500x375")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per case (median)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args()
  if args.child:
    row = (run_infer_case(args.steps) if args.child == "infer_500x375"
           else run_train_case(args.child, args.steps))
    print("ROW " + json.dumps(row))
    return
  rows = []
  for case in args.cases.split(","):
    if case not in CASES:
      raise SystemExit(f"unknown case {case!r}; choose from {sorted(CASES)}")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case,
                          "--steps", str(args.steps)], capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
    if out.returncode or not line:
      print(out.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"case {case} failed")
    rows.append(json.loads(line[0][4:]))
  import jax
  print(f"\nmachine: {os.cpu_count()} cores, {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind}), jax {jax.__version__}")
  header = (f"{'case':<15}{'batch':>6}{'crop':>9}{'view2':>17}{'compile s':>11}{'s/step':>9}"
            f"{'img/s':>8}{'peak GB':>9}  {'reference s, GB':<18}{'ref/ours':>9}")
  print(header)
  print("-" * len(header))
  for r in rows:
    ref = REFERENCE.get(r["case"])
    ref_txt = f"{ref[0]:.1f}, {ref[1]:.2f}" if ref else "-"
    ratio = f"{ref[0] / r['step_s']:.2f}x" if ref else "-"
    print(f"{r['case']:<15}{r['batch']:>6}{str(r['crop']):>9}{str(r['view2']):>17}"
          f"{r['compile_s']:>11.1f}{r['step_s']:>9.2f}{r['images_per_s']:>8.2f}"
          f"{r['peak_gb']:>9.2f}  {ref_txt:<18}{ratio:>9}")
  print("(peak memory is " + ", ".join(sorted({r['mem_kind'] for r in rows})) + "; the reference "
        "column was measured with the official PyTorch code on this machine type, 2 threads)")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
