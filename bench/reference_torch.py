r"""Times the official PyTorch SEAM+PPC training step (usr922/wseg), unmodified, on random data.

  git clone https://github.com/usr922/wseg WSEG_DIR     # the reference, not part of ppc_jax
  python bench/reference_torch.py --reference_dir=WSEG_DIR [--batch 2] [--crop 448] [--steps 3]

The anchor that `bench/speed.py` compares against. Nothing of the reference is copied here: this
script imports the reference's network (`network.resnet38_contrast.Net`) and optimiser
(`tool.torchutils.PolyOptimizer`) from the given checkout, and executes the body of the training
loop of its `contrast_train.py` as written (located with `ast`, not re-typed), with random images
and labels in place of the data loader and untrained weights in place of ImageNet ones (the step's
cost does not depend on the values). The model is wrapped in `torch.nn.DataParallel` and moved to
the GPU exactly as the script does; on a machine without CUDA, `.cuda()` becomes a no-op so the
same body runs on the CPU (the ENV anchor: torch 2.13, 2 threads).

Prints one line `ROW {json}` with the median step time (after one warm-up step) and peak memory
(CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS).

  --profile: one more step under torch.profiler, printed as `PROFILE {json}` (self seconds per aten
             op); `experiments/cpu_profile.py --reference_dir` compares it with XLA's trace.
  --infer:   CAM inference instead of training: the function `_work` of the reference's
             contrast_infer.py (located with `ast`) on the 8 inputs of one 500x375 image (scales
             0.5/1/1.5/2 x flip), as `bench/speed.py --cases=infer_500x375` times ppc_jax's.
"""

import argparse
import ast
import json
import os
import resource
import sys
import time
import types


def _stub_missing(module_names):
  """Empty modules for imports the timed code never calls (pydensecrf, cv2: CRF / colour maps)."""
  for name in module_names:
    try:
      __import__(name)
    except ImportError:
      parts = name.split(".")
      for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        sys.modules.setdefault(sub, types.ModuleType(sub))
      leaf = sys.modules[name]
      leaf.__dict__.setdefault("unary_from_softmax", None)
      leaf.__dict__.setdefault("DenseCRF2D", None)


def load_training_loop(train_script):
  """Compiled helpers and the body of `for iter, pack in enumerate(train_data_loader)`.

  Args:
    train_script: path of the reference's contrast_train.py.

  Returns:
    (helpers_code, body_code): code objects to exec in one namespace.
  """
  with open(train_script, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=train_script)
  helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
  loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)
           and isinstance(n.target, ast.Tuple)
           and [getattr(e, "id", None) for e in n.target.elts] == ["iter", "pack"]]
  if not helpers or len(loops) != 1:
    raise SystemExit(f"{train_script}: expected module-level helper functions and one "
                     f"`for iter, pack in ...` training loop; found {len(helpers)} helpers and "
                     f"{len(loops)} loops. Is this a checkout of usr922/wseg?")
  helpers_code = compile(ast.Module(body=helpers, type_ignores=[]), train_script, "exec")
  body_code = compile(ast.Module(body=loops[0].body, type_ignores=[]), train_script, "exec")
  return helpers_code, body_code


class _NullWriter:
  """tensorboardX.SummaryWriter stand-in: the loop logs scalars every 50 steps."""

  def add_scalars(self, *args, **kwargs):
    del args, kwargs

  def add_scalar(self, *args, **kwargs):
    del args, kwargs


def _peak_memory_and_device(torch, cuda):
  """(peak GB, what was measured, device name): CUDA's peak allocation, or the peak host RSS."""
  if cuda:
    return torch.cuda.max_memory_allocated() / 1e9, "device", torch.cuda.get_device_name()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "host RSS",
          f"cpu, {torch.get_num_threads()} threads")


