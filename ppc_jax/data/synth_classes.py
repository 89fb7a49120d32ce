r"""A synthetic image-classification set in the class-folder layout: the pretext task of the
pretraining stage (ppc_jax/pretrain/) on a CPU.

  python -m ppc_jax.data.synth_classes --out DIR [--num_train 80 --num_val 20]
      [--min_size 64 --max_size 96] [--seed 0] [--classes N]

writes `DIR/train/<class>/<class>_NNNN.jpg` and `DIR/val/<class>/...` (the layout
`ppc_jax.pretrain.data.FolderSource` reads; class list = the sorted folder names) and
`DIR/synth_classes.json` (the settings and the class list).

The 48 classes are full-frame patterns whose class is a parameter that the synthetic VOC set
(`ppc_jax.data.synth`) leaves random or never draws, so no pretext class is one of its
segmentation classes (single large objects of nine shapes - ellipse, star, triangle, cross,
ring, hexagon, crescent, diamond, rect - whose body textures, stripes / checker / dots / waves /
rings / grid, are shared between classes at random angles and frequencies, with a textured cap):
  grating_*      stripes at 0 / 22.5 / 45 / 67.5 / 90 degrees (frequency, phase, profile random)
  plaid_*        two sets of lines crossing at 30 / 60 / 90 degrees (orientation random)
  checker_*      checkerboards of small / medium / large cells (rotation random)
  dots_*         square or hexagonal dot lattices, small or large dots (spacing, rotation random)
  glyph_*        lattices of the letters E F H L T U Y Z (none is a segmentation shape)
  colours_*      two-colour blob textures of hue pairs (red, yellow, green, blue)
  noise_*        band-pass noise of low / mid / high spatial frequency
  concentric_*   concentric circles, squares, diamonds, and a spiral around a random centre
  bricks_*       running bond, stack bond and basket weave
  scatter_*      random scatters of two of four small marks (dot, bar, chevron, box)
  gradient_*     smooth colour ramps: horizontal, vertical or radial
Nuisances shared by all: the two colours (except colours_*), scale, phase, a smooth illumination
field, sensor noise, JPEG; every image is mirrored with probability 1/2, so each class is closed
under the horizontal flip of the training augmentation (grating_22 holds 22.5 and 157.5 degrees).
Classes that differ in scale only (checker_*, noise_*) are an octave or more apart, so the
random-resized crop of the demo config (area 25-100 %) does not merge them.

Every image comes from `np.random.default_rng([seed, split, class, k])`, so the set is a
deterministic function of the seed, and the counts of one split or class leave the others'
images as they are. Rendering is numpy on <= 96 px images: the default 3,840 + 960 images take a
few seconds per thousand.
"""

import argparse
import colorsys
import json
import os
import time

import numpy as np
import PIL.Image

from ppc_jax import atomic_io
from ppc_jax import fileio

SPLITS = ("train", "val")
HUES = {"r": 0.0, "y": 1.0 / 6.0, "g": 1.0 / 3.0, "b": 2.0 / 3.0}
MARKS = ("dot", "bar", "chevron", "box")
# Strokes of each letter on a unit cell [-1, 1]^2 (x right, y down): (x0, y0, x1, y1) segments.
LETTERS = {
    "E": ((-0.6, -0.8, -0.6, 0.8), (-0.6, -0.8, 0.6, -0.8), (-0.6, 0.0, 0.4, 0.0),
          (-0.6, 0.8, 0.6, 0.8)),
    "F": ((-0.6, -0.8, -0.6, 0.8), (-0.6, -0.8, 0.6, -0.8), (-0.6, 0.0, 0.4, 0.0)),
    "H": ((-0.6, -0.8, -0.6, 0.8), (0.6, -0.8, 0.6, 0.8), (-0.6, 0.0, 0.6, 0.0)),
    "L": ((-0.6, -0.8, -0.6, 0.8), (-0.6, 0.8, 0.6, 0.8)),
    "T": ((-0.7, -0.8, 0.7, -0.8), (0.0, -0.8, 0.0, 0.8)),
    "U": ((-0.6, -0.8, -0.6, 0.8), (0.6, -0.8, 0.6, 0.8), (-0.6, 0.8, 0.6, 0.8)),
    "Y": ((-0.7, -0.8, 0.0, 0.0), (0.7, -0.8, 0.0, 0.0), (0.0, 0.0, 0.0, 0.8)),
    "Z": ((-0.6, -0.8, 0.6, -0.8), (0.6, -0.8, -0.6, 0.8), (-0.6, 0.8, 0.6, 0.8)),
}


