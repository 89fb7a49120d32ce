"""Independent numpy re-derivations shared by several test files (loops, float64)."""

import numpy as np


def np_resize_ac(x, size):
  """align_corners=True bilinear resize of [B, H, W, C], one output pixel at a time."""
  b, h, w, c = x.shape
  oh, ow = size
  out = np.zeros((b, oh, ow, c), np.float64)
  for i in range(oh):
    sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
    y0 = min(int(np.floor(sy)), h - 1)
    y1 = min(y0 + 1, h - 1)
    fy = sy - y0
    for j in range(ow):
      sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
      x0 = min(int(np.floor(sx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      fx = sx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out
