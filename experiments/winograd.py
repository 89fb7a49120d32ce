r"""Times ResNet38's stride-1 3x3 convolutions: XLA's (`direct`) against Winograd F(2x2, 3x3).

Question: on the CPU, is Winograd F(2x2, 3x3) faster than XLA's convolutions for ResNet38's
stride-1 3x3 convolutions, and from which channel count?
Answer: yes from 256 channels: 1.25-1.50x forward and 1.31-1.66x forward + backward; the
128-channel convolutions are slower (0.88x, 0.76x). Over the network's forward convolutions,
5.73 s -> 4.42 s (1.30x); outputs differ by float32 rounding only (below 1e-6 of the largest).
Hence `model.conv_algorithm='auto'` with `winograd_min_channels` = 256 (results/winograd_cpu.md,
docs/benchmarks.md, "Winograd convolutions").

  python experiments/winograd.py                    # forward, a 500x375 image + its flip (batch 2)
  python experiments/winograd.py --size 448 --grad  # forward + backward (d/dx, d/dw), batch 2, 448

One row per distinct convolution of the full network (stage, channels, dilation, feature size),
median of --repeats calls after a warm-up, both algorithms in the same process, with the entry
points' XLA:CPU flags (`runtime.CPU_XLA_FLAGS`). The speed-up column is what `model.conv_algorithm`
= 'auto' trades on the CPU; `winograd_min_channels` (256) is where it turns below 1. 'max |diff|'
is the largest difference between the two outputs relative to the largest output (float32
rounding only: about 1e-6).
"""

import argparse
import os
import sys
import time


def conv_shapes(height, width):
  """(name, feature h, feature w, c_in, c_out, dilation, count in the network) of ResNet38's
  stride-1 3x3 convolutions for an input of height x width (feature sizes as the model's)."""
  def down(n, f):
    for _ in range(f):
      n = (n + 1) // 2  # stride-2 3x3 conv with padding 1: ceil(n / 2)
    return n
  h2, w2 = down(height, 1), down(width, 1)
  h4, w4 = down(height, 2), down(width, 2)
  h8, w8 = down(height, 3), down(width, 3)
  return [
      ("b2*: 128 -> 128", h2, w2, 128, 128, 1, 5),
      ("b3*: 256 -> 256", h4, w4, 256, 256, 1, 5),
      ("b4*: 512 -> 512", h8, w8, 512, 512, 1, 11),
      ("b5 2a: 512 -> 512", h8, w8, 512, 512, 1, 1),
      ("b5*: 512 -> 1024, d2", h8, w8, 512, 1024, 2, 3),
      ("b5_*: 1024 -> 512, d2", h8, w8, 1024, 512, 2, 2),
      ("b6: 512 -> 1024, d4", h8, w8, 512, 1024, 4, 1),
      ("b7: 1024 -> 2048, d4", h8, w8, 1024, 2048, 4, 1),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="375x500", help="input HxW (or one number)")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--grad", action="store_true", help="time forward + backward")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.configure_xla_cpu()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
  from ppc_jax.ops.winograd import conv3x3_winograd  # pylint: disable=import-outside-toplevel

  size = [int(s) for s in args.size.split("x")]
  height, width = (size * 2)[:2]

  def direct(x, w, d):
    return lax.conv_general_dilated(x, w, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def timed(fn, *a):
    jax.block_until_ready(fn(*a))
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times.append(time.perf_counter() - t0)
    return float(np.median(times))

  rng = np.random.default_rng(0)
  rows = []
  for name, h, w, cin, cout, d, count in conv_shapes(height, width):
    x = jnp.asarray(rng.standard_normal((args.batch, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    fns = {}
    for algo, conv in (("direct", direct), ("winograd", conv3x3_winograd)):
      if args.grad:
        ct = jnp.asarray(rng.standard_normal((args.batch, h, w, cout)), jnp.float32)
        fns[algo] = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.vdot(conv(x, k, d), ct),
                                     argnums=(0, 1)))
      else:
        fns[algo] = jax.jit(lambda x, k, conv=conv: conv(x, k, d))
    y_d, y_w = fns["direct"](x, k), fns["winograd"](x, k)
    diff = max(float(jnp.abs(a - b).max() / jnp.abs(a).max())
               for a, b in zip(jax.tree.leaves(y_d), jax.tree.leaves(y_w)))
    t_d, t_w = timed(fns["direct"], x, k), timed(fns["winograd"], x, k)
    gflop = 2 * args.batch * h * w * 9 * cin * cout * (3 if args.grad else 1) / 1e9
    rows.append((name, f"{h}x{w}", count, min(cin, cout), t_d, t_w, gflop, diff))
    print(f"{name}: {t_d:.3f} s / {t_w:.3f} s", file=sys.stderr, flush=True)

  dev = jax.devices()[0]
  what = "forward + backward" if args.grad else "forward"
  print(f"\n{what}, batch {args.batch}, input {height}x{width}; {os.cpu_count()} cores, "
        f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}\n")
  print("| convolution | features | in the net | direct s | Winograd s | speed-up "
        "| direct GFLOP/s | max diff / max output |")
  print("|---|---|---|---|---|---|---|---|")
  total_d = total_w = 0.0
  for name, hw, count, channels, t_d, t_w, gflop, diff in rows:
    total_d += count * t_d
    total_w += count * (t_w if channels >= 256 else t_d)  # the default winograd_min_channels
    print(f"| {name} | {hw} | {count}x | {t_d:.3f} | {t_w:.3f} | {t_d / t_w:.2f}x "
          f"| {gflop / t_d:.0f} | {diff:.1e} |")
  print(f"\nAll stride-1 3x3 convs of the network (count x time): direct {total_d:.2f} s, with "
        f"Winograd where channels >= 256 {total_w:.2f} s ({total_d / total_w:.2f}x)")


if __name__ == "__main__":
  main()