def class_names():
  """The 48 class names, sorted (= label order of the class-folder reader)."""
  names = [f"grating_{a:03d}" for a in (0, 22, 45, 68, 90)]
  names += [f"plaid_{a}" for a in (30, 60, 90)]
  names += [f"checker_{s}" for s in ("small", "medium", "large")]
  names += [f"dots_{lattice}_{size}" for lattice in ("square", "hex")
            for size in ("small", "large")]
  names += [f"glyph_{letter}" for letter in LETTERS]
  pairs = [a + b for i, a in enumerate(HUES) for b in list(HUES)[i + 1:]]
  names += [f"colours_{p}" for p in pairs]
  names += [f"noise_{b}" for b in ("low", "mid", "high")]
  names += [f"concentric_{k}" for k in ("circles", "squares", "diamonds", "spiral")]
  names += [f"bricks_{k}" for k in ("running", "stack", "basket")]
  marks = [f"{a}_{b}" for i, a in enumerate(MARKS) for b in MARKS[i + 1:]]
  names += [f"scatter_{m}" for m in marks]
  names += [f"gradient_{k}" for k in ("horizontal", "vertical", "radial")]
  return tuple(sorted(names))


# ----------------------------------------------------------------------------------------------
# Patterns: functions of (rng, u, v) -> weight in [0, 1] on coordinates u (right), v (down)
# scaled so that the short side spans [-1, 1].


def _rotate(u, v, angle):
  c, s = np.cos(angle), np.sin(angle)
  return u * c + v * s, -u * s + v * c


def _square_or_sine(rng, phase):
  """A periodic profile of the phase (cycles): a square wave or a sine, at random."""
  if rng.random() < 0.5:
    return 0.5 + 0.5 * np.sin(2 * np.pi * phase)
  return (np.mod(phase, 1.0) < rng.uniform(0.35, 0.65)).astype(np.float32)


def _lines(r, period, width, offset):
  """1 on lines of `width` (fraction of the period) across the coordinate r."""
  return (np.mod(r / period + offset, 1.0) < width).astype(np.float32)


def _segment_mask(px, py, x0, y0, x1, y1, half_width):
  """Points within half_width of the segment (x0, y0)-(x1, y1)."""
  dx, dy = x1 - x0, y1 - y0
  t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
  return np.hypot(px - x0 - t * dx, py - y0 - t * dy) <= half_width


def _lattice_cell(u, v, spacing, hexagonal=False):
  """Coordinates relative to the nearest lattice point, in units of the spacing."""
  if not hexagonal:
    return u / spacing - np.round(u / spacing), v / spacing - np.round(v / spacing)
  # A hexagonal lattice as two offset rectangular lattices (rows sqrt(3)/2 apart).
  row = spacing * np.sqrt(3.0)
  best = None
  for du, dv in ((0.0, 0.0), (0.5 * spacing, 0.5 * row)):
    cu = (u - du) / spacing - np.round((u - du) / spacing)
    cv = ((v - dv) / row - np.round((v - dv) / row)) * row / spacing
    d = np.hypot(cu, cv)
    best = (cu, cv, d) if best is None else tuple(np.where(d < best[2], x, y)
                                                 for x, y in zip((cu, cv, d), best))
  return best[0], best[1]