def load_infer_work(infer_script):
  """The compiled `_work(i, img)` of the reference's contrast_infer.py (one network input: forward,
  upsample of the CAM to the image size, label mask, un-flip), located with `ast`."""
  with open(infer_script, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=infer_script)
  works = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_work"]
  if len(works) != 1:
    raise SystemExit(f"{infer_script}: expected one `_work` function, found {len(works)}. Is this "
                     "a checkout of usr922/wseg?")
  return compile(ast.Module(body=works, type_ignores=[]), infer_script, "exec")


def run_inference(args, torch, F, np, model, ref, cuda):
  """Times the reference's CAM inference of one 500x375 image (4 scales x flip) and prints `ROW`.

  The inputs are made as the reference's VOC12ClsDatasetMSF makes them (PIL bicubic resize to
  round(size x scale), the network's normalisation, CHW, a flipped copy after each); their
  preparation is not timed. The timed part is `_work` over the 8 inputs one after another (the
  reference's BatchThreader with one worker), then the sum of the 8 CAMs clamped at 0 (the
  reference's min / max normalisation after that, a few array passes, is not included).
  """
  import contextlib  # pylint: disable=import-outside-toplevel
  import PIL.Image  # pylint: disable=import-outside-toplevel
  if not cuda:
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
  model.eval()
  if cuda:
    model = model.cuda()
  rng = np.random.RandomState(0)
  image = PIL.Image.fromarray(rng.randint(0, 255, (375, 500, 3), np.uint8))
  inputs = []
  for scale in (0.5, 1.0, 1.5, 2.0):
    resized = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)),
                           resample=PIL.Image.BICUBIC)  # the reference's CUBIC (an alias)
    chw = np.ascontiguousarray(model.normalize(resized).transpose(2, 0, 1))
    inputs += [torch.from_numpy(chw)[None], torch.from_numpy(np.flip(chw, -1).copy())[None]]
  label = torch.zeros(20)
  label[[3, 14]] = 1
  namespace = dict(torch=torch, F=F, np=np, model_replicas=[model], n_gpus=1,
                   orig_img_size=(375, 500), label=label)
  exec(load_infer_work(os.path.join(ref, "contrast_infer.py")), namespace)  # pylint: disable=exec-used
  work = namespace["_work"]
  times = []
  for i in range(args.steps + 1):
    if cuda:
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    cams = [work(j, x) for j, x in enumerate(inputs)]
    sum_cam = np.sum(cams, axis=0)
    sum_cam[sum_cam < 0] = 0
    if i:
      times.append(time.perf_counter() - t0)
  peak, kind, device = _peak_memory_and_device(torch, cuda)
  step_s = float(np.median(times))
  row = dict(case="reference_infer_500x375", batch=1, crop="500x375", step_s=step_s,
             images_per_s=1.0 / step_s, peak_gb=peak, mem_kind=kind, device=device,
             torch=torch.__version__)
  print("ROW " + json.dumps(row), flush=True)


