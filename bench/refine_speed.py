r"""Stage 2 speed and memory: AffinityNet training step, random walk per image, size estimates.

  python bench/refine_speed.py [--size demo|full] [--steps 5] [--images 3] [--compile_memory]

Cases (random inputs of the real shapes; no data pipeline, no TensorFlow import, so it runs on an
accelerator host with jax + flax + optax alone):
  aff_train  the jitted AffinityNet step (`refine.aff_step`), batch B at crop S, fp32; pair labels
             from random label maps with background, two classes and ignored pixels;
  rw         one image of H x W: AffinityNet forward on the zero-padded image + dense affinity +
             T = (A^8 / colsum)^64 + walk + upsample + argmax (`refine.random_walk`), jitted;
  sizes      jax.eval_shape estimates: parameter bytes, the step's pair tensors, the features and
             the dense [N, N] matrix of the random walk (fp32), plus XLA's own temp-buffer
             figure with --compile_memory.
Sizes: 'full' = the reference (width 1, blocks (3, 3, 6, 3), batch 8 at 448, a 500x375 image);
'demo' = configs/aff_demo.py (width 1/8, blocks (1, 1, 2, 1), batch 8 at 128, a 128x96 image).
Prints one table; timings are the median of the timed repetitions after one warm-up call
(compile time reported apart).
"""

import argparse
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZES = {
    "full": dict(width=1, blocks=(3, 3, 6, 3), batch=8, crop=448, image=(375, 500)),
    "demo": dict(width=8, blocks=(1, 1, 2, 1), batch=8, crop=128, image=(96, 128)),
}


def _mb(nbytes):
  return f"{nbytes / 2**20:,.1f} MiB"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="demo")
  parser.add_argument("--steps", type=int, default=5, help="timed training steps")
  parser.add_argument("--images", type=int, default=3, help="timed random-walk images")
  parser.add_argument("--compile_memory", action="store_true",
                      help="also print XLA's temp-buffer size of each compiled program")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from ppc_jax import config_lib
  from ppc_jax import optim
  from ppc_jax import train_state
  from ppc_jax.refine import affinity_loss as affinity
  from ppc_jax.refine import affinity_net
  from ppc_jax.refine import aff_step
  from ppc_jax.refine import affinity_labels
  from ppc_jax.refine import random_walk

  size = SIZES[args.size]
  model = affinity_net.AffinityNet(width_divisor=size["width"], stage_blocks=size["blocks"])
  optim_config = config_lib.optim_config(momentum_mode="reference",
                                         frozen=config_lib.AFFINITY_FROZEN,
                                         new=config_lib.AFFINITY_NEW)
  b, s = size["batch"], size["crop"]
  rng = jax.random.PRNGKey(0)
  variables = jax.jit(lambda r: train_state.init_variables(model, r, (s, s, 3)))(rng)
  tx, schedule, groups = optim.make_optimizer(optim_config, 1000, variables["params"])
  state = train_state.create_state(variables, tx)
  step = jax.jit(aff_step.make_aff_train_step(model, tx, schedule, groups, 5), donate_argnums=0)
  np_rng = np.random.default_rng(0)
  batch = {
      "image": jnp.asarray(np_rng.standard_normal((b, s, s, 3)), jnp.float32),
      "aff_label": jnp.asarray(np_rng.choice(np.array([0, 1, 2, 255], np.uint8),
                                             size=(b, s // 8, s // 8), p=[0.5, 0.2, 0.1, 0.2])),
  }
  rows = []
  t = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t
  state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  rows.append(("aff_train", f"batch {b} at {s}x{s}", f"{med:.3f} s/step", f"{b / med:.1f}",
               f"compile {compile_s:.1f} s"))
  extra = {}
  if args.compile_memory:
    mem = compiled.memory_analysis()
    extra["aff_train temp"] = _mb(getattr(mem, "temp_size_in_bytes", 0)) if mem else "n/a"

  h, w = size["image"]
  hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
  num_fg = 20

  @jax.jit
  def rw_mask(variables, image, cam_fg):
    features = model.apply(variables, image[None], train=False)["features"][0]
    return random_walk.random_walk_mask(features, cam_fg, radius=5, beta=8, logt=6)

  rw_vars = {"params": state["params"], "batch_stats": state["batch_stats"]}
  image = jnp.asarray(np_rng.standard_normal((hp, wp, 3)), jnp.float32)
  cam = np.zeros((h, w, num_fg), np.float32)
  cam[..., 3] = np_rng.random((h, w))
  cam[..., 11] = np_rng.random((h, w))
  cam = jnp.asarray(cam)
  t = time.perf_counter()
  rw_compiled = rw_mask.lower(rw_vars, image, cam).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(rw_compiled(rw_vars, image, cam))
  times = []
  for _ in range(args.images):
    t = time.perf_counter()
    jax.block_until_ready(rw_compiled(rw_vars, image, cam))
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  rows.append(("rw", f"one {w}x{h} image", f"{med:.3f} s/image", f"{1 / med:.2f}",
               f"compile {compile_s:.1f} s"))
  if args.compile_memory:
    mem = rw_compiled.memory_analysis()
    extra["rw temp"] = _mb(getattr(mem, "temp_size_in_bytes", 0)) if mem else "n/a"

  # Size estimates from shapes alone.
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables["params"]))
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                         variables, jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32))["features"]
  aff = jax.eval_shape(lambda f: affinity.pair_affinity(f, 5), feats)
  n = (hp // 8) * (wp // 8)
  geom = affinity_labels.pair_geometry(hp // 8, wp // 8, 5)
  sizes = [
      ("parameters (fp32)", _mb(params)),
      (f"features [{', '.join(map(str, feats.shape))}] (step)", _mb(np.prod(feats.shape) * 4)),
      (f"pair affinities [{', '.join(map(str, aff.shape))}] x 4 (aff, bg, fg, neg)",
       _mb(4 * np.prod(aff.shape) * 4)),
      (f"dense affinity / transition [{n}, {n}] (random walk, each)", _mb(n * n * 4)),
      (f"pairs per image at {wp // 8}x{hp // 8}: {geom.num_offsets} offsets x {geom.num_from}", ""),
  ] + list(extra.items())

  dev = jax.devices()[0]
  print(f"\nbench/refine_speed.py --size {args.size}: {dev.platform} ({dev.device_kind}), "
        f"jax {jax.__version__}, {platform.machine()} {os.cpu_count()} cores\n")
  print("| case | shape | time (median) | images/s | note |")
  print("|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
  print("\n| size estimate | bytes |\n|---|---|")
  for name, value in sizes:
    print(f"| {name} | {value} |")
  print(f"\nlast step's loss {float(metrics['loss']):.4f} (finite: "
        f"{bool(np.isfinite(float(metrics['loss'])))})")


if __name__ == "__main__":
  main()
