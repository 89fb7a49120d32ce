r"""A timed stage-1 training run end to end: the real entry point, input pipeline, checkpoints and
metrics on a synthetic VOC-like set; prints images/s, input wait, MFU and the projected VOC time.

  python bench/train_e2e.py --workdir runs/e2e            # configs/ppc_voc12.py, 300 steps
  python bench/train_e2e.py --workdir runs/e2e_bf16 --config.model.dtype=bfloat16
  python bench/train_e2e.py --workdir runs/e2e --config configs/eps_ppc_voc12.py --steps 500 \
      --images 512 --peak_tflops 989   # a chip the table below does not know

One host (all its local devices); a multi-host run logs the same metrics (see the launchers in
docs/distributed.md). What runs, each in its own process:
  1. the synthetic set: `--images` train_aug images of VOC's shape (long side `--image_size`,
     short/long 0.75, either orientation; JPEGs, PNG masks and saliency), written once under
     `<workdir>/data` and reused by later runs in the same workdir;
  2. `python -m ppc_jax.train` on it, exactly as a user runs it (`--config` and any `--config.x=y`
     flags given here, plus `total_steps=--steps`, `log_every_steps=--log_every`,
     `ckpt_every_steps=--ckpt_every`), with its log in `<workdir>/train.log` and its run directory
     `<workdir>/run` (which must not exist: a resumed run would time only its tail);
  3. the floating-point operations of one training step: XLA's cost analysis of the step lowered
     for the whole global batch on the CPU (counted before partitioning, so the count is the
     global one however many chips run it; the same on every backend).

From the training process's wall time and its metrics.jsonl it reports: the time outside the step
loop (imports, data listing, init, BN calibration, the last checkpoint's commit, exit); the first
window (the loop's start to its first log step: the step's compilation and the first steps); the
steady state after it (every later window, checkpoint saves included): s/step and images/s; the
input wait, the share of the
steady windows' time that the training loop spent waiting for the next batch to reach the devices
(`input_wait_fraction`, an upper bound on the accelerator's idle time for want of input, since the
steps run asynchronously); achieved TFLOP/s and MFU against the chips' dense bf16 peak (the table
BF16_PEAK_TFLOPS, or `--peak_tflops`), whatever the run's dtype; and the projected time of the
config's full VOC run (its `total_steps`, or floor(10,582 / batch) x `num_epochs`): the time
outside the loop and the first window once, every other step at the steady rate.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_TRAIN_AUG = 10582  # images in VOC 2012 train_aug (SBD + VOC train, minus VOC val)

# Dense bf16 peak per chip (TFLOP/s, no sparsity), matched against jax's device_kind in order: the
# first entry contained in it wins (so 'H100 PCIe' precedes 'H100').
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
    ("GH200", 989.4), ("A100", 312.0), ("L4", 121.0),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
    ("TPU v5", 459.0), ("TPU v6 lite", 918.0), ("TPU v6e", 918.0),
)


def peak_tflops(device_kind):
  """The table's dense bf16 peak of one chip named `device_kind`, or None when unknown."""
  for name, peak in BF16_PEAK_TFLOPS:
    if name in device_kind:
      return peak
  return None


def steady_summary(rows, batch_size):
  """The run's windows from its metrics.jsonl rows: the first one, and the steady ones after it.

  Args:
    rows: metrics.jsonl rows in step order, each with 'step', 'images_per_sec' and
      'input_wait_fraction' for the window that ends at 'step' (it starts at the previous row's
      step, or 0).
    batch_size: global images per step.

  Returns:
    dict(first_steps, first_s, steady_steps, steady_s, s_per_step, images_per_s,
    input_wait_fraction); the steady entries are None when the run logged only one window.
  """
  if not rows:
    raise ValueError("metrics.jsonl has no rows: the run logged no window")
  windows, prev = [], 0
  for row in rows:
    steps = row["step"] - prev
    seconds = steps * batch_size / row["images_per_sec"]
    windows.append((steps, seconds, row["input_wait_fraction"] * seconds))
    prev = row["step"]
  out = dict(first_steps=windows[0][0], first_s=windows[0][1], steady_steps=0, steady_s=0.0,
             s_per_step=None, images_per_s=None, input_wait_fraction=None)
  steady = windows[1:]
  if steady:
    steps = sum(w[0] for w in steady)
    seconds = sum(w[1] for w in steady)
    out.update(steady_steps=steps, steady_s=seconds, s_per_step=seconds / steps,
               images_per_s=steps * batch_size / seconds,
               input_wait_fraction=sum(w[2] for w in steady) / seconds)
  return out


def _child_env(cpu_only=False):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if cpu_only:  # never touch (or reserve memory on) the accelerator the training run uses
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  return env