def _band_noise(rng, height, width, scale, band):
  """Noise whose wavelength lies in `band` (lo, hi), in units of the half short side."""
  white = rng.standard_normal((height, width))
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  wavelength = 1.0 / np.maximum(np.hypot(fy, fx), 1e-6) / scale  # pixels -> half-side units
  keep = (wavelength >= band[0]) & (wavelength <= band[1])
  field = np.fft.irfft2(np.fft.rfft2(white) * keep, s=(height, width))
  field = (field - field.mean()) / max(field.std(), 1e-6)
  return 1.0 / (1.0 + np.exp(-1.6 * field))


def _mark(kind, pu, pv, size, rng):
  """A small mark centred at the origin of (pu, pv), of radius `size`, randomly rotated."""
  pu, pv = _rotate(pu, pv, rng.uniform(0, 2 * np.pi))
  if kind == "dot":
    return np.hypot(pu, pv) <= size * 0.55
  if kind == "bar":
    return (np.abs(pu) <= size) & (np.abs(pv) <= size * 0.22)
  if kind == "chevron":
    w = size * 0.2
    return (_segment_mask(pu, pv, -size, -size * 0.7, 0.0, size * 0.3, w)
            | _segment_mask(pu, pv, size, -size * 0.7, 0.0, size * 0.3, w))
  if kind == "box":
    m = np.maximum(np.abs(pu), np.abs(pv))
    return (m <= size * 0.8) & (m >= size * 0.5)
  raise ValueError(kind)