def profile_step(torch, namespace, body_code, pack):
  """{aten op: self seconds} of one more step of the loop body under torch.profiler (CPU time
  on the threads that ran the ops: forward on the main thread, backward on autograd's), plus
  `(wall)`: the profiled step's wall time."""
  from torch import profiler  # pylint: disable=import-outside-toplevel
  namespace.update(iter=10_000, pack=pack)
  t0 = time.perf_counter()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    exec(body_code, namespace)  # pylint: disable=exec-used
  wall = time.perf_counter() - t0
  seconds = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
  seconds["(wall)"] = wall
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference_dir", required=True,
                      help="a checkout of https://github.com/usr922/wseg")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--crop", type=int, default=448)
  parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
  parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
  parser.add_argument("--infer", action="store_true",
                      help="time CAM inference instead of the training step: the reference's "
                           "per-input `_work` of contrast_infer.py on one 500x375 image at scales "
                           "0.5/1/1.5/2 x flip (median of --steps after a warm-up)")
  parser.add_argument("--profile", action="store_true",
                      help="also run one more step under torch.profiler and print a line "
                           "`PROFILE {json}`: seconds of self time per aten op")
  args = parser.parse_args()

  ref = os.path.abspath(args.reference_dir)
  script = os.path.join(ref, "contrast_train.py")
  if not os.path.isfile(script):
    raise SystemExit(f"--reference_dir={ref}: no contrast_train.py there; expected a checkout of "
                     "https://github.com/usr922/wseg")
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  if args.threads:
    torch.set_num_threads(args.threads)
  cuda = torch.cuda.is_available()
  if not cuda:
    torch.Tensor.cuda = lambda self, *a, **k: self  # the loop body calls .cuda() on new tensors
  sys.path.insert(0, ref)
  _stub_missing(["pydensecrf.densecrf", "pydensecrf.utils", "cv2"])
  import random  # pylint: disable=import-outside-toplevel
  from network import resnet38_contrast  # pylint: disable=import-outside-toplevel
  from tool import pyutils, torchutils, visualization  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  random.seed(0)
  if args.infer:
    run_inference(args, torch, F, np, resnet38_contrast.Net(), ref, cuda)
    return
  model = resnet38_contrast.Net()
  max_step = 10_000
  lr, wt_dec = 0.01, 5e-4  # the script's defaults
  param_groups = model.get_parameter_groups()
  optimizer = torchutils.PolyOptimizer([
      {"params": param_groups[0], "lr": lr, "weight_decay": wt_dec},
      {"params": param_groups[1], "lr": 2 * lr, "weight_decay": 0},
      {"params": param_groups[2], "lr": 10 * lr, "weight_decay": wt_dec},
      {"params": param_groups[3], "lr": 20 * lr, "weight_decay": 0},
  ], lr=lr, weight_decay=wt_dec, max_step=max_step)
  model = torch.nn.DataParallel(model)
  if cuda:
    model = model.cuda()
  model.train()

  helpers_code, body_code = load_training_loop(script)
  namespace = dict(torch=torch, F=F, np=np, random=random, visualization=visualization,
                   model=model, optimizer=optimizer, max_step=max_step,
                   args=argparse.Namespace(bg_threshold=0.20, batch_size=args.batch),
                   avg_meter=pyutils.AverageMeter("loss", "loss_cls", "loss_er", "loss_ecr",
                                                  "loss_nce", "loss_intra_nce", "loss_cross_nce",
                                                  "loss_cross_nce2"),
                   timer=pyutils.Timer("bench: "), tblogger=_NullWriter())
  exec(helpers_code, namespace)  # pylint: disable=exec-used

  rng = np.random.RandomState(0)
  images = torch.from_numpy(rng.randn(args.batch, 3, args.crop, args.crop).astype(np.float32))
  labels = (rng.rand(args.batch, 20) < 0.1).astype(np.float32)
  labels[:, 14] = 1  # every image has a person, as the VOC sampler would give some class
  labels = torch.from_numpy(labels)
  pack = (["bench"] * args.batch, images, labels)

  times = []
  for i in range(args.steps + 1):
    namespace.update(iter=i, pack=pack)
    if cuda:
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    exec(body_code, namespace)  # pylint: disable=exec-used
    if cuda:
      torch.cuda.synchronize()
    if i:  # the first step is a warm-up (cuDNN autotuning, allocator growth)
      times.append(time.perf_counter() - t0)
  if args.profile:
    print("PROFILE " + json.dumps(profile_step(torch, namespace, body_code, pack)), flush=True)
  peak, kind, device = _peak_memory_and_device(torch, cuda)
  step_s = float(np.median(times))
  row = dict(case=f"reference_{args.crop}_b{args.batch}", batch=args.batch, crop=args.crop,
             step_s=step_s, images_per_s=args.batch / step_s, peak_gb=peak, mem_kind=kind,
             device=device, torch=torch.__version__, loss=namespace["loss"].item())
  print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
