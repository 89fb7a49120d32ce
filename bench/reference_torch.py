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


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference_dir", required=True,
                      help="a checkout of https://github.com/usr922/wseg")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--crop", type=int, default=448)
  parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
  parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
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
  if cuda:
    peak, kind = torch.cuda.max_memory_allocated() / 1e9, "device"
    device = torch.cuda.get_device_name()
  else:
    peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "host RSS"
    device = f"cpu, {torch.get_num_threads()} threads"
  step_s = float(np.median(times))
  row = dict(case=f"reference_{args.crop}_b{args.batch}", batch=args.batch, crop=args.crop,
             step_s=step_s, images_per_s=args.batch / step_s, peak_gb=peak, mem_kind=kind,
             device=device, torch=torch.__version__, loss=namespace["loss"].item())
  print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