def _pattern(name, rng, u, v, scale):
  """weight [H, W] in [0, 1] of class `name` (colours_* and gradient_* included)."""
  family, _, kind = name.partition("_")
  theta = rng.uniform(0, np.pi)
  zoom = rng.uniform(0.85, 1.15)
  if family == "grating":
    ru, _ = _rotate(u, v, np.deg2rad(int(kind) + {22: 0.5, 68: -0.5}.get(int(kind), 0.0))
                    + rng.uniform(-0.06, 0.06))
    return _square_or_sine(rng, ru / rng.uniform(0.22, 0.4) + rng.random())
  if family == "plaid":
    delta = np.deg2rad(int(kind) + rng.uniform(-3, 3))
    period, width = rng.uniform(0.25, 0.4), rng.uniform(0.18, 0.3)
    a, _ = _rotate(u, v, theta)
    b, _ = _rotate(u, v, theta + delta)
    return np.maximum(_lines(a, period, width, rng.random()), _lines(b, period, width, rng.random()))
  if family == "checker":
    cell = {"small": 0.11, "medium": 0.3, "large": 0.8}[kind] * zoom
    ru, rv = _rotate(u, v, theta)
    return (np.mod(np.floor(ru / cell + rng.random()) + np.floor(rv / cell + rng.random()), 2)
            ).astype(np.float32)
  if family == "dots":
    lattice, size = kind.split("_")
    spacing = rng.uniform(0.24, 0.34)
    ru, rv = _rotate(u + rng.random(), v + rng.random(), theta)
    cu, cv = _lattice_cell(ru, rv, spacing, hexagonal=lattice == "hex")
    radius = 0.16 if size == "small" else 0.36
    return (np.hypot(cu, cv) <= radius * rng.uniform(0.9, 1.1)).astype(np.float32)
  if family == "glyph":
    spacing = rng.uniform(0.42, 0.55)
    ru, rv = _rotate(u + rng.random(), v + rng.random(), rng.uniform(0, 2 * np.pi))
    cu, cv = _lattice_cell(ru, rv, spacing)
    px, py = cu * 2.3, cv * 2.3  # the letter fills ~85 % of its cell
    mask = np.zeros(u.shape, bool)
    for segment in LETTERS[kind]:
      mask |= _segment_mask(px, py, *segment, half_width=0.17)
    return mask.astype(np.float32)
  if family == "colours":
    return (_band_noise(rng, *u.shape, scale, (0.35, 1.2)) > 0.5).astype(np.float32)
  if family == "noise":
    band = {"low": (0.9, 3.0), "mid": (0.22, 0.45), "high": (0.045, 0.09)}[kind]
    return _band_noise(rng, *u.shape, scale, band)
  if family == "concentric":
    cu, cv = u - rng.uniform(-0.6, 0.6), v - rng.uniform(-0.6, 0.6)
    period = rng.uniform(0.16, 0.26)
    if kind == "circles":
      r = np.hypot(cu, cv)
    elif kind == "squares":
      r = np.maximum(*np.abs(_rotate(cu, cv, rng.uniform(-0.08, 0.08))))
    elif kind == "diamonds":
      r = np.sum(np.abs(_rotate(cu, cv, rng.uniform(-0.08, 0.08))), axis=0) / np.sqrt(2.0)
    else:
      r = np.hypot(cu, cv) + np.arctan2(cv, cu) / (2 * np.pi) * period
    return _lines(r, period, 0.45, rng.random())
  if family == "bricks":
    height = rng.uniform(0.13, 0.2)
    ru, rv = _rotate(u + rng.random(), v + rng.random(), theta)
    mortar = 0.14
    if kind == "basket":
      block = 2 * height
      parity = np.mod(np.floor(ru / block) + np.floor(rv / block), 2) == 1
      along = np.where(parity, rv, ru)
      return ((np.mod(along / height, 1.0) < mortar)
              | (np.mod(np.where(parity, ru, rv) / block, 1.0) < mortar / 2)).astype(np.float32)
    row = np.floor(rv / height)
    shift = np.mod(row, 2) * height if kind == "running" else 0.0
    return ((np.mod(rv / height, 1.0) < mortar)
            | (np.mod((ru + shift) / (2 * height), 1.0) < mortar / 2)).astype(np.float32)
  if family == "scatter":
    first, second = kind.split("_")
    mask = np.zeros(u.shape, bool)
    extent_u, extent_v = np.abs(u).max() + 0.1, np.abs(v).max() + 0.1
    count = int(rng.integers(12, 20))
    for k in range(count):
      cu, cv = rng.uniform(-extent_u, extent_u), rng.uniform(-extent_v, extent_v)
      mask |= _mark(first if k % 2 == 0 else second, u - cu, v - cv,
                    rng.uniform(0.11, 0.16), rng)
    return mask.astype(np.float32)
  if family == "gradient":
    if kind == "radial":
      r = np.hypot(u - rng.uniform(-0.4, 0.4), v - rng.uniform(-0.4, 0.4))
      return np.clip(1.0 - r / rng.uniform(1.0, 1.6), 0.0, 1.0)
    along, across = (u, v) if kind == "horizontal" else (v, u)
    ramp = along + rng.uniform(-0.08, 0.08) * across  # tilted by at most ~5 degrees
    lo, hi = ramp.min(), ramp.max()
    return (ramp - lo) / max(hi - lo, 1e-6)
  raise ValueError(name)


def _hsv(h, s, v):
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _colours(name, rng):
  """(colour of weight 0, colour of weight 1), float32 [3] each in 0..255."""
  family, _, kind = name.partition("_")
  if family == "colours":
    h0, h1 = HUES[kind[0]], HUES[kind[1]]
    if rng.random() < 0.5:
      h0, h1 = h1, h0
    jitter = lambda: rng.uniform(-0.035, 0.035)  # noqa: E731
    return (_hsv(h0 + jitter(), rng.uniform(0.6, 0.95), rng.uniform(0.55, 0.95)),
            _hsv(h1 + jitter(), rng.uniform(0.6, 0.95), rng.uniform(0.55, 0.95)))
  # Contrast in value, any hues (including grey): the pattern, not the colour, is the class.
  bright = _hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.6, 1.0))
  dark = _hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.05, 0.4))
  return (bright, dark) if rng.random() < 0.5 else (dark, bright)


