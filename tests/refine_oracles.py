"""Independent numpy re-derivations for the AffinityNet / random-walk tests (loops, float64).

Written from METHOD.md 11.8-11.10 without the package's helpers: pairs are found by scanning all
pixel pairs, not by slicing windows.
"""

import numpy as np


def np_radius(radius, h, w):
  """wseg's shrink: (min_edge - 1) // 2 when the shorter edge is below 2r + 1."""
  m = min(h, w)
  return (m - 1) // 2 if m < 2 * radius + 1 else radius


def np_pairs(h, w, radius):
  """Every reference pair as (from_yx, to_yx), found by scanning all pixel pairs.

  A pair is (p, q) with q - p = (dy, dx) in the open half-plane (dy > 0, or dy == 0 and dx > 0),
  dx^2 + dy^2 < r^2 for the shrunk r, and p in the from window (not in the last r-1 rows, not in
  the first or last r-1 columns).
  """
  r = np_radius(radius, h, w)
  rf = r - 1
  out = []
  for y in range(h):
    for x in range(w):
      if not (y < h - rf and rf <= x < w - rf):
        continue
      for y2 in range(h):
        for x2 in range(w):
          dy, dx = y2 - y, x2 - x
          if dy * dy + dx * dx < r * r and (dy > 0 or (dy == 0 and dx > 0)):
            out.append(((y, x), (y2, x2)))
  return out


def np_pair_kind(a, b):
  """'bg', 'fg', 'neg' or None for the labels a (from) and b (to); 255 = ignore."""
  if a == b:
    if a == 0:
      return "bg"
    return "fg" if a < 255 else None
  return "neg" if a < 255 and b < 255 else None


def np_resize(x, size, align_corners):
  """torch-style bilinear resize of [H, W, C], one output pixel at a time (float64)."""
  h, w, c = x.shape
  oh, ow = size

  def src(d, n_in, n_out):
    if align_corners:
      return d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return max((d + 0.5) * n_in / n_out - 0.5, 0.0)

  out = np.zeros((oh, ow, c), np.float64)
  for i in range(oh):
    sy = src(i, h, oh)
    y0 = min(int(np.floor(sy)), h - 1)
    y1 = min(y0 + 1, h - 1)
    fy = sy - y0
    for j in range(ow):
      sx = src(j, w, ow)
      x0 = min(int(np.floor(sx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      fx = sx - x0
      out[i, j] = ((1 - fy) * (1 - fx) * x[y0, x0] + (1 - fy) * fx * x[y0, x1]
                   + fy * (1 - fx) * x[y1, x0] + fy * fx * x[y1, x1])
  return out


def np_block_mean(x, stride):
  """[H, W, C] -> [ceil(H/s), ceil(W/s), C]: sum of the block's real pixels / s^2 (pad = 0)."""
  hh, ww, c = x.shape
  h, w = -(-hh // stride), -(-ww // stride)
  out = np.zeros((h, w, c), np.float64)
  for i in range(h):
    for j in range(w):
      block = x[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride]
      out[i, j] = block.reshape(-1, c).sum(axis=0) / (stride * stride)
  return out