def _run_child(args, what, cpu_only=False):
  """Runs this script as `--child what` and returns the JSON of its RESULT line."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--workdir", args.workdir,
         "--config", args.config, *args.overrides]
  out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(cpu_only), check=False)
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
  if out.returncode or not lines:
    raise SystemExit(f"the {what} step failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def child_devices():
  """The devices the training run will see (same environment)."""
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  return dict(platform=dev.platform, device_kind=dev.device_kind, devices=jax.device_count(),
              jax=jax.__version__)


def child_flops(config):
  """FLOPs of one training step of `config` for its global batch, and its full-VOC step count."""
  import jax  # pylint: disable=import-outside-toplevel
  from ppc_jax import models, optim, train_state, trainer  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from ppc_jax.seeds import step as seed_step  # pylint: disable=import-outside-toplevel

  if config.stage != "seeds":
    raise SystemExit(f"config.stage={config.stage!r}: this benchmark times stage 1 ('seeds')")
  voc_steps = trainer.total_steps(config, VOC_TRAIN_AUG)
  model = models.build_model(config.model)
  shape = (config.input.crop_size, config.input.crop_size, 3)
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda r: train_state.init_variables(model, r, shape), key)
  tx, schedule, groups = optim.make_optimizer(config.optim, voc_steps, variables["params"])
  state = jax.eval_shape(lambda v: train_state.create_state(v, tx), variables)
  # The batch's structure from the real pipeline (one process: the local batch is the global one),
  # so every variant's inputs (EPS adds saliency) are what the run feeds.
  batches = pipeline.make_train_iterator(config.input, process_index=0, process_count=1)
  try:
    batch = next(batches)
  finally:
    batches.close()
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  step = seed_step.make_train_step(model, tx, schedule, groups, config.loss)
  costs = jax.jit(step).lower(state, batch, key).cost_analysis()
  if isinstance(costs, (list, tuple)):
    costs = costs[0] if costs else {}
  return dict(flops_per_step=float((costs or {}).get("flops", float("nan"))), voc_steps=voc_steps,
              batch_size=int(config.input.batch_size), crop=int(config.input.crop_size),
              view2=int(config.input.view2_size), dtype=str(config.model.dtype),
              variant=str(config.loss.variant))


def _child_main(args):
  sys.path.insert(0, REPO)
  if args.child == "devices":
    print("RESULT " + json.dumps(child_devices()))
    return
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  # The config `python -m ppc_jax.train` builds from the same flags (without the run-length ones).
  config = config_lib.parse_config_flags(["train", f"--config={args.config}", *args.overrides,
                                          f"--config.input.data_dir={_data_root(args)}"])
  print("RESULT " + json.dumps(child_flops(config)))


def _data_root(args):
  return os.path.join(args.workdir, "data", "VOCdevkit", "VOC2012")


def make_data(args):
  """The synthetic set under <workdir>/data (kept: a later run in the workdir reuses it)."""
  root, stamp = _data_root(args), os.path.join(args.workdir, "data", "made.json")
  want = dict(images=args.images, image_size=args.image_size)
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      have = json.load(f)
    if have != want:
      raise SystemExit(f"{stamp}: the set there was made with {have}, this run asks for {want}; "
                       "use another --workdir or the same --images/--image_size")
    return root
  sys.path.insert(0, REPO)
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  synth.generate(os.path.join(args.workdir, "data"), num_train_aug=args.images, num_train=0,
                 num_val=0, min_size=args.image_size, max_size=args.image_size,
                 aspect_range=(0.75, 0.75), seed=0)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump(want, f)
  print(f"synthetic set: {args.images} images in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr)
  return root


def run_training(args, data_root):
  """`python -m ppc_jax.train` on the set; returns (wall seconds, metrics.jsonl rows)."""
  run_dir, log_path = os.path.join(args.workdir, "run"), os.path.join(args.workdir, "train.log")
  cmd = [sys.executable, "-m", "ppc_jax.train", f"--config={args.config}", f"--workdir={run_dir}",
         *args.overrides, f"--config.input.data_dir={data_root}",
         f"--config.total_steps={args.steps}", f"--config.log_every_steps={args.log_every}",
         f"--config.ckpt_every_steps={args.ckpt_every}", "--config.progress_bar=False"]
  t0 = time.perf_counter()
  with open(log_path, "wb") as log:
    code = subprocess.run(cmd, env=_child_env(), stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode
  wall = time.perf_counter() - t0
  if code:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      tail = f.read()[-3000:]
    raise SystemExit(f"the training run failed (exit {code}); {log_path} ends:\n{tail}")
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return wall, rows


def summarize(devices, flops, wall_s, rows, steps, peak):
  """The benchmark's result: one dict (see the module docstring for each entry)."""
  batch = flops["batch_size"]
  s = steady_summary(rows, batch)
  out = dict(devices, **flops, **s, steps=steps, train_wall_s=wall_s, peak_tflops_per_chip=peak)
  rate = None if s["s_per_step"] is None else flops["flops_per_step"] / s["s_per_step"]
  out["achieved_tflops"] = None if rate is None else rate / 1e12
  out["mfu"] = (None if rate is None or not peak
                else rate / (peak * 1e12 * devices["devices"]))
  out["outside_loop_s"] = wall_s - s["first_s"] - s["steady_s"]
  out["projected_voc_s"] = (None if s["s_per_step"] is None else
                            out["outside_loop_s"] + s["first_s"]
                            + (flops["voc_steps"] - s["first_steps"]) * s["s_per_step"])
  return out