def render(name, rng, height, width):
  """One image of class `name`: uint8 [H, W, 3]."""
  scale = min(height, width) / 2.0
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  u, v = (xs + 0.5 - width / 2.0) / scale, (ys + 0.5 - height / 2.0) / scale
  weight = _pattern(name, rng, u, v, scale)[..., None]
  c0, c1 = _colours(name, rng)
  image = c0 * (1.0 - weight) + c1 * weight
  # A smooth illumination field (a tilted plane in brightness) and sensor noise.
  gu, gv = rng.uniform(-0.2, 0.2, size=2)
  image = image * (1.0 + gu * u + gv * v)[..., None] * rng.uniform(0.85, 1.1)
  image = image + rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape)
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _split_code(split):
  return SPLITS.index(split)


def generate(out_dir, *, num_train=80, num_val=20, min_size=64, max_size=96, seed=0,
             num_classes=0, jpeg_quality=90, verbose=False):
  """Writes the class-folder set and returns `out_dir`.

  Args:
    out_dir: `<out_dir>/<split>/<class>/<class>_NNNN.jpg` (files of the same names replaced).
    num_train, num_val: images per class in each split.
    min_size, max_size: range of each side in pixels (drawn per image).
    seed: the set is a deterministic function of the seed (and of each image's split, class and
      number).
    num_classes: > 0: only the first N classes of `class_names()`.
    jpeg_quality: JPEG quality.
    verbose: print progress.

  Returns:
    str, out_dir.
  """
  if not 8 <= min_size <= max_size:
    raise ValueError(f"need 8 <= min_size <= max_size, got {min_size}, {max_size}")
  names = class_names()
  if num_classes > 0:
    if num_classes > len(names):
      raise ValueError(f"num_classes={num_classes}: the set has {len(names)} classes")
    names = names[:num_classes]
  t0 = time.perf_counter()
  written = 0
  for split, count in (("train", num_train), ("val", num_val)):
    for c, name in enumerate(names):
      class_dir = os.path.join(out_dir, split, name)
      fileio.makedirs(class_dir)
      for k in range(count):
        rng = np.random.default_rng([seed, _split_code(split), c, k])
        height, width = (int(x) for x in rng.integers(min_size, max_size + 1, size=2))
        atomic_io.save_image(os.path.join(class_dir, f"{name}_{k:04d}.jpg"),
                             PIL.Image.fromarray(render(name, rng, height, width)),
                             quality=jpeg_quality)
        written += 1
      if verbose and (c + 1) % 16 == 0:
        print(f"  {split}: {c + 1}/{len(names)} classes ({time.perf_counter() - t0:.1f} s)")
  atomic_io.write_json(os.path.join(out_dir, "synth_classes.json"), dict(
      classes=list(names), num_train=num_train, num_val=num_val, min_size=min_size,
      max_size=max_size, seed=seed, jpeg_quality=jpeg_quality, images=written))
  return out_dir


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Write a synthetic class-folder classification set (see the module docstring).")
  parser.add_argument("--out", required=True, help="output directory (train/ and val/ inside)")
  parser.add_argument("--num_train", type=int, default=80, help="training images per class")
  parser.add_argument("--num_val", type=int, default=20, help="validation images per class")
  parser.add_argument("--min_size", type=int, default=64)
  parser.add_argument("--max_size", type=int, default=96)
  parser.add_argument("--classes", type=int, default=0,
                      help=f"> 0: the first N of the {len(class_names())} classes")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  generate(args.out, num_train=args.num_train, num_val=args.num_val, min_size=args.min_size,
           max_size=args.max_size, seed=args.seed, num_classes=args.classes, verbose=True)
  with fileio.open(os.path.join(args.out, "synth_classes.json")) as f:
    info = json.load(f)
  print(f"wrote {info['images']} images of {len(info['classes'])} classes to {args.out} in "
        f"{time.perf_counter() - t0:.1f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
