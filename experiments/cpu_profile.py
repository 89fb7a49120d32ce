r"""Where the CPU training step's time goes: XLA:CPU's own per-operation trace of one step, and
oneDNN (torch) on the same convolutions.

Question: where does ppc_jax's full training step spend its time on the CPU, and where is XLA
behind the official PyTorch code?
Answer: convolutions are 76 % of the step (input gradients 44 %, forward 25 %, weight gradients
7 %) and the dots, mostly 1x1 convolutions, 14 %; XLA's convolutions run at about 224 GFLOP/s
against oneDNN's 173 on the same shapes, so the step is ahead of the reference's (26.7 s against
30.2 s; results/cpu_profile_full448_vs_reference_cpu.md). XLA was behind on the sorts (0.61 s
against torch's 0.03 s of top-k), which is why SEAM's losses now use `lax.top_k`, and on a few
dots (a PCM backward product at 73 GFLOP/s against 213), about 0.5 s in all (docs/benchmarks.md).

  python experiments/cpu_profile.py [--case full_448] [--threads 2] [--out FILE.md]
                                    [--reference_dir=WSEG_DIR]

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
3. Times torch.einsum (MKL / oneDNN GEMMs) on the operand shapes of each distinct dot of the traced
   step. XLA turns the ResNet38 blocks' 1x1 convolutions (and their gradients) into dots, so most
   of the dots' time is convolution work, not the PCM or the losses.
4. With --reference_dir (a checkout of usr922/wseg): profiles one step of the official training
   loop (bench/reference_torch.py --profile, torch.profiler self times per aten op) right after,
   and compares the two steps category by category: convolutions and matrix products, sort /
   top-k, everything else.

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
BENCH = os.path.join(os.path.dirname(HERE), "bench")  # speed.py's cases and reference runner

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


def dot_info(instr, shapes):
  """(GFLOP, einsum subscripts, lhs shape, rhs shape) of an HLO dot: the FLOPs are 2 x output
  elements x contraction length; the subscripts name the dot for torch.einsum (batch dims, then
  the lhs's and the rhs's free dims, as HLO orders a dot's output)."""
  lhs, rhs = (shapes.get(o, []) for o in instr["operands"][:2])
  dims = {}
  for side in ("lhs", "rhs"):
    for kind in ("batch", "contracting"):
      m = re.search(rf"{side}_{kind}_dims=\{{([\d,]*)\}}", instr["rest"])
      dims[side, kind] = [int(d) for d in m.group(1).split(",") if d] if m else []
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs_sub, rhs_sub = [None] * len(lhs), [None] * len(rhs)
  for i, j in zip(dims["lhs", "batch"], dims["rhs", "batch"]):
    lhs_sub[i] = rhs_sub[j] = next(letters)
  for i, j in zip(dims["lhs", "contracting"], dims["rhs", "contracting"]):
    lhs_sub[i] = rhs_sub[j] = next(letters)
  batch = [lhs_sub[i] for i in dims["lhs", "batch"]]
  free = []
  for sub in (lhs_sub, rhs_sub):
    for i, letter in enumerate(sub):
      if letter is None:
        sub[i] = next(letters)
        free.append(sub[i])
  contraction = _prod(lhs[i] for i in dims["lhs", "contracting"])
  subscripts = f"{''.join(lhs_sub)},{''.join(rhs_sub)}->{''.join(batch + free)}"
  return 2.0 * _prod(instr["shape"]) * contraction / 1e9, subscripts, tuple(lhs), tuple(rhs)


def _prod(xs):
  p = 1
  for x in xs:
    p *= x
  return p


def category(instr):
  op = instr["op"]
  if op == "dot":
    return "dot (1x1 convolutions, PCM, PPC, classifier)"
  if op == "fusion" or op.endswith("fusion"):
    kind = re.search(r"kind=(\w+)", instr["rest"])
    return f"fusion ({kind.group(1) if kind else 'other'})"
  if op in ("copy", "transpose"):
    return "copy / transpose"
  if op == "sort":
    return "sort (SEAM's top-k / min-pooling losses, PPC's pixel ranks)"
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
  dot_intervals, dots = [], {}
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
    if instr is not None and instr["op"] == "dot":
      dots[name] = dot_info(instr, shapes)
      flops[cat] += dots[name][0]
    counts[cat] += 1
    intervals.append((start, end, cat))
    # The same time line with every dot on its own, to give each dot its share.
    dot_intervals.append((start, end, name if name in dots else "(not a dot)"))
  totals = _exclusive_time(intervals)
  dot_seconds = _exclusive_time(dot_intervals)
  per_dot = collections.defaultdict(lambda: [0, 0.0, 0.0])  # geometry -> uses, GFLOP, s
  for name, (gflop, subscripts, lhs, rhs) in dots.items():
    entry = per_dot[subscripts, lhs, rhs]
    entry[0] += 1
    entry[1] += gflop
    entry[2] += dot_seconds.get(name, 0.0)
  return dict(case=case, wall=wall, totals=totals, counts=counts, flops=flops,
              forward_convs=forward_convs, dots=dict(per_dot),
              unmatched=unmatched.most_common(5))


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


def torch_dot_seconds(subscripts, lhs, rhs, threads, repeats=3):
  """Median seconds of torch.einsum (MKL / oneDNN GEMMs) on a dot of these operand shapes."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  a, b = torch.randn(*lhs), torch.randn(*rhs)
  times = []
  for _ in range(repeats + 1):
    t0 = time.perf_counter()
    torch.einsum(subscripts, a, b)
    times.append(time.perf_counter() - t0)
  return sorted(times[1:])[len(times[1:]) // 2]


def torch_category(op):
  """The category of an aten op of the reference's profiled step (bench/reference_torch.py)."""
  name = op.lower()
  if "convolution" in name or "conv2d" in name:
    return "conv: backward" if "backward" in name else "conv: forward"
  if re.search(r"aten::(mm|bmm|addmm|matmul|linear|einsum)\b", name):
    return "matrix products"
  if "batch_norm" in name:
    return "batch norm"
  if "topk" in name or "sort" in name:
    return "sort / top-k"
  return "rest"


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


def compare_with_reference(result, args):
  """Table lines: the traced XLA step against the reference's profiled step, by category."""
  import speed  # pylint: disable=import-outside-toplevel
  case = result["case"]
  ref = speed.run_reference(args.reference_dir, case["batch_size"], case["crop"], steps=1,
                            threads=args.threads, profile=True)
  if ref is None or "profile" not in ref:
    return ["reference: no profile (see the error above)"]
  torch_s = collections.Counter()
  for op, seconds in ref["profile"].items():
    if op != "(wall)":
      torch_s[torch_category(op)] += seconds
  xla = result["totals"]
  dense_xla = sum(v for c, v in xla.items() if c.startswith(("conv:", "dot")))
  dense_torch = torch_s["conv: forward"] + torch_s["conv: backward"] + torch_s["matrix products"]
  sort_xla = sum(v for c, v in xla.items() if c.startswith("sort"))
  sort_torch = torch_s["sort / top-k"]
  rest_xla = sum(xla.values()) - dense_xla - sort_xla
  rest_torch = sum(torch_s.values()) - dense_torch - sort_torch
  wall_xla, wall_torch = result["wall"], ref["profile"]["(wall)"]
  rows = [("convolutions and matrix products (torch: conv forward "
           f"{torch_s['conv: forward']:.1f} s, conv backward {torch_s['conv: backward']:.1f} s, "
           f"mm/bmm {torch_s['matrix products']:.2f} s)", dense_xla, dense_torch),
          ("sort / top-k", sort_xla, sort_torch),
          ("everything else: elementwise, batch norm (torch "
           f"{torch_s['batch norm']:.1f} s), reductions, copies, optimizer", rest_xla, rest_torch),
          ("whole step (wall)", wall_xla, wall_torch)]
  lines = [f"the same step in the reference (torch {ref.get('torch', '?')}, {args.threads} "
           "threads, torch.profiler self times; one step after one warm-up step, run after the "
           f"XLA trace; timed step before it {ref['step_s']:.1f} s), load "
           f"{os.getloadavg()[0]:.1f}:", "",
           "| work | ppc_jax (XLA) s | reference (torch) s | XLA / torch |", "|---|---|---|---|"]
  for label, a, b in rows:
    lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / max(b, 1e-9):.2f} |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="full_448")
  parser.add_argument("--threads", type=int, default=2, help="torch threads (XLA uses all cores)")
  parser.add_argument("--out", default="", help="also write the tables here (markdown)")
  parser.add_argument("--reference_dir", default="",
                      help="checkout of usr922/wseg: profile the official step in the same run "
                           "(torch.profiler, --threads threads) and compare the two by category")
  args = parser.parse_args()
  sys.path.insert(0, BENCH)
  sys.path.insert(0, os.path.dirname(HERE))
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.configure_xla_cpu()
  import jax  # pylint: disable=import-outside-toplevel
  result = profile_step(args.case)
  case = result["case"]
  total = sum(result["totals"].values())
  lines = [f"experiments/cpu_profile.py --case {args.case}: batch {case['batch_size']}, crop "
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
  lines += ["", f"dots one by one, XLA in the traced step against torch.einsum ({args.threads} "
            "threads, the same operand shapes) in the same minutes, largest XLA time first:", "",
            "| einsum | lhs | rhs | uses | GFLOP | XLA s | XLA GFLOP/s | torch s | torch GFLOP/s |",
            "|---|---|---|---|---|---|---|---|---|"]
  dot_xla = dot_torch = 0.0
  for (subscripts, lhs, rhs), (uses, gflop, seconds) in sorted(
      result["dots"].items(), key=lambda kv: -kv[1][2]):
    t = uses * torch_dot_seconds(subscripts, lhs, rhs, args.threads)
    dot_xla += seconds
    dot_torch += t
    lines.append(f"| {subscripts} | {lhs} | {rhs} | {uses} | {gflop:.2f} | {seconds:.3f} | "
                 f"{gflop / max(seconds, 1e-9):.0f} | {t:.3f} | {gflop / max(t, 1e-9):.0f} |")
  lines += ["", f"all dots: XLA {dot_xla:.2f} s of the step, torch {dot_torch:.2f} s on the same "
            "shapes"]
  if args.reference_dir:
    lines += [""] + compare_with_reference(result, args)
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
