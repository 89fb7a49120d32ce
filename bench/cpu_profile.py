r"""Where the CPU training step's time goes: XLA:CPU's own per-operation trace of one step, and
oneDNN (torch) on the same convolutions.

  python bench/cpu_profile.py [--case full_448] [--threads 2] [--out bench/results/cpu_profile.md]

1. Builds the case of bench/speed.py (default: the full SEAM+PPC step, batch 2, crop 448, view 2 at
   128, the entry points' XLA:CPU flags), runs one warm-up step, then traces one step with
   `jax.profiler` and reads the trace back (`jax.profiler.ProfileData`): every event of XLA's
   execution threads is one HLO instruction of the compiled program (a thunk), named as in
   `compiled.as_text()`. Each is put in a category from the HLO: convolutions split into forward,
   gradient of the input and gradient of the weights (from the instruction's dim_labels and
   whether JAX's metadata says it came from a transpose), dots, fusions, copies/transposes, and
   the rest. Per category: events, summed thread time, share, and for convolutions their FLOPs
   (2 x output elements x contraction length) and GFLOP/s.
2. Times torch's oneDNN convolutions (torch.set_num_threads(--threads)) on each distinct forward
   convolution of the traced step (input shape, kernel, stride, dilation, padding from the HLO):
   forward alone, and forward + backward (input and weight gradients), as GFLOP/s.

Time is wall time: each thunk spans from its start to its `end:` event (asynchronous thunks such
as Eigen convolutions return at once and finish later), and every moment is split evenly among
the thunks running then, so the categories add up to the time any thunk ran. Run on a quiet machine for absolute numbers;
the shares and the GFLOP/s ratio survive moderate load since both sides run in the same minutes.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\([^=]*?\)|[a-z]+\d*"
                    r"\[[\d,]*\](?:\{[^}]*\})?)\s+(?P<op>[\w\-]+)\((?P<args>[^)]*)\)(?P<rest>.*)$")
_OPERAND = re.compile(r"(?:([a-z]+\d*\[[\d,]*\])(?:\{[^}]*\})?\s+)?%?([A-Za-z_][\w.\-]*)")
_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def _dims(shape_text):
  m = _SHAPE.search(shape_text)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def parse_hlo(text):
  """{instruction name: dict(op, shape, operand names, rest)} of every computation's lines, and
  the shapes by name (operands are looked up there)."""
  instrs, shapes = {}, {}
  for line in text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name = m.group("name")
    shapes[name] = _dims(m.group("shape"))
    operands = []
    for shape, operand in _OPERAND.findall(re.sub(r"\{[^}]*\}", "", m.group("args"))):
      operands.append(operand)
      if shape:  # the operand's type printed inline
        shapes.setdefault(operand, _dims(shape))
    instrs[name] = dict(op=m.group("op"), shape=shapes[name], operands=operands,
                        rest=m.group("rest"))
  return instrs, shapes


def conv_info(instr, shapes):
  """(kind, GFLOP, forward geometry or None) of an HLO convolution."""
  rest = instr["rest"]
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
  lhs, rhs = (shapes.get(o, []) for o in instr["operands"][:2])
  out = instr["shape"]
  rhs_labels = labels.group(2) if labels else ""
  o_size = rhs[rhs_labels.index("o")] if "o" in rhs_labels and rhs else 1
  contraction = (_prod(rhs) // max(o_size, 1)) if rhs else 0
  flops = 2.0 * _prod(out) * contraction
  out_labels = labels.group(3) if labels else ""
  spatial = [out[out_labels.index(d)] for d in "01" if d in out_labels and out]
  window = re.search(r"size=(\d+)x(\d+)", rest)
  # XLA rewrites a weight gradient into a convolution whose window covers the whole image and
  # whose output is 1x1 (the kernel's taps on the batch axis), usually without JAX's metadata;
  # input gradients keep JAX's `transpose(jvp(...))` op_name, forward convolutions `jvp(...)`.
  if out_labels[:1].isdigit() or (spatial == [1, 1] and window and window.group(1) != "1"):
    kind = "conv: weight gradient"
  elif "transpose(" in rest:
    kind = "conv: input gradient"
  elif "jvp(" in rest:
    kind = "conv: forward"
  else:
    kind = "conv: weight gradient"
  geometry = None
  if kind == "conv: forward" and labels and labels.group(1) == "b01f" and rhs_labels == "01io":
    window = re.search(r"window=\{([^}]*)\}", rest)
    w = window.group(1) if window else ""
    stride = re.search(r"stride=(\d+)x(\d+)", w)
    pad = re.search(r"pad=(\d+)_(\d+)x(\d+)_(\d+)", w)
    dil = re.search(r"rhs_dilate=(\d+)x(\d+)", w)
    geometry = dict(
        input=tuple(lhs), kernel=tuple(rhs),
        stride=int(stride.group(1)) if stride else 1,
        pad=(int(pad.group(1)), int(pad.group(3))) if pad else (0, 0),
        dilation=int(dil.group(1)) if dil else 1)
  return kind, flops / 1e9, geometry


def _prod(xs):
  p = 1
  for x in xs:
    p *= x
  return p


def category(instr):
  op = instr["op"]
  if op == "dot":
    return "dot (PCM, PPC, classifier)"
  if op == "fusion" or op.endswith("fusion"):
    kind = re.search(r"kind=(\w+)", instr["rest"])
    return f"fusion ({kind.group(1) if kind else 'other'})"
  if op in ("copy", "transpose"):
    return "copy / transpose"
  if op == "sort":
    return "sort (PPC's top-k pixel selection)"
  if op in ("reduce", "reduce-window", "select-and-scatter"):
    return f"{op}"
  return "other"


def profile_step(case_name):
  import jax  # pylint: disable=import-outside-toplevel
  import speed  # pylint: disable=import-outside-toplevel
  case = speed.build_train_case(case_name)
  compiled, state, batch, key = case["compiled"], case["state"], case["batch"], case["key"]
  instrs, shapes = parse_hlo(compiled.as_text())
  with jax.set_mesh(case["mesh"]):
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp(prefix="ppc_profile_")
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)
    wall = time.perf_counter() - t0
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  data = jax.profiler.ProfileData.from_file(path)
  # A thunk's interval runs from its event's start to the start of its "end: <name>" event (an
  # asynchronous thunk, e.g. an Eigen convolution, returns at once and ends there), or to the end
  # of its own event when it has none.
  begin, finish = {}, {}
  for plane in data.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        name = event.name
        if name.startswith(("ThreadpoolListener", "ThunkExecutor")):
          continue
        if name.startswith("end: "):
          finish[name[5:]] = max(finish.get(name[5:], 0), event.start_ns)
        else:
          begin.setdefault(name, (event.start_ns, event.start_ns + event.duration_ns))
  intervals, counts, flops = [], collections.Counter(), collections.Counter()
  unmatched = collections.Counter()
  forward_convs = collections.Counter()
  for name, (start, own_end) in begin.items():
    end = max(own_end, finish.get(name, 0))
    instr = instrs.get(name)
    if instr is None:
      cat = "(events not in the HLO)"
      unmatched[name] += (end - start) / 1e9
    elif instr["op"] == "convolution":
      cat, gflop, geometry = conv_info(instr, shapes)
      flops[cat] += gflop
      if geometry is not None:
        forward_convs[tuple(sorted(geometry.items()))] += 1
    else:
      cat = category(instr)
    counts[cat] += 1
    intervals.append((start, end, cat))
  totals = _exclusive_time(intervals)
  return dict(case=case, wall=wall, totals=totals, counts=counts, flops=flops,
              forward_convs=forward_convs, unmatched=unmatched.most_common(5))


def onednn_rates(forward_convs, threads, repeats=3):
  """{geometry: (forward GFLOP/s, forward+backward GFLOP/s)} with torch (oneDNN) at `threads`."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  out = {}
  for key, count in forward_convs.items():
    g = dict(key)
    n, h, w, c = g["input"]
    kh, kw, ci, co = g["kernel"]
    x = torch.randn(n, c, h, w, requires_grad=True)
    weight = torch.randn(co, ci, kh, kw, requires_grad=True)

    def fwd():
      return torch.nn.functional.conv2d(x, weight, stride=g["stride"], padding=g["pad"],
                                        dilation=g["dilation"])
    y = fwd()
    gflop = 2.0 * y.numel() * kh * kw * ci / 1e9
    times_f, times_fb = [], []
    for _ in range(repeats + 1):
      t0 = time.perf_counter()
      with torch.no_grad():
        fwd()
      times_f.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      y = fwd()
      y.backward(torch.ones_like(y))
      times_fb.append(time.perf_counter() - t0)
    tf, tfb = sorted(times_f[1:])[len(times_f[1:]) // 2], sorted(times_fb[1:])[len(times_fb[1:]) // 2]
    out[key] = (count, gflop, gflop / tf, 3 * gflop / tfb)
  return out


def _exclusive_time(intervals):
  """{category: seconds} attributing every moment to the thunks running then, split evenly
  among them (concurrent thunks share the cores); the sum is the time any thunk ran."""
  points = sorted({t for s, e, _ in intervals for t in (s, e)})
  edges = collections.defaultdict(list)
  for s, e, cat in intervals:
    edges[s].append((1, cat))
    edges[e].append((-1, cat))
  active = collections.Counter()
  totals = collections.Counter()
  for t0, t1 in zip(points, points[1:]):
    for delta, cat in edges[t0]:
      active[cat] += delta
    running = sum(v for v in active.values() if v > 0)
    if running:
      for cat, v in active.items():
        if v > 0:
          totals[cat] += (t1 - t0) / 1e9 * v / running
  return totals


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="full_448")
  parser.add_argument("--threads", type=int, default=2, help="torch threads (XLA uses all cores)")
  parser.add_argument("--out", default="", help="also write the tables here (markdown)")
  args = parser.parse_args()
  sys.path.insert(0, HERE)
  sys.path.insert(0, os.path.dirname(HERE))
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.configure_xla_cpu()
  import jax  # pylint: disable=import-outside-toplevel
  result = profile_step(args.case)
  case = result["case"]
  total = sum(result["totals"].values())
  lines = [f"bench/cpu_profile.py --case {args.case}: batch {case['batch_size']}, crop "
           f"{case['crop']}, view 2 at {case['view2']}, {case['dtype']}; jax {jax.__version__}, "
           f"{os.cpu_count()} cores, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load "
           f"{os.getloadavg()[0]:.1f}",
           f"traced step: {result['wall']:.1f} s wall, {total:.1f} s of it with XLA thunks running", "",
           "| category | thunks | s (wall, shared) | share | GFLOP | GFLOP/s |", "|---|---|---|---|---|---|"]
  for cat, seconds in sorted(result["totals"].items(), key=lambda kv: -kv[1]):
    gflop = result["flops"].get(cat)
    rate = f"{gflop / seconds:.0f}" if gflop else "-"
    lines.append(f"| {cat} | {result['counts'][cat]} | {seconds:.2f} | {100 * seconds / total:.1f} % "
                 f"| {f'{gflop:.0f}' if gflop else '-'} | {rate} |")
  if result["unmatched"]:
    lines.append("")
    lines.append("events not found in the HLO (largest): " + ", ".join(
        f"{n} {s:.2f} s" for n, s in result["unmatched"]))
  rates = onednn_rates(result["forward_convs"], args.threads)
  lines += ["", f"oneDNN (torch {__import__('torch').__version__}, {args.threads} threads) on "
            "the step's distinct forward convolutions (NCHW):", "",
            "| input NHWC | kernel | stride | dilation | uses | GFLOP | fwd GFLOP/s | fwd+bwd GFLOP/s |",
            "|---|---|---|---|---|---|---|---|"]
  sum_f = sum_fb = sum_g = 0.0
  for key, (count, gflop, rate_f, rate_fb) in sorted(rates.items(), key=lambda kv: -kv[1][1]):
    g = dict(key)
    lines.append(f"| {g['input']} | {g['kernel']} | {g['stride']} | {g['dilation']} | {count} | "
                 f"{gflop:.1f} | {rate_f:.0f} | {rate_fb:.0f} |")
    sum_g += count * gflop
    sum_f += count * gflop / rate_f
    sum_fb += count * 3 * gflop / rate_fb
  conv_cats = [c for c in result["totals"] if c.startswith("conv:")]
  xla_conv_s = sum(result["totals"][c] for c in conv_cats)
  xla_conv_gflop = sum(result["flops"][c] for c in conv_cats)
  lines += ["", f"all convolutions: XLA {xla_conv_gflop:.0f} GFLOP in {xla_conv_s:.1f} s of the "
            f"step ({xla_conv_gflop / max(xla_conv_s, 1e-9):.0f} GFLOP/s); oneDNN on "
            f"the forward ones: {sum_g:.0f} GFLOP in {sum_f:.1f} s forward, "
            f"{3 * sum_g:.0f} GFLOP in {sum_fb:.1f} s forward + backward "
            f"({3 * sum_g / max(sum_fb, 1e-9):.0f} GFLOP/s over {args.threads} threads)"]
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
