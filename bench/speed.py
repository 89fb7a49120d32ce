r"""Times the jitted SEAM+PPC training step and multi-scale CAM inference; prints a table.

  python bench/speed.py                  # full model at 448/128 batch 2, 224/64, demo, inference
  python bench/speed.py --cases=demo     # only the demo-size step
  python bench/speed.py --cases=full_448,full_448_b8 --reference_dir=WSEG_DIR   # + reference
  python bench/speed.py --cases=full_224 --cpu_flags=ppc,jax   # runtime.CPU_XLA_FLAGS vs JAX's
  python bench/speed.py --cases=full_448_b8,full_448_b8_remat,full_448_b8_bf16,full_448_b8_bf16_remat \
      --steps 0              # compiled memory only (XLA GB), no step run: fp32 / bf16, remat
  python bench/speed.py --cases=infer_500x375,full_448 --conv_algorithms=direct,winograd
                         # model.conv_algorithm side by side (default: the config's, 'auto')

Each case runs in its own subprocess so its peak memory (RSS on CPU; the device's peak bytes on an
accelerator) is its own. Compile time is reported separately and excluded from the step time;
'XLA GB' is the compiled program's own need (arguments + outputs + temporaries). A case that fails
(e.g. out of memory) is reported as failed and the others still run. The children set the XLA:CPU
flags the entry points set ('ppc'), or keep JAX's defaults ('jax'); accelerators ignore them.
Results of the runs quoted in docs/benchmarks.md: bench/results/.

The reference column: with --reference_dir (a checkout of the official code, usr922/wseg), the
official training step is timed by bench/reference_torch.py in the same run, on the same device,
for every full-size case whose view 2 is 128 (the official script hard-codes 128), and for
infer_500x375 the official inference (`_work` of its contrast_infer.py over the same 8 inputs,
`reference_torch.py --infer`). Without it, on
a CPU, the column shows the anchors measured with the official code on the project's 2-core
machine (torch 2.13, 2 threads): 28.2 s / 4.45 GB per step at batch 2, crop 448, view 128;
6.9 s / 2.5 GB at crop 224, view 64; 68 s / 2.9 GB for one 500x375 image at 4 scales x flip.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    # name: (width_divisor, stage_blocks, batch, crop, view2, compute dtype)
    "full_448": (1, (3, 3, 6, 3), 2, 448, 128, "float32"),
    "full_448_b8": (1, (3, 3, 6, 3), 8, 448, 128, "float32"),  # the official script's batch
    "full_448_b8_bf16": (1, (3, 3, 6, 3), 8, 448, 128, "bfloat16"),
    # config.model.remat=True: each backbone block recomputed in the backward pass.
    "full_448_b8_remat": (1, (3, 3, 6, 3), 8, 448, 128, "float32"),
    "full_448_b8_bf16_remat": (1, (3, 3, 6, 3), 8, 448, 128, "bfloat16"),
    "full_224": (1, (3, 3, 6, 3), 2, 224, 64, "float32"),
    "demo": (None, None, None, None, None, "float32"),  # from configs/demo.py
    "infer_500x375": (1, (3, 3, 6, 3), None, 448, None, "float32"),
}
CPU_ANCHORS = {"full_448": (28.2, 4.45), "full_224": (6.9, 2.5), "infer_500x375": (68.0, 2.9)}


def _peak_memory_gb():
  import jax
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 1e9, "device"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "host RSS"


def _footprint_gb(compiled):
  """Bytes XLA assigns to one call of a compiled program: arguments + outputs + temporaries,
  donated (aliased) buffers counted once. Independent of allocator caching and of the GPU
  autotuner's trial allocations, which inflate the device's `peak_bytes_in_use`."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes) / 1e9