def print_table(r):
  def fmt(value, spec, unit=""):
    return "-" if value is None else f"{value:{spec}}{unit}"
  print(f"\nmachine: {r['devices']} x {r['device_kind']} ({r['platform']}), {os.cpu_count()} host "
        f"cores, jax {r['jax']}")
  print(f"run: {r['variant']}, global batch {r['batch_size']}, crop {r['crop']}, view 2 "
        f"{r['view2']}, {r['dtype']}, {r['steps']} steps (log every {r['first_steps']})")
  peak = (f"{r['peak_tflops_per_chip']:g} TFLOP/s bf16 per chip"
          if r["peak_tflops_per_chip"] else "peak unknown: pass --peak_tflops")
  table = [
      ("training process, start to exit", fmt(r["train_wall_s"], ".1f", " s")),
      ("outside the step loop (start-up, init, last checkpoint, exit)",
       fmt(r["outside_loop_s"], ".1f", " s")),
      (f"first window (compilation, steps 1-{r['first_steps']})", fmt(r["first_s"], ".1f", " s")),
      (f"steady state (steps {r['first_steps'] + 1}-{r['steps']}, checkpoints included)",
       f"{fmt(r['s_per_step'], '.4f', ' s/step')}, {fmt(r['images_per_s'], '.2f', ' images/s')}"),
      ("input wait (share of steady time; bounds the accelerator's idle time for input)",
       fmt(None if r["input_wait_fraction"] is None else 100 * r["input_wait_fraction"], ".1f",
           " %")),
      ("FLOPs per step (XLA cost analysis, whole batch)",
       fmt(r["flops_per_step"] / 1e12, ".4g", " TFLOP")),
      ("achieved", fmt(r["achieved_tflops"], ".4g", " TFLOP/s")),
      (f"MFU ({peak})", fmt(None if r["mfu"] is None else 100 * r["mfu"], ".3g", " %")),
      (f"the config's whole run on VOC ({r['voc_steps']} steps), projected",
       fmt(None if r["projected_voc_s"] is None else r["projected_voc_s"] / 60, ".1f", " min")),
  ]
  width = max(len(k) for k, _ in table)
  for key, value in table:
    print(f"{key:<{width}}  {value}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="data/, run/ and train.log go here")
  parser.add_argument("--config", default=os.path.join("configs", "ppc_voc12.py"),
                      help="a stage-1 config file (path[:args], as python -m ppc_jax.train takes)")
  parser.add_argument("--steps", type=int, default=300, help="training steps of the run")
  parser.add_argument("--log_every", type=int, default=20, help="steps per logged window")
  parser.add_argument("--ckpt_every", type=int, default=100, help="steps between checkpoints")
  parser.add_argument("--images", type=int, default=256, help="images in the synthetic set")
  parser.add_argument("--image_size", type=int, default=500, help="long side of every image")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="dense bf16 TFLOP/s of one chip (default: BF16_PEAK_TFLOPS by name)")
  parser.add_argument("--json", default="", help="also write the result here")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args()
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments {bad}: only --config.x=y overrides pass through")
  args.overrides = overrides
  if args.child:
    _child_main(args)
    return
  if args.steps < 2 * args.log_every:
    parser.error(f"--steps={args.steps} needs at least two windows of --log_every="
                 f"{args.log_every} steps (the first holds compilation)")
  if os.path.exists(os.path.join(args.workdir, "run")):
    raise SystemExit(f"{os.path.join(args.workdir, 'run')} exists: a resumed run would time only "
                     "its tail; remove it or use another --workdir")
  os.makedirs(args.workdir, exist_ok=True)
  devices = _run_child(args, "devices")
  peak = args.peak_tflops or peak_tflops(devices["device_kind"])
  data_root = make_data(args)
  wall_s, rows = run_training(args, data_root)
  flops = _run_child(args, "flops", cpu_only=True)
  result = summarize(devices, flops, wall_s, rows, args.steps, peak)
  print_table(result)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