def _demo_config():
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("demo_cfg",
                                                os.path.join(root, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build_train_case(name, conv_algorithm=""):
  """The compiled SEAM+PPC train step of case `name` with its state and a random batch.

  conv_algorithm: the model's `conv_algorithm` ('' = the config's default).

  Returns:
    dict(compiled, state, batch (global arrays), key, mesh, batch_size, crop, view2,
    width_divisor, dtype, init_s, compile_s).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ppc_jax import config_lib, models, optim, train_state  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import step as seed_step  # pylint: disable=import-outside-toplevel
  from ppc_jax import sharding as shd
  from ppc_jax.ops.resize import resize_bilinear

  wd, blocks, batch, crop, view2, dtype = CASES[name]
  if name == "demo":
    cfg = _demo_config()
    model_cfg, optim_cfg = cfg.model, cfg.optim
    batch, crop, view2 = cfg.input.batch_size, cfg.input.crop_size, cfg.input.view2_size
    loss_cfg = cfg.loss
  else:
    model_cfg = config_lib.model_config(width_divisor=wd)
    model_cfg.stage_blocks = blocks
    optim_cfg = config_lib.optim_config()
    loss_cfg = config_lib.loss_config("seam_ppc")
  model = models.build_model(model_cfg).clone(dtype=jnp.dtype(dtype),
                                              remat=name.endswith("_remat"))
  if conv_algorithm:
    model = model.clone(conv_algorithm=conv_algorithm)
  mesh = shd.make_mesh()
  t0 = time.perf_counter()
  variables = jax.jit(lambda r: train_state.init_variables(model, r, (crop, crop, 3)))(
      jax.random.PRNGKey(0))
  tx, schedule, groups = optim.make_optimizer(optim_cfg, 10_000, variables["params"])
  state = jax.device_put(train_state.create_state(variables, tx), shd.replicated(mesh))
  del variables
  init_s = time.perf_counter() - t0
  rng = np.random.RandomState(0)
  image1 = rng.randn(batch, crop, crop, 3).astype(np.float32)
  labels = (rng.rand(batch, 20) < 0.1).astype(np.float32)
  labels[:, 0] = 1
  image2 = np.asarray(resize_bilinear(jnp.asarray(image1), (view2, view2), align_corners=True))
  host = {"image1": image1, "image2": image2, "labels": labels}
  batch_arr = shd.to_global(host, shd.batch_sharding(mesh))
  step = train_state.jit_train_step(
      seed_step.make_train_step(model, tx, schedule, groups, loss_cfg), mesh)
  key = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_arr, key).compile()
    compile_s = time.perf_counter() - t0
  return dict(compiled=compiled, state=state, batch=batch_arr, key=key, mesh=mesh,
              batch_size=batch, crop=crop, view2=view2, width_divisor=model_cfg.width_divisor,
              conv=model.conv_algorithm, dtype=dtype, init_s=init_s, compile_s=compile_s)


def run_train_case(name, steps, conv_algorithm=""):
  import jax
  import numpy as np

  case = build_train_case(name, conv_algorithm)
  compiled, state, batch_arr, key = case["compiled"], case["state"], case["batch"], case["key"]
  batch, crop, view2, dtype = case["batch_size"], case["crop"], case["view2"], case["dtype"]
  common = dict(case=name, batch=batch, crop=crop, view2=view2, conv=case["conv"],
                width_divisor=case["width_divisor"], dtype=dtype, init_s=case["init_s"],
                compile_s=case["compile_s"], xla_gb=_footprint_gb(compiled))
  if steps <= 0:  # --steps 0: the compiled program's memory only (no step is run)
    return dict(common, step_s=float("nan"), images_per_s=float("nan"), peak_gb=float("nan"),
                mem_kind="-", loss=float("nan"))
  with jax.set_mesh(case["mesh"]):
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
  return dict(common, step_s=step_s, images_per_s=batch / step_s, peak_gb=mem, mem_kind=mem_kind,
              loss=float(metrics["loss"]))


def run_infer_case(repeats, conv_algorithm=""):
  import jax
  import numpy as np
  import PIL.Image
  from ppc_jax import config_lib, models, train_state
  from ppc_jax.seeds import infer

  model = models.build_model(config_lib.model_config())
  if conv_algorithm:
    model = model.clone(conv_algorithm=conv_algorithm)
  variables = jax.jit(lambda r: train_state.init_variables(model, r, (64, 64, 3)))(
      jax.random.PRNGKey(0))
  scales = (0.5, 1.0, 1.5, 2.0)
  # One device: the image's program alone, as on a one-accelerator host.
  engine = infer.cam_engine(model, variables, scales=scales, flip=True, cam_key="cam_rv",
                            devices=jax.local_devices()[:1])
  rng = np.random.RandomState(0)
  image = PIL.Image.fromarray(rng.randint(0, 255, (375, 500, 3), np.uint8))
  labels = np.zeros(20, np.float32)
  labels[[3, 14]] = 1
  inputs = [infer.cam_inputs(image, labels, scales=scales, flip=True)]
  size = (375, 500)
  t0 = time.perf_counter()
  program = engine.program(engine.key(1, size))  # the 4 scales x flip in one program
  jax.block_until_ready(engine.dispatch(inputs, size))
  first_s = time.perf_counter() - t0
  footprint, gflop = _footprint_gb(program), _flops(program) / 1e9
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(engine.dispatch(inputs, size))
    times.append(time.perf_counter() - t0)
  mem, mem_kind = _peak_memory_gb()
  per_image = float(np.median(times))
  return dict(case="infer_500x375", batch=1, crop="500x375", view2="4 scales x flip",
              conv=model.conv_algorithm,
              width_divisor=1, dtype="float32", init_s=0.0,
              compile_s=first_s - per_image, step_s=per_image,
              images_per_s=1.0 / per_image, xla_gb=footprint, peak_gb=mem, mem_kind=mem_kind,
              loss=float("nan"), gflop=gflop)


def _flops(compiled):
  """XLA's cost analysis of a compiled program: its floating-point operations (NaN if none)."""
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):  # one dict per computation in older jax releases
    costs = costs[0] if costs else {}
  return float((costs or {}).get("flops", float("nan")))


def run_reference(reference_dir, batch, crop, steps, threads=0, profile=False, infer=False):
  """The official step at the same batch and crop (bench/reference_torch.py); its row or None.
  With `profile`, the row's 'profile' holds {aten op: self seconds} of one more step; with
  `infer`, the row times the reference's CAM inference of one 500x375 image instead."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_torch.py")
  out = subprocess.run([sys.executable, script, "--reference_dir", reference_dir,
                        "--batch", str(batch), "--crop", str(crop), "--steps", str(steps),
                        "--threads", str(threads)] + (["--profile"] if profile else [])
                       + (["--infer"] if infer else []),
                       capture_output=True, text=True)
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
  if out.returncode or not line:
    print(f"reference at batch {batch}, crop {crop} failed:\n{out.stderr[-2000:]}",
          file=sys.stderr)
    return None
  row = json.loads(line[0][4:])
  prof = [ln for ln in out.stdout.splitlines() if ln.startswith("PROFILE ")]
  if prof:
    row["profile"] = json.loads(prof[0][8:])
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="full_448,full_224,demo,infer_500x375")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per case (median)")
  parser.add_argument("--cpu_flags", default="ppc",
                      help="comma-separated: 'ppc' (ppc_jax.runtime.CPU_XLA_FLAGS, as the entry "
                      "points run) and/or 'jax' (JAX's own XLA:CPU defaults), timed side by side")
  parser.add_argument("--conv_algorithms", default="",
                      help="comma-separated model.conv_algorithm values timed side by side "
                      "('direct', 'winograd', 'auto'; '' = the config's default)")
  parser.add_argument("--conv_algorithm", default="", help=argparse.SUPPRESS)
  parser.add_argument("--reference_dir", default="",
                      help="checkout of usr922/wseg: time the official step in the same run")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.child:
    from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
    runtime.configure_xla_cpu()  # as the entry points do (a no-op under PPC_JAX_CPU_FLAGS=0)
    row = (run_infer_case(args.steps, args.conv_algorithm) if args.child == "infer_500x375"
           else run_train_case(args.child, args.steps, args.conv_algorithm))
    row["flags"] = "jax" if os.environ.get("PPC_JAX_CPU_FLAGS") == "0" else "ppc"
    row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    print("ROW " + json.dumps(row))
    return
  if set(args.cpu_flags.split(",")) - {"ppc", "jax"}:
    raise SystemExit(f"--cpu_flags={args.cpu_flags!r}: expected 'ppc', 'jax' or 'ppc,jax'")
  cases = args.cases.split(",")
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
  rows, failed = [], []
  for case in cases:
    for impl in args.cpu_flags.split(","):
      for conv in args.conv_algorithms.split(","):
        env = dict(os.environ, PPC_JAX_CPU_FLAGS="0" if impl == "jax" else "1")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case,
                              "--steps", str(args.steps), "--conv_algorithm", conv],
                             capture_output=True, text=True, env=env)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
        if out.returncode or not line:
          print(f"case {case} ({impl}, {conv or 'default'}) failed:\n{out.stderr[-3000:]}",
                file=sys.stderr)
          failed.append(f"{case}/{impl}/{conv or 'default'}")
          continue
        row = json.loads(line[0][4:])
        rows.append(row)
        print(f"{case} ({impl}, {row['conv']}): {row['step_s']:.3f} s", file=sys.stderr,
              flush=True)
    wd, _, batch, crop, view2, _ = CASES[case]
    mine = [r for r in rows if r["case"] == case]
    if args.reference_dir and wd == 1 and mine and (view2 == 128 or case == "infer_500x375"):
      ref = run_reference(args.reference_dir, batch or 1, crop, args.steps,
                          infer=case == "infer_500x375")
      for r in mine:
        r["reference"] = ref
  import jax
  dev = jax.devices()[0]
  print(f"\nmachine: {os.cpu_count()} cores, {dev.platform} ({dev.device_kind}), "
        f"jax {jax.__version__}")
  header = (f"{'case':<18}{'flags':>6}{'conv':>9}{'dtype':>9}{'batch':>6}{'crop':>9}{'view2':>17}"
            f"{'compile s':>11}{'s/step':>9}{'img/s':>8}{'XLA GB':>8}{'peak GB':>9}  "
            f"{'reference s, GB':<18}{'ref/ours':>9}")
  print(header)
  print("-" * len(header))
  for r in rows:
    ref = None
    if r.get("reference"):
      ref = (r["reference"]["step_s"], r["reference"]["peak_gb"])
    elif dev.platform == "cpu" and not args.reference_dir:
      ref = CPU_ANCHORS.get(r["case"])
    ref_txt = f"{ref[0]:.3f}, {ref[1]:.2f}" if ref else "-"
    ratio = f"{ref[0] / r['step_s']:.2f}x" if ref else "-"
    print(f"{r['case']:<18}{r['flags']:>6}{r['conv']:>9}{r['dtype']:>9}{r['batch']:>6}"
          f"{str(r['crop']):>9}{str(r['view2']):>17}"
          f"{r['compile_s']:>11.1f}{r['step_s']:>9.3f}{r['images_per_s']:>8.2f}"
          f"{r['xla_gb']:>8.2f}{r['peak_gb']:>9.2f}  {ref_txt:<18}{ratio:>9}")
  for r in rows:
    # Winograd programs do fewer multiplications than the convolutions they compute: their
    # GFLOP/s by XLA's count would not compare, so the line is printed for direct rows only.
    if r.get("gflop") and r["conv"] != "winograd" and not (
        r["conv"] == "auto" and dev.platform == "cpu"):
      ref_rate = (f", the reference {r['gflop'] / r['reference']['step_s']:.0f} GFLOP/s"
                  if r.get("reference") else "")
      print(f"({r['case']}: {r['gflop']:.0f} GFLOP per image by XLA's cost analysis; ppc_jax "
            f"{r['gflop'] / r['step_s']:.0f} GFLOP/s{ref_rate})")
  refs = [r["reference"] for r in rows if r.get("reference")]
  if refs:
    print(f"(reference: the official code timed in this run, torch {refs[0]['torch']} on "
          f"{refs[0]['device']}, float32, peak {refs[0]['mem_kind']})")
  elif dev.platform == "cpu":
    print("(reference: the official code measured separately on the project's 2-core machine "
          "type, torch 2.13, 2 threads)")
  print("(XLA GB: arguments + outputs + temporaries of the compiled program, the memory it needs; "
        "peak GB: " + ", ".join(sorted({r['mem_kind'] for r in rows}))
        + ("; on a GPU the device peak includes the autotuner's trial buffers)"
           if dev.platform == "gpu" else ")"))
  for flags in sorted({(r["flags"], r["xla_flags"]) for r in rows}):
    print(f"(flags {flags[0]}: XLA_FLAGS={flags[1]!r})")
  if failed:
    print(f"FAILED cases: {failed}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=2)
  if failed:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
